"""First call per new shape: compilation time of mlip's presets, cold and from the persistent cache.

Run pinned to one core, from the repository root:

    taskset -c 1 .venv/bin/python benchmarks/bench_first_call.py [--presets small,medium]

For each preset, two fresh Python processes run one after the other with the same, initially
empty, compilation cache directory (mlip.runtime.enable_compilation_cache): the first
compiles every program ("cold") and writes the cache, the second reads it ("warm"). In each,
the structures of benchmarks/bench_potential.py (diamond Si 64, fcc Cu 108, Si 216, Si 512;
cutoff 5 Å, random weights, float32) go through the two user paths in turn:

- the ASE calculator (``atoms.get_forces()``, ``get_stress()``; the bucket ladder's shape);
- ``Potential.predict([atoms])`` (the batch budget's ladder: another padded shape).

Before the timed structures, a 2-atom structure goes through both paths, so one-time start-up
(JAX's backend, mlip's imports, the first jit) is not charged to any structure. For each
structure and path the table gives the first call's wall time, the steady-state call time,
their difference (the price of a new shape) in wall and in CPU seconds of the process (on a
shared machine wall time also counts other processes' turns), and how JAX spent it (wall),
from jax.monitoring's duration events: tracing to a jaxpr, lowering to StableHLO, and XLA's
backend compilation (of every program the call compiled: the model's and small helpers'), or
reading the executable from the persistent cache; and the cache's hits and misses.

``--xla-flags`` adds XLA flags to the child processes (to measure their effect on both the
compile time and the steady-state call).
"""

from __future__ import annotations

import os

from machine import cpu_model, set_single_thread_env  # benchmarks/machine.py

set_single_thread_env()

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench_potential import CUTOFF, SPECIES, build_system  # noqa: E402

SYSTEMS = ("si64", "cu108", "si216", "si512")
#: jax.monitoring duration events -> column
EVENTS = {
    "/jax/core/compile/tracing_duration": "trace",
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache read",
}


def child(preset: str, systems: list[str], cache: str, calls: int) -> dict:
    """One process's measurements (see the module docstring)."""
    import jax
    import numpy as np
    from ase import Atoms

    from mlip.calculator import Calculator
    from mlip.potential import Potential
    from mlip.runtime import enable_compilation_cache

    enable_compilation_cache(cache)
    durations = collections.Counter()
    counts = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: durations.update({EVENTS[event]: seconds}) if event in EVENTS else None)
    jax.monitoring.register_event_listener(lambda event, **_: counts.update([event]))
    potential = Potential.create(preset, species=SPECIES, r_cut=CUTOFF)

    def through_calculator(atoms):
        atoms = atoms.copy()
        atoms.calc = Calculator(potential)
        return lambda: (atoms.get_forces(), atoms.get_stress(), atoms.calc.reset())

    def through_predict(atoms):
        return lambda: potential.predict([atoms])

    dimer = Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.3, 1.4]], cell=[8, 8, 8], pbc=True)
    for path in (through_calculator, through_predict):
        path(dimer)()
    rows = []
    for name in systems:
        atoms = build_system(name)
        for label, path in (("calculator", through_calculator), ("predict", through_predict)):
            call = path(atoms)
            durations.clear()
            counts.clear()
            start, cpu = time.perf_counter(), time.process_time()
            call()
            first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
            spent, events = dict(durations), dict(counts)
            steady, steady_cpu = [], []
            for _ in range(calls):
                start, cpu = time.perf_counter(), time.process_time()
                call()
                steady.append(time.perf_counter() - start)
                steady_cpu.append(time.process_time() - cpu)
            rows.append(dict(system=name, atoms=len(atoms), path=label, first=first, steady=float(np.median(steady)),
                             first_cpu=first_cpu, steady_cpu=float(np.median(steady_cpu)),
                             hits=events.get("/jax/compilation_cache/cache_hits", 0),
                             misses=events.get("/jax/compilation_cache/cache_misses", 0), **spent))
    return dict(rows=rows, params=potential.num_params)


def run_child(preset, systems, cache, calls, xla_flags) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    command = [sys.executable, __file__, "--child", preset, "--systems", ",".join(systems), "--cache", cache,
               "--calls", str(calls)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,medium")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--calls", type=int, default=3, help="steady-state calls after the first")
    parser.add_argument("--xla-flags", default="", help="extra XLA flags for the measured processes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    systems = args.systems.split(",")
    if args.child:
        print(json.dumps(child(args.child, systems, args.cache, args.calls)))
        return
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    print(f"date {started:%Y-%m-%d %H:%M} UTC; CPU {cpu_model()}; affinity {sorted(os.sched_getaffinity(0))}")
    print(f"XLA_FLAGS: {(os.environ.get('XLA_FLAGS', '') + ' ' + args.xla_flags).strip()}\n")
    print("| preset | structure | path | cache | first call (s) | steady (s) | new shape (s) | new shape, CPU (s) "
          "| trace | lower | XLA compile | cache read | hits/misses |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as cache:
            for run in ("cold", "warm"):
                result = run_child(preset, systems, cache, args.calls, args.xla_flags)
                loads.append(os.getloadavg()[0])
                for r in result["rows"]:
                    print(f"| {preset} | {r['system']} ({r['atoms']}) | {r['path']} | {run} | {r['first']:.2f} | "
                          f"{r['steady']:.3f} | {r['first'] - r['steady']:.2f} | {r['first_cpu'] - r['steady_cpu']:.2f} | "
                          f"{r.get('trace', 0):.2f} | "
                          f"{r.get('lower', 0):.2f} | {r.get('compile', 0):.2f} | {r.get('cache read', 0):.2f} | "
                          f"{r['hits']}/{r['misses']} |", flush=True)
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started
    print(f"\n{elapsed.total_seconds():.0f} s; load average (1 min) {min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
    sys.exit(main())
