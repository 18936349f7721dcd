"""In-flight batching: a stream of structures of different sizes runs through one padded batch
of fixed shape (atom, structure and edge budgets), so the simulation compiles once.

Structures enter in input order while they fit the budget. The device runs many steps per call
(a ``lax.while_loop``), freezing structures that have finished, and returns when enough of them
have finished to be worth refilling (``refill_fraction`` of the batch, or ``chunk`` steps).
The host then takes the finished structures out, packs waiting ones into the freed slots and
carries the state of the others (positions, velocities, optimiser fields) over unchanged.

At the tail of a run, once nothing waits, the few slow structures left (a relaxation that does
not converge runs all its steps) would step the whole padded batch for each of their steps: on
a CPU, where a step costs in proportion to the atom slots, the batch then shrinks to them
(``Budget.shrink``), for one compilation of the smaller shape, from a ladder of powers of two
that the persistent compilation cache keeps between runs.

Each structure is first validated as the readers validate files (a structure with no atoms, NaN
positions, a singular cell or overlapping atoms fails alone, status INVALID), and placed
(mlip.sim.system.place: reduced cell, wrapped and centred atoms); results come back in the
user's cell and images.

Nothing is silently wrong: a neighbour list that outgrows its capacity (or a cell that needs
more periodic images) stops the loop before the step is committed; the host grows the list by
``growth`` and recompiles (only then). A structure that alone needs more edges than the budget,
more atoms than the budget, or whose energy, forces or positions become non-finite (atoms
flying apart under a broken potential) leaves the batch with a failure status and a message.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from typing import Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from tqdm.auto import tqdm

from mlip.data.frame import frame_from_atoms, validate_frame
from mlip.data.neighbors import edge_vectors, neighbor_list
from mlip.errors import DataError, MlipError
from mlip.nn.dispersion import d3_tables, dispersion_params
from mlip.potential import Potential, PotentialOutput
from mlip.runtime import release_compiled_programs_if_needed
from mlip.sim import neighbors as nl
from mlip.sim.engine import Engine, get, kinds, replace, select
from mlip.sim.system import ATOM, System, compute_system, make_system, place, restore, stack, unstack

#: Statuses of a finished structure.
CONVERGED, UNCONVERGED, COMPLETED = "converged", "not converged", "completed"
NON_FINITE, TOO_LARGE, INVALID = "failed: non-finite", "failed: too large", "failed: invalid structure"
DRIFT = "failed: energy drift"

#: At the tail of a run the batch shrinks once its running structures fill at most 1/SHRINK of
#: its atom slots (Budget.shrink); the new atom slots are the next power of two (>= MIN_SLOTS).
SHRINK, MIN_SLOTS = 4, 16

#: The first image box is searched for a radius this much longer than the list's, so that a cell
#: shrinking by up to 5% (a cell relaxation, NPT) keeps it: a larger box is a recompilation, and
#: at D3's 32 Å radius a 5.43 Å Si cell needs one more image after shrinking by 1%.
IMAGE_MARGIN = 1.05


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of the padded batch.

    max_atoms: atom slots. max_structures: structure slots. max_edges: edge slots (None: the
    densest input structure's edges per atom times max_atoms, times ``growth``). growth: factor
    by which the edge capacity grows when it overflows. refill_fraction: the device returns to
    the host for refilling when this fraction of the batch has finished. chunk: most steps per
    device call (progress updates; MD logging interval). shrink: when nothing waits and the
    running structures fill at most 1/SHRINK of the atom slots, repack them into a batch of
    their size (None: on CPUs only; on a GPU padded slots cost little and a compilation much).
    """

    max_atoms: int = 2048
    max_structures: int = 256
    max_edges: int | None = None
    growth: float = 1.25
    refill_fraction: float = 0.25
    chunk: int = 100
    shrink: bool | None = None

    def __post_init__(self):
        if self.max_atoms < 1 or self.max_structures < 1 or self.chunk < 1 or not self.growth > 1:
            raise MlipError(f"invalid batch budget {self}")


@dataclasses.dataclass
class Result:
    """One structure's outcome, in input order.

    atoms: the final structure (ase.Atoms with a SinglePointCalculator holding energy, forces
    and, for periodic cells, stress). energy: eV. forces: [n, 3] eV/Å. stress: [3, 3] eV/Å^3
    (ASE sign) or None when not periodic in 3-d. steps: steps taken. converged: reached the
    target (relaxation) or ran all steps (MD). status: CONVERGED, UNCONVERGED, COMPLETED or
    "failed: ..."; message: what went wrong. log: per-chunk observations (MD).
    """

    atoms: ase.Atoms
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    steps: int
    converged: bool
    status: str
    message: str = ""
    log: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Slot:
    index: int
    record: dict  # System fields (+ engine fields once started)
    started: bool = False


def run(
    potential: Potential,
    structures: Sequence[ase.Atoms],
    engine: Engine,
    *,
    skin: float = 0.5,
    budget: Budget = Budget(),
    progress: bool = False,
    compile_only: bool = False,
    dispersion: str | None = None,
) -> list[Result]:
    """Run ``engine`` (mlip.sim.engine.Engine: mlip.sim.relax's and mlip.sim.md's) over all
    ``structures`` (ase.Atoms); one Result per structure, in input order.

    The potential's runtime choices (matmul precision, kernel, edge chunk) hold, as at every
    call site (mlip.runtime). ``compile_only``: take no step; compile the device functions
    the run would use (into the persistent compilation cache when it is on: `mlip warmup`)
    and return an empty list. ``dispersion``: None, or "d3bj" to add D3(BJ) dispersion with
    PBE parameters (mlip.nn.dispersion) to the energy, forces and stress: the device list then
    reaches the D3 cutoff (31.75 Å + skin), and the model reads the pairs within its own.
    """
    structures = list(structures)
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, ase.Atoms):
            raise MlipError(f"structure {k}: expected ase.Atoms, got {type(atoms).__name__}")
        try:
            potential.check_species(atoms.numbers[(atoms.numbers >= 1) & (atoms.numbers <= 118)])
        except MlipError as exc:
            raise MlipError(f"structure {k}: {exc}") from None
    d3 = None
    if dispersion is not None:
        d3 = dispersion_params(dispersion)
        d3_tables(potential.config.species)  # an element without D3 data fails here, not in a trace
    release_compiled_programs_if_needed()
    runner = _Runner(potential, engine, skin, budget, structures, d3)
    if compile_only:
        runner.compile()
        return []
    return runner.run(progress)


class _Runner:
    """The host loop of `run` (one instance per call)."""

    def __init__(self, potential, engine, skin, budget, structures, dispersion):
        self.potential, self.engine, self.budget, self.dispersion = potential, engine, budget, dispersion
        self.dtype = jnp.dtype(potential.dtype)
        self.structures = structures
        self.results: list[Result | None] = [None] * len(structures)
        self.logs: dict[int, list] = {}  # per-chunk observations of running structures
        cutoff = potential.config.r_cut  # the model's; the list's reaches D3's when it is on
        outer = max(cutoff, dispersion.cutoff) if dispersion is not None else cutoff
        self.invalid = {k: problem for k, a in enumerate(structures) if (problem := _invalid(a, k))}
        placed = [place(a) if k not in self.invalid else (None, None) for k, a in enumerate(structures)]
        self.records = [rec for rec, _ in placed]
        self.placements = [placement for _, placement in placed]
        self.edges, self.within = _edge_counts(self.records, outer + skin, cutoff)
        self.sizes = np.array([0 if rec is None else len(rec["numbers"]) for rec in self.records], np.int64)
        # The batch is no larger than the whole input needs (a few structures pad to little).
        atom_slots = int(min(budget.max_atoms, max(self.sizes.sum(), 1)))
        everything = range(len(structures))
        self.max_edges = budget.max_edges or self._edge_slots(self.edges, everything, atom_slots)
        images = np.max([nl.images_needed(r["cell"], r["pbc"], (outer + skin) * IMAGE_MARGIN)
                         for r in self.records if r is not None] or [[0, 0, 0]], axis=0)
        self.spec = nl.NeighborSpec(
            outer, skin, self.max_edges, max(int(self.sizes.max(initial=0)), 1), tuple(int(n) for n in images),
            active_capacity=min(self._edge_slots(self.within, everything, atom_slots), self.max_edges),
            active_cutoff=cutoff,
        )
        valid = len(structures) - len(self.invalid)
        self.shape = (atom_slots + 1, min(budget.max_structures, max(valid, 1)) + 1)
        on_cpu = jax.default_backend() == "cpu"
        self.shrink = on_cpu if budget.shrink is None else budget.shrink

    def _edge_slots(self, counts, indices, atom_slots: int) -> int:
        """Edge slots for ``atom_slots`` atoms at the density (edges per atom) of the densest
        of the structures ``indices``, with room to grow."""
        density = max((counts[k] / max(self.sizes[k], 1) for k in indices), default=1.0)
        return max(1, math.ceil(density * atom_slots * self.budget.growth))

    # -- host loop -------------------------------------------------------------------------

    def run(self, progress: bool) -> list[Result]:
        queue = collections.deque()
        for k, atoms in enumerate(self.structures):
            if k in self.invalid:
                self._fail(k, {}, INVALID, self.invalid[k])
            elif self._too_large(k):
                self._fail(k, self.records[k], TOO_LARGE, f"{len(atoms)} atoms and {self.edges[k]} edges "
                           f"exceed the batch budget ({self.budget.max_atoms} atoms, {self.max_edges} edges)")
            else:
                queue.append(k)
        bar = tqdm(total=len(self.structures), desc="structures", unit="struct", disable=not progress)
        bar.update(sum(r is not None for r in self.results))
        start, slots, state = time.perf_counter(), [], None
        while queue or slots:
            if state is None:  # (re)pack: waiting structures take the free slots
                slots = slots + self._admit(slots, queue)
                state = self._pack(slots)
            state = self._advance(state, queue, sum(self.results[s.index] is not None for s in slots))
            slots, state, finished = self._harvest(state, slots, bool(queue))
            if state is not None and not queue and (running := self._shrunk(slots)) is not None:
                slots, state = running, None
            bar.update(finished)
            bar.set_postfix_str(f"{bar.n / (time.perf_counter() - start):.2f} structures/s", refresh=False)
        bar.close()
        return self.results

    def compile(self) -> None:
        """Compile the device functions of the first batch without stepping: packing it runs
        ``blank`` and ``start``; ``chunk`` is compiled alone. Later batches keep its shape, so
        they reuse these (unless the neighbour list outgrows its capacity during the run)."""
        queue = collections.deque(k for k in range(len(self.structures))
                                  if k not in self.invalid and not self._too_large(k))
        if not queue:
            return
        slots = self._admit([], queue)
        state = self._pack(slots)
        fns = _compiled(self.engine, self.potential.config, self.spec, self.potential.runtime, self.dispersion)
        fns.chunk.lower(self.potential.params, state, self.budget.chunk, self._min_done(len(slots), queue)).compile()

    def _shrunk(self, slots) -> list[_Slot] | None:
        """At the tail (nothing waits): if the running structures fill at most 1/SHRINK of the
        atom slots, size the batch (shape and edge slots) for them alone and return their
        slots, for the caller to repack them, carrying their state over; else None."""
        running = [s for s in slots if self.results[s.index] is None]
        indices = [s.index for s in running]
        atoms = int(sum(self.sizes[k] for k in indices))
        if not self.shrink or not running or atoms * SHRINK > self.shape[0] - 1:
            return None
        atom_slots = max(MIN_SLOTS, 1 << (atoms - 1).bit_length())
        if atom_slots >= self.shape[0] - 1:
            return None  # already as small as the ladder goes
        capacity = self.budget.max_edges or min(self.spec.capacity, self._edge_slots(self.edges, indices, atom_slots))
        active = self.spec.active_capacity
        if active is not None:
            active = min(active, self._edge_slots(self.within, indices, atom_slots), capacity)
        self.spec = dataclasses.replace(self.spec, capacity=capacity, active_capacity=active)
        self.shape = (atom_slots + 1, len(running) + 1)
        return running

    def _too_large(self, k: int) -> bool:
        return len(self.structures[k]) > self.budget.max_atoms or self.edges[k] > self.max_edges

    def _min_done(self, real: int, queue, done: int = 0) -> int:
        """Finished structures at which a chunk returns to the host: enough to refill while
        structures wait; else, when the batch may shrink, one more than the ``done`` ones
        (each return checks whether it should), else all ``real`` ones."""
        if queue:
            return max(1, math.ceil(self.budget.refill_fraction * real))
        return min(done + 1, real) if self.shrink else real

    def _admit(self, slots, queue) -> list[_Slot]:
        added = []
        atoms = sum(len(s.record["numbers"]) for s in slots)
        edges = sum(self.edges[s.index] for s in slots)
        while queue and len(slots) + len(added) < self.budget.max_structures:
            k = queue[0]
            if atoms + len(self.structures[k]) > self.budget.max_atoms or edges + self.edges[k] > self.max_edges:
                break
            queue.popleft()
            atoms, edges = atoms + len(self.structures[k]), edges + self.edges[k]
            added.append(_Slot(k, dict(self.records[k])))
        return added

    def _pack(self, slots: list[_Slot]):
        """A device state for ``slots``: started ones (first) keep their fields, new ones start."""
        n_node, n_graph = self.shape
        sizes = [len(s.record["numbers"]) for s in slots]
        arrays = stack([s.record for s in slots], System.KINDS, n_node, n_graph)
        while True:
            system = make_system(arrays, sizes, self.spec, self.dtype)
            if not bool(system.neighbors.overflow):
                break
            self.spec = nl.grown(self.spec, system.neighbors, self.budget.growth)
        options = stack([self.engine.options(self.structures[s.index], s.index) for s in slots],
                        self.engine.option_kinds, n_node, n_graph)
        fns = _compiled(self.engine, self.potential.config, self.spec, self.potential.runtime, self.dispersion)
        fresh = fns.blank(system, options)
        started = [s for s in slots if s.started]
        carried = fresh
        if started:
            fields = stack([s.record for s in started], kinds(fresh), n_node, n_graph)
            carried = replace(fresh, {k: jnp.asarray(v, get(fresh, k).dtype) for k, v in fields.items()})
        is_new = np.arange(n_graph) >= len(started)
        state = fns.start(self.potential.params, fresh, carried, jnp.asarray(is_new))
        if self.engine.observe is not None:  # the log starts at step 0, as ASE's MDLogger's
            for slot, rec in zip(slots, self._records(state, slots)):
                if not slot.started:
                    self._log(slot.index, rec)
        return state

    def _advance(self, state, queue, done: int):
        """Run one chunk on the device (``done``: structures of the batch already finished);
        grow the neighbour list and retry on overflow."""
        min_done = self._min_done(int(np.sum(np.asarray(state.system.graph_mask))), queue, done)
        while True:
            fns = _compiled(self.engine, self.potential.config, self.spec, self.potential.runtime, self.dispersion)
            state = fns.chunk(self.potential.params, state, self.budget.chunk, min_done)
            neighbors = state.system.neighbors
            if not bool(neighbors.overflow):
                return state
            self.spec = nl.grown(self.spec, neighbors, self.budget.growth)
            system = state.system
            grown = _padded(self.spec, neighbors, system.positions, system.cell, system.topology)
            state = state._replace(system=system._replace(neighbors=grown))

    def _harvest(self, state, slots, refill: bool):
        """Record finished structures; returns the remaining slots, the state to continue
        with (None when the batch must be repacked) and how many finished."""
        records = self._records(state, slots)
        done = np.asarray(_finished(self.engine, state))[: len(slots)]
        finite = np.asarray(_finite(state))[: len(slots)]
        finished = 0
        for g, (slot, rec) in enumerate(zip(slots, records)):
            if self.results[slot.index] is not None:
                continue  # finished earlier, frozen until the batch is repacked
            slot.record, slot.started = rec, True
            if self.engine.observe is not None and (rec["steps"] % self.engine.interval == 0 or done[g]):
                self._log(slot.index, rec)
            if not finite[g]:
                self._fail(slot.index, rec, NON_FINITE, "energies, forces, positions or velocities became non-finite "
                           "(atoms flying apart or collapsing under the potential)")
                finished += 1
            elif done[g]:
                self._finish(slot.index, rec)
                finished += 1
        running = [s for s in slots if self.results[s.index] is None]
        if not running or (refill and finished):
            return running, None, finished  # repack (or stop): finished structures leave
        return slots, state, finished

    def _records(self, state, slots) -> list[dict]:
        """The per-structure records (System and engine fields, numpy) of ``slots``."""
        fields = {**System.KINDS, **kinds(state)}
        arrays = {k: np.asarray(getattr(state.system, k) if k in System.KINDS else get(state, k)) for k in fields}
        return unstack(arrays, fields, [len(s.record["numbers"]) for s in slots])

    def _log(self, index: int, rec: dict) -> None:
        entries = self.logs.setdefault(index, [])
        if not entries or entries[-1]["steps"] != rec["steps"]:
            entries.append(self.engine.observe(rec))

    # -- results ---------------------------------------------------------------------------

    def _finish(self, index, rec):
        # An engine may judge a finished run by its log (MD: the drift of the conserved energy).
        problem = self.engine.problem(self.logs.get(index, []), rec)
        if problem is not None:
            return self._fail(index, rec, problem[0], problem[1])
        converged = bool(self.engine.succeeded(rec))
        status = self.engine.success_status if converged else UNCONVERGED
        self.results[index] = self._result(index, rec, status, converged, "")

    def _fail(self, index, rec, status, message):
        self.results[index] = self._result(index, rec, status, False, message)

    def _result(self, index, rec, status, converged, message) -> Result:
        original = self.structures[index]
        atoms = original.copy()
        n = len(atoms)
        forces = np.asarray(rec.get("forces", np.full((n, 3), np.nan)), np.float64)
        energy = float(rec.get("energy", np.nan))
        stress = np.asarray(rec["stress"], np.float64) if "stress" in rec and atoms.pbc.all() else None
        if "steps" in rec:
            positions, cell = restore(rec["positions"], rec["cell"], self.placements[index])
            atoms.positions = positions
            if atoms.pbc.all():
                atoms.set_cell(cell, scale_atoms=False)
            self.engine.finalize(atoms, rec)
            results = {"energy": energy, "free_energy": energy, "forces": forces}
            if stress is not None:
                results["stress"] = full_3x3_to_voigt_6_stress(stress)
            atoms.calc = SinglePointCalculator(atoms, **results)
        return Result(atoms, energy, forces, stress, int(rec.get("steps", 0)), converged, status, message,
                      self.logs.pop(index, []))


def _edge_counts(records: list[dict | None], radius: float, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """int [S] each: edges of every record within ``radius`` (the list's: cutoff + skin) and
    within ``cutoff`` (the model's), Å; zero for None (an invalid structure)."""
    edges, within = np.zeros((2, len(records)), np.int64)
    for k, rec in enumerate(records):
        if rec is not None:
            listed = neighbor_list(rec["positions"], rec["cell"], rec["pbc"], radius)
            lengths = np.linalg.norm(edge_vectors(rec["positions"], rec["cell"], listed), axis=1)
            edges[k], within[k] = len(lengths), np.sum(lengths < cutoff)
    return edges, within


def _invalid(atoms: ase.Atoms, index: int) -> str | None:
    """What makes structure ``index`` unfit to simulate, as the readers check files (no atoms,
    NaN positions, a singular cell, overlapping atoms...), or None."""
    try:
        validate_frame(frame_from_atoms(atoms, index=index))
    except DataError as exc:
        return exc.problem
    return None


# -- device functions ------------------------------------------------------------------------


def _finite(state):
    """bool [G]: every floating field of each structure (positions, cell and all of the
    engine state's fields: energies, forces, velocities, ...) is finite."""
    system = state.system
    fields = {**{k: (kind, getattr(system, k)) for k, kind in System.KINDS.items()},
              **{k: (kind, get(state, k)) for k, kind in kinds(state).items()}}
    ok = jnp.ones(system.cell.shape[0], bool)
    for kind, array in fields.values():
        if not jnp.issubdtype(array.dtype, jnp.floating):
            continue
        rows = jnp.all(jnp.isfinite(array).reshape(array.shape[0], -1), axis=1)
        if kind == ATOM:  # padding atoms do not count; a structure fails with any of its atoms
            rows = rows | ~system.node_mask
            rows = jax.ops.segment_min(rows.astype(jnp.int32), system.node_graph, len(ok)) > 0
        ok = ok & rows
    return ok


def _finished(engine, state):
    """bool [G]: real structures that need no more steps (done, or failed)."""
    return state.system.graph_mask & (engine.done(state) | ~_finite(state))


def _no_forces(system: System) -> PotentialOutput:
    """Zero energy, forces and stress for every slot (see `_Functions.blank`)."""
    zeros = jnp.zeros(system.cell.shape[0], system.positions.dtype)
    return PotentialOutput(zeros, jnp.zeros_like(system.masses), jnp.zeros_like(system.positions),
                           jnp.zeros_like(system.cell), system.graph_mask)


class _Functions:
    """The jitted device functions of one (engine, model config, neighbour spec, runtime,
    dispersion parameters or None)."""

    def __init__(self, engine: Engine, config, spec, runtime, dispersion):
        def build(params):
            energy_fn = functools.partial(compute_system, config, params, runtime=runtime, dispersion=dispersion)
            return engine.dynamics(energy_fn, spec)

        def blank(system, options):
            # init with a stand-in potential: every field but the forces, without tracing
            # the model; `start` evaluates the real one once, after merging.
            return engine.dynamics(_no_forces, spec).init(system, **options)

        def start(params, fresh, carried, is_new):
            return build(params).refresh(select(is_new, fresh, carried))

        def chunk(params, state, limit, min_done):
            step_fn = build(params).step

            def cond(carry):
                state, i, overflow = carry
                done = _finished(engine, state)
                running = state.system.graph_mask & ~done
                # An engine that logs every k steps (MD) stops the chunk where a running
                # structure reaches a multiple of k, so a chunk cut short (overflow, refill)
                # never shifts the log.
                interval = engine.interval
                at_boundary = jnp.asarray(False) if interval is None else (i > 0) & jnp.any(running & (state.steps % interval == 0))
                return ~overflow & (i < limit) & (jnp.sum(done) < min_done) & jnp.any(running) & ~at_boundary

            def body(carry):
                state, i, _ = carry
                new = select(~_finished(engine, state), step_fn(state), state)
                overflow = new.system.neighbors.overflow
                # On overflow keep the last good state, flagged with what the list needed.
                needed = new.system.neighbors
                flagged = state._replace(system=state.system._replace(neighbors=state.system.neighbors._replace(
                    count=needed.count, graph_count=needed.graph_count, images=needed.images,
                    active_count=needed.active_count, overflow=overflow)))
                state = jax.tree.map(lambda a, b: jnp.where(overflow, a, b), flagged, new)
                return state, i + 1, overflow

            state, _, _ = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32), jnp.zeros((), bool)))
            return state

        self.blank, self.start, self.chunk = jax.jit(blank), jax.jit(start), jax.jit(chunk)


_padded = jax.jit(nl.padded, static_argnums=0)


class _Keyed:
    """An engine hashed and compared by its ``key`` (its functions are fresh closures on every
    call of mlip.sim.relax / md; equal keys mean equal functions)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __hash__(self):
        return hash(self.engine.key)

    def __eq__(self, other):
        return isinstance(other, _Keyed) and self.engine.key == other.engine.key


def _compiled(engine: Engine, config, spec, runtime, dispersion) -> _Functions:
    """The compiled device functions of ``engine`` (cached by its key)."""
    return _compiled_by_key(_Keyed(engine), config, spec, runtime, dispersion)


@functools.lru_cache(maxsize=32)
def _compiled_by_key(keyed: _Keyed, config, spec, runtime, dispersion) -> _Functions:
    return _Functions(keyed.engine, config, spec, runtime, dispersion)
