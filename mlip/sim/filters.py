"""What optimisers move: the relaxation state, its generalised coordinates, and the two
filters between them and the atoms (ASE's ``atoms`` and ``FrechetCellFilter(atoms)``).

An optimiser (mlip.sim.fire, mlip.sim.descent) sees only `Coordinates` and the generalised
forces (minus the gradient of the enthalpy E + pV with respect to them, for every structure of
a padded batch) and never the cell: a `CellFilter` maps coordinates to positions and cells and
forces to generalised forces. So any optimiser runs with or without the cell filter.

Constraints (mlip.sim.system.System.free, from ASE's FixAtoms and FixCartesian): a fixed
component has zero generalised force and does not move relative to the cell: fixed in space
when the cell is, carried along with a deforming cell (as ASE's filters do: they scale the
atoms with the new cell, then the constraint resets the fixed components to those values).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mlip.potential import PotentialOutput
from mlip.sim import frechet
from mlip.sim.engine import NESTED
from mlip.sim.neighbors import NeighborSpec
from mlip.sim.system import ATOM, GRAPH, System, moved


class Coordinates(NamedTuple):
    """Generalised coordinates (or forces, or velocities) of a padded batch.

    atoms: [N, 3], Å (forces: eV/Å): positions in the filter's frame (the undeformed cell's).
    cell: [G, 3, 3], the cell's coordinates: n log F for the Fréchet filter (dimensionless;
        forces in eV per atom); zero for the atoms-only filter.
    """

    atoms: jax.Array
    cell: jax.Array

    KINDS = {"atoms": ATOM, "cell": GRAPH}


class RelaxState(NamedTuple):
    """A relaxation of a padded batch (N atom slots, G structure slots).

    system: the structures. energy: [G] eV. forces: [N, 3] eV/Å (the potential's, before
    constraints). stress: [G, 3, 3] eV/Å^3 (ASE sign). steps: int32 [G]. fmax: [G] eV/Å, the
    largest row of the generalised forces. pressure: [G] eV/Å^3, the scalar pressure of the
    enthalpy. relax_cell: bool [G]. reference_cell: [G, 3, 3] Å, the cell at the start.
    coordinates, force: `Coordinates` and the generalised forces on them.
    optimizer: the optimiser's own state (mlip.sim.fire.FireState, ...).
    """

    system: System
    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    steps: jax.Array
    fmax: jax.Array
    pressure: jax.Array
    relax_cell: jax.Array
    reference_cell: jax.Array
    coordinates: Coordinates
    force: Coordinates
    optimizer: NamedTuple

    KINDS = {
        "energy": GRAPH, "forces": ATOM, "stress": GRAPH, "steps": GRAPH, "fmax": GRAPH, "pressure": GRAPH,
        "relax_cell": GRAPH, "reference_cell": GRAPH, "coordinates": NESTED, "force": NESTED, "optimizer": NESTED,
    }


class CellFilter(NamedTuple):
    """Between coordinates and atoms (all [G]-batched, jittable).

    start: (system) -> Coordinates of the structures as they are.
    forces: (PotentialOutput, RelaxState) -> generalised forces (Coordinates), constrained.
    place: (Coordinates, RelaxState) -> (positions [N, 3] Å, cell [G, 3, 3] Å, Coordinates):
        where the atoms and cells go, and the coordinates they then have (which differ from the
        given ones only for constrained atoms).
    """

    start: Callable
    forces: Callable
    place: Callable


def atoms_only() -> CellFilter:
    """The identity: coordinates are the positions, the cell does not move (ASE's optimiser
    on ``atoms``)."""

    def start(system: System) -> Coordinates:
        return Coordinates(system.positions, jnp.zeros_like(system.cell))

    def forces(out: PotentialOutput, state: RelaxState) -> Coordinates:
        return Coordinates(out.forces * state.system.free, jnp.zeros_like(state.system.cell))

    def place(coordinates: Coordinates, state: RelaxState):
        system = state.system
        positions = jnp.where(system.free > 0, coordinates.atoms, system.positions)
        return positions, system.cell, coordinates._replace(atoms=positions)

    return CellFilter(start, forces, place)


def frechet_cell() -> CellFilter:
    """ASE's FrechetCellFilter (mlip.sim.frechet), for the structures with ``relax_cell``; the
    others keep their cell."""

    def start(system: System) -> Coordinates:
        return Coordinates(system.positions, jnp.zeros_like(system.cell))

    def forces(out: PotentialOutput, state: RelaxState) -> Coordinates:
        system = state.system
        atom_force, cell_force = frechet.generalized_forces(
            out.forces * system.free, out.stress, system.cell, _log_deformation(state.coordinates, system),
            state.pressure, system.n_node, system.node_graph,
        )
        return Coordinates(atom_force, jnp.where(state.relax_cell[:, None, None], cell_force, 0.0))

    def place(coordinates: Coordinates, state: RelaxState):
        system = state.system
        log_deformation = _log_deformation(coordinates, system)
        positions, cell = frechet.cartesian(coordinates.atoms, log_deformation, state.reference_cell,
                                            system.node_graph)
        # Fixed components keep their previous coordinates, carried by the new deformation.
        carried, _ = frechet.cartesian(state.coordinates.atoms, log_deformation, state.reference_cell,
                                       system.node_graph)
        positions = jnp.where(system.free > 0, positions, carried)
        all_free = jnp.all(system.free > 0, axis=1, keepdims=True)
        inverse = jnp.linalg.inv(jnp.swapaxes(frechet.deformation(log_deformation), 1, 2))
        undeformed = jnp.einsum("ni,nij->nj", positions, inverse[system.node_graph])
        return positions, cell, coordinates._replace(atoms=jnp.where(all_free, coordinates.atoms, undeformed))

    return CellFilter(start, forces, place)


def _log_deformation(coordinates: Coordinates, system: System):
    """L = log F [G, 3, 3] from the cell coordinates n L (ASE's exp_cell_factor = n atoms)."""
    return coordinates.cell / jnp.maximum(system.n_node, 1).astype(coordinates.cell.dtype)[:, None, None]


def start(system: System, relax_cell, pressure, cell_filter: CellFilter, optimizer: NamedTuple) -> RelaxState:
    """A relaxation state at ``system`` (forces not yet evaluated: `refresher`). relax_cell:
    bool [G] (only structures periodic in 3-d relax their cell); pressure: [G] eV/Å^3."""
    n_graph, dtype = system.cell.shape[0], system.positions.dtype
    coordinates = cell_filter.start(system)
    zeros = jnp.zeros(n_graph, dtype)
    return RelaxState(
        system=system, energy=zeros, forces=jnp.zeros_like(system.positions), stress=jnp.zeros_like(system.cell),
        steps=jnp.zeros(n_graph, jnp.int32), fmax=zeros, pressure=jnp.asarray(pressure, dtype),
        relax_cell=relax_cell & jnp.all(system.pbc, axis=1) & system.graph_mask, reference_cell=system.cell,
        coordinates=coordinates, force=jax.tree.map(jnp.zeros_like, coordinates), optimizer=optimizer,
    )


def refresher(energy_fn: Callable[[System], PotentialOutput], cell_filter: CellFilter):
    """state -> state with energy, forces, stress, generalised forces and fmax at its positions."""

    def refresh(state: RelaxState) -> RelaxState:
        system = state.system
        out = energy_fn(system)
        state = state._replace(energy=out.energy, forces=out.forces, stress=out.stress)
        force = cell_filter.forces(out, state)
        atom_rows = jax.ops.segment_max(jnp.where(system.node_mask, _norm(force.atoms), 0.0), system.node_graph,
                                        system.cell.shape[0])
        fmax = jnp.maximum(jnp.maximum(atom_rows, 0.0), _norm(force.cell).max(axis=1))
        return state._replace(force=force, fmax=fmax)

    return refresh


def mover(spec: NeighborSpec, cell_filter: CellFilter):
    """(state, coordinates) -> state with the atoms and cells at ``coordinates`` and the
    neighbour list updated (forces not yet evaluated)."""

    def move(state: RelaxState, coordinates: Coordinates) -> RelaxState:
        positions, cell, coordinates = cell_filter.place(coordinates, state)
        return state._replace(system=moved(state.system, positions, cell, spec), coordinates=coordinates)

    return move


def enthalpy(state: RelaxState):
    """[G] eV: E + p V for structures relaxing their cell, E for the others."""
    volume = jnp.abs(jnp.linalg.det(state.system.cell))
    return state.energy + jnp.where(state.relax_cell, state.pressure * volume, 0.0)


def dot(a: Coordinates, b: Coordinates, system: System):
    """[G]: per-structure inner product over all generalised coordinates."""
    per_atom = jax.ops.segment_sum(jnp.sum(a.atoms * b.atoms, axis=1), system.node_graph, system.cell.shape[0])
    return per_atom + jnp.sum(a.cell * b.cell, axis=(1, 2))


def per_structure(values, system: System) -> Coordinates:
    """[G] values broadcast to Coordinates shapes ([N, 1] and [G, 1, 1])."""
    return Coordinates(values[system.node_graph][:, None], values[:, None, None])


def _norm(x):
    """Row norms over the last axis, NaN-safe (zero rows: zero norm, finite gradient)."""
    squared = jnp.sum(x * x, axis=-1)
    return jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
