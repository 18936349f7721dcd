"""glibc malloc settings (mlip.runtime.tune_allocator, which the `mlip` command applies) on and
off: steady-state energy + forces + stress call time of the `small` preset, interleaved.

Run pinned to one core, from the repository root:

    taskset -c 1 .venv/bin/python benchmarks/bench_allocator.py [--rounds 3] [--calls 5]

Each round starts two fresh processes one after the other, one with the settings and one
without (the order alternates between rounds, so drifting load hits both alike); each times
``--calls`` calls of ``Potential.__call__`` on the padded batch of each structure of
benchmarks/bench_potential.py (random weights, float32, cutoff 5 Å) after its first call.
Programs come from a persistent compilation cache filled by an untimed process first. Given:
medians over rounds of each process's median wall time, CPU time (user + system, which
counts the page faults' kernel time) and minor page faults per call.
"""

from __future__ import annotations

import os

from machine import cpu_model, set_single_thread_env  # benchmarks/machine.py

set_single_thread_env()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench_potential import CUTOFF, SPECIES, build_system  # noqa: E402

SYSTEMS = ("si64", "cu108", "si216", "si512")


def child(tuned: bool, systems: list[str], cache: str, calls: int) -> dict:
    from mlip.runtime import tune_allocator

    applied = tune_allocator() if tuned else False
    import jax
    import numpy as np

    from mlip.data.frame import frame_from_atoms
    from mlip.data.graph import build_graph, collate
    from mlip.data.padding import BucketLadder
    from mlip.potential import Potential
    from mlip.runtime import enable_compilation_cache

    enable_compilation_cache(cache)
    potential = Potential.create("small", species=SPECIES, r_cut=CUTOFF)
    rows = {}
    for name in systems:
        graph = build_graph(frame_from_atoms(build_system(name)), CUTOFF)
        batch = collate([graph], *BucketLadder().shape_for(graph.n_node, graph.n_edge, 1), labels=False)
        jax.block_until_ready(potential(batch))
        wall, cpu, faults = [], [], []
        for _ in range(calls):
            before, start, cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), time.process_time()
            jax.block_until_ready(potential(batch))
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        rows[name] = dict(atoms=graph.n_node, wall=float(np.median(wall)), cpu=float(np.median(cpu)),
                          faults=float(np.median(faults)))
    return dict(applied=applied, rows=rows)


def run_child(tuned, systems, cache, calls) -> dict:
    command = [sys.executable, __file__, "--child", "on" if tuned else "off", "--systems", ",".join(systems),
               "--cache", cache, "--calls", str(calls)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    systems = args.systems.split(",")
    if args.child:
        print(json.dumps(child(args.child == "on", systems, args.cache, args.calls)))
        return
    import numpy as np

    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    results = {True: [], False: []}
    with tempfile.TemporaryDirectory() as cache:
        run_child(False, systems, cache, 1)  # fills the compilation cache
        for r in range(args.rounds):
            for tuned in ((False, True) if r % 2 == 0 else (True, False)):
                result = run_child(tuned, systems, cache, args.calls)
                if result["applied"] != tuned:
                    raise RuntimeError(f"settings {'not ' if tuned else ''}applied where they should {'' if tuned else 'not '}be")
                results[tuned].append(result["rows"])
                loads.append(os.getloadavg()[0])
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started
    print(f"date {started:%Y-%m-%d %H:%M} UTC, {elapsed.total_seconds():.0f} s; CPU {cpu_model()}; "
          f"affinity {sorted(os.sched_getaffinity(0))}; load average (1 min) {min(loads):.1f}-{max(loads):.1f}")
    print(f"{args.rounds} rounds x {args.calls} calls; mlip small, float32\n")
    print("| structure | atoms | wall, glibc default (ms) | wall, tuned (ms) | CPU, default (ms) | CPU, tuned (ms) "
          "| default / tuned (CPU) | faults/call, default | faults/call, tuned |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in systems:
        med = {(t, k): float(np.median([rows[name][k] for rows in results[t]])) for t in results for k in ("wall", "cpu", "faults")}
        print(f"| {name} | {results[True][0][name]['atoms']} | {med[False, 'wall'] * 1e3:.0f} | {med[True, 'wall'] * 1e3:.0f} | "
              f"{med[False, 'cpu'] * 1e3:.0f} | {med[True, 'cpu'] * 1e3:.0f} | {med[False, 'cpu'] / med[True, 'cpu']:.2f}x | "
              f"{med[False, 'faults']:.0f} | {med[True, 'faults']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
