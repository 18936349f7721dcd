"""Opening a run's datasets: files read into memory, converted directories streamed from disk,
several sources concatenated, and a seeded train/validation split."""

from __future__ import annotations

import bisect
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from mlip.data.frame import Frame
from mlip.data.loader import FrameDataset
from mlip.data.readers import ReadReport, read_frames
from mlip.data.shards import ShardedDataset
from mlip.errors import MlipError

log = logging.getLogger("mlip.train")

LABELS = ("energy", "forces", "stress")


class Concat:
    """Several datasets as one (random access across them)."""

    def __init__(self, parts: Sequence[FrameDataset]):
        self.parts = list(parts)
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> Frame:
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - int(self.starts[k])]

    @property
    def shard_ranges(self) -> list[tuple[int, int]] | None:
        """Contiguous ranges to shuffle within (each part's shards, or the whole part)."""
        ranges = []
        for part, start in zip(self.parts, self.starts):
            inner = getattr(part, "shard_ranges", None) or [(0, len(part))]
            ranges += [(int(start) + a, int(start) + b) for a, b in inner]
        return ranges if any(hasattr(p, "shard_ranges") for p in self.parts) else None


class Subset:
    """The frames of ``dataset`` at ``indices`` (ascending), keeping shard locality."""

    def __init__(self, dataset: FrameDataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.sort(np.asarray(indices, np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Frame:
        return self.dataset[int(self.indices[i])]

    @property
    def shard_ranges(self) -> list[tuple[int, int]] | None:
        ranges = getattr(self.dataset, "shard_ranges", None)
        if ranges is None:
            return None
        bounds = [(int(np.searchsorted(self.indices, a)), int(np.searchsorted(self.indices, b))) for a, b in ranges]
        return [(a, b) for a, b in bounds if b > a]


def open_frames(paths: str | Sequence[str], read_options: dict, *, what: str) -> FrameDataset:
    """A dataset from one or several sources: a directory written by ``mlip convert`` is
    streamed from disk, any other file is read (and validated) into memory. A frame may lack
    a label that others have (files with and without stress mixed): it carries no loss for
    that label (the loss masks by label), and `label_counts` says how many frames have each."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    parts = []
    for path in map(Path, paths):
        if path.is_dir():
            parts.append(ShardedDataset(path))
        elif path.is_file():
            report = ReadReport()
            frames = list(read_frames(path, report=report, require_labels=False, **read_options))
            if report.skipped:
                log.warning("%s: %s", path, report.summary())
            parts.append(frames)
        else:
            raise MlipError(f"{what} data {path}: no such file or directory")
    dataset = parts[0] if len(parts) == 1 else Concat(parts)
    if len(dataset) == 0:
        raise MlipError(f"{what} data {', '.join(paths)}: no frames")
    return dataset


def elements(dataset: FrameDataset) -> set[int]:
    """Atomic numbers present in ``dataset``: from a converted directory's index (no frames
    read), else from its frames. A subset answers for the dataset it is cut from (a superset:
    enough to find elements a model lacks, whose training set is that same dataset)."""
    if isinstance(dataset, Subset):
        return elements(dataset.dataset)
    if isinstance(dataset, Concat):
        return set().union(*(elements(part) for part in dataset.parts))
    if hasattr(dataset, "elements"):
        return set(dataset.elements)
    return {int(z) for i in range(len(dataset)) for z in np.unique(dataset[i].numbers)}


def label_counts(dataset: FrameDataset) -> dict[str, int]:
    """Frames carrying each label ("energy", "forces", "stress") in ``dataset``: from a
    converted directory's index, else from its frames (a subset answers for its whole)."""
    if isinstance(dataset, Subset):
        return label_counts(dataset.dataset)
    if isinstance(dataset, Concat):
        parts = [label_counts(part) for part in dataset.parts]
        return {name: sum(p[name] for p in parts) for name in LABELS}
    if hasattr(dataset, "labels"):
        return {name: int(dataset.labels.get(name, 0)) for name in LABELS}
    frames = [dataset[i] for i in range(len(dataset))]
    return {name: sum(getattr(f, name) is not None for f in frames) for name in LABELS}


def graph_sizes(dataset: FrameDataset, cutoff: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Atoms and directed edges at ``cutoff`` (Å) of every frame, int64 [n_frames] each, from
    the counts a converted directory stores (``mlip convert --edge-cutoffs``); None when some
    part of ``dataset`` has no counts at that cutoff (its graphs must then be built)."""
    if isinstance(dataset, Subset):
        sizes = graph_sizes(dataset.dataset, cutoff)
        return None if sizes is None else (sizes[0][dataset.indices], sizes[1][dataset.indices])
    if isinstance(dataset, Concat):
        parts = [graph_sizes(part, cutoff) for part in dataset.parts]
        if any(part is None for part in parts):
            return None
        return tuple(np.concatenate([part[k] for part in parts]) for k in (0, 1))
    n_edges = dataset.n_edges(cutoff) if isinstance(dataset, ShardedDataset) else None
    if n_edges is None:
        return None
    return dataset.n_atoms.astype(np.int64), n_edges.astype(np.int64)


def split(dataset: FrameDataset, valid_fraction: float, seed: int, group: str | None = None) -> tuple[Subset, Subset]:
    """Random (seeded) split into training and validation subsets.

    With ``group`` (a ``Frame.info`` key, e.g. "seed_id", which `mlip label` writes), frames
    that share its value go to the same side, so validation measures new structures, not new
    snapshots of structures in training (a relaxation's steps, rattles and MD frames of one
    seed are near-copies; so are the frames of a source listed twice). Whole groups are drawn
    until ``valid_fraction`` of the frames is reached; a frame without the key is its own group.
    """
    n = len(dataset)
    n_valid = max(1, int(round(valid_fraction * n)))
    if n_valid >= n:
        raise MlipError(f"cannot split {n} frame(s) into training and validation sets")
    rng = np.random.default_rng(seed)
    if group is None:
        order = rng.permutation(n)
        return Subset(dataset, order[n_valid:]), Subset(dataset, order[:n_valid])
    _, inverse = np.unique(group_keys(dataset, group), return_inverse=True)
    drawn = rng.permutation(inverse.max() + 1)
    taken = np.searchsorted(np.cumsum(np.bincount(inverse)[drawn]), n_valid) + 1
    in_valid = np.isin(inverse, drawn[:taken])
    if in_valid.all():
        raise MlipError(f"cannot split {n} frame(s) into training and validation sets by {group!r}: "
                        f"{inverse.max() + 1} group(s)")
    return Subset(dataset, np.flatnonzero(~in_valid)), Subset(dataset, np.flatnonzero(in_valid))


def group_keys(dataset: FrameDataset, key: str) -> np.ndarray:
    """str [n_frames]: each frame's ``info[key]`` (as repr), or a key unique to the frame when
    it has none. Reads every frame once (a converted directory shard by shard)."""
    keys = []
    for i in range(len(dataset)):
        info = dataset[i].info or {}
        keys.append(repr(info[key]) if key in info else f"\0frame {i}")
    return np.asarray(keys, dtype=object)


def group_weights(dataset: FrameDataset, key: str, weights: dict) -> np.ndarray:
    """float64 [n_frames]: ``weights[str(info[key])]`` for each frame of ``dataset``, 1 for a
    frame without the key or whose group is not named. A named group that no frame has is an
    error (a misspelt group would otherwise change nothing, silently). Reads every frame once."""
    groups = [str((dataset[i].info or {}).get(key, "")) for i in range(len(dataset))]
    found = sorted(set(groups) - {""})
    missing = sorted(set(map(str, weights)) - set(found))
    if missing:
        raise MlipError(f"data.group_weights: no training frame has {key} = {', '.join(map(repr, missing))} "
                        f"(the training frames' {key} values: {', '.join(map(repr, found)) or 'none'})")
    table = {str(group): float(weight) for group, weight in weights.items()}
    log.info("loss weights by %s: %s; the other %d training frames 1", key, ", ".join(
        f"{group} x{weight:g} ({groups.count(group)} frames)" for group, weight in table.items()),
        sum(group not in table for group in groups))
    return np.array([table.get(group, 1.0) for group in groups], np.float64)
