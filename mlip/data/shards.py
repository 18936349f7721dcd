"""Sharded datasets: the compact on-disk training format, written once, read with constant memory.

Parsing extxyz or MPtrj JSON (and validating every structure) costs far more than training
needs to spend per epoch, and a 1.5M-frame set does not fit comfortably in host memory as
Python objects. `convert` streams frames from any reader into fixed-size binary shards;
`ShardedDataset` gives random access to them, keeping only a few shards in memory.

Format ``mlip-shards``, version 1: a directory holding

``index.json``
    ``{"format": "mlip-shards", "version": 1, "created_by": "mlip <version>",
    "n_frames": F, "n_atoms": A, "elements": [sorted atomic numbers present],
    "labels": {"energy": frames with energy, "forces": ..., "stress": ...},
    "sources": [input paths],
    "shards": [{"file": "shard-00000.npz", "n_frames": f, "n_atoms": a, "bytes": file size,
    "sha256": hex digest of the file, "atom_extras": [names stored in this shard]}, ...]}``
``n_atoms.npy``
    int32 [F], atoms per frame, so a loader can plan batches without opening any shard.
``n_edges.npy`` (when the index lists ``"edge_cutoffs": [r_1, ...]``, Å)
    int32 [F, len(edge_cutoffs)], directed edges of each frame's radius graph at each cutoff,
    counted on the stored arrays at conversion: with ``n_atoms`` it is all that packing
    batches needs, so training starts without building a neighbour list (see
    mlip.train.batches). Datasets without it still load; the loader then builds every graph.
``shard-NNNNN.npz``
    an uncompressed `numpy.savez` archive (fast to read) of one shard's f frames and a atoms,
    concatenated in frame order:

    - ``numbers`` int32 [a]; ``positions`` float64 [a, 3] Å;
      ``forces`` float64 [a, 3] eV/Å, zeros for frames without forces;
    - ``n_atoms`` int32 [f]; ``cell`` float64 [f, 3, 3] Å (rows are lattice vectors);
      ``pbc`` bool [f, 3];
    - ``energy`` float64 [f] eV; ``stress`` float64 [f, 3, 3] eV/Å^3 (ASE sign), zeros where
      absent; ``has_energy``, ``has_forces``, ``has_stress`` bool [f];
    - ``extra/<name>`` [a, ...]: a per-atom extra array (e.g. ``extra/magmoms``) that every
      frame of the shard has; one that only some frames of a shard have is dropped from that
      shard, with one logged warning per name.
    - ``info/<key>`` [f]: a `Frame.info` entry that every frame of the shard has as a scalar
      of one kind (str, int, float or bool), e.g. the provenance of distilled frames; other
      info entries are not stored.

A frame read back has ``source`` = its shard file and ``index`` = its position in the
dataset. Compact shards (``compact=True``, used for distilled data kept in a repository) hold
positions, forces, cells and stresses as float32 and are deflated; energies stay float64 and
frames read back are float64 either way. ``index.json`` may carry a ``meta`` object (free-form
JSON: e.g. the teacher and recipe of a labelling run), and a directory can be appended to
(`ShardWriter.reopen`): each appended shard is followed by a rewritten index, so the
directory is a complete dataset after every shard.

Crash safety: every file is written to a temporary file in the output directory and moved into
place with `os.replace`; the index is written last, so a directory whose conversion died never
has an index pointing at missing or partial shards. A conversion that fails with an exception
removes what it wrote. Readers check each shard's size when the dataset is opened and its
SHA-256 when it is loaded.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import operator
import os
import threading
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mlip import __version__
from mlip.data.frame import Frame, make_frame
from mlip.data.neighbors import neighbor_list
from mlip.data.readers import ReadReport, read_frames
from mlip.errors import DataError, MlipError
from mlip.fileio import TEMP_PREFIX, atomic_write_bytes, npz_bytes

log = logging.getLogger(__name__)

FORMAT = "mlip-shards"
VERSION = 1
INDEX_FILE = "index.json"
N_ATOMS_FILE = "n_atoms.npy"
N_EDGES_FILE = "n_edges.npy"
_SHARD_NAME = "shard-{:05d}.npz"
_SHARD_GLOB = "shard-*.npz"
_EXTRA_PREFIX = "extra/"
_INFO_PREFIX = "info/"
#: Shards a dataset keeps in memory by default: the loader's default ``shuffle_shards`` window,
#: so shard-local shuffling never reloads a shard within a window.
DEFAULT_CACHE_SHARDS = 4


@dataclasses.dataclass
class ConvertReport:
    """What `convert` wrote.

    Attributes:
        n_frames, n_atoms, n_shards: totals written.
        skipped: frames the readers skipped (``on_error="skip"``); their reasons are in
            ``read_reports``.
        out_dir: the dataset directory.
        read_reports: one `ReadReport` per source, in order.
    """

    n_frames: int
    n_atoms: int
    n_shards: int
    skipped: int
    out_dir: Path
    read_reports: list[ReadReport] = dataclasses.field(default_factory=list)

    def summary(self, max_reasons: int = 10) -> str:
        """Totals, then why frames were skipped (the first ``max_reasons`` of them)."""
        lines = [
            f"wrote {self.n_frames} frames ({self.n_atoms} atoms) in {self.n_shards} "
            f"shard{'s' * (self.n_shards != 1)} to {self.out_dir}; skipped {self.skipped} frames"
        ]
        reasons = [reason for report in self.read_reports for reason in report.reasons]
        lines += [f"  skipped {reason}" for reason in reasons[:max_reasons]]
        if len(reasons) > max_reasons:
            lines.append(f"  ... and {len(reasons) - max_reasons} more")
        return "\n".join(lines)


def convert(
    sources,
    out_dir,
    *,
    frames_per_shard: int = 10_000,
    progress: bool = True,
    overwrite: bool = False,
    edge_cutoffs: Sequence[float] = (),
    **read_options,
) -> ConvertReport:
    """Convert structure files into a sharded dataset at ``out_dir``.

    Args:
        sources: a path or a list of paths, read in order with `read_frames`.
        out_dir: the dataset directory; created if missing. Must be empty unless ``overwrite``.
        frames_per_shard: frames per shard file (the unit of loading and shuffling).
        progress: show a progress bar (frames/s, shards written) on stderr.
        overwrite: replace a dataset already in ``out_dir`` (other files there are kept).
        edge_cutoffs: radii (Å) at which every frame's edges are counted and stored, for
            training models with these cutoffs (``n_edges.npy``).
        **read_options: passed to `read_frames` (format, energy_key, mptrj_energy, on_error...).

    Frames stream through one shard buffer at a time, so memory does not grow with the input.
    Raises DataError for unreadable input (per ``on_error``) or a non-empty ``out_dir``.
    """
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    reports = [ReadReport() for _ in paths]
    frames = itertools.chain.from_iterable(
        read_frames(path, report=report, **read_options) for path, report in zip(paths, reports)
    )
    result = write_shards(
        frames,
        out_dir,
        sources=[str(path) for path in paths],
        frames_per_shard=frames_per_shard,
        progress=progress,
        overwrite=overwrite,
        edge_cutoffs=edge_cutoffs,
    )
    skipped = sum(report.skipped for report in reports)
    return dataclasses.replace(result, skipped=skipped, read_reports=reports)


def write_shards(
    frames: Iterable[Frame],
    out_dir,
    *,
    sources: Sequence[str] = (),
    frames_per_shard: int = 10_000,
    progress: bool = True,
    overwrite: bool = False,
    edge_cutoffs: Sequence[float] = (),
) -> ConvertReport:
    """Write already-built frames (any iterable, consumed once) as a sharded dataset.

    The engine behind `convert`, for frames that do not come from files. ``sources`` is
    recorded in the index; ``edge_cutoffs`` as in `convert`. Frames are stored as given: validate them first (readers do).
    If iterating ``frames`` raises, the files written so far are removed and no index is left.
    """
    if frames_per_shard < 1:
        raise MlipError(f"frames_per_shard must be at least 1, got {frames_per_shard}")
    out_dir = _prepare_out_dir(Path(out_dir), overwrite)
    writer = ShardWriter(out_dir, frames_per_shard, edge_cutoffs=edge_cutoffs)
    bar = tqdm(desc=f"converting to {out_dir}", unit=" frames", postfix={"shards": 0},
               disable=not progress)
    try:
        for frame in frames:
            if writer.add(frame):
                bar.set_postfix(shards=len(writer.entries), refresh=False)
            bar.update()
        writer.finish(list(sources))
        bar.set_postfix(shards=len(writer.entries))
    except BaseException:
        writer.discard()
        raise
    finally:
        bar.close()
    return ConvertReport(
        n_frames=writer.n_frames,
        n_atoms=writer.n_atoms,
        n_shards=len(writer.entries),
        skipped=0,
        out_dir=out_dir,
    )


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir``, or empty it of a previous dataset when ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError("output path exists and is not a directory", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        if not overwrite:
            raise DataError(
                "output directory is not empty; pass overwrite=True (mlip convert --overwrite) "
                "to replace the dataset in it",
                out_dir,
            )
        # The index goes first: from then on the directory is no longer a dataset, so a
        # crash below cannot leave an index describing shards that are half replaced.
        (out_dir / INDEX_FILE).unlink(missing_ok=True)
        stale = [*out_dir.glob(_SHARD_GLOB), *out_dir.glob(TEMP_PREFIX + "*")]
        for path in [out_dir / N_ATOMS_FILE, *stale]:
            path.unlink(missing_ok=True)
        (out_dir / N_EDGES_FILE).unlink(missing_ok=True)
    return out_dir


class ShardWriter:
    """Buffers one shard of frames at a time and writes shards, sidecar and index atomically.

    The engine of `write_shards` and of `mlip label` (which appends one shard per batch of
    seeds and rewrites the index after each). ``buffer``: the frames not yet written.

    ``compact``: float32 geometry and labels, deflated (see the module docstring).
    ``edge_cutoffs``: radii (Å) at which each frame's edges are counted (``n_edges.npy``).
    """

    def __init__(self, out_dir: Path, frames_per_shard: int, *, compact: bool = False,
                 edge_cutoffs: Sequence[float] = ()):
        self.out_dir, self.frames_per_shard, self.compact = out_dir, frames_per_shard, compact
        self.edge_cutoffs = [float(r) for r in edge_cutoffs]
        if any(not r > 0 for r in self.edge_cutoffs) or len(set(self.edge_cutoffs)) < len(self.edge_cutoffs):
            raise MlipError(f"edge cutoffs must be positive and distinct (Å), got {list(edge_cutoffs)}")
        self.buffer: list[Frame] = []
        self.entries: list[dict] = []
        self.n_atoms_per_shard: list[np.ndarray] = []
        self.n_edges_per_shard: list[np.ndarray] = []
        self.elements: set[int] = set()
        self.labels = {"energy": 0, "forces": 0, "stress": 0}
        self.warned_extras: set[str] = set()
        self.written: list[Path] = []

    @classmethod
    def reopen(cls, out_dir: Path, frames_per_shard: int, *, compact: bool = False) -> "ShardWriter":
        """A writer that appends to the dataset in ``out_dir`` (its shards are kept), counting
        edges at the cutoffs the dataset already counts them at."""
        dataset = ShardedDataset(out_dir)
        writer = cls(out_dir, frames_per_shard, compact=compact, edge_cutoffs=dataset.edge_cutoffs)
        writer.entries = list(dataset._entries)
        writer.n_atoms_per_shard = [dataset.n_atoms[a:b] for a, b in dataset.shard_ranges]
        if dataset.edge_cutoffs:
            writer.n_edges_per_shard = [dataset._n_edges[a:b] for a, b in dataset.shard_ranges]
        writer.elements = set(dataset.elements)
        writer.labels = dict(dataset.labels)
        return writer

    @property
    def n_frames(self) -> int:
        return sum(entry["n_frames"] for entry in self.entries)

    @property
    def n_atoms(self) -> int:
        return sum(entry["n_atoms"] for entry in self.entries)

    def add(self, frame: Frame) -> bool:
        """Buffer a frame; write the shard when full. Returns whether a shard was written."""
        self.buffer.append(frame)
        if len(self.buffer) < self.frames_per_shard:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        if not self.buffer:
            return
        arrays = _pack_frames(self.buffer, np.float32 if self.compact else np.float64)
        extras = _pack_extras(self.buffer, len(self.entries), self.warned_extras)
        arrays.update({_EXTRA_PREFIX + name: values for name, values in extras.items()})
        arrays.update({_INFO_PREFIX + key: values for key, values in _pack_info(self.buffer).items()})
        data = npz_bytes(arrays, compress=self.compact)
        path = self.out_dir / _SHARD_NAME.format(len(self.entries))
        self.written.append(path)
        atomic_write_bytes(path, data)
        self.entries.append({
            "file": path.name,
            "n_frames": len(self.buffer),
            "n_atoms": int(arrays["n_atoms"].sum()),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "atom_extras": sorted(extras),
        })
        self.n_atoms_per_shard.append(arrays["n_atoms"])
        if self.edge_cutoffs:
            self.n_edges_per_shard.append(_count_edges(arrays, self.edge_cutoffs))
        self.elements.update(np.unique(arrays["numbers"]).tolist())
        for label in self.labels:
            self.labels[label] += int(arrays[f"has_{label}"].sum())
        self.buffer = []

    def finish(self, sources: list[str], meta: dict | None = None) -> None:
        """Write the last partial shard, then the index (see `write_index`)."""
        self.flush()
        if not self.entries:
            where = ", ".join(sources) or None
            raise DataError("no frames to convert (all skipped, or empty input)", where)
        self.write_index(sources, meta)

    def write_index(self, sources: list[str], meta: dict | None = None) -> None:
        """Write the sidecars (atom and edge counts), then (last) the index of every shard
        written so far."""
        n_atoms = np.concatenate(self.n_atoms_per_shard or [np.zeros(0, np.int32)])
        self.written.append(self.out_dir / N_ATOMS_FILE)
        atomic_write_bytes(self.out_dir / N_ATOMS_FILE, _save_bytes(n_atoms))
        if self.edge_cutoffs:
            empty = np.zeros((0, len(self.edge_cutoffs)), np.int32)
            self.written.append(self.out_dir / N_EDGES_FILE)
            atomic_write_bytes(self.out_dir / N_EDGES_FILE,
                               _save_bytes(np.concatenate(self.n_edges_per_shard or [empty])))
        index = {
            "format": FORMAT,
            "version": VERSION,
            "created_by": f"mlip {__version__}",
            "n_frames": self.n_frames,
            "n_atoms": self.n_atoms,
            "elements": sorted(self.elements),
            "labels": self.labels,
            "sources": sources,
            "shards": self.entries,
        }
        if self.edge_cutoffs:
            index["edge_cutoffs"] = self.edge_cutoffs
        if meta is not None:
            index["meta"] = meta
        atomic_write_bytes(self.out_dir / INDEX_FILE, json.dumps(index, indent=1).encode())

    def discard(self) -> None:
        """Remove every file this writer created (called when the conversion fails)."""
        for path in self.written:
            path.unlink(missing_ok=True)


def _pack_frames(frames: list[Frame], dtype=np.float64) -> dict[str, np.ndarray]:
    """Concatenate frames into the shard arrays (see the module docstring), labels zero-filled.
    ``dtype``: of positions, forces, cells and stresses (energies are always float64)."""
    return {
        "numbers": np.concatenate([f.numbers for f in frames]).astype(np.int32),
        "positions": np.concatenate([f.positions for f in frames]).astype(dtype),
        "forces": np.concatenate(
            [np.zeros((f.n_atoms, 3)) if f.forces is None else f.forces for f in frames]
        ).astype(dtype),
        "n_atoms": np.array([f.n_atoms for f in frames], np.int32),
        "cell": np.stack([f.cell for f in frames]).astype(dtype),
        "pbc": np.stack([f.pbc for f in frames]).astype(bool),
        "energy": np.array([0.0 if f.energy is None else f.energy for f in frames], np.float64),
        "stress": np.stack(
            [np.zeros((3, 3)) if f.stress is None else f.stress for f in frames]
        ).astype(dtype),
        "has_energy": np.array([f.energy is not None for f in frames]),
        "has_forces": np.array([f.forces is not None for f in frames]),
        "has_stress": np.array([f.stress is not None for f in frames]),
    }


_INFO_KINDS = (str, bool, int, float)


def _info_kind(value):
    """The scalar kind of an info value (bool before int: True is an int), or None."""
    if isinstance(value, np.generic):
        value = value.item()
    return next((kind for kind in _INFO_KINDS if isinstance(value, kind)), None)


def _pack_info(frames: list[Frame]) -> dict[str, np.ndarray]:
    """[f] arrays of the info entries every frame has as a scalar of one kind."""
    packed = {}
    for key in sorted(set.intersection(*(set(frame.info) for frame in frames))):
        values = [frame.info[key] for frame in frames]
        kinds = {_info_kind(value) for value in values}
        if len(kinds) == 1 and None not in kinds and "/" not in key:
            packed[key] = np.array([np.asarray(v).item() for v in values])
    return packed


def _pack_extras(frames: list[Frame], shard: int, warned: set[str]) -> dict[str, np.ndarray]:
    """Per-atom extras every frame of the shard has, concatenated; the rest dropped with a
    warning (once per name per conversion)."""
    packed = {}
    for name in sorted(set().union(*(frame.atom_extras for frame in frames))):
        values = [frame.atom_extras.get(name) for frame in frames]
        problem = _extra_problem(values)
        if problem is None:
            packed[name] = np.concatenate([np.asarray(v) for v in values])
        elif name not in warned:
            warned.add(name)
            log.warning("per-atom array %r dropped from shard %d (and any later shard "
                        "with the same problem): %s", name, shard, problem)
    return packed


def _extra_problem(values: list) -> str | None:
    """Why these per-frame arrays cannot be stored as one concatenated array, or None."""
    if any(v is None for v in values):
        return "only some frames have it"
    arrays = [np.asarray(v) for v in values]
    if any(a.dtype.hasobject for a in arrays):
        return "object arrays cannot be stored"
    if len({a.shape[1:] for a in arrays}) > 1:
        return "its per-atom shape differs between frames"
    return None


def _count_edges(arrays: dict[str, np.ndarray], cutoffs: list[float]) -> np.ndarray:
    """int32 [f, len(cutoffs)]: directed edges of each frame of the shard ``arrays`` at each
    cutoff, from the stored (possibly float32) geometry, so they match the graphs the loader
    builds from the frames read back."""
    offsets = np.concatenate([[0], np.cumsum(arrays["n_atoms"], dtype=np.int64)])
    positions = arrays["positions"].astype(np.float64)
    cells, pbcs = arrays["cell"].astype(np.float64), arrays["pbc"]
    counts = np.zeros((len(offsets) - 1, len(cutoffs)), np.int32)
    for j in range(len(counts)):
        for k, cutoff in enumerate(cutoffs):
            edges = neighbor_list(positions[offsets[j]:offsets[j + 1]], cells[j], pbcs[j], cutoff)
            counts[j, k] = len(edges.senders)
    return counts


def _save_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class ShardedDataset:
    """Random access to the frames of an ``mlip-shards`` directory (see the module docstring).

    Keeps at most ``cache_shards`` shards' arrays in memory (least recently used goes first),
    so memory is constant in the dataset size. Access in shard order (or shard-local shuffled
    order within ``cache_shards`` shards, as the loader does) loads each shard once.

    Attributes:
        path: the dataset directory.
        n_atoms: int32 [n_frames], atoms per frame (from ``n_atoms.npy``, no shard loaded).
        shard_ranges: [start, stop) frame ranges, one per shard, in order.
        elements: sorted atomic numbers present in the dataset.
        labels: number of frames carrying each label ("energy", "forces", "stress").
        sources: the input paths the dataset was converted from.
        meta: the index's free-form ``meta`` object ({} when absent).
        edge_cutoffs: the radii (Å) at which ``n_edges`` counts edges ([] when not stored).

    Raises DataError naming the file for a missing, unreadable or malformed index, an index of
    another format or version, a missing or wrong-size shard (when opening) and a shard whose
    contents do not match its checksum (when it is first loaded).
    """

    def __init__(self, path, *, cache_shards: int = DEFAULT_CACHE_SHARDS):
        if cache_shards < 1:
            raise MlipError(f"cache_shards must be at least 1, got {cache_shards}")
        self.path = Path(path)
        index = _read_index(self.path / INDEX_FILE)
        self._entries: list[dict] = index["shards"]
        self.elements = tuple(index["elements"])
        self.labels = dict(index["labels"])
        self.sources = list(index["sources"])
        self.meta = dict(index.get("meta", {}))
        self._starts = np.cumsum([0] + [entry["n_frames"] for entry in self._entries])
        self.shard_ranges = [(int(a), int(b)) for a, b in zip(self._starts[:-1], self._starts[1:])]
        self.n_atoms = _read_n_atoms(self.path / N_ATOMS_FILE, index, self.shard_ranges)
        self.edge_cutoffs = [float(r) for r in index.get("edge_cutoffs", [])]
        self._n_edges = _read_n_edges(self.path / N_EDGES_FILE, index) if self.edge_cutoffs else None
        for entry in self._entries:
            _check_shard_size(self.path / entry["file"], entry)
        self._cache_shards = cache_shards
        self._cache: collections.OrderedDict[int, _Shard] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> Frame:
        """Frame ``i`` (negative counts from the end), with source = its shard file, index = i."""
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range for a dataset of {n} frames")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._shard(k).frame(i - int(self._starts[k]), i)

    def n_edges(self, cutoff: float) -> np.ndarray | None:
        """int32 [n_frames]: directed edges of every frame's graph at ``cutoff`` (Å), counted at
        conversion; None when the dataset has no counts at that cutoff."""
        if float(cutoff) not in self.edge_cutoffs:
            return None
        return self._n_edges[:, self.edge_cutoffs.index(float(cutoff))]

    def shard_arrays(self, k: int) -> dict[str, np.ndarray]:
        """The arrays of shard ``k`` as stored (see the module docstring), read-only views:
        for passes over every frame that need a few arrays, not Frames."""
        arrays = {}
        for name, values in self._shard(k).arrays.items():
            view = values.view()
            view.flags.writeable = False
            arrays[name] = view
        return arrays

    def __getstate__(self) -> dict:
        """Pickled without its loaded shards and lock (for loader worker processes)."""
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = collections.OrderedDict(), None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def __repr__(self) -> str:
        return (f"ShardedDataset({str(self.path)!r}: {len(self)} frames, "
                f"{len(self._entries)} shards, elements {list(self.elements)})")

    @property
    def loaded_shards(self) -> tuple[int, ...]:
        """Indices of the shards now held in memory, least recently used first."""
        return tuple(self._cache)

    def _shard(self, k: int) -> _Shard:
        with self._lock:
            if k in self._cache:
                self._cache.move_to_end(k)
                return self._cache[k]
            # Evict before loading, so at most cache_shards shards are ever alive at once.
            while len(self._cache) >= self._cache_shards:
                self._cache.popitem(last=False)
            entry = self._entries[k]
            shard = self._cache[k] = _Shard.load(self.path / entry["file"], entry)
            return shard


def open_dataset(path, *, cache_shards: int = DEFAULT_CACHE_SHARDS) -> ShardedDataset:
    """Open the sharded dataset in directory ``path`` (see `ShardedDataset`)."""
    return ShardedDataset(path, cache_shards=cache_shards)


def _read_index(path: Path) -> dict:
    """Parse and check ``index.json``; DataError naming it for anything wrong."""
    try:
        index = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(
            f"no {INDEX_FILE}: not an {FORMAT} dataset (create one with `mlip convert`), "
            "or its conversion did not finish",
            path.parent,
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable index ({exc})", path) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DataError(f"not an {FORMAT} index (format {found!r})", path)
    if index.get("version") != VERSION:
        raise DataError(
            f"{FORMAT} version {index.get('version')!r} is not supported (this mlip reads "
            f"version {VERSION}); convert the data again with this mlip",
            path,
        )
    try:
        _check_index(index)
    except ValueError as exc:
        raise DataError(f"malformed index: {exc}", path) from None
    return index


_INDEX_FIELDS = {"n_frames": int, "n_atoms": int, "elements": list, "labels": dict,
                 "sources": list, "shards": list}
_SHARD_FIELDS = {"file": str, "n_frames": int, "n_atoms": int, "bytes": int, "sha256": str,
                 "atom_extras": list}
_SHARD_ARRAYS = {"numbers", "positions", "forces", "n_atoms", "cell", "pbc", "energy", "stress",
                 "has_energy", "has_forces", "has_stress"}


def _check_index(index: dict) -> None:
    """Raise ValueError if the index's fields are missing, mistyped or inconsistent."""
    _check_fields(index, _INDEX_FIELDS, "index")
    for entry in index["shards"]:
        _check_fields(entry, _SHARD_FIELDS, "shard entry")
        # A plain name keeps reads inside the dataset directory.
        if Path(entry["file"]).name != entry["file"]:
            raise ValueError(f"shard file {entry['file']!r} is not a plain file name")
    for key in ("n_frames", "n_atoms"):
        if index[key] != sum(entry[key] for entry in index["shards"]):
            raise ValueError(f"{key} = {index[key]} does not match the sum over shards")
    cutoffs = index.get("edge_cutoffs", [])
    if not isinstance(cutoffs, list) or not all(isinstance(r, (int, float)) and r > 0 for r in cutoffs):
        raise ValueError(f"edge_cutoffs {cutoffs!r} is not a list of positive radii")


def _check_fields(record, fields: dict[str, type], what: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{what} is a {type(record).__name__}, not an object")
    for key, kind in fields.items():
        if not isinstance(record.get(key), kind):
            raise ValueError(f"{what} field {key!r} is missing or not of type {kind.__name__}")


def _read_n_atoms(path: Path, index: dict, shard_ranges: list[tuple[int, int]]) -> np.ndarray:
    """Load the per-frame atom counts and check them against the index."""
    try:
        n_atoms = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError("per-frame atom counts are missing", path) from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"unreadable per-frame atom counts ({exc})", path) from None
    ok = n_atoms.shape == (index["n_frames"],) and np.issubdtype(n_atoms.dtype, np.integer)
    if ok:
        sums = [int(n_atoms[a:b].sum()) for a, b in shard_ranges]
        ok = sums == [entry["n_atoms"] for entry in index["shards"]]
    if not ok:
        raise DataError(f"per-frame atom counts do not match {INDEX_FILE}", path)
    return n_atoms


def _read_n_edges(path: Path, index: dict) -> np.ndarray:
    """Load the per-frame edge counts [F, len(edge_cutoffs)] and check their shape."""
    try:
        n_edges = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"per-frame edge counts are missing ({INDEX_FILE} lists edge_cutoffs)", path) from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"unreadable per-frame edge counts ({exc})", path) from None
    shape = (index["n_frames"], len(index["edge_cutoffs"]))
    if n_edges.shape != shape or not np.issubdtype(n_edges.dtype, np.integer) or (n_edges < 0).any():
        raise DataError(f"per-frame edge counts have shape {n_edges.shape}, {INDEX_FILE} needs {shape}", path)
    return n_edges


def _check_shard_size(path: Path, entry: dict) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"shard file is missing (listed in {INDEX_FILE})", path) from None
    if size != entry["bytes"]:
        raise DataError(
            f"shard file has {size} bytes, {INDEX_FILE} says {entry['bytes']} "
            "(truncated or replaced?)",
            path,
        )


@dataclasses.dataclass
class _Shard:
    """One shard's arrays in memory, with per-frame atom offsets."""

    path: Path
    arrays: dict[str, np.ndarray]
    offsets: np.ndarray  # int64 [f + 1], first atom of each frame within the shard
    extras: list[str]
    info_keys: list[str]

    @classmethod
    def load(cls, path: Path, entry: dict) -> _Shard:
        """Read and verify a shard (size, SHA-256, array shapes); DataError naming the file."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read shard ({exc.strerror or exc})", path) from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DataError(f"shard contents do not match the checksum in {INDEX_FILE} "
                            "(truncated or corrupted)", path)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"unreadable shard ({exc})", path) from None
        missing = _SHARD_ARRAYS - set(arrays)
        if missing:
            raise DataError(f"shard lacks arrays {sorted(missing)}", path)
        n_atoms = arrays["n_atoms"]
        if len(n_atoms) != entry["n_frames"] or int(n_atoms.sum()) != entry["n_atoms"]:
            raise DataError(f"shard arrays do not match {INDEX_FILE}", path)
        offsets = np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)])
        info_keys = [name[len(_INFO_PREFIX):] for name in arrays if name.startswith(_INFO_PREFIX)]
        if any(len(arrays[_INFO_PREFIX + key]) != len(n_atoms) for key in info_keys):
            raise DataError("shard's per-frame info arrays do not match its frame count", path)
        return cls(path, arrays, offsets, list(entry["atom_extras"]), info_keys)

    def frame(self, j: int, index: int) -> Frame:
        """Frame ``j`` of this shard as a Frame of copies (so it never pins the shard)."""
        a, b = int(self.offsets[j]), int(self.offsets[j + 1])
        arrays = self.arrays
        return make_frame(
            arrays["numbers"][a:b],
            arrays["positions"][a:b],
            arrays["cell"][j],
            arrays["pbc"][j],
            energy=float(arrays["energy"][j]) if arrays["has_energy"][j] else None,
            forces=arrays["forces"][a:b] if arrays["has_forces"][j] else None,
            stress=arrays["stress"][j] if arrays["has_stress"][j] else None,
            atom_extras={name: arrays[_EXTRA_PREFIX + name][a:b].copy() for name in self.extras},
            info={key: arrays[_INFO_PREFIX + key][j].item() for key in self.info_keys},
            source=str(self.path),
            index=index,
        )
