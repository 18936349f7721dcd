"""Multi-process data parallelism: two `mlip train --distributed` processes (one CPU device
each, jax.distributed with a local coordinator, gloo collectives) train exactly like one
process with two devices, write their outputs once, and resume together (float64)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mlip.testing import lennard_jones_frames
from tests.test_train import tiny_config, write_data

CLI = [sys.executable, "-m", "mlip.cli", "train"]
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    """A TCP port on localhost for the coordinator; skip where none can be opened."""
    try:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            return s.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no TCP port on localhost for jax.distributed's coordinator: {exc}")


def _env(devices: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's, kept
    flags += f" --xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def _run_pair(config: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    """Run ``mlip train config --distributed`` as processes 0 and 1 of 2; their results."""
    port = _free_port()
    procs = [subprocess.Popen(CLI + [str(config), "-q", *extra, "--distributed", "--coordinator", f"localhost:{port}",
                                     "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(1), cwd=REPO)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:  # a failed peer leaves the other waiting in a collective
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


def _skip_without_cpu_collectives(results) -> None:
    """Skip (with the reason) where this jax/platform cannot reduce across CPU processes."""
    for r in results:
        if r.returncode and "UNIMPLEMENTED" in r.stderr:
            pytest.skip("this jax cannot run collectives across CPU processes: "
                        + r.stderr.strip().splitlines()[-1][:200])


def _arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[k] for k in sorted(archive.files) if k != "__header__"]


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert len(left) == len(right) > 0
    for i, (x, y) in enumerate(zip(left, right)):
        assert x.dtype == y.dtype and np.array_equal(x, y), f"{a.name} array {i} differs from {b}"


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip(f"jax {jax.__version__} has no CPU collectives across processes")
    lj_file = write_data(tmp_path / "lj.xyz", lennard_jones_frames(np.random.default_rng(0), 10, 8, rattle=0.25))
    configs = {}
    for name in ("one", "two"):
        configs[name] = tmp_path / f"{name}.yaml"
        tiny_config(tmp_path / name, lj_file, data={"max_graphs": 2},
                    training={"epochs": 2, "devices": "all"}).save(configs[name])
    single = subprocess.Popen(CLI + [str(configs["one"]), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(2), cwd=REPO)  # alongside the pair: CI has 2 cores
    pair = _run_pair(configs["two"])
    _, single_err = single.communicate(timeout=600)
    _skip_without_cpu_collectives(pair)
    assert single.returncode == 0, single_err[-3000:]
    for r in pair:
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    # 8 training frames, 2 per micro-batch, one micro-batch per device: 2 steps an epoch.
    names = [p.name for p in sorted((two / "checkpoints").iterdir())]
    assert names == ["ckpt-000000002.npz", "ckpt-000000004.npz"]
    for name in names:  # the sum of two gradients does not depend on the order: equal bits
        _assert_bitwise_equal(one / "checkpoints" / name, two / "checkpoints" / name)
    _assert_bitwise_equal(one / "last.mlip", two / "last.mlip")
    # Written once (process 0): one row per validation, one set of log lines.
    rows = (two / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert (two / "train.log").read_text().count("done: 4 steps") == 1

    # A run stopped after the first epoch's checkpoint resumes on both processes, exactly.
    shutil.copy(two / "checkpoints" / names[1], tmp_path / "final.npz")
    (two / "checkpoints" / names[1]).unlink()
    (two / "last.mlip").unlink()
    resumed = _run_pair(configs["two"], "--resume")
    for r in resumed:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "resumed from" in r.stderr and "at epoch 1, step 2" in r.stderr
    _assert_bitwise_equal(tmp_path / "final.npz", two / "checkpoints" / names[1])
    _assert_bitwise_equal(one / "last.mlip", two / "last.mlip")


def test_processes_that_see_different_checkpoints_refuse_to_start(tmp_path, monkeypatch):
    """An output_dir that is not shared (or a stale view of it) would resume the processes from
    different states: every process raises the same error instead. The all-gather is replaced
    by what process 1 would contribute (no checkpoint) next to this process's own."""
    from mlip.train import loop

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "ckpt-000000004.npz").write_bytes(b"")
    monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
    monkeypatch.setattr(loop.multihost_utils, "process_allgather", lambda x: np.array([x, -1]))
    with pytest.raises(loop.MlipError, match=r"different newest checkpoints \(process 0: step 4, process 1: none\)"):
        loop._check_processes_share(tmp_path)
    monkeypatch.setattr(loop.multihost_utils, "process_allgather", lambda x: np.array([x, x]))
    loop._check_processes_share(tmp_path)  # the same view: no error
