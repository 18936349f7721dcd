"""Constants a model takes from its training data: E0 per element, neighbour count, scale, shift.

    E0        per-element reference energies (eV) by least squares:  E_g ≈ Σ_z c_gz E0_z,
              with c_gz the number of atoms of element z in structure g. Accumulated as normal
              equations (a 119 x 119 matrix), so it streams over any number of frames.
    shift     mean over structures of (E_g - Σ_z c_gz E0_z) / n_g, eV/atom.
    scale     RMS of the force components, eV/Å (MACE's "rms_forces_scaling"): the learned
              per-atom energy is scale x network output, so forces start at the data's size.
    avg_num_neighbors   mean directed edges per atom at the model's cutoff.

E0 and the shift use every training frame (cheap: no neighbour list; a converted directory's
shard arrays are summed a shard at a time); the neighbour count and
force RMS use a seeded sample of ``sample_frames`` frames (edges counted at conversion are used
where a converted directory stores them, see mlip.train.data.graph_sizes; the same numbers).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from mlip.data.graph import build_graph
from mlip.data.loader import FrameDataset
from mlip.errors import MlipError
from mlip.data.shards import ShardedDataset
from mlip.train.data import Subset, graph_sizes

log = logging.getLogger("mlip.train")

_N = 119


@dataclasses.dataclass(frozen=True)
class DataStatistics:
    """What `compute_statistics` found (units: eV, eV/Å).

    species: atomic numbers present in the data, ascending.
    atomic_energies: E0 per element of ``species`` (same order), eV.
    shift: mean per-atom energy after E0, eV/atom.
    force_rms: RMS force component, eV/Å (None without force labels).
    avg_num_neighbors: mean directed edges per atom at the cutoff.
    frames, atoms: how much data the E0 fit saw.
    """

    species: tuple[int, ...]
    atomic_energies: tuple[float, ...]
    shift: float
    force_rms: float | None
    avg_num_neighbors: float
    frames: int
    atoms: int

    def summary(self) -> str:
        e0 = ", ".join(f"{chemical_symbols[z]} {e:.4f}" for z, e in zip(self.species, self.atomic_energies))
        rms = "n/a" if self.force_rms is None else f"{self.force_rms:.4f} eV/Å"
        return (f"{self.frames} frames, {self.atoms} atoms, {len(self.species)} elements; "
                f"avg neighbours {self.avg_num_neighbors:.2f}; shift {self.shift:.4f} eV/atom; "
                f"force RMS {rms}; E0 (eV): {e0}")


class _EnergySums:
    """Normal equations of the E0 least-squares fit, plus sums for the shift."""

    def __init__(self):
        self.ata = np.zeros((_N, _N))
        self.aty = np.zeros(_N)
        self.energy_per_atom = 0.0
        self.counts_per_atom = np.zeros(_N)
        self.frames = self.atoms = 0
        self.present = np.zeros(_N, bool)

    def add(self, numbers: np.ndarray, energy: float | None) -> None:
        counts = np.bincount(numbers, minlength=_N).astype(np.float64)
        self.present |= counts > 0
        if energy is None:
            return
        n = len(numbers)
        self.ata += np.outer(counts, counts)
        self.aty += counts * energy
        self.energy_per_atom += energy / n
        self.counts_per_atom += counts / n
        self.frames += 1
        self.atoms += n

    def add_many(self, counts: np.ndarray, energy: np.ndarray, has_energy: np.ndarray) -> None:
        """`add` for many frames at once, with the same result to the bit: ``counts`` float64
        [f, 119] atoms of each element, ``energy`` [f] eV, ``has_energy`` bool [f]. The
        float sums run frame after frame (``np.cumsum`` adds sequentially); the normal
        matrix holds integers, exact in any order."""
        self.present |= counts.any(axis=0)
        counts, energy = counts[has_energy], energy[has_energy].astype(np.float64)
        if not len(counts):
            return
        n = counts.sum(axis=1)
        self.ata += counts.T @ counts
        self.aty = np.cumsum(np.vstack([self.aty, counts * energy[:, None]]), axis=0)[-1]
        self.energy_per_atom = float(np.cumsum(np.concatenate([[self.energy_per_atom], energy / n]))[-1])
        self.counts_per_atom = np.cumsum(np.vstack([self.counts_per_atom, counts / n[:, None]]), axis=0)[-1]
        self.frames += len(counts)
        self.atoms += int(n.sum())

    def solve(self, fixed: dict[int, float]) -> np.ndarray:
        """E0 [119] for the elements seen; ``fixed`` elements keep the given values."""
        e0 = np.zeros(_N)
        for z, value in fixed.items():
            e0[z] = value
        free = np.flatnonzero(self.present & ~np.isin(np.arange(_N), list(fixed)))
        if len(free):
            if self.frames == 0:
                raise MlipError("cannot fit atomic energies: no training frame has an energy label")
            rhs = self.aty[free] - self.ata[np.ix_(free, list(fixed))] @ e0[list(fixed)] if fixed else self.aty[free]
            solution, _, rank, _ = np.linalg.lstsq(self.ata[np.ix_(free, free)], rhs, rcond=None)
            if rank < len(free):
                log.warning("E0 fit is underdetermined (element counts are collinear in the training "
                            "set); using the minimum-norm solution")
            e0[free] = solution
        return e0

    def shift(self, e0: np.ndarray) -> float:
        if self.frames == 0:
            return 0.0
        return float((self.energy_per_atom - self.counts_per_atom @ e0) / self.frames)


def compute_statistics(
    dataset: FrameDataset,
    r_cut: float,
    *,
    fixed_atomic_energies: dict[int, float] | None = None,
    sample_frames: int = 5000,
    seed: int = 0,
    progress: bool = True,
) -> DataStatistics:
    """Statistics of ``dataset`` for a model with cutoff ``r_cut`` (Å).

    ``fixed_atomic_energies``: {atomic number: E0 in eV} to keep instead of fitting (given in the
    config, or the elements a fine-tuned model already knows).
    """
    if len(dataset) == 0:
        raise MlipError("the training set is empty")
    fixed = dict(fixed_atomic_energies or {})
    sums = _energy_sums(dataset, progress)
    e0 = sums.solve(fixed)
    species = tuple(int(z) for z in np.flatnonzero(sums.present))

    rng = np.random.default_rng(seed)
    sample = rng.choice(len(dataset), size=min(sample_frames, len(dataset)), replace=False)
    stored = graph_sizes(dataset, r_cut)
    edges = atoms = 0
    force_sq, force_count = 0.0, 0
    for i in np.sort(sample):
        frame = dataset[int(i)]
        edges += int(stored[1][i]) if stored is not None else build_graph(frame, r_cut).n_edge
        atoms += frame.n_atoms
        if frame.forces is not None:
            force_sq += float(np.sum(np.square(frame.forces)))
            force_count += frame.forces.size
    force_rms = float(np.sqrt(force_sq / force_count)) if force_count else None
    return DataStatistics(
        species=species,
        atomic_energies=tuple(float(e0[z]) for z in species),
        shift=sums.shift(e0),
        force_rms=force_rms,
        avg_num_neighbors=edges / max(atoms, 1),
        frames=sums.frames,
        atoms=sums.atoms,
    )


def _energy_sums(dataset: FrameDataset, progress: bool) -> _EnergySums:
    """The E0 sums over every frame of ``dataset``, in order: shard by shard from the arrays
    of a converted directory (or a subset of one), else frame by frame."""
    sums = _EnergySums()
    sharded = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not isinstance(sharded, ShardedDataset):
        for i in tqdm(range(len(dataset)), desc="statistics", unit=" frames", disable=not progress, delay=1.0):
            frame = dataset[i]
            sums.add(frame.numbers, frame.energy)
        return sums
    indices = dataset.indices if isinstance(dataset, Subset) else np.arange(len(dataset))
    for k, (start, stop) in enumerate(tqdm(sharded.shard_ranges, desc="statistics", unit=" shards",
                                           disable=not progress, delay=1.0)):
        frames = indices[(indices >= start) & (indices < stop)] - start  # ascending, as Subset keeps them
        if len(frames):
            arrays = sharded.shard_arrays(k)
            owner = np.repeat(np.arange(len(arrays["n_atoms"])), arrays["n_atoms"])
            counts = np.zeros((len(arrays["n_atoms"]), _N))
            np.add.at(counts, (owner, arrays["numbers"]), 1.0)
            sums.add_many(counts[frames], arrays["energy"][frames], arrays["has_energy"][frames])
    return sums
