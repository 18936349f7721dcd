"""Cost of one training step of the MPtrj recipe on the CPU: time and XLA's FLOP count.

Builds the run of benchmarks/mptrj/mptrj-full.yaml (the same code path as `mlip train`) on the
real MPtrj sample with per-device budgets small enough for a CPU, compiles its train step,
reads XLA's ``cost_analysis()`` FLOP count and times a few steps (CPU time of this process;
pin it to one core). FLOPs per padded edge hardly depend on the budget, so they scale to the
recipe's GPU budgets: benchmarks/RESULTS.md turns them into GPU-hours per epoch (an estimate).

    taskset -c 1 python benchmarks/mptrj/step_cost.py --preset small --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/machine.py
from machine import set_single_thread_env  # noqa: E402

set_single_thread_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mlip.train.config import load_config  # noqa: E402
from mlip.train.loop import _Run  # noqa: E402
from mlip.train.loss import Terms  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[2] / "shared/data/mptrj/mptrj-random-1k.xyz"


def measure(preset: str, steps: int, budgets: tuple[int, int, int], out: str) -> dict:
    nodes, edges, graphs = budgets
    overrides = {
        "output_dir": out,
        "data": {"train": str(SAMPLE), "valid_fraction": 0.1, "max_nodes": nodes, "max_edges": edges,
                 "max_graphs": graphs, "workers": 0},
        "model": {"preset": preset},
        "training": {"devices": 1, "kernel": "reference"},
    }
    config = load_config(HERE / "mptrj-full.yaml", overrides)
    run = _Run(config, Path(overrides["output_dir"]), resume=False, progress=False, devices=None, callbacks=())
    weights = Terms(*(jnp.asarray(w, run.dtype) for w in config.loss.weights_at(0)))
    lr_factor = jnp.asarray(1.0, run.dtype)
    # The first full step of the epoch (its shape is the top rung: most steps have it).
    batch = run._to_devices(next(iter(run.batches.epoch(0))))
    started = time.perf_counter()
    compiled = run.train_step.lower(run.state, batch, weights, lr_factor).compile()
    compile_s = time.perf_counter() - started
    flops = float(compiled.cost_analysis()["flops"])
    state, metrics = compiled(run.state, batch, weights, lr_factor)  # warm up
    jax.block_until_ready(metrics)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):  # the same batch: one compiled shape, no compilation timed
        state, metrics = compiled(state, batch, weights, lr_factor)
        jax.block_until_ready(metrics)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    real_edges = int(np.asarray(batch.edge_mask).sum())
    padded_edges = int(np.prod(batch.senders.shape))
    return {
        "preset": preset, "budgets": budgets, "padded_edges": padded_edges,
        "padded_nodes": int(np.prod(batch.node_mask.shape)), "steps": steps,
        "frames": int(np.asarray(batch.graph_mask).sum()), "real_nodes": int(np.asarray(batch.node_mask).sum()),
        "real_edges": real_edges, "gflop_per_step": flops / 1e9,
        "kflop_per_padded_edge": flops / padded_edges / 1e3, "compile_s": compile_s,
        "cpu_s_per_step": cpu / steps, "wall_s_per_step": wall / steps,
        "cpu_us_per_padded_edge": cpu / steps / padded_edges * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs=3, default=(256, 8192, 8), metavar=("NODES", "EDGES", "GRAPHS"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlip-step-cost-") as out:
        print(json.dumps(measure(args.preset, args.steps, tuple(args.budgets), out)))


if __name__ == "__main__":
    main()
