"""Atomic file writes: nothing a user wrote is lost or left half-written by a crash."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

#: Prefix of the temporary files (so leftovers of a killed process can be found and removed).
TEMP_PREFIX = ".tmp-"

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent/old or complete.

    Writes a temporary file in the same directory, flushes it to disk, then renames it over
    ``path`` (atomic on POSIX). The file gets the usual permissions from the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)
            file.write(data)
            file.flush()
            # Durable before visible: after a power loss the name never points at lost data.
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict[str, np.ndarray], *, compress: bool = False) -> bytes:
    """An .npz archive of ``arrays``, in memory (deflated when ``compress``)."""
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


#: Compressors of text files by suffix, the ones ASE (and so mlip) reads transparently.
_COMPRESSORS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def atomic_write_text(path, write) -> None:
    """Write a text file atomically: ``write(file)`` fills a text buffer, which then replaces
    ``path`` in one step (see `atomic_write_bytes`). A path ending in .gz, .bz2 or .xz is
    written compressed with that format (seeds.extxyz.xz: a quarter of the size)."""
    import importlib

    buffer = io.StringIO()
    write(buffer)
    data = buffer.getvalue().encode()
    compressor = _COMPRESSORS.get(Path(path).suffix)
    if compressor:
        data = importlib.import_module(compressor).compress(data)
    atomic_write_bytes(path, data)
