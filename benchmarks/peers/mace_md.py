"""MACE side of benchmarks/bench_md.py: MD throughput through mace-torch's ASE calculator.

Not meant to be run by hand. ``bench_md.py --peer-python ...`` runs it once per structure as

    .venv-peers/bin/python benchmarks/peers/mace_md.py --xyz start.extxyz --steps 20 --warmup 5

(inheriting its CPU affinity; one thread, as in mace_timing.py) and reads one JSON object from its stdout.

The model is the one of mace_timing.py (random weights, MACE-MP-0 "small" architecture, built
by mace_model.py with the same seed; 89 elements by default), wrapped in
``mace.calculators.MACECalculator(models=model, device="cpu", default_dtype=...)``: the
calculator as users run it, which builds a fresh neighbour list (matscipy), AtomicData and
batch on every call and evaluates energy, forces and stress. The structure and its momenta
come from the extxyz file, so that both sides start from the same state. Velocity Verlet
(1 fs, ASE): ``warmup`` steps, then the wall time of ``dynamics.run(steps)``.
"""

from __future__ import annotations


from peer_process import json_channel_on_one_thread  # noqa: E402

RESULT = json_channel_on_one_thread()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

# First: it lets e3nn load its packaged constants (see mace_model.py).
from mace_model import MP0_ELEMENTS, TWO_ELEMENTS, build_model  # noqa: E402  (benchmarks/peers/)

import ase  # noqa: E402
import ase.io  # noqa: E402
import e3nn  # noqa: E402
import mace  # noqa: E402
from ase import units  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402
from mace.calculators import MACECalculator  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--xyz", required=True, help="extxyz with the start structure and momenta")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--r-max", type=float, default=5.0)
    parser.add_argument("--num-bessel", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--elements", choices=["mp0", "2el"], default="mp0")
    args = parser.parse_args()

    torch.set_default_dtype(getattr(torch, args.dtype))
    torch.manual_seed(args.seed)
    elements = MP0_ELEMENTS if args.elements == "mp0" else TWO_ELEMENTS
    model = build_model(elements, args.r_max, args.num_bessel)
    params = int(sum(p.numel() for p in model.parameters()))
    calc = MACECalculator(models=model, device="cpu", default_dtype=args.dtype)
    model = calc.models[0]

    # Time the model call (forward + autograd for forces and stress) inside each step.
    forward = model.forward
    spent = {"model_s": 0.0, "calls": 0, "edges": []}

    def timed_forward(data, *a, **k):
        start = time.perf_counter()
        out = forward(data, *a, **k)
        spent["model_s"] += time.perf_counter() - start
        spent["calls"] += 1
        spent["edges"].append(int(data["edge_index"].shape[1]))
        return out

    model.forward = timed_forward

    atoms = ase.io.read(args.xyz)
    atoms.calc = calc
    temperature_start = float(atoms.get_temperature())
    dynamics = VelocityVerlet(atoms, 1.0 * units.fs)
    start = time.perf_counter()
    dynamics.run(args.warmup)
    warmup_s = time.perf_counter() - start
    temperature_warm = float(atoms.get_temperature())
    spent.update(model_s=0.0, calls=0, edges=[])
    start = time.perf_counter()
    dynamics.run(args.steps)
    elapsed = time.perf_counter() - start
    n = len(atoms)
    result = {
        "atoms": n,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "seconds": elapsed,
        "ms_per_step": 1e3 * elapsed / args.steps,
        "potential_ms_per_step": 1e3 * spent["model_s"] / args.steps,
        "model_calls": spent["calls"],
        "edges_min": min(spent["edges"]) if spent["edges"] else None,
        "edges_max": max(spent["edges"]) if spent["edges"] else None,
        "atom_steps_per_s": n * args.steps / elapsed,
        "ns_per_day": args.steps * 1e-6 / elapsed * 86400,
        "temperature_K": [temperature_start, temperature_warm, float(atoms.get_temperature())],
        "params": params,
        "elements": len(elements),
        "versions": {
            "torch": torch.__version__,
            "mace-torch": mace.__version__,
            "e3nn": e3nn.__version__,
            "ase": ase.__version__,
            "numpy": np.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    RESULT.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
