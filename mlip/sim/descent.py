"""Batched steepest descent with a backtracking (Armijo) line search, over the generalised
coordinates of a cell filter (mlip.sim.filters), for every structure of a padded batch.

Each step tries x + a g (g the generalised forces, minus the gradient of the enthalpy E + pV)
with the structure's own step size a, capped so that |a g| <= ``maxstep`` (Å in the norm over
all coordinates). The trial is accepted when the enthalpy falls by at least ``c a |g|^2``
(Armijo's condition), and the step size then grows by ``grow``; otherwise the structure stays
where it was and its step size shrinks by ``shrink``. Every trial costs one force evaluation
and counts as a step. Slower than FIRE on most structures, but it never goes uphill: a second
optimiser on the same engine protocol, run by the same batcher.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mlip.potential import PotentialOutput
from mlip.sim import filters
from mlip.sim.engine import Dynamics, select
from mlip.sim.filters import RelaxState
from mlip.sim.neighbors import NeighborSpec
from mlip.sim.system import GRAPH, System, moved


class DescentState(NamedTuple):
    """step_size: [G], Å^2/eV (a displacement per unit of force). enthalpy: [G] eV, at the
    current (accepted) coordinates."""

    step_size: jax.Array
    enthalpy: jax.Array

    KINDS = {"step_size": GRAPH, "enthalpy": GRAPH}


def descent(energy_fn: Callable[[System], PotentialOutput], spec: NeighborSpec, cell_filter: filters.CellFilter, *,
            step_size: float = 0.05, maxstep: float = 0.2, armijo: float = 1e-4, grow: float = 1.25,
            shrink: float = 0.5) -> Dynamics:
    """Steepest descent with backtracking; init and step as mlip.sim.fire.fire's. step_size:
    the first step size, Å^2/eV; maxstep: Å; armijo: the sufficient-decrease fraction."""
    refresh_forces = filters.refresher(energy_fn, cell_filter)
    move = filters.mover(spec, cell_filter)

    def refresh(state: RelaxState) -> RelaxState:
        state = refresh_forces(state)
        return state._replace(optimizer=state.optimizer._replace(enthalpy=filters.enthalpy(state)))

    def init(system: System, relax_cell, pressure) -> RelaxState:
        n_graph, dtype = system.cell.shape[0], system.positions.dtype
        optimizer = DescentState(jnp.full(n_graph, step_size, dtype), jnp.zeros(n_graph, dtype))
        return refresh(filters.start(system, relax_cell, pressure, cell_filter, optimizer))

    def step(state: RelaxState) -> RelaxState:
        system, opt = state.system, state.optimizer
        squared = filters.dot(state.force, state.force, system)
        norm = jnp.sqrt(squared)
        size = jnp.minimum(opt.step_size, maxstep / jnp.where(norm > 0, norm, 1.0))
        rows = filters.per_structure(size, system)
        trial = refresh(move(state, jax.tree.map(lambda x, g, a: x + a * g, state.coordinates, state.force, rows)))
        accept = trial.optimizer.enthalpy <= opt.enthalpy - armijo * size * squared
        state = select(accept, trial, state)
        # The trial's neighbour list holds for the trial positions; recheck it for the
        # structures that stayed.
        state = state._replace(system=moved(state.system, state.system.positions, state.system.cell, spec))
        step_size = jnp.where(accept, opt.step_size * grow, opt.step_size * shrink)
        return state._replace(optimizer=state.optimizer._replace(step_size=step_size), steps=state.steps + 1)

    return Dynamics(init, step, refresh)
