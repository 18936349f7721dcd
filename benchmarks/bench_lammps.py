"""MD speed inside LAMMPS (mlip.lammps, fix external) on 1 and 2 MPI ranks against the ASE path.

NVE at 1 fs on rattled diamond Si supercells with the "small" preset (random weights, float32,
r_cut 5 Å, 2 layers: a ghost shell of 10 Å + 1 Å skin on several ranks). Each LAMMPS run is a
separate `mpirun -np R` process running `mlip.lammps.run_deck`; the ASE path (Calculator +
VelocityVerlet) runs in this process. All paths time ``--steps`` steps after ``--warmup`` steps
(compilation included in the warm-up). Per LAMMPS step the time splits into the potential call
(``model``), the coupling's host work (graph of owned/ghost atoms, padding, ghost-force
exchange: ``coupling``) and the rest of LAMMPS (integration, communication, neighbour checks).

    taskset -c 1 python benchmarks/bench_lammps.py --atoms 1000 10648 --ranks 1 2

One rank runs on core 1 (taskset -c 1), two ranks on cores 0 and 1 (the machine's only two),
each single-threaded. The machine is shared: compare rows of the same run (the ratio column).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model, set_single_thread_env  # noqa: E402  (benchmarks/machine.py)

set_single_thread_env()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DECK = """units metal
atom_style atomic
boundary p p p
read_data {data}
fix mlip all external pf/callback 1 1
fix_modify mlip energy yes virial yes
velocity all create 300 7 loop geom
fix nve all nve
timestep 0.001
thermo {warmup}
run {warmup}
"""


def structure(atoms: int):
    """Rattled diamond Si with about ``atoms`` atoms (8 k^3)."""
    from ase.build import bulk

    k = max(1, round((atoms / 8) ** (1 / 3)))
    crystal = bulk("Si", "diamond", a=5.43, cubic=True).repeat((k, k, k))
    crystal.rattle(0.05, seed=0)
    return crystal


def worker(args) -> None:
    """One LAMMPS run (under mpirun): warm-up, then ``steps`` timed steps; rank 0 prints JSON."""
    from mlip.lammps import run_deck

    deck = Path(args.worker).with_suffix(".lammps")
    deck.write_text(DECK.format(data=args.worker, warmup=args.warmup))
    lmp, coupling = run_deck(deck, args.model, ["Si"], cmdargs=["-nocite", "-screen", "none", "-log", "none"])
    coupling.calls, coupling.callback_seconds, coupling.model_seconds = 0, 0.0, 0.0
    start = time.perf_counter()
    lmp.command(f"run {args.steps} pre no post no")  # pre no: no setup force call, N steps = N calls
    seconds = time.perf_counter() - start
    if lmp.extract_setting("world_rank") == 0:
        steps, calls = args.steps, coupling.calls
        print("RESULT " + json.dumps({
            "ms_per_step": 1e3 * seconds / steps,
            "model_ms": 1e3 * coupling.model_seconds / calls,
            "coupling_ms": 1e3 * (coupling.callback_seconds - coupling.model_seconds) / calls,
            "rest_ms": 1e3 * (seconds - coupling.callback_seconds) / steps,
            "mode": coupling.mode,
            "natoms": lmp.get_natoms(),
            "nghost_rank0": lmp.extract_global("nghost"),
        }), flush=True)
    lmp.close()


def run_lammps(data: Path, model: Path, ranks: int, steps: int, warmup: int) -> dict:
    mpirun = Path(sys.executable).parent / "mpirun"
    cores = "1" if ranks == 1 else "0,1"
    command = ["taskset", "-c", cores, str(mpirun), "-np", str(ranks), sys.executable, os.path.abspath(__file__),
               "--worker", str(data), "--model", str(model), "--steps", str(steps), "--warmup", str(warmup)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def run_ase(atoms, model: Path, steps: int, warmup: int) -> dict:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from mlip.calculator import Calculator

    calculator = Calculator(model, compilation_cache=None)
    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(7))
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.run(warmup)
    start = time.perf_counter()
    dynamics.run(steps)
    return {"ms_per_step": 1e3 * (time.perf_counter() - start) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="+", default=[1000, 10648])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="timed steps per size (default 10 / 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.steps = args.steps[0]
        return worker(args)

    import ase.io

    from mlip.potential import Potential

    folder = Path(tempfile.mkdtemp(prefix="bench-lammps-"))
    model = folder / "small-Si.mlip"
    Potential.create("small", species=["Si"], r_cut=5.0, seed=0).save(model)
    steps = args.steps or [10 if n <= 2000 else 3 for n in args.atoms]
    rows = []
    started = time.time()
    for n, timed in zip(args.atoms, steps):
        atoms = structure(n)
        data = folder / f"Si{len(atoms)}.data"
        ase.io.write(data, atoms, format="lammps-data", specorder=["Si"], masses=True, atom_style="atomic")
        ase_row = run_ase(atoms, model, timed, args.warmup)
        rows.append({"atoms": len(atoms), "path": "ASE (Calculator + VelocityVerlet)", "ranks": 1, **ase_row})
        print(rows[-1], flush=True)
        for ranks in args.ranks:
            row = run_lammps(data, model, ranks, timed, args.warmup)
            row.update(atoms=len(atoms), path="LAMMPS fix external", ranks=ranks,
                       vs_ase=ase_row["ms_per_step"] / row["ms_per_step"])
            rows.append(row)
            print(rows[-1], flush=True)
    print(f"\n{cpu_model()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{time.time() - started:.0f} s, load average {os.getloadavg()[0]:.1f}\n")
    print("| atoms | path | ranks | mode | ms/step | steps/s | model ms | coupling ms | rest of LAMMPS ms | ASE / this |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = (f"{r['mode']} | {r['ms_per_step']:.1f} | {1e3 / r['ms_per_step']:.3g} | {r['model_ms']:.1f} | "
                 f"{r['coupling_ms']:.1f} | {r['rest_ms']:.1f} | {r['vs_ase']:.2f}×") if "mode" in r else (
                 f"- | {r['ms_per_step']:.1f} | {1e3 / r['ms_per_step']:.3g} | | | | 1")
        print(f"| {r['atoms']:,} | {r['path']} | {r['ranks']} | {extra} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
