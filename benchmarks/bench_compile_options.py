"""Where a new shape's first call goes (tracing, lowering, XLA compilation), and what a set of
XLA compiler options changes: compile time, call time, results.

Run pinned to one core, from the repository root:

    taskset -c 1 .venv/bin/python benchmarks/bench_compile_options.py [--presets small,medium] \
        [--options '{"xla_backend_optimization_level": 1}']

In one process, for each preset and structure of benchmarks/bench_potential.py (random weights,
float32, cutoff 5 Å, the calculator's padded shape), the energy + forces + stress program is
traced (jax.stages: ``jit(...).trace``), lowered (``.lower()``) and compiled twice from the
same lowering: with XLA's default options and with ``--options``. Times are CPU seconds of this
process (the machine is shared: wall time would count other processes' turns). The two
executables are then called alternately (``--calls`` each, interleaved), and their energies,
forces and stresses compared. A 2-atom structure goes first, so that one-time start-up costs
fall on neither.
"""

from __future__ import annotations

import os

from machine import cpu_model, set_single_thread_env  # benchmarks/machine.py

set_single_thread_env()

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from bench_potential import CUTOFF, SPECIES, build_system  # noqa: E402

SYSTEMS = ("si64", "cu108", "si216", "si512")


def cpu_timed(function, *args):
    start = time.process_time()
    out = function(*args)
    return out, time.process_time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,medium")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--calls", type=int, default=3, help="timed calls of each executable")
    parser.add_argument("--options", default='{"xla_backend_optimization_level": 1}',
                        help="XLA compiler options (JSON) compared with XLA's defaults")
    args = parser.parse_args()

    import jax
    import numpy as np
    from ase import Atoms

    from mlip.data.frame import frame_from_atoms
    from mlip.data.graph import build_graph, collate
    from mlip.data.padding import BucketLadder
    from mlip.potential import Potential, compute

    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    print(f"date {started:%Y-%m-%d %H:%M} UTC; CPU {cpu_model()}; affinity {sorted(os.sched_getaffinity(0))}; "
          f"jax {jax.__version__}; XLA_FLAGS {os.environ.get('XLA_FLAGS')}")
    options = json.loads(args.options)
    print(f"options compared with XLA's defaults: {options}\n")
    print("| preset | structure | padded (nodes, edges) | trace | lower | XLA compile, default | XLA compile, options "
          "| new shape, default | new shape, options | call, default | call, options | max |ΔE| (eV) | max |ΔF| (eV/Å) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dimer = Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.3, 1.4]], cell=[8, 8, 8], pbc=True)
    for preset in args.presets.split(","):
        potential = Potential.create(preset, species=SPECIES, r_cut=CUTOFF)
        programs = {
            "default": jax.jit(functools.partial(compute, potential.config, runtime=potential.runtime, platform="cpu")),
            "options": jax.jit(functools.partial(compute, potential.config, runtime=potential.runtime, platform="cpu"),
                            compiler_options=options),
        }
        for name in ["dimer", *args.systems.split(",")]:
            atoms = dimer if name == "dimer" else build_system(name)
            graph = build_graph(frame_from_atoms(atoms), CUTOFF)
            shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
            batch = potential._cast(collate([graph], *shape, labels=False))
            compiled, seconds = {}, {}
            for key, program in programs.items():
                traced, seconds["trace", key] = cpu_timed(program.trace, potential.params, batch)
                lowered, seconds["lower", key] = cpu_timed(traced.lower)
                compiled[key], seconds["compile", key] = cpu_timed(lowered.compile)
            outputs = {key: jax.block_until_ready(c(potential.params, batch)) for key, c in compiled.items()}
            calls = {key: [] for key in compiled}
            for _ in range(args.calls):
                for key, c in compiled.items():
                    calls[key].append(cpu_timed(lambda: jax.block_until_ready(c(potential.params, batch)))[1])
            loads.append(os.getloadavg()[0])
            if name == "dimer":
                continue
            new = {k: seconds["trace", k] + seconds["lower", k] + seconds["compile", k] for k in compiled}
            d_energy = float(np.max(np.abs(np.asarray(outputs["default"].energy) - np.asarray(outputs["options"].energy))))
            d_forces = float(np.max(np.abs(np.asarray(outputs["default"].forces) - np.asarray(outputs["options"].forces))))
            print(f"| {preset} | {name} ({graph.n_node}) | {shape[0]}, {shape[1]:,} | {seconds['trace', 'default']:.2f} | "
                  f"{seconds['lower', 'default']:.2f} | {seconds['compile', 'default']:.2f} | {seconds['compile', 'options']:.2f} | "
                  f"{new['default']:.2f} | {new['options']:.2f} | {np.median(calls['default']) * 1e3:.0f} ms | "
                  f"{np.median(calls['options']) * 1e3:.0f} ms | {d_energy:.1e} | {d_forces:.1e} |", flush=True)
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started
    print(f"\n{elapsed.total_seconds():.0f} s; CPU seconds throughout; load average (1 min) {min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
    sys.exit(main())
