"""MD throughput through the ASE calculator: atom-steps per second and ns/day.

Velocity Verlet (1 fs, ASE) on rattled diamond Si supercells with the "small" preset (random
weights, float32), on whatever device JAX uses (CPU here; a GPU on the device machine).
Reports the time per step split into the potential call (device) and the rest (host: ASE,
neighbour-list checks/rebuilds with a 0.5 Å skin, padding).

    python benchmarks/bench_md.py --atoms 216 1728            # CPU
    python benchmarks/bench_md.py --atoms 1000 10000 100000   # GPU

With ``--peer-python`` (the peers' environment, see benchmarks/peers/README.md), the same MD
also runs through mace-torch's ``MACECalculator`` in a second process
(benchmarks/peers/mace_md.py; random weights, MACE-MP-0 "small" architecture with its 89
elements, float32, CPU), from the very same start (positions and Maxwell-Boltzmann momenta
at 300 K, passed over as an extxyz file), for the same warm-up and timed steps, and the
table puts both side by side:

    taskset -c 0 .venv/bin/python benchmarks/bench_md.py --atoms 216 1728 --peer-python .venv-peers/bin/python

Both sides time the wall time of ``dynamics.run(steps)`` after ``--warmup`` steps (mlip's
warm-up includes compilation). Pinned to one core (taskset), this script sets one thread
for every library (OMP_NUM_THREADS=1, XLA without Eigen threads; torch.set_num_threads(1) on
the MACE side, which inherits the affinity and the environment). The two sides run one after
the other, size by size.
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def silicon(n_atoms: int):
    """Diamond Si supercell with about ``n_atoms`` atoms (8 per cubic cell), rattled."""
    repeat = max(1, round((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=0)
    return atoms


def start_state(n_atoms: int, path: str):
    """The MD start (rattled Si, 300 K Maxwell-Boltzmann momenta), written to ``path`` (extxyz)
    and read back, so that this side starts from exactly what the peer reads."""
    atoms = silicon(n_atoms)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    ase.io.write(path, atoms, format="extxyz")
    return ase.io.read(path)


def measure(potential, atoms, steps: int, warmup: int = 3, skin: float = 0.5) -> dict:
    """Velocity Verlet through mlip's Calculator from ``atoms`` (with momenta): ``warmup``
    steps (compilation included), then the wall time of ``steps`` more."""
    from mlip.calculator import Calculator

    calc = Calculator(potential, skin=skin, compilation_cache=None)
    atoms.calc = calc
    temperature_start = atoms.get_temperature()
    dynamics = VelocityVerlet(atoms, 1.0 * units.fs)
    device = [0.0]
    shapes = []  # padded (nodes, edges) of every call: a new one means a compilation
    call = potential.__class__.__call__

    def timed(self, batch):
        start = time.perf_counter()
        out = call(self, batch)
        out.energy.block_until_ready()
        device[0] += time.perf_counter() - start
        shapes.append((batch.positions.shape[0], batch.senders.shape[0]))
        return out

    potential.__class__.__call__ = timed
    try:
        start = time.perf_counter()
        dynamics.run(warmup)
        warmup_s = time.perf_counter() - start
        temperature_warm = atoms.get_temperature()
        warm_shapes = set(shapes)
        device[0], shapes[:] = 0.0, []
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
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "seconds": elapsed,
        "ms_per_step": 1e3 * elapsed / steps,
        "potential_ms_per_step": 1e3 * device[0] / steps,
        "atom_steps_per_s": n * steps / elapsed,
        "ns_per_day": steps * 1e-6 / elapsed * 86400,
        "neighbor_rebuilds": calc.neighbors.builds - builds,
        "padded_shapes": sorted(warm_shapes | set(shapes)),
        "compilations_in_timed_steps": len(set(shapes) - warm_shapes),
        "temperature_K": [temperature_start, temperature_warm, atoms.get_temperature()],
    }


def measure_peer(python: str, xyz: str, steps: int, warmup: int) -> dict:
    """The same MD through MACE's calculator (benchmarks/peers/mace_md.py), in ``python``."""
    script = REPO / "benchmarks" / "peers" / "mace_md.py"
    command = [python, str(script), "--xyz", xyz, "--steps", str(steps), "--warmup", str(warmup)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the MACE MD process failed (exit code {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def steps_for(args) -> list[int]:
    if args.steps is None:  # default: 20, or 10 from 1000 atoms when MACE runs too (it is slow)
        return [10 if args.peer_python and n >= 1000 else 20 for n in args.atoms]
    if len(args.steps) == 1:
        return args.steps * len(args.atoms)
    if len(args.steps) != len(args.atoms):
        raise SystemExit("--steps: give one value, or one per --atoms value")
    return args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="+", default=[216, 1728])
    parser.add_argument("--steps", type=int, nargs="+",
                        help="timed steps, one value or one per size (default 20; with "
                             "--peer-python, 10 from 1000 atoms)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; 5 with --peer-python)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--skin", type=float, default=0.5,
                        help="skin of mlip's neighbour list, Å (default 0.5, the Calculator's; 0 rebuilds every step)")
    parser.add_argument("--peer-python", help="Python of the peers' environment: also run MACE")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    steps = steps_for(args)
    warmup = args.warmup if args.warmup is not None else (5 if args.peer_python else 3)

    import flax
    import jax

    import mlip
    from mlip.potential import Potential

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if args.peer_python and affinity is not None and len(affinity) != 1:
        print(f"WARNING: not pinned to one core (affinity {affinity}); use taskset -c 0\n")
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    potential = Potential.create(args.preset, species=["Si"], r_cut=5.0, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for n, n_steps in zip(args.atoms, steps):
            xyz = str(Path(directory) / f"si{n}.extxyz")
            row = {"mlip": measure(potential, start_state(n, xyz), n_steps, warmup, args.skin)}
            loads.append(os.getloadavg()[0])
            if args.peer_python:
                row["mace"] = measure_peer(args.peer_python, xyz, n_steps, warmup)
                loads.append(os.getloadavg()[0])
            rows.append(row)
            print(f"  {n} atoms done: " + ", ".join(f"{k} {v['ms_per_step']:.1f} ms/step" for k, v in row.items()),
                  flush=True)
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started

    print(f"\ndate {started:%Y-%m-%d %H:%M} UTC, {elapsed.total_seconds():.0f} s; CPU {cpu_model()}, "
          f"{os.cpu_count()} logical CPUs; affinity {affinity}; device {jax.devices()[0].device_kind}")
    print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    print(f"mlip {mlip.__version__}, jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}, "
          f"ase {ase.__version__}, Python {platform.python_version()}")
    print(f"mlip preset {args.preset} (species Si, r_cut 5 Å, skin {args.skin:g} Å, random weights, float32), "
          f"{potential.num_params:,} parameters")
    if args.peer_python:
        peer = rows[0]["mace"]
        v = peer["versions"]
        print(f"MACE: MACE-MP-0-small-like, {peer['elements']} elements, {peer['params']:,} parameters, random "
              f"weights, float32, r_max 5 Å, MACECalculator on CPU; torch {v['torch']}, mace-torch "
              f"{v['mace-torch']}, e3nn {v['e3nn']}, ase {v['ase']} ({v['threads']} thread)")
    print(f"Velocity Verlet 1 fs from 300 K; {warmup} warm-up steps, then timed steps as listed\n")

    head = ["atoms", "timed steps", "mlip ms/step", "of which potential", "mlip atom-steps/s", "mlip ns/day",
            "NL rebuilds"]
    if args.peer_python:
        head += ["MACE ms/step", "of which model", "MACE atom-steps/s", "MACE ns/day", "MACE / mlip"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for row in rows:
        ours = row["mlip"]
        cells = [f"{ours['atoms']:,}", f"{ours['steps']}", f"{ours['ms_per_step']:.1f}",
                 f"{ours['potential_ms_per_step']:.1f}", f"{ours['atom_steps_per_s']:,.0f}",
                 f"{ours['ns_per_day']:.4g}", f"{ours['neighbor_rebuilds']}"]
        if "mace" in row:
            peer = row["mace"]
            cells += [f"{peer['ms_per_step']:.1f}", f"{peer['potential_ms_per_step']:.1f}",
                      f"{peer['atom_steps_per_s']:,.0f}", f"{peer['ns_per_day']:.4g}",
                      f"{peer['ms_per_step'] / ours['ms_per_step']:.2f}×"]
        print("| " + " | ".join(cells) + " |")
    print("\ntemperature (K) at start / after warm-up / after the timed steps; mlip padded shapes:")
    for row in rows:
        for side, r in row.items():
            t = " / ".join(f"{x:.0f}" for x in r["temperature_K"])
            extra = (f"; padded (nodes, edges) {r['padded_shapes']}, {r['compilations_in_timed_steps']} "
                     f"compilation(s) in the timed steps" if side == "mlip" else
                     f"; edges {r['edges_min']:,}-{r['edges_max']:,}")
            print(f"  {side:4s} {r['atoms']:>7,} atoms: {t}; warm-up {r['warmup_s']:.1f} s{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
