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


def compression(path) -> str | None:
    """The module ("gzip", "bz2", "lzma") that compresses ``path``, by its suffix; None if plain."""
    return _COMPRESSORS.get(Path(path).suffix.lower())


def _codec(path):
    """The imported module of `compression`, or None."""
    import importlib

    module = compression(path)
    return None if module is None else importlib.import_module(module)


def uncompressed_name(path) -> str:
    """``path``'s file name without a compression suffix (seeds.extxyz.xz -> seeds.extxyz): the
    name that tells the format."""
    name = Path(path).name
    return name[: -len(Path(name).suffix)] if compression(path) else name


def open_text(path):
    """``path`` opened for reading text, decompressed on the fly when it is .gz, .bz2 or .xz.
    Read it front to back: ASE's own readers seek in a file, and every backward seek in a
    compressed one decompresses it again from the start (1,500 frames: 86 s against 0.8 s)."""
    codec = _codec(path)
    return open(path, encoding="utf-8") if codec is None else codec.open(path, "rt", encoding="utf-8")


def read_atoms(path, index=-1, format: str | None = None):
    """``ase.io.read(path, index)``, with a compressed file decompressed into memory first
    (see `open_text`); the format comes from the uncompressed name unless given."""
    import ase.io
    from ase.io.formats import filetype

    if compression(path) is None:
        return ase.io.read(path, index=index, format=format)
    with open_text(path) as file:
        text = io.StringIO(file.read())
    return ase.io.read(text, index=index, format=format or filetype(uncompressed_name(path), read=False))


def atomic_write_text(path, write) -> None:
    """Write a text file atomically: ``write(file)`` fills a text buffer, which then replaces
    ``path`` in one step (see `atomic_write_bytes`). A path ending in .gz, .bz2 or .xz is
    written compressed with that format (seeds.extxyz.xz: a quarter of the size)."""
    buffer = io.StringIO()
    write(buffer)
    data = buffer.getvalue().encode()
    codec = _codec(path)
    atomic_write_bytes(path, data if codec is None else codec.compress(data))
