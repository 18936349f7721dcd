"""mlip.runtime.tune_allocator: glibc malloc settings in mlip's own processes, with opt-outs."""

import os
import platform
import subprocess
import sys

import pytest

from mlip import runtime

APPLY = "from mlip.runtime import tune_allocator; print(tune_allocator())"


def applied(env: dict) -> str:
    """What tune_allocator returns in a fresh process with environment ``env`` (not in this
    one: the settings are process-wide)."""
    done = subprocess.run([sys.executable, "-c", APPLY], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_settings_apply_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != runtime.OPT_OUT_VARIABLE}
    assert applied(env) == "True"


def test_the_opt_outs_leave_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(runtime.OPT_OUT_VARIABLE, "1")
    assert runtime.tune_allocator() is False
    monkeypatch.delenv(runtime.OPT_OUT_VARIABLE)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")  # the user's own glibc settings hold
    assert runtime.tune_allocator() is False
