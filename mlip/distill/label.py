"""Labelling with a teacher: each seed is relaxed, perturbed and heated by the teacher, and
the frames it computes along the way become training data.

Per seed (`label_seed`), with the teacher as the ASE calculator:

1. FIRE (with ASE's FrechetCellFilter for periodic cells) for up to ``relax_steps`` steps,
   keeping every ``relax_keep_every``-th step and the last: the path from a guessed
   structure down to the teacher's minimum.
2. ``perturbations`` copies of the relaxed structure, each strained (symmetric, up to
   ``strain``) and rattled (Gaussian, sigma drawn in ``rattle`` Å).
3. Langevin MD at a temperature drawn in ``md_temperature`` K, keeping every
   ``md_keep_every``-th of ``md_steps`` steps.

Every kept frame carries the teacher's energy (eV), forces (eV/Å) and stress (eV/Å^3, ASE
sign) and its provenance in ``Frame.info``: ``seed_id``, ``origin`` (how the seed was made),
``method`` (how this frame was made), ``teacher`` and ``teacher_version``. `Filters` drop
garbage labels, counted by reason.

`label` runs the seeds in several processes and appends the results to a compact
``mlip-shards`` directory (`mlip.data.shards`) whose index ``meta`` records the teacher, the
recipe, the filters, the seeds done and the drop counts. Each shard is written atomically and
followed by a rewritten index, so an interrupted run loses at most the seeds in flight, and
``resume=True`` skips every seed already done. The directory is a training dataset as it
stands (``data.train: DIR``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import shutil
import zlib
from pathlib import Path
from typing import Sequence

import ase
import numpy as np
from tqdm.auto import tqdm

from mlip.data.frame import Frame, make_frame
from mlip.data.shards import INDEX_FILE, ShardedDataset, ShardWriter
from mlip.distill.chemistry import min_bond_ratio
from mlip.distill.teachers import ENERGY_CONVENTION, Teacher, get_teacher
from mlip.errors import MlipError
from mlip.units import EV_PER_A3_TO_GPA as GPA

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What the teacher does with each seed (see the module docstring). Units: Å, eV/Å, K, fs."""

    relax_steps: int = 30
    relax_keep_every: int = 3
    relax_fmax: float = 0.05
    perturbations: int = 8
    rattle: tuple[float, float] = (0.02, 0.15)
    strain: float = 0.05
    md_steps: int = 24
    md_keep_every: int = 6
    md_temperature: tuple[float, float] = (300.0, 1500.0)
    md_timestep: float = 2.0
    md_friction: float = 0.02  # 1/fs
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Filters:
    """Bounds a teacher label must meet to be kept.

    Attributes:
        max_force: largest force norm, eV/Å.
        max_stress: largest |stress component|, GPa.
        energy_per_atom: (low, high) bounds, eV/atom (MPtrj's uncorrected energies lie
            within about -15..0).
        min_distance_fraction: no two atoms closer than this fraction of the sum of their
            covalent radii.
        min_volume: Å^3/atom; denser structures are not given to the teacher at all (at
            3.5 Å^3/atom a 5 Å cutoff holds ~150 neighbours per atom and a teacher call costs
            minutes; MPtrj's densest relaxed solids have about 5).
    """

    max_force: float = 30.0
    max_stress: float = 200.0
    energy_per_atom: tuple[float, float] = (-20.0, 5.0)
    min_distance_fraction: float = 0.5
    min_volume: float = 3.5


#: An atom this many cells from the origin has flown off in a blown-up MD run: its label is
#: noise, and float32 storage cannot even hold its position (1e10 Å keeps 3 digits).
FLEW_OFF_CELLS = 100


def _cells_away(frame: Frame) -> float:
    """Largest |fractional coordinate| along the periodic directions (0 with none)."""
    if not np.any(frame.pbc):
        return 0.0
    fractional = np.linalg.solve(np.asarray(frame.cell, np.float64).T, np.asarray(frame.positions, np.float64).T).T
    return float(np.abs(fractional[:, np.asarray(frame.pbc, bool)]).max())


def rejection(frame: Frame, filters: Filters) -> str | None:
    """Why ``frame`` fails ``filters`` (a short reason, used as a count key), or None."""
    values = [frame.energy, frame.forces] + ([] if frame.stress is None else [frame.stress])
    if not all(np.all(np.isfinite(v)) for v in values):
        return "non-finite label"
    if np.linalg.norm(frame.forces, axis=1).max() > filters.max_force:
        return f"force above {filters.max_force:g} eV/Å"
    if frame.stress is not None and np.abs(frame.stress).max() * GPA > filters.max_stress:
        return f"stress above {filters.max_stress:g} GPa"
    if _cells_away(frame) > FLEW_OFF_CELLS:
        return f"an atom over {FLEW_OFF_CELLS} cells away (flew off)"
    low, high = filters.energy_per_atom
    if not low <= frame.energy / frame.n_atoms <= high:
        return f"energy outside [{low:g}, {high:g}] eV/atom"
    atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    if min_bond_ratio(atoms, filters.min_distance_fraction) < filters.min_distance_fraction:
        return f"atoms closer than {filters.min_distance_fraction:g} x covalent radii"
    return None


def _labelled(atoms: ase.Atoms, teacher: Teacher, method: str) -> Frame:
    """A frame of ``atoms`` with the teacher's labels (cached: no new call if unchanged)."""
    periodic = bool(atoms.pbc.all())
    info = {key: atoms.info[key] for key in ("seed_id", "origin")}
    info.update(method=method, teacher=teacher.name, teacher_version=teacher.version)
    return make_frame(
        atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(),
        stress=atoms.get_stress() if periodic else None,
        info=info,
    )


def _too_dense(atoms: ase.Atoms, filters: Filters) -> bool:
    return bool(atoms.pbc.all()) and atoms.get_volume() / len(atoms) < filters.min_volume


def _relax(atoms: ase.Atoms, teacher: Teacher, recipe: Recipe, filters: Filters) -> list[Frame]:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from mlip.sim.ase import quiet_cell_filter

    target = FrechetCellFilter(atoms) if atoms.pbc.all() else atoms
    optimizer = FIRE(target, logfile=None)
    frames = []
    with quiet_cell_filter():
        for step, converged in enumerate(optimizer.irun(fmax=recipe.relax_fmax, steps=recipe.relax_steps)):
            if _too_dense(atoms, filters):  # a collapsing cell: stop before the next call
                break
            last = converged or step >= recipe.relax_steps
            if step % recipe.relax_keep_every == 0 or last:
                frames.append(_labelled(atoms, teacher, f"relax:step={step}"))
    return frames


def _perturbed(relaxed: ase.Atoms, recipe: Recipe, rng) -> tuple[ase.Atoms, str]:
    atoms = relaxed.copy()
    eps = rng.uniform(-recipe.strain, recipe.strain, (3, 3))
    eps = 0.5 * (eps + eps.T)
    if atoms.pbc.all():
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    sigma = rng.uniform(*recipe.rattle)
    atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
    return atoms, f"perturb:rattle={sigma:.3f},strain={np.abs(eps).max():.3f}"


def _md(relaxed: ase.Atoms, teacher: Teacher, recipe: Recipe, rng, calc) -> list[Frame]:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution

    # ASE 3.29 renamed MaxwellBoltzmannDistribution (same distribution, same random draws).
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or \
        velocitydistribution.MaxwellBoltzmannDistribution

    atoms = relaxed.copy()
    atoms.calc = calc
    temperature = float(rng.uniform(*recipe.md_temperature))
    thermalize(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, recipe.md_timestep * units.fs, temperature_K=temperature,
                        friction=recipe.md_friction / units.fs, fixcm=False, rng=rng,
                        logfile=None)
    frames = []
    for step, _ in enumerate(dynamics.irun(steps=recipe.md_steps)):
        if step > 0 and step % recipe.md_keep_every == 0:
            frames.append(_labelled(atoms, teacher, f"md:T={temperature:.0f}K,step={step}"))
    return frames


def seed_rng(recipe: Recipe, seed_id: str) -> np.random.Generator:
    """The random stream of one seed: the same whichever process runs it, and when resumed."""
    return np.random.default_rng([recipe.seed, zlib.crc32(seed_id.encode())])


def label_seed(seed: ase.Atoms, teacher: Teacher, calc, recipe: Recipe, filters: Filters
               ) -> tuple[list[Frame], collections.Counter]:
    """The kept frames of one seed and the counts of dropped frames by reason."""
    rng = seed_rng(recipe, seed.info["seed_id"])
    atoms = seed.copy()
    atoms.info = {key: seed.info[key] for key in ("seed_id", "origin")}
    atoms.calc = calc
    if _too_dense(atoms, filters):
        return [], collections.Counter({f"seed denser than {filters.min_volume:g} Å^3/atom": 1})
    frames = _relax(atoms, teacher, recipe, filters)
    relaxed = atoms.copy()
    relaxed.info = dict(atoms.info)
    if not _too_dense(relaxed, filters):
        for _ in range(recipe.perturbations):
            perturbed, method = _perturbed(relaxed, recipe, rng)
            perturbed.calc = calc
            if not _too_dense(perturbed, filters):
                frames.append(_labelled(perturbed, teacher, method))
        frames += _md(relaxed, teacher, recipe, rng, calc)
    kept, dropped = [], collections.Counter()
    for frame in frames:
        reason = rejection(frame, filters)
        if reason is None:
            kept.append(frame)
        else:
            dropped[reason] += 1
    return kept, dropped


# --- the labelling run -------------------------------------------------------------------

_WORKER: dict = {}


def _start_worker(spec: str) -> None:
    teacher = get_teacher(spec)
    _WORKER.update(teacher=teacher, calc=teacher.build())


def _run_seed(seed: ase.Atoms, recipe: Recipe, filters: Filters):
    """Label one seed in a worker; a teacher failure drops the seed with its reason."""
    try:
        frames, dropped = label_seed(seed, _WORKER["teacher"], _WORKER["calc"], recipe, filters)
    except Exception as exc:  # a teacher may fail on any strange geometry: count, go on
        return seed.info["seed_id"], [], collections.Counter({f"teacher error ({type(exc).__name__})": 1})
    return seed.info["seed_id"], frames, dropped


@dataclasses.dataclass
class LabelReport:
    """What a labelling run holds (all runs into the same directory, resumed ones too)."""

    seeds_done: int
    seeds_total: int
    frames: int
    dropped: dict[str, int]
    by_method: dict[str, int]
    out_dir: Path

    def summary(self) -> str:
        lines = [f"{self.out_dir}: {self.frames} frames from {self.seeds_done}/{self.seeds_total} "
                 f"seeds ({', '.join(f'{k} {v}' for k, v in sorted(self.by_method.items()))})"]
        lines += [f"  dropped {n}: {reason}" for reason, n in sorted(self.dropped.items(), key=lambda x: -x[1])]
        return "\n".join(lines)


def _open_run(out_dir: Path, meta: dict, resume: bool) -> tuple[ShardWriter, dict]:
    """A writer for ``out_dir`` and the run's meta (the previous one when resuming)."""
    if (out_dir / INDEX_FILE).exists():
        if not resume:
            raise MlipError(f"{out_dir} already holds labels: pass --resume to continue that run")
        writer = ShardWriter.reopen(out_dir, 1 << 30, compact=True)
        previous = ShardedDataset(out_dir).meta
        for key in ("teacher", "recipe", "filters", "energy"):
            if previous.get(key) != meta[key]:
                raise MlipError(f"{out_dir} was labelled with another {key} ({previous.get(key)}); "
                                f"one directory holds one teacher and recipe: use a new directory")
        return writer, previous
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MlipError(f"{out_dir} is not empty and holds no labels: choose another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return ShardWriter(out_dir, 1 << 30, compact=True), meta


def label(
    seeds: Sequence[ase.Atoms],
    out_dir,
    *,
    teacher: str = "sevenn-0",
    recipe: Recipe = Recipe(),
    filters: Filters = Filters(),
    workers: int = 1,
    seeds_per_shard: int = 50,
    resume: bool = False,
    progress: bool = True,
) -> LabelReport:
    """Label ``seeds`` (each with ``info["seed_id"]`` and ``info["origin"]``) with the teacher
    named ``teacher`` (see `mlip.distill.teachers`) in ``workers`` processes, appending to the
    shards in ``out_dir`` (see the module docstring). Returns the totals of the directory."""
    out_dir = Path(out_dir)
    ids = [s.info.get("seed_id") for s in seeds]
    if None in ids or len(set(ids)) != len(ids):
        raise MlipError("every seed needs a unique info['seed_id'] (make seeds with mlip generate)")
    spec = get_teacher(teacher)
    meta = {
        "teacher": {"spec": spec.spec, "name": spec.name, "version": spec.version},
        "energy": ENERGY_CONVENTION,
        "recipe": json_ready(dataclasses.asdict(recipe)),
        "filters": json_ready(dataclasses.asdict(filters)),
        "seeds_done": [], "dropped": {}, "by_method": {},
    }
    writer, meta = _open_run(out_dir, meta, resume)
    done = set(meta["seeds_done"])
    todo = [s for s in seeds if s.info["seed_id"] not in done]
    log.info("labelling %d seeds with %s (%d already done) in %d process(es)",
             len(todo), spec.name, len(done), workers)
    run = _Run(writer, meta, seeds_per_shard, len(seeds))
    bar = tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="labelling", unit=" seeds",
               disable=not progress)
    try:
        for result in _results(todo, teacher, recipe, filters, workers):
            run.add(*result)
            bar.update()
            bar.set_postfix(frames=writer.n_frames + len(writer.buffer),
                            dropped=sum(run.meta["dropped"].values()), refresh=False)
    finally:
        run.commit()
        bar.close()
    return run.report(out_dir)


def _results(todo, spec: str, recipe, filters, workers: int):
    """(seed_id, frames, dropped) per seed, in completion order."""
    if workers <= 1:
        _start_worker(spec)
        yield from (_run_seed(s, recipe, filters) for s in todo)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                initargs=(spec,)) as pool:
        futures = [pool.submit(_run_seed, s, recipe, filters) for s in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


class _Run:
    """Collects finished seeds and commits them as shards (frames, then index with meta)."""

    def __init__(self, writer: ShardWriter, meta: dict, seeds_per_shard: int, total: int):
        self.writer, self.meta, self.seeds_per_shard, self.total = writer, meta, seeds_per_shard, total
        self.pending: list[tuple[str, collections.Counter, list[str]]] = []

    def add(self, seed_id: str, frames: list[Frame], dropped: collections.Counter) -> None:
        for frame in frames:
            self.writer.add(frame)
        self.pending.append((seed_id, dropped, [f.info["method"].split(":")[0] for f in frames]))
        if len(self.pending) >= self.seeds_per_shard:
            self.commit()

    def commit(self) -> None:
        """Write the pending seeds' frames as one shard, then the index that lists them."""
        if not self.pending:
            return
        self.writer.flush()
        for seed_id, dropped, methods in self.pending:
            self.meta["seeds_done"].append(seed_id)
            for reason, n in dropped.items():
                self.meta["dropped"][reason] = self.meta["dropped"].get(reason, 0) + n
            for method in methods:
                self.meta["by_method"][method] = self.meta["by_method"].get(method, 0) + 1
        self.writer.write_index([], self.meta)
        self.pending = []

    def report(self, out_dir: Path) -> LabelReport:
        return LabelReport(len(self.meta["seeds_done"]), self.total, self.writer.n_frames,
                           dict(self.meta["dropped"]), dict(self.meta["by_method"]), out_dir)


def json_ready(value):
    """Tuples as lists, so a dataclass round-trips through JSON and compares equal."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def refilter(out_dir, filters: Filters | None = None) -> collections.Counter:
    """Apply ``filters`` (default: the run's own) and today's fixed checks (non-finite labels,
    atoms that flew off) to labels already written, for checks added after the labelling: the
    failing frames leave the directory and join its drop counts. Returns the newly dropped
    counts by reason.

    The kept frames are copied unchanged (float32 in, float32 out) into new shards, shard by
    shard, in a sibling directory, which then replaces ``out_dir`` (two renames: an
    interruption leaves the old directory as ``NAME.old`` or the new one as ``NAME.new``, each
    complete). The seeds stay done: a resumed `label` does not redo them.
    """
    out_dir = Path(out_dir)
    dataset = ShardedDataset(out_dir)
    meta = dict(dataset.meta)
    if filters is None:
        stored = dict(meta["filters"])
        stored["energy_per_atom"] = tuple(stored["energy_per_atom"])
        filters = Filters(**stored)
    new_dir, old_dir = out_dir.with_name(out_dir.name + ".new"), out_dir.with_name(out_dir.name + ".old")
    for path in (new_dir, old_dir):
        if path.exists():
            raise MlipError(f"{path} exists (an interrupted refilter?): keep the complete directory, remove the other")
    new_dir.mkdir()
    writer = ShardWriter(new_dir, 1 << 30, compact=True)
    dropped, removed = collections.Counter(), collections.Counter()  # by reason, by method
    for start, stop in dataset.shard_ranges:
        for index in range(start, stop):
            frame = dataset[index]
            reason = rejection(frame, filters)
            if reason is None:
                writer.add(frame)
            else:
                dropped[reason] += 1
                removed[frame.info["method"].split(":")[0]] += 1
        writer.flush()
    meta["by_method"] = {method: n - removed[method] for method, n in meta["by_method"].items()}
    meta["dropped"] = dict(collections.Counter(meta["dropped"]) + dropped)
    meta["filters"] = json_ready(dataclasses.asdict(filters))
    writer.write_index(dataset.sources, meta)
    out_dir.rename(old_dir)
    new_dir.rename(out_dir)
    shutil.rmtree(old_dir)
    return dropped
