import os
from pathlib import Path

import jax
import pytest

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
