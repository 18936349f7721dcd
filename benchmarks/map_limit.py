"""Why the test suite once crashed inside XLA on CPU: reproduce the crash at the memory-mapping
limit, and show that mlip's guard (mlip.runtime.release_compiled_programs_if_needed) avoids it.

Every XLA:CPU executable keeps its machine code in memory mappings (LLVM's JIT): about 11 for a
trivial program, about 400 for a small mlip model program. Linux caps a process at
vm.max_map_count mappings (65,530 by default). When XLA compiles (or loads from the persistent
compilation cache) at the cap, LLVM logs "LLVM compilation error: Cannot allocate memory" and
the process dies with a segfault in backend_compile_and_load; a Python exception is not raised.

This script fills the process with ``--margin`` fewer mappings than the cap (anonymous shared
pages, which the kernel never merges), then compiles programs in a child process:

    .venv/bin/python benchmarks/map_limit.py                # without the guard: exit -11 (SIGSEGV)
    .venv/bin/python benchmarks/map_limit.py --guard        # with it: the programs compile

Measured on the project's 2-core VM (jax 0.10.2, jaxlib CPU), with the same programs and filler
in a first version of this script: without the guard the process died with SIGSEGV in
backend_compile_and_load after three "Cannot allocate memory" lines, at margins 300 and 40
alike; 11.3 mappings per live trivial program, 403 per small-preset model program. That
jax.clear_caches() releases them: 2,692 mappings after 200 programs, 496 after the clear. The
--guard run of this script has not been timed to the end yet (on the loaded VM it ran past
400 s: every forced check counts ~65,000 lines of /proc/self/maps).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import mmap, sys
import jax, jax.numpy as jnp
from mlip import runtime

def maps():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)

guard, margin = sys.argv[1] == "guard", int(sys.argv[2])
kept = []
for k in range(200):  # programs a long session has compiled and still holds
    program = jax.jit(lambda x, k=k: jnp.sin(x * k) @ x.T + jnp.cos(x).sum(0) * k)
    program(jnp.ones((8, 8))).block_until_ready()
    kept.append(program)
limit = runtime._map_limit()
fill = []
while maps() < limit - margin - 1000:  # counting is slow at ~65k lines: fill in blocks first
    fill += [mmap.mmap(-1, 4096) for _ in range(1000)]
while maps() < limit - margin:
    fill.append(mmap.mmap(-1, 4096))
runtime.MAP_COUNT_FRACTION = (limit - margin - 10) / limit  # the filler stands for live programs
print(f"mappings {maps()} of {limit}", flush=True)
for k in range(200, 400):
    if guard:
        runtime.release_compiled_programs_if_needed(force_check=True)
    program = jax.jit(lambda x, k=k: jnp.sin(x * k) @ x.T + jnp.cos(x).sum(0) * k)
    program(jnp.ones((8, 8))).block_until_ready()
    kept.append(program)
print("compiled 200 more programs", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guard", action="store_true", help="call mlip's guard before each compilation")
    parser.add_argument("--margin", type=int, default=300, help="mappings left below the cap")
    args = parser.parse_args()
    child = subprocess.run([sys.executable, "-c", CHILD, "guard" if args.guard else "plain", str(args.margin)],
                           capture_output=True, text=True)
    lines = (child.stdout + child.stderr).splitlines()
    print("\n".join(line for line in lines if not line.startswith("  "))[-3000:])
    print(f"exit status {child.returncode}" + (" (SIGSEGV)" if child.returncode == -11 else ""))


if __name__ == "__main__":
    main()
