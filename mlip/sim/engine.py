"""The engine protocol of mlip.sim: typed NamedTuples of functions (as optax's
GradientTransformation), over states that are frozen pytrees declaring their fields' kinds.

- `Dynamics(init, step, refresh)`: the device functions of one optimiser or integrator, built
  for an energy function and a neighbour-list spec (mlip.sim.fire.fire, mlip.sim.descent.descent,
  mlip.sim.integrators.nve, ...).
- `Engine`: everything the in-flight batcher (mlip.sim.batcher.run) needs to run a task over
  many structures: how to build the `Dynamics`, which per-structure arguments its ``init``
  takes, when a structure is done, what a finished structure's status is, what to log. The
  batcher depends on this type only (mlip.sim.relax and mlip.sim.md build one each).

States are NamedTuples (immutable pytrees) with a ``system`` field (mlip.sim.system.System),
``energy`` [G] eV, ``forces`` [N, 3] eV/Å, ``stress`` [G, 3, 3] eV/Å^3, ``steps`` int32 [G],
and a class attribute ``KINDS`` mapping every other field name to ATOM (first axis: atom slots
N), GRAPH (first axis: structure slots G) or NESTED (a state of its own, with its own KINDS:
an optimiser's variables inside a relaxation state). `kinds` flattens a state's fields to
dotted paths (``"optimizer.velocity"``), so that packing, slicing, freezing and finiteness
checks are written once for every state.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, NamedTuple

import ase
import jax
import jax.numpy as jnp

from mlip.sim.system import GRAPH, System

#: KINDS value of a field that holds a state of its own.
NESTED = "nested"

State = Any  # a NamedTuple with the fields and KINDS described in the module docstring


class Dynamics(NamedTuple):
    """Device functions of an optimiser or integrator (pure, jittable).

    init: (system, **options) -> state with its forces evaluated; options are the engine's
        per-structure arrays (`Engine.option_kinds`).
    step: state -> state, one step of every structure.
    refresh: state -> state with energy, forces and stress (and what derives from them)
        recomputed at its positions (after the batcher packs carried-over structures).
    """

    init: Callable[..., State]
    step: Callable[[State], State]
    refresh: Callable[[State], State]


def _nothing(atoms: ase.Atoms, record: dict) -> None:
    """Nothing to set on a finished structure."""


def _no_problem(log: list[dict], record: dict) -> None:
    """No check of a finished run."""
    return None


class Engine(NamedTuple):
    """A task for mlip.sim.batcher.run.

    key: hashable, the static configuration: engines with equal keys share compiled functions
        (per-structure values such as temperatures are options, not part of the key).
    dynamics: (energy_fn, spec) -> Dynamics.
    option_kinds: name -> ATOM | GRAPH of the per-structure arguments of Dynamics.init.
    options: (atoms, index in the input) -> {name: array} for one structure (host).
    done: state -> bool [G], structures that need no more steps (device).
    succeeded: record -> bool, whether a done structure reached its target (host).
    success_status: the status of a structure that succeeded.
    finalize: (atoms, record) -> None, sets what positions and cell do not carry (velocities).
    interval: steps between observations, or None (no log).
    observe: record -> dict, logged every ``interval`` steps and at the end.
    problem: (log, record) -> (status, message) or None: a judgement of a done structure
        from its log (MD: drift of the conserved energy).

    A record is one structure's slice of a state: System fields under their names, the
    state's fields under their `kinds` paths, as numpy arrays.
    """

    key: Hashable
    dynamics: Callable[..., Dynamics]
    option_kinds: Mapping[str, str]
    options: Callable[[ase.Atoms, int], dict]
    done: Callable[[State], jax.Array]
    succeeded: Callable[[dict], bool]
    success_status: str
    finalize: Callable[[ase.Atoms, dict], None] = _nothing
    interval: int | None = None
    observe: Callable[[dict], dict] | None = None
    problem: Callable[[list, dict], tuple[str, str] | None] = _no_problem


def kinds(state: State, prefix: str = "") -> dict[str, str]:
    """{dotted path: ATOM | GRAPH} of every array field of ``state`` (nested states
    flattened; the system is not included)."""
    out = {}
    for name, kind in type(state).KINDS.items():
        if kind == NESTED:
            out.update(kinds(getattr(state, name), f"{prefix}{name}."))
        else:
            out[prefix + name] = kind
    return out


def get(state: State, path: str):
    """The field of ``state`` at a dotted ``path``."""
    for name in path.split("."):
        state = getattr(state, name)
    return state


def replace(state: State, values: Mapping[str, Any]) -> State:
    """``state`` with the fields at the dotted paths of ``values`` replaced."""
    direct = {k: v for k, v in values.items() if "." not in k}
    nested: dict[str, dict] = {}
    for path, value in values.items():
        if "." in path:
            head, rest = path.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, inner in nested.items():
        direct[head] = replace(getattr(state, head), inner)
    return state._replace(**direct)


def kick(velocities, acceleration, dt):
    """velocities + dt * acceleration; dt broadcasts over rows ([rows] or scalar). The velocity
    half of every integrator and of FIRE."""
    return velocities + _rows(dt, velocities) * acceleration


def drift(positions, velocities, dt):
    """positions + dt * velocities; the position half of every integrator and of FIRE."""
    return positions + _rows(dt, positions) * velocities


def _rows(dt, like):
    """``dt`` shaped to broadcast against ``like`` along its first axis."""
    dt = jnp.asarray(dt)
    return dt.reshape(dt.shape + (1,) * (like.ndim - dt.ndim)) if dt.ndim else dt


def select(active, new: State, old: State) -> State:
    """``new`` for the structures where ``active`` (bool [G]) holds, ``old`` elsewhere: every
    per-atom and per-structure field, the system's included (its neighbour list is ``new``'s)."""
    graph = new.system.node_graph

    def pick(kind, a, b):
        mask = active if kind == GRAPH else active[graph]
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    system = new.system._replace(**{
        k: pick(kind, getattr(new.system, k), getattr(old.system, k)) for k, kind in System.KINDS.items()
    })
    fields = {path: pick(kind, get(new, path), get(old, path)) for path, kind in kinds(new).items()}
    return replace(new, fields)._replace(system=system)
