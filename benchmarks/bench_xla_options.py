"""XLA compiler options against each other on one program: compile time, interleaved call time.

    taskset -c 1 .venv/bin/python benchmarks/bench_xla_options.py small si216 8 ['{"option": value}' ...]

Lowers the energy + forces + stress program of PRESET on STRUCTURE (benchmarks/bench_potential.py;
random weights, float32, the calculator's padded shape) once, compiles it with each set of XLA
options (per-compile ``compiler_options``; default: XLA's defaults, LLVM level 1, no fusion
emitters, both), then calls the executables in turn for ROUNDS rounds (order reversed every
other round). CPU seconds of this process (the machine is shared).
"""

from __future__ import annotations

from machine import set_single_thread_env  # benchmarks/machine.py

set_single_thread_env()

import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from bench_potential import CUTOFF, SPECIES, build_system  # noqa: E402

DEFAULT_VARIANTS = ({}, {"xla_backend_optimization_level": 1}, {"xla_cpu_use_fusion_emitters": False},
                    {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False})


def main():
    import jax
    import numpy as np

    from mlip.data.frame import frame_from_atoms
    from mlip.data.graph import build_graph, collate
    from mlip.data.padding import BucketLadder
    from mlip.potential import Potential, compute

    preset, system, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    variants = [json.loads(a) for a in sys.argv[4:]] or list(DEFAULT_VARIANTS)
    potential = Potential.create(preset, species=SPECIES, r_cut=CUTOFF)
    graph = build_graph(frame_from_atoms(build_system(system)), CUTOFF)
    batch = potential._cast(collate([graph], *BucketLadder().shape_for(graph.n_node, graph.n_edge, 1), labels=False))
    program = jax.jit(functools.partial(compute, potential.config, runtime=potential.runtime, platform="cpu"))
    lowered = program.lower(potential.params, batch)
    compiled, compile_s, outputs = [], [], []
    for options in variants:
        start = time.process_time()
        compiled.append(lowered.compile(options))
        compile_s.append(time.process_time() - start)
        outputs.append(jax.block_until_ready(compiled[-1](potential.params, batch)))
    calls = [[] for _ in variants]
    for r in range(rounds):
        for k in (range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))):
            start = time.process_time()
            jax.block_until_ready(compiled[k](potential.params, batch))
            calls[k].append(time.process_time() - start)
    base = np.median(calls[0])
    for options, seconds, times, out in zip(variants, compile_s, calls, outputs):
        d_forces = float(np.max(np.abs(np.asarray(out.forces) - np.asarray(outputs[0].forces))))
        print(f"{preset} {system} {json.dumps(options)}: compile {seconds:.2f} CPU-s, call median "
              f"{np.median(times) * 1e3:.1f} ms ({np.median(times) / base:.3f} of the first), max |dF| vs the first {d_forces:.1e}")


if __name__ == "__main__":
    sys.exit(main())
