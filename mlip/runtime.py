"""Runtime choices: how mlip computes, never what it computes. Each has one place, is passed as an
argument (or turned on by an explicit call), is never read at import and never saved with a model.

    Runtime.matmul_precision  precision of float32 matmuls, the same at every call site (predict,
                              evaluate, the calculator, mlip.sim, training, the Hessian):
                              "highest" by default (full float32, no TF32 on GPUs).
    Runtime.kernel            the edge chain's implementation: "auto", "reference" or "pallas"
                              (`kernels.selection`; "auto" is the fused kernel iff the platform
                              the call runs on is a GPU).
    Runtime.edge_chunk        edges per chunk of the message sum (mlip.nn.message_passing).
    enable_compilation_cache  JAX's persistent compilation cache, in `cache_dir()`
                              ($MLIP_CACHE_DIR, read when called, or ~/.cache/mlip/jax); off
                              until a program (the `mlip` command does) turns it on.
    release_compiled_programs_if_needed
                              keeps a long session clear of the memory-mapping limit at which
                              XLA:CPU crashes while compiling (see its docstring).
    tune_allocator            glibc malloc settings that spare XLA:CPU's large temporary
                              buffers a fresh mmap and page faults on every call; the `mlip`
                              command turns them on ($MLIP_SYSTEM_MALLOC=1: off).

`mlip.potential.Potential` carries ``edge_chunk``, ``kernel`` and ``matmul_precision`` as
fields (``dataclasses.replace(potential, matmul_precision="default")``) and hands them on as
one `Runtime`; a training run takes them from ``training.kernel`` and
``training.matmul_precision``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import tempfile
import time
import zlib
from pathlib import Path

import jax

from mlip.errors import MlipError
from mlip.nn.message_passing import DEFAULT_EDGE_CHUNK

log = logging.getLogger("mlip.runtime")

#: Matmul precisions, as jax.default_matmul_precision takes them: "highest" (full float32),
#: "high" (bfloat16_3x on GPUs) and "default" (the backend's own: TF32 on NVIDIA GPUs, which
#: costs simulations accuracy: benchmarks/RESULTS.md, "GPU device check"). Float64 matmuls
#: are exact whatever the setting.
MATMUL_PRECISIONS = ("highest", "high", "default")
DEFAULT_MATMUL_PRECISION = "highest"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a potential is computed (hashable: a static argument of jitted functions). Every
    value gives the same function up to rounding; none of them is saved with a model.

    edge_chunk: edges per chunk of the message sum (None: one pass); see `Potential`.
    kernel: "auto" | "reference" | "pallas" (kernels/selection.py).
    matmul_precision: one of MATMUL_PRECISIONS.
    """

    edge_chunk: int | None = DEFAULT_EDGE_CHUNK
    kernel: str = "auto"
    matmul_precision: str = DEFAULT_MATMUL_PRECISION

    def __post_init__(self):
        from kernels.selection import CHOICES  # kernels imports mlip.nn: not at module level

        if self.edge_chunk is not None and (not isinstance(self.edge_chunk, int) or self.edge_chunk < 1):
            raise MlipError(f"edge_chunk must be a positive int or None, got {self.edge_chunk!r}")
        if self.kernel not in CHOICES:
            raise MlipError(f"kernel must be one of {', '.join(CHOICES)}, got {self.kernel!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise MlipError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                            f"got {self.matmul_precision!r}")


# -- the persistent compilation cache -------------------------------------------------------

def cache_dir() -> Path:
    """Where `enable_compilation_cache` puts JAX's persistent compilation cache by default:
    $MLIP_CACHE_DIR if set (read now, not at import), else ~/.cache/mlip/jax."""
    return Path(os.environ.get("MLIP_CACHE_DIR") or Path.home() / ".cache" / "mlip" / "jax")


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> None:
    """Turn on JAX's persistent compilation cache in ``directory`` (None: `cache_dir()`), so
    that a second process skips most compilation. Process-wide (it sets ``jax.config``), hence
    an explicit call: the `mlip` command makes it; constructing a Calculator or Potential does
    not. A cache directory JAX already uses (set by the program) is left as it is.

    The cache only saves time, so it never stops a run: a directory that cannot be created or
    written leaves it off with a warning; entries left incomplete by a process killed while
    writing are removed (`repair_compilation_cache`), so they are compiled and written afresh
    (JAX itself never replaces an entry); any other entry JAX cannot read is compiled afresh.
    """
    if jax.config.jax_compilation_cache_dir:
        return
    directory = Path(directory) if directory is not None else cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        repair_compilation_cache(directory)
    except OSError as exc:
        log.warning("compilation cache off: cannot write %s (%s); every run compiles afresh", directory, exc)
        return
    jax.config.update("jax_raise_persistent_cache_errors", False)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


#: File names of JAX's cache entries (jax._src.lru_cache).
CACHE_ENTRY_SUFFIX = "-cache"
#: An entry written this recently (seconds) may still be being written by another process.
RECENT_WRITE_SECONDS = 60.0
#: File in the cache directory whose modification time says when it was last checked.
CHECKED_MARKER = ".mlip-checked"


def repair_compilation_cache(directory: str | os.PathLike) -> list[Path]:
    """Remove the entries of a JAX compilation cache ``directory`` that are incomplete (their
    compressed stream ends early: a process was killed while JAX wrote them, which it does in
    place); returns them. JAX skips an entry it cannot read but never rewrites it, so without
    this every later process would pay the compilation again. Entries compressed with zstd are
    checked when a zstd decoder is installed (JAX then uses it too).

    Only entries written since the last check (CHECKED_MARKER) are read, so a large cache
    costs nothing at each start; entries younger than RECENT_WRITE_SECONDS are left to the
    next check (another process may be writing them)."""
    directory = Path(directory)
    marker, now = directory / CHECKED_MARKER, time.time()
    since = marker.stat().st_mtime - 2 * RECENT_WRITE_SECONDS if marker.exists() else float("-inf")
    removed = []
    for path in directory.glob(f"*{CACHE_ENTRY_SUFFIX}"):
        try:
            written = path.stat().st_mtime
            if written < since or now - written < RECENT_WRITE_SECONDS:
                continue
            complete = _complete_stream(path.read_bytes())
        except OSError:
            continue  # vanished or unreadable: JAX will skip it, as before
        if not complete:
            path.unlink(missing_ok=True)
            removed.append(path)
    marker.touch()
    if removed:
        log.warning("compilation cache %s: removed %d incomplete entr%s (compiled afresh when next needed)",
                    directory, len(removed), "y" if len(removed) == 1 else "ies")
    return removed


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _complete_stream(data: bytes) -> bool:
    """Whether ``data`` is a whole zlib or zstd stream (True when it cannot be judged)."""
    if data.startswith(_ZSTD_MAGIC):
        decoder = _zstd_decoder()
        if decoder is None:
            return True
        try:
            decoder(data)
            return True
        except Exception:  # the decoders raise their own error types
            return False
    decompressor = zlib.decompressobj()
    try:
        decompressor.decompress(data)
    except zlib.error:
        return False
    return decompressor.eof


def _zstd_decoder():
    try:
        from compression import zstd  # Python >= 3.14

        return zstd.decompress
    except ImportError:
        pass
    try:
        import zstandard

        return zstandard.ZstdDecompressor().decompress
    except ImportError:
        return None


# -- compiled programs and the memory-mapping limit -----------------------------------------

#: Release compiled programs once the process holds this fraction of the kernel's limit of
#: memory mappings (vm.max_map_count).
MAP_COUNT_FRACTION = 0.5
#: Seconds between two looks at the mapping count (counting /proc/self/maps takes ~5 ms).
MAP_CHECK_INTERVAL = 2.0
_last_check = [float("-inf")]


def release_compiled_programs_if_needed(*, force_check: bool = False) -> bool:
    """Drop every compiled program (`jax.clear_caches`) when the process holds more than
    MAP_COUNT_FRACTION of the memory mappings Linux allows it; True if it did.

    Why: every XLA:CPU executable keeps its machine code in memory mappings (about 400 for a
    small mlip model program), and at the kernel's limit (vm.max_map_count, 65,530 by default)
    LLVM's allocation fails inside XLA, which then crashes the process with a segfault while
    compiling or while loading an executable from the persistent cache
    (benchmarks/map_limit.py reproduces it). A session that compiles ~150 model programs (many
    structure sizes, potentials or precisions) would reach it. Dropping the compiled programs
    releases their mappings; the ones still in use are compiled again (or read from the
    persistent cache) on their next call. Called by mlip where no trace is under way (each
    Potential call, each mlip.sim run, each training run), at most every MAP_CHECK_INTERVAL
    seconds.
    """
    now = time.monotonic()
    if not force_check and now - _last_check[0] < MAP_CHECK_INTERVAL:
        return False
    _last_check[0] = now
    count, limit = _map_count(), _map_limit()
    if count is None or limit is None or count <= MAP_COUNT_FRACTION * limit:
        return False
    log.warning("this process holds %d memory mappings of the %d Linux allows (vm.max_map_count); "
                "releasing compiled programs, which XLA:CPU would otherwise crash on (they are "
                "compiled again when next used)", count, limit)
    jax.clear_caches()
    return True


def _map_count() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return None


def _map_limit() -> int | None:
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None


# -- the C allocator -------------------------------------------------------------------------

#: glibc mallopt parameters (malloc.h) -> value. XLA:CPU mallocs its temporary buffer (tens of
#: kB per padded edge: 680 MB at Si 512) on every call; glibc serves blocks that large with a
#: fresh mmap and unmaps them on free, so every call page-faults and zeroes all of it (a third
#: of the wall time at Si 512: benchmarks/RESULTS.md). Without mmap for large blocks, and
#: without trimming the heap, the block is reused; one arena, because XLA's worker thread
#: would otherwise allocate from an arena of its own, where the same happens.
MALLOPT_SETTINGS = {
    -8: 1,  # M_ARENA_MAX
    -4: 0,  # M_MMAP_MAX
    -1: 2**31 - 1,  # M_TRIM_THRESHOLD, bytes
    -2: 256 << 20,  # M_TOP_PAD, bytes
}
#: Set to 1 to leave the C allocator as it is (glibc's defaults, or the MALLOC_* variables).
OPT_OUT_VARIABLE = "MLIP_SYSTEM_MALLOC"


def tune_allocator() -> bool:
    """Apply MALLOPT_SETTINGS to glibc's malloc in this process; True if applied. Process-wide
    (memory freed stays with the process for reuse: its resident size stays at its peak), hence
    an explicit call, which the `mlip` command makes before JAX starts its threads; the earlier,
    the better (threads that allocated before keep their own arenas).

    Left alone (False): where $MLIP_SYSTEM_MALLOC is 1, where the user set glibc's own MALLOC_*
    variables (their choice holds), and where the C library is not glibc.
    """
    if os.environ.get(OPT_OUT_VARIABLE, "0") not in ("", "0"):
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl and macOS have no such mallopt parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in MALLOPT_SETTINGS.items())
