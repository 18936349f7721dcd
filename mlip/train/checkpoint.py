"""Training checkpoints: the whole `TrainState` plus the host-side loop state, one file each.

A checkpoint is an npz (written atomically: temp file, fsync, rename) holding every leaf of the
TrainState in tree order and a JSON header with the loop state (epoch, step within the epoch,
plateau and best-model bookkeeping) and the model config. Restoring needs a template state of
the same structure (built from the same config), which also checks that the file fits it.
``checkpoints/ckpt-<step>.npz``; the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mlip.errors import MlipError
from mlip.fileio import TEMP_PREFIX, atomic_write_bytes, npz_bytes

log = logging.getLogger("mlip.train")

FORMAT = "mlip-train-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(directory: Path, state, loop_state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (a pytree of arrays) and ``loop_state`` (JSON values) as
    ``directory/ckpt-<step>.npz``; delete all but the newest ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(TEMP_PREFIX + "*"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    leaves = jax.tree.leaves(jax.device_get(state))
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_leaves": len(leaves), **loop_state}
    arrays = {"__header__": np.array(json.dumps(header))}
    arrays.update({f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    path = directory / f"ckpt-{int(loop_state['step']):09d}.npz"
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
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise MlipError(f"{path}: not an mlip training checkpoint of version {FORMAT_VERSION}")
    return header, contents


def read_loop_state(path: Path) -> dict[str, Any]:
    """The loop state (JSON header) of a checkpoint, without its arrays."""
    header, _ = _read(path, arrays=False)
    return {k: v for k, v in header.items() if k not in ("format", "format_version", "num_leaves")}


def load_checkpoint(path: Path, template) -> tuple[Any, dict[str, Any]]:
    """(state, loop_state) from ``path``; ``template`` is a state of the expected structure.
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
    loop_state = {k: v for k, v in header.items() if k not in ("format", "format_version", "num_leaves")}
    return jax.tree.unflatten(treedef, restored), loop_state
