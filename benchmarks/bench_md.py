"""MD throughput through the ASE calculator: atom-steps per second and ns/day.

Velocity Verlet (1 fs) on rattled diamond Si supercells with the "small" preset (random
weights, float32), on whatever device JAX uses (CPU here; a GPU on the device machine).
Reports the time per step split into the potential call (device) and the rest (host: ASE,
neighbour-list checks/rebuilds with a 0.5 Å skin, padding).

    python benchmarks/bench_md.py --atoms 216 1728            # CPU
    python benchmarks/bench_md.py --atoms 1000 10000 100000   # GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet


def silicon(n_atoms: int):
    """Diamond Si supercell with about ``n_atoms`` atoms (8 per cubic cell), rattled."""
    repeat = max(1, round((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=0)
    return atoms


def measure(potential, n_atoms: int, steps: int) -> dict:
    from mlip.calculator import Calculator

    atoms = silicon(n_atoms)
    calc = Calculator(potential, compilation_cache=None)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, 1.0 * units.fs)
    dynamics.run(3)  # compile
    device = [0.0]
    call = potential.__class__.__call__

    def timed(self, batch):
        start = time.perf_counter()
        out = call(self, batch)
        out.energy.block_until_ready()
        device[0] += time.perf_counter() - start
        return out

    potential.__class__.__call__ = timed
    try:
        builds = calc.neighbors.builds
        start = time.perf_counter()
        dynamics.run(steps)
        elapsed = time.perf_counter() - start
    finally:
        potential.__class__.__call__ = call
    n = len(atoms)
    return {
        "atoms": n,
        "steps": steps,
        "ms_per_step": 1e3 * elapsed / steps,
        "potential_ms_per_step": 1e3 * device[0] / steps,
        "atom_steps_per_s": n * steps / elapsed,
        "ns_per_day": steps * 1e-6 / elapsed * 86400,
        "neighbor_rebuilds": calc.neighbors.builds - builds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="+", default=[216, 1728])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import jax

    from mlip.potential import Potential

    potential = Potential.create(args.preset, species=["Si"], r_cut=5.0, seed=0)
    print(f"device: {jax.devices()[0].device_kind}, preset {args.preset}, {potential.num_params:,} parameters, float32")
    print("| atoms | ms/step | of which potential | atom-steps/s | ns/day | NL rebuilds |")
    print("|---:|---:|---:|---:|---:|---:|")
    rows = []
    for n in args.atoms:
        row = measure(potential, n, args.steps)
        rows.append(row)
        print(f"| {row['atoms']} | {row['ms_per_step']:.1f} | {row['potential_ms_per_step']:.1f} | "
              f"{row['atom_steps_per_s']:.3g} | {row['ns_per_day']:.3f} | {row['neighbor_rebuilds']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
