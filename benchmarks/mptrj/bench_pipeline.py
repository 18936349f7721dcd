"""Training data pipeline at MPtrj scale: start-up to the first step, loader throughput, memory.

Runs the loader of `mlip train` (mlip.train.batches.StepBatches, with the recipe's budgets) on
an `mlip convert` directory, e.g. of the synthetic MPtrj (synthetic_mptrj.py):

    startup:    open the directory, split off validation frames, pack epoch 0 (from the edge
                counts stored at conversion, or with --ignore-counts by building every graph
                first, as before they were stored), build the first step's batch; and the
                model statistics of a new run (E0 fit over every training frame, neighbour
                count and force RMS over a 5,000-frame sample).
    throughput: iterate steps of epoch 0 with ``--workers`` loader processes; frames per second
                per CPU-second of this process and its worker processes (frames/s per core),
                and the resident memory of all of them, sampled along the epoch.

CPU times come from the kernel (this process and its descendants, /proc), so they hold on a
loaded machine where wall times do not. Pin to one core:

    taskset -c 1 python benchmarks/mptrj/bench_pipeline.py startup /tmp/mptrj-synth/d150k
    taskset -c 1 python benchmarks/mptrj/bench_pipeline.py throughput /tmp/mptrj-synth/d150k --steps 200 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/machine.py
from machine import set_single_thread_env  # noqa: E402

set_single_thread_env()

import numpy as np  # noqa: E402

from mlip.train.batches import StepBatches  # noqa: E402
from mlip.train.data import open_frames, split  # noqa: E402
from mlip.train.statistics import compute_statistics  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree() -> dict[int, tuple[float, int]]:
    """{pid: (CPU seconds, resident bytes)} of this process and all its descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                                 int(fields[21]) * PAGE)
    tree, frontier = {}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        if pid in stats:
            tree[pid] = stats[pid][1:]
        frontier += [child for child, (parent, *_) in stats.items() if parent == pid]
    return tree


class Clock:
    """Wall and CPU seconds of named stages (CPU of this process only: no workers here)."""

    def __init__(self):
        self.stages: dict[str, dict[str, float]] = {}

    def __call__(self, name: str, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        self.stages[name] = {"wall_s": round(time.perf_counter() - w0, 2), "cpu_s": round(time.process_time() - c0, 2)}
        return result


def make_batches(args, dataset, workers: int) -> StepBatches:
    nodes, edges, graphs = args.budgets
    return StepBatches(dataset, args.cutoff, micro_batches=args.micro_batches, max_nodes=nodes, max_edges=edges,
                       max_graphs=graphs, shuffle=True, seed=0, workers=workers)


def padding_efficiency(batches: StepBatches) -> dict:
    """Real / padded nodes and edges over epoch 0's micro-batches (steps pad to their largest)."""
    n_node, n_edge = batches._sizes()
    groups = batches._index_groups(0)
    real = padded = np.zeros(2)
    for s in range(0, len(groups), batches.k):
        step = groups[s : s + batches.k] + [[]] * max(0, batches.k - len(groups[s : s + batches.k]))
        shapes = [batches.ladder.shape_for(int(n_node[g].sum()), int(n_edge[g].sum()), len(g)) for g in step]
        shape = np.max(shapes, axis=0)
        real = real + [sum(n_node[g].sum() for g in step), sum(n_edge[g].sum() for g in step)]
        padded = padded + batches.k * shape[:2]
    frames = sum(len(g) for g in groups)
    return {"micro_batches": len(groups), "frames_per_micro_batch": round(frames / len(groups), 1),
            "node_fill": round(real[0] / padded[0], 3), "edge_fill": round(real[1] / padded[1], 3),
            "real_edges_per_frame": round(real[1] / frames, 1), "padded_edges_per_frame": round(padded[1] / frames, 1)}


def startup(args) -> dict:
    clock = Clock()
    dataset = clock("open", lambda: open_frames(str(args.data), {}, what="training"))
    if args.ignore_counts:
        dataset.edge_cutoffs = []  # as a directory converted without --edge-cutoffs
    train, _ = clock("split", lambda: split(dataset, args.valid_fraction, 0))
    batches = make_batches(args, train, workers=0)
    steps = clock("pack epoch 0", lambda: batches.steps_per_epoch(0))
    first = clock("first batch", lambda: next(iter(batches.epoch(0))))
    result = {"frames": len(dataset), "train_frames": len(train), "steps_per_epoch": steps,
              "first_batch_shape": list(first.senders.shape), "stages": clock.stages}
    result["to_first_batch"] = {key: round(sum(s[key] for s in clock.stages.values()), 2) for key in ("wall_s", "cpu_s")}
    if args.statistics:
        stats = clock("statistics", lambda: compute_statistics(train, args.cutoff, progress=False))
        result["stages"]["statistics"] = clock.stages["statistics"]
        result["avg_num_neighbors"] = round(stats.avg_num_neighbors, 2)
    result["padding"] = padding_efficiency(batches)
    result["peak_rss_mb"] = round(max(rss for _, rss in process_tree().values()) / 2**20)
    return result


def throughput(args) -> dict:
    dataset = open_frames(str(args.data), {}, what="training")
    train, _ = split(dataset, args.valid_fraction, 0)
    batches = make_batches(args, train, workers=args.workers)
    steps = batches.steps_per_epoch(0) if args.steps is None else min(args.steps, batches.steps_per_epoch(0))
    before = process_tree()
    cpu0 = sum(cpu for cpu, _ in before.values())
    seen: dict[int, float] = {}
    memory, frames = [], 0
    w0 = time.perf_counter()
    stream = batches.epoch(0)
    for step in range(steps):
        batch = next(stream)
        frames += int(np.sum(batch.graph_mask))
        if step % args.sample_every == 0 or step == steps - 1:
            tree = process_tree()
            seen.update({pid: cpu for pid, (cpu, _) in tree.items()})
            memory.append((step, round(sum(rss for _, rss in tree.values()) / 2**20)))
    wall = time.perf_counter() - w0
    cpu = sum(seen.values()) - cpu0
    stream.close()
    return {"workers": args.workers, "steps": steps, "frames": frames, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "frames_per_cpu_s": round(frames / cpu, 1),
            "frames_per_wall_s": round(frames / wall, 1), "rss_mb_by_step": memory,
            "processes": len(seen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["startup", "throughput"])
    parser.add_argument("data", type=Path, help="an `mlip convert` directory")
    parser.add_argument("--budgets", type=int, nargs=3, default=(2048, 65536, 64), metavar=("NODES", "EDGES", "GRAPHS"),
                        help="per-device micro-batch budgets (default: benchmarks/mptrj/mptrj-full.yaml)")
    parser.add_argument("--micro-batches", type=int, default=8, help="micro-batches per step (devices x accumulate)")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--ignore-counts", action="store_true", help="build every graph to pack (the old path)")
    parser.add_argument("--statistics", action="store_true", help="also time the model statistics")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="steps to iterate (default: the whole epoch)")
    parser.add_argument("--sample-every", type=int, default=10, help="steps between memory samples")
    args = parser.parse_args()
    result = startup(args) if args.mode == "startup" else throughput(args)
    print(json.dumps({"mode": args.mode, "data": str(args.data), **result}))


if __name__ == "__main__":
    main()
