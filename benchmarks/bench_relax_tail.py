"""The tail of a batched relaxation: the batch shrinking to its last slow structures, or not.

    taskset -c 1 .venv/bin/python benchmarks/bench_relax_tail.py MODEL STRUCTURES \
        [--index 0:60] [--batch-atoms 1024] [--steps 300] [--fmax 0.05]

Relaxes the same structures (positions and cell, FIRE + FrechetCellFilter, mlip.sim.relax)
twice, each in a fresh process without a persistent compilation cache: with
``Budget(shrink=False)`` (the whole padded batch steps until its last structure is done) and
with ``shrink=True`` (mlip.sim.batcher: once nothing waits and the running structures fill at
most a quarter of the atom slots, they are repacked into a batch of their size). Prints wall
and CPU seconds of each process (CPU time is what a shared machine's load stretches least),
compilation included, and the largest difference of their final energies per atom.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

RUN = r"""
import json, sys
import ase.io
from mlip.potential import Potential
from mlip.sim import Budget, relax
model, path, index, atoms_budget, steps, fmax, shrink = sys.argv[1:]
structures = ase.io.read(path, index=index)
results = relax(Potential.load(model), structures, fmax=float(fmax), relax_cell=True, max_steps=int(steps),
                budget=Budget(max_atoms=int(atoms_budget), shrink=shrink == "1"))
print(json.dumps({"energy_per_atom": [r.energy / len(r.atoms) for r in results],
                  "steps": [r.steps for r in results], "converged": sum(r.converged for r in results)}))
"""


def run(args, shrink: bool) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, args.model, args.structures, args.index,
                           str(args.batch_atoms), str(args.steps), str(args.fmax), "1" if shrink else "0"],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(done.stdout.splitlines()[-1])
    result.update(wall=wall, cpu=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("structures")
    parser.add_argument("--index", default="0:60")
    parser.add_argument("--batch-atoms", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--fmax", type=float, default=0.05)
    args = parser.parse_args(argv)
    kept, shrunk = run(args, False), run(args, True)
    n = len(kept["steps"])
    worst = max(abs(a - b) for a, b in zip(kept["energy_per_atom"], shrunk["energy_per_atom"]))
    print(f"{n} structures, steps per structure: median {sorted(kept['steps'])[n // 2]}, max {max(kept['steps'])}")
    print("| batch at the tail | wall s | CPU s | converged |\n|---|---:|---:|---:|")
    for name, r in (("kept (shrink=False)", kept), ("shrunk (shrink=True)", shrunk)):
        print(f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['converged']}/{n} |")
    print(f"CPU ratio kept/shrunk: {kept['cpu'] / shrunk['cpu']:.2f}x; "
          f"largest |ΔE| per atom between the runs: {worst:.2e} eV")


if __name__ == "__main__":
    main()
