"""Batched on-device relaxation (mlip.sim.relax) against the ASE path, in the same run.

A set of small perturbed crystals (diamond Si: 2-atom primitive, 8-atom cubic and 16-atom
supercells, each rattled and strained differently) is relaxed, positions and cells, to
``--fmax`` with

- the ASE path: one structure after another, ASE's ``FIRE(FrechetCellFilter(atoms))`` with
  mlip's Calculator (host neighbour list with a 0.5 Å skin, one padded potential call per
  step; what ``mlip relax`` runs for one structure);
- mlip.sim.relax: all of them in one padded batch on the device (the same FIRE and cell
  filter, device neighbour list with a 0.5 Å skin, many steps per jitted call; what
  ``mlip relax many.xyz`` runs).

Reported: structures relaxed per second and atom-steps per second (sum over structures of
atoms x FIRE steps, divided by the wall time), with the batched path timed twice (the first
call includes compilation; the second reuses it), and the ASE path after a warm-up pass over
one structure of each size. Both paths take the same steps from the same start, so their
steps and final energies are compared too. The potential is the bundled mlearn Si model
(small preset, trained; a random-weight potential has a landscape so rugged that float32
rounding sends the two paths to different minima), cast with ``--dtype``, or ``--model``.

    python benchmarks/bench_sim.py                              # 32 structures, CPU
    taskset -c 0 python benchmarks/bench_sim.py --structures 16  # pinned to one core
    python benchmarks/bench_sim.py --structures 1024 --skip-ase  # GPU: batched only
"""

from __future__ import annotations

import os
import sys

from machine import cpu_model, set_single_thread_env  # benchmarks/machine.py

if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) == 1:
    set_single_thread_env()  # pinned to one core: one thread everywhere

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

#: Published anchor: batched MACE relaxation on an H100, about 3 µs per atom-step.
ANCHOR_US_PER_ATOM_STEP = 3.0


def crystals(count: int, seed: int = 0) -> list:
    """``count`` perturbed diamond Si crystals of 2, 8 and 16 atoms (in turn): each rattled by
    0.05 Å and its cell strained by up to 3% (random symmetric strain)."""
    rng = np.random.default_rng(seed)
    bases = [bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.43, cubic=True),
             bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1))]
    out = []
    for k in range(count):
        atoms = bases[k % len(bases)].copy()
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(atoms)
    return out


def relax_ase(potential, structures, fmax: float, max_steps: int) -> dict:
    """The ASE path, one structure after another; returns timings and per-structure results."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from mlip.calculator import Calculator

    calculator = Calculator(potential, compilation_cache=None)
    steps, energies, converged = [], [], []
    start = time.perf_counter()
    for original in structures:
        atoms = original.copy()
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged.append(bool(optimizer.run(fmax=fmax, steps=max_steps)))
        steps.append(optimizer.nsteps)
        energies.append(atoms.get_potential_energy())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": steps, "energies": energies, "converged": converged}


def relax_batched(potential, structures, fmax: float, max_steps: int, budget) -> dict:
    from mlip import sim

    start = time.perf_counter()
    results = sim.relax(potential, structures, fmax=fmax, relax_cell=True, max_steps=max_steps, budget=budget)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": [r.steps for r in results], "energies": [r.energy for r in results],
            "converged": [r.converged for r in results]}


def rates(run: dict, sizes) -> dict:
    atom_steps = int(np.dot(run["steps"], sizes))
    return {**run, "structures_per_s": len(sizes) / run["seconds"], "atom_steps": atom_steps,
            "atom_steps_per_s": atom_steps / run["seconds"], "us_per_atom_step": 1e6 * run["seconds"] / atom_steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=32, help="number of crystals (default 32)")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å (default 0.05)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--model", help="potential file (default: the bundled mlearn Si model)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--batch-atoms", type=int, default=2048, help="atom slots of the device batch")
    parser.add_argument("--skip-ase", action="store_true", help="batched path only (large runs)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import mlip
    from mlip import sim
    from mlip.potential import Potential

    structures = crystals(args.structures)
    sizes = np.array([len(a) for a in structures])
    from mlip.cli import bundled_model

    model = args.model or bundled_model()
    potential = Potential.load(model).astype(args.dtype)
    budget = sim.Budget(max_atoms=args.batch_atoms)
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    out = {"batched_first": rates(relax_batched(potential, structures, args.fmax, args.max_steps, budget), sizes)}
    loads.append(os.getloadavg()[0])
    out["batched"] = rates(relax_batched(potential, structures, args.fmax, args.max_steps, budget), sizes)
    loads.append(os.getloadavg()[0])
    if not args.skip_ase:
        # Warm-up: one structure of each size compiles the padded shapes the ASE path uses.
        relax_ase(potential, structures[:3], args.fmax, args.max_steps)
        out["ase"] = rates(relax_ase(potential, structures, args.fmax, args.max_steps), sizes)
        loads.append(os.getloadavg()[0])
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"date {started:%Y-%m-%d %H:%M} UTC, {elapsed.total_seconds():.0f} s; CPU {cpu_model()}, "
          f"{os.cpu_count()} logical CPUs; affinity {affinity}; device {jax.devices()[0].device_kind}")
    print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    print(f"mlip {mlip.__version__}, jax {jax.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print(f"{len(structures)} diamond Si crystals ({sizes.sum()} atoms; sizes {sorted(set(sizes.tolist()))}), "
          f"rattled 0.05 Å, strained up to 3%; model {Path(model).name} ({potential.num_params:,} parameters, "
          f"{args.dtype}, r_cut {potential.config.r_cut:g} Å); FIRE + FrechetCellFilter to fmax {args.fmax} eV/Å, at most "
          f"{args.max_steps} steps; batch budget {args.batch_atoms} atoms\n")
    head = ["path", "seconds", "structures/s", "atom-steps", "atom-steps/s", "µs per atom-step", "converged"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    names = {"batched_first": "mlip.sim.relax, first call (with compilation)", "batched": "mlip.sim.relax (compiled)",
             "ase": "ASE FIRE + FrechetCellFilter, mlip Calculator"}
    for key, run in out.items():
        print(f"| {names[key]} | {run['seconds']:.1f} | {run['structures_per_s']:.2f} | {run['atom_steps']:,} | "
              f"{run['atom_steps_per_s']:,.0f} | {run['us_per_atom_step']:.0f} | "
              f"{sum(run['converged'])}/{len(structures)} |")
    if "ase" in out:
        ase_run, ours = out["ase"], out["batched"]
        gap = np.abs(np.subtract(ours["energies"], ase_run["energies"])) / sizes
        same_steps = int(np.sum(np.equal(ours["steps"], ase_run["steps"])))
        print(f"\nbatched / ASE: {ours['structures_per_s'] / ase_run['structures_per_s']:.2f}x structures/s; "
              f"same step count for {same_steps}/{len(structures)} structures; final energies differ by at "
              f"most {gap.max():.2e} eV/atom ({args.dtype})")
    print(f"published anchor (batched MACE relaxation, H100): ~{ANCHOR_US_PER_ATOM_STEP:g} µs per atom-step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {**v, "energies": list(map(float, v["energies"]))} for k, v in out.items()}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
