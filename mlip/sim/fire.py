"""Batched FIRE with a variable cell: ASE's ``FIRE(FrechetCellFilter(atoms, scalar_pressure=p))``
for every structure of a padded batch at once, step for step.

Each structure keeps its own FIRE time step, mixing parameter and count of downhill steps, and
its step is capped at ``maxstep`` in the norm over all its degrees of freedom (atoms and cell),
as ASE does for one structure. Structures with ``relax_cell`` False (and all that are not
periodic in three directions) keep their cell: this is then ASE's FIRE on the atoms alone.
A structure has converged when every row of its generalised forces (atoms, and the three
cell rows: virial-derived, per atom) is shorter than ``fmax``: ASE's criterion.

Units: FIRE's time step and velocities are in ASE's optimiser units (dt = 0.1 at the start),
which only scale the path, not the minimum.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mlip.potential import PotentialOutput
from mlip.sim import frechet
from mlip.sim.neighbors import NeighborSpec
from mlip.sim.system import ATOM, GRAPH, System, moved


class FireState(NamedTuple):
    """FIRE + FrechetCellFilter state of a padded batch (N atom, G structure slots).

    system: the structures (Cartesian positions and cells, neighbour list).
    energy: [G] eV. forces: [N, 3] eV/Å. stress: [G, 3, 3] eV/Å^3 (ASE sign).
    reference_cell: [G, 3, 3] Å, the cell H0 at the start.
    log_deformation: [G, 3, 3], L = log F (dimensionless).
    filter_positions: [N, 3] Å, X = x F^-T.
    atom_force: [N, 3] eV/Å and cell_force: [G, 3, 3] eV, the generalised forces.
    velocity: [N, 3] and cell_velocity: [G, 3, 3], FIRE's velocities.
    dt: [G] FIRE time step. alpha: [G] mixing parameter. n_positive: int32 [G], downhill
        steps since the last uphill one.
    relax_cell: bool [G]. pressure: [G] eV/Å^3, scalar pressure of the enthalpy.
    steps: int32 [G], steps taken. fmax: [G] eV/Å, largest generalised force row.
    """

    system: System
    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    reference_cell: jax.Array
    log_deformation: jax.Array
    filter_positions: jax.Array
    atom_force: jax.Array
    cell_force: jax.Array
    velocity: jax.Array
    cell_velocity: jax.Array
    dt: jax.Array
    alpha: jax.Array
    n_positive: jax.Array
    relax_cell: jax.Array
    pressure: jax.Array
    steps: jax.Array
    fmax: jax.Array

    KINDS = {
        "energy": GRAPH, "forces": ATOM, "stress": GRAPH, "reference_cell": GRAPH,
        "log_deformation": GRAPH, "filter_positions": ATOM, "atom_force": ATOM,
        "cell_force": GRAPH, "velocity": ATOM, "cell_velocity": GRAPH, "dt": GRAPH,
        "alpha": GRAPH, "n_positive": GRAPH, "relax_cell": GRAPH, "pressure": GRAPH,
        "steps": GRAPH, "fmax": GRAPH,
    }


def fire(
    energy_fn: Callable[[System], PotentialOutput],
    spec: NeighborSpec,
    *,
    dt_start: float = 0.1,
    maxstep: float = 0.2,
    dtmax: float = 1.0,
    n_min: int = 5,
    finc: float = 1.1,
    fdec: float = 0.5,
    astart: float = 0.1,
    fa: float = 0.99,
):
    """(init_fn, step_fn) of batched FIRE; the parameters are ASE's FIRE defaults.

    init_fn(system, relax_cell: bool [G], pressure: [G] eV/Å^3) -> FireState: starts from
    ``system`` (whose neighbour list must be current). step_fn(state) -> FireState: one FIRE
    step of every structure. `refresh` recomputes the forces of a state (after packing).
    """

    def refresh(state: FireState) -> FireState:
        system = state.system
        out = energy_fn(system)
        atom_force, cell_force = frechet.generalized_forces(
            out.forces, out.stress, system.cell, state.log_deformation, state.pressure,
            system.n_node, system.node_graph,
        )
        cell_force = jnp.where(state.relax_cell[:, None, None], cell_force, 0.0)
        rows = jnp.concatenate([_row_norm_max(atom_force, system), _norm(cell_force).max(axis=1)[:, None]], 1)
        return state._replace(
            energy=out.energy, forces=out.forces, stress=out.stress, atom_force=atom_force,
            cell_force=cell_force, fmax=rows.max(axis=1),
        )

    def init_fn(system: System, relax_cell, pressure) -> FireState:
        n_graph, dtype = system.cell.shape[0], system.positions.dtype
        relax_cell = relax_cell & jnp.all(system.pbc, axis=1) & system.graph_mask
        zeros_graph = jnp.zeros(n_graph, dtype)
        state = FireState(
            system=system, energy=zeros_graph, forces=jnp.zeros_like(system.positions),
            stress=jnp.zeros_like(system.cell), reference_cell=system.cell,
            log_deformation=jnp.zeros_like(system.cell), filter_positions=system.positions,
            atom_force=jnp.zeros_like(system.positions), cell_force=jnp.zeros_like(system.cell),
            velocity=jnp.zeros_like(system.positions), cell_velocity=jnp.zeros_like(system.cell),
            dt=jnp.full(n_graph, dt_start, dtype), alpha=jnp.full(n_graph, astart, dtype),
            n_positive=jnp.zeros(n_graph, jnp.int32), relax_cell=relax_cell,
            pressure=jnp.asarray(pressure, dtype), steps=jnp.zeros(n_graph, jnp.int32), fmax=zeros_graph,
        )
        return refresh(state)

    def step_fn(state: FireState) -> FireState:
        system = state.system
        graph, n_graph = system.node_graph, system.cell.shape[0]

        def dot(atom_a, atom_b, cell_a, cell_b):  # per-structure inner product over all DOFs
            per_atom = jnp.sum(atom_a * atom_b, axis=1)
            return jax.ops.segment_sum(per_atom, graph, n_graph) + jnp.sum(cell_a * cell_b, axis=(1, 2))

        force, cell_force = state.atom_force, state.cell_force
        v, cv = state.velocity, state.cell_velocity
        vf = dot(force, v, cell_force, cv)
        # ASE starts with zero velocity and no mixing or time-step update on the first step.
        started = state.steps > 0
        downhill = started & (vf > 0.0)
        uphill = started & ~(vf > 0.0)
        force_norm = jnp.sqrt(dot(force, force, cell_force, cell_force))
        ratio = jnp.sqrt(dot(v, v, cv, cv)) / jnp.where(downhill, force_norm, 1.0)
        mix = jnp.where(downhill, state.alpha, 0.0)
        keep = jnp.where(uphill, 0.0, 1.0 - mix)  # uphill: velocity reset to zero
        v = keep[graph][:, None] * v + (mix * ratio)[graph][:, None] * force
        cv = keep[:, None, None] * cv + (mix * ratio)[:, None, None] * cell_force
        grow = downhill & (state.n_positive > n_min)
        dt = jnp.where(grow, jnp.minimum(state.dt * finc, dtmax), jnp.where(uphill, state.dt * fdec, state.dt))
        alpha = jnp.where(grow, state.alpha * fa, jnp.where(uphill, astart, state.alpha))
        n_positive = jnp.where(downhill, state.n_positive + 1, jnp.where(uphill, 0, state.n_positive))

        v = v + dt[graph][:, None] * force
        cv = cv + dt[:, None, None] * cell_force
        dr, dcell = dt[graph][:, None] * v, dt[:, None, None] * cv
        length = jnp.sqrt(dot(dr, dr, dcell, dcell))
        scale = jnp.where(length > maxstep, maxstep / jnp.where(length > maxstep, length, 1.0), 1.0)
        filter_positions = state.filter_positions + scale[graph][:, None] * dr
        # The cell coordinates are n L (ASE's exp_cell_factor = n), so L moves by dcell / n.
        cell_factor = jnp.maximum(system.n_node, 1).astype(dcell.dtype)
        log_deformation = state.log_deformation + (scale / cell_factor)[:, None, None] * dcell
        positions, cell = frechet.cartesian(filter_positions, log_deformation, state.reference_cell, graph)
        state = state._replace(
            system=moved(system, positions, cell, spec), filter_positions=filter_positions,
            log_deformation=log_deformation, velocity=v, cell_velocity=cv, dt=dt, alpha=alpha,
            n_positive=n_positive, steps=state.steps + 1,
        )
        return refresh(state)

    return init_fn, step_fn, refresh


def _norm(x):
    """Row norms, NaN-safe (zero rows have zero norm and a finite gradient)."""
    squared = jnp.sum(x * x, axis=-1)
    return jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)


def _row_norm_max(atom_force, system: System):
    """[G, 1]: the largest atom force row of each structure."""
    norms = jnp.where(system.node_mask, _norm(atom_force), 0.0)
    largest = jax.ops.segment_max(norms, system.node_graph, system.cell.shape[0])
    return jnp.maximum(largest, 0.0)[:, None]
