"""Batched FIRE: ASE's ``FIRE(filter)`` for every structure of a padded batch at once, step for
step, over the generalised coordinates of a cell filter (mlip.sim.filters: the atoms alone, or
ASE's FrechetCellFilter).

Each structure keeps its own FIRE time step, mixing parameter and count of downhill steps, and
its step is capped at ``maxstep`` in the norm over all its degrees of freedom (atoms and cell),
as ASE does for one structure. A structure has converged when every row of its generalised
forces is shorter than ``fmax``: ASE's criterion.

Units: FIRE's time step and velocities are in ASE's optimiser units (dt = 0.1 at the start,
unit masses), which only scale the path, not the minimum. The velocity and position updates
are the integrators' kick and drift (mlip.sim.engine).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mlip.potential import PotentialOutput
from mlip.sim import filters
from mlip.sim.engine import NESTED, Dynamics, drift, kick
from mlip.sim.filters import Coordinates, RelaxState
from mlip.sim.neighbors import NeighborSpec
from mlip.sim.system import GRAPH, System


class FireState(NamedTuple):
    """FIRE's variables (G structure slots).

    velocity: Coordinates, FIRE's velocities of the generalised coordinates.
    dt: [G] FIRE time step. alpha: [G] mixing parameter. n_positive: int32 [G], downhill
    steps since the last uphill one.
    """

    velocity: Coordinates
    dt: jax.Array
    alpha: jax.Array
    n_positive: jax.Array

    KINDS = {"velocity": NESTED, "dt": GRAPH, "alpha": GRAPH, "n_positive": GRAPH}


def fire(
    energy_fn: Callable[[System], PotentialOutput],
    spec: NeighborSpec,
    cell_filter: filters.CellFilter,
    *,
    dt_start: float = 0.1,
    maxstep: float = 0.2,
    dtmax: float = 1.0,
    n_min: int = 5,
    finc: float = 1.1,
    fdec: float = 0.5,
    astart: float = 0.1,
    fa: float = 0.99,
) -> Dynamics:
    """Batched FIRE through ``cell_filter``; the parameters are ASE's FIRE defaults.

    init(system, relax_cell: bool [G], pressure: [G] eV/Å^3) -> RelaxState, forces evaluated
    (the neighbour list of ``system`` must be current); step(state) -> RelaxState.
    """
    refresh = filters.refresher(energy_fn, cell_filter)
    move = filters.mover(spec, cell_filter)

    def init(system: System, relax_cell, pressure) -> RelaxState:
        n_graph, dtype = system.cell.shape[0], system.positions.dtype
        velocity = Coordinates(jnp.zeros_like(system.positions), jnp.zeros_like(system.cell))
        optimizer = FireState(velocity, jnp.full(n_graph, dt_start, dtype), jnp.full(n_graph, astart, dtype),
                              jnp.zeros(n_graph, jnp.int32))
        return refresh(filters.start(system, relax_cell, pressure, cell_filter, optimizer))

    def step(state: RelaxState) -> RelaxState:
        system, opt, force = state.system, state.optimizer, state.force
        v = opt.velocity
        vf = filters.dot(force, v, system)
        # ASE starts with zero velocity and no mixing or time-step update on the first step.
        started = state.steps > 0
        downhill = started & (vf > 0.0)
        uphill = started & ~(vf > 0.0)
        force_norm = jnp.sqrt(filters.dot(force, force, system))
        ratio = jnp.sqrt(filters.dot(v, v, system)) / jnp.where(downhill, force_norm, 1.0)
        mix = jnp.where(downhill, opt.alpha, 0.0)
        keep = jnp.where(uphill, 0.0, 1.0 - mix)  # uphill: velocity reset to zero
        keep, mixed = filters.per_structure(keep, system), filters.per_structure(mix * ratio, system)
        v = jax.tree.map(lambda v, f, k, m: k * v + m * f, v, force, keep, mixed)
        grow = downhill & (opt.n_positive > n_min)
        dt = jnp.where(grow, jnp.minimum(opt.dt * finc, dtmax), jnp.where(uphill, opt.dt * fdec, opt.dt))
        alpha = jnp.where(grow, opt.alpha * fa, jnp.where(uphill, astart, opt.alpha))
        n_positive = jnp.where(downhill, opt.n_positive + 1, jnp.where(uphill, 0, opt.n_positive))

        rows = filters.per_structure(dt, system)
        v = jax.tree.map(kick, v, force, rows)
        dr = jax.tree.map(lambda v, dt: dt * v, v, rows)
        length = jnp.sqrt(filters.dot(dr, dr, system))
        scale = jnp.where(length > maxstep, maxstep / jnp.where(length > maxstep, length, 1.0), 1.0)
        coordinates = jax.tree.map(drift, state.coordinates, v, filters.per_structure(scale * dt, system))
        state = move(state, coordinates)
        state = state._replace(optimizer=FireState(v, dt, alpha, n_positive), steps=state.steps + 1)
        return refresh(state)

    return Dynamics(init, step, refresh)
