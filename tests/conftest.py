import atexit
import gc
import os
import shutil
import tempfile
from pathlib import Path

# Compile fast, run slower: the suite's programs are small and most run a few times, so LLVM's
# optimisation passes cost more than they save. Measured on one core (2026-12-02): the eight
# slowest tests of test_sim_relax.py and test_sim_md.py took 376 s at XLA's default level and
# 255 s at 0. The programs (HLO) are the same; only the machine code is less optimised. Set
# before JAX starts its backend; subprocesses of the tests inherit it. To test the machine code
# users run, set the level yourself: XLA_FLAGS=--xla_backend_optimization_level=2 pytest.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Commands under test turn on JAX's persistent compilation cache (mlip.calculator): the suite
# gives them an empty temporary one, never what other processes left in ~/.cache/mlip/jax.
os.environ["MLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlip-test-jax-cache-")
atexit.register(shutil.rmtree, os.environ["MLIP_CACHE_DIR"], ignore_errors=True)

# Physics tests compare against finite differences and float64 references.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)

#: ../shared/data next to the repository (absent on some machines: tests using it skip).
SHARED_DATA = Path(os.environ.get("MLIP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Path of a file in shared/data, or skip the test with a reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"reference data {path} is not available on this machine")
    return path


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. The whole suite in one process
    compiles hundreds of programs, and each XLA:CPU executable holds memory mappings for its
    machine code (~400 for a small model program). Without this, jax 0.10.2 on CPU crashed
    three runs in a row inside XLA (a segfault while compiling, or while the persistent cache
    loaded an executable): the cause is Linux's per-process limit of memory mappings
    (vm.max_map_count, 65,530), at which LLVM's allocations fail and XLA segfaults instead of
    raising (benchmarks/map_limit.py reproduces it). mlip guards its own call sites
    (mlip.runtime.release_compiled_programs_if_needed); tests also jit mlip's functions
    directly, so the suite clears between modules (peak ~24,000 mappings)."""
    yield
    jax.clear_caches()
    gc.collect()
