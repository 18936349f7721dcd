"""Training checkpoints at pretraining size: mlip's npz format against orbax-checkpoint.

    python benchmarks/bench_checkpoint.py                    # small and medium, 89 species
    python benchmarks/bench_checkpoint.py --dir /scratch/x   # on another filesystem

For each preset the whole TrainState (parameters, Adam moments, EMA, step; float32) of a
model with MPtrj's 89 elements is written ``--repeats`` times by
`mlip.train.checkpoint.save_checkpoint` (npz built in memory, temp file, fsync, rename) and by
orbax-checkpoint's `StandardCheckpointer` (async: ``save`` returns once the arrays are copied
to the host, a thread writes them; ``wait_until_finished`` waits for the commit), then read
back. Prints the median times (s) and the size on disk (MB) as a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, set_single_thread_env  # noqa: E402

set_single_thread_env()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from mlip.models.config import preset  # noqa: E402
from mlip.potential import init_params  # noqa: E402
from mlip.train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from mlip.train.config import OptimizerConfig  # noqa: E402
from mlip.train.step import init_state, make_optimizer  # noqa: E402

#: MPtrj's 89 elements: H..Bi (1-83) and Ac..Pu (89-94).
SPECIES = tuple(range(1, 84)) + (89, 90, 91, 92, 93, 94)


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _median(times: list[float]) -> float:
    return float(np.median(times))


def measure(name: str, root: Path, repeats: int) -> dict:
    model = preset(name, species=SPECIES)
    params = init_params(model, 0, "float32")
    state = init_state(params, make_optimizer(OptimizerConfig(), params))
    state = jax.block_until_ready(state)
    n_params = sum(np.size(p) for p in jax.tree.leaves(params))
    row = {"preset": name, "params": n_params, "leaves": len(jax.tree.leaves(state))}

    npz_dir = root / f"npz-{name}"
    save, load = [], []
    for step in range(repeats):
        t = time.perf_counter()
        path = save_checkpoint(npz_dir, state, LoopState(step=step), model.to_dict(), keep=2)
        save.append(time.perf_counter() - t)
        t = time.perf_counter()
        load_checkpoint(latest_checkpoint(npz_dir), state)
        load.append(time.perf_counter() - t)
    row.update(npz_mb=_size_mb(path), npz_save=_median(save), npz_load=_median(load))

    checkpointer = ocp.StandardCheckpointer()
    blocking, total, load = [], [], []
    for step in range(repeats):
        target = root / f"orbax-{name}" / str(step)
        t = time.perf_counter()
        checkpointer.save(target, state)
        blocking.append(time.perf_counter() - t)
        checkpointer.wait_until_finished()
        total.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(checkpointer.restore(target, state))
        load.append(time.perf_counter() - t)
    checkpointer.close()
    row.update(orbax_mb=_size_mb(target), orbax_blocking=_median(blocking), orbax_save=_median(total),
               orbax_load=_median(load))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,medium")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlip-ckpt-bench-", dir=args.dir))
    try:
        rows = [measure(name, root, args.repeats) for name in args.presets.split(",")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, jax {jax.__version__}, "
          f"orbax-checkpoint {ocp.__version__}, {len(SPECIES)} species, median of {args.repeats}, in {root.parent}")
    print("| preset | parameters | arrays | npz MB | npz write s | npz read s | orbax MB | orbax blocking s "
          "| orbax write s | orbax read s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['params']:,} | {r['leaves']} | {r['npz_mb']:.1f} | {r['npz_save']:.3f} | "
              f"{r['npz_load']:.3f} | {r['orbax_mb']:.1f} | {r['orbax_blocking']:.3f} | {r['orbax_save']:.3f} | "
              f"{r['orbax_load']:.3f} |")


if __name__ == "__main__":
    main()
