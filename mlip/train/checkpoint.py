"""Training checkpoints: the whole `TrainState` plus the host-side `LoopState`, one file each.

A checkpoint is an npz (written atomically: temp file, fsync, rename) holding every leaf of the
TrainState in tree order and a JSON header: ``{"format", "format_version": 2, "num_leaves",
"loop": LoopState fields, "model": FacetConfig.to_dict()}``. Version 1 files (the loop state's
fields and "model" at the top level of the header) still resume. Restoring needs a template
state of the same structure (built from the same config), which also checks that the file
fits it. ``checkpoints/ckpt-<step>.npz``; the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from mlip.errors import MlipError
from mlip.fileio import TEMP_PREFIX, atomic_write_bytes, npz_bytes

log = logging.getLogger("mlip.train")

FORMAT = "mlip-train-checkpoint"
FORMAT_VERSION = 2
#: Versions this module reads: 1 (loop fields at the header's top level) and 2.
READABLE_VERSIONS = (1, 2)


class LoopState(NamedTuple):
    """Where a training run stands, on the host (a pytree of Python scalars; checkpointed in
    the header, so a resumed run continues exactly).

    epoch: finished epochs. epoch_step: steps taken in the current epoch. step: optimiser
    steps in all. lr_factor: the plateau schedule's multiplier of the learning rate.
    best_loss, best_epoch: validation loss and epoch of best.mlip (None before the first).
    plateau_best, plateau_epochs: the plateau schedule's best loss and epochs without a
    better one. seconds: training time so far. epoch_loss_sum, epoch_loss_steps: the current
    epoch's training loss so far (a resumed epoch reports the mean over all its steps).
    """

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0
    lr_factor: float = 1.0
    best_loss: float | None = None
    best_epoch: int | None = None
    plateau_best: float | None = None
    plateau_epochs: int = 0
    seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "LoopState":
        """From a checkpoint header's values; fields a file lacks (written before they
        existed) take their defaults, keys that are not fields are ignored."""
        return cls(**{k: v for k, v in values.items() if k in cls._fields})


def save_checkpoint(directory: Path, state, loop: LoopState, model: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (a pytree of arrays), ``loop`` and the ``model`` config (JSON values) as
    ``directory/ckpt-<step>.npz``; delete all but the newest ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(TEMP_PREFIX + "*"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    leaves = jax.tree.leaves(jax.device_get(state))
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_leaves": len(leaves),
              "loop": loop._asdict(), "model": model}
    arrays = {"__header__": np.array(json.dumps(header))}
    arrays.update({f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    path = directory / f"ckpt-{int(loop.step):09d}.npz"
    atomic_write_bytes(path, npz_bytes(arrays))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    return sorted(Path(directory).glob("ckpt-*.npz")) if Path(directory).is_dir() else []


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint in ``directory`` that reads back whole, or None. Newer ones that
    do not (a corrupt disk, a file truncated by hand) are skipped with a warning, so a run
    resumes from the one before."""
    for path in reversed(list_checkpoints(directory)):
        try:
            _read(path, arrays=True)
            return path
        except MlipError as exc:
            log.warning("skipping an unreadable checkpoint: %s", exc)
    return None


def _read(path: Path, arrays: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a checkpoint file (arrays only if asked); MlipError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(str(archive["__header__"]))
            contents = {k: archive[k] for k in archive.files if k != "__header__"} if arrays else {}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, json.JSONDecodeError) as exc:
        raise MlipError(f"{path}: not a readable training checkpoint (corrupt or truncated: {exc})") from None
    version = header.get("format_version")
    if header.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise MlipError(f"{path}: not an mlip training checkpoint (format {header.get('format')!r}, "
                        f"version {version!r}; this mlip reads versions {READABLE_VERSIONS})")
    if version == 1:  # the loop state's fields and "model" at the top level
        skip = ("format", "format_version", "num_leaves", "model")
        header = {**{k: header[k] for k in skip if k in header},
                  "loop": {k: v for k, v in header.items() if k not in skip}}
    if "model" not in header:
        raise MlipError(f"{path}: training checkpoint without its model config")
    return header, contents


def read_checkpoint_header(path: Path) -> tuple[LoopState, dict[str, Any]]:
    """(loop state, model config as saved) of a checkpoint, without its arrays."""
    header, _ = _read(path, arrays=False)
    return LoopState.from_json(header["loop"]), header["model"]


def load_checkpoint(path: Path, template) -> tuple[Any, LoopState]:
    """(state, loop state) from ``path``; ``template`` is a state of the expected structure.
    Corrupt, truncated or mismatched files raise MlipError naming the file."""
    header, contents = _read(path, arrays=True)
    leaves, treedef = jax.tree.flatten(template)
    if header["num_leaves"] != len(leaves) or len(contents) != len(leaves):
        raise MlipError(f"{path}: checkpoint has {header['num_leaves']} arrays, this run's state has "
                        f"{len(leaves)} (a different model or optimiser config)")
    restored = []
    for i, leaf in enumerate(leaves):
        value = contents[f"leaf_{i:05d}"]
        if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
            raise MlipError(f"{path}: array {i} is {value.dtype}{list(value.shape)}, this run expects "
                            f"{np.asarray(leaf).dtype}{list(np.shape(leaf))} (a different model or precision)")
        restored.append(value)
    return jax.tree.unflatten(treedef, restored), LoopState.from_json(header["loop"])
