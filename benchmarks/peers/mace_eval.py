"""MACE side of benchmarks/h2h_mace.py: a trained MACE model on a test split, through
mace-torch's own ASE calculator (``MACECalculator``), run with the peers' Python.

Not meant to be run by hand. ``h2h_mace.py`` starts it, pinned to its core, as

    taskset -c CORE .venv-peers/bin/python benchmarks/peers/mace_eval.py --model M.model \
        --test test.extxyz --time-index I --warmup 3 --calls 20 --dtype float32 -o pred.npz

- Predictions: every structure of ``--test`` (extxyz) through the calculator, in file order;
  written to ``-o`` (npz): ``energy`` float64 [n_structures] (eV) and ``forces`` float64
  [total atoms, 3] (eV/Å, the structures' atoms one after another). The orchestrator scores
  them with mlip's own metrics, so both codes' errors are computed by the same code.
- Timing: structure ``--time-index`` of ``--test``, ``calculate(atoms, [energy, forces,
  stress], all_changes)`` (the calculator's full path per MD step: neighbour list, graph,
  model with autograd), ``--warmup`` calls, then ``--calls`` timed calls.

One JSON object on stdout: {"params": n, "versions": {...}, "first_call_s": t,
"call_ms": [...], "median_ms": t, "atoms": n}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from peer_process import json_channel_on_one_thread  # benchmarks/peers/

RESULT = json_channel_on_one_thread()

import json  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
# e3nn 0.4.4 reads its packaged constants with torch.load, whose weights_only default
# (torch >= 2.6) rejects the ``slice`` objects in that file (as in mace_model.py).
torch.serialization.add_safe_globals([slice])

import ase  # noqa: E402
import ase.io  # noqa: E402
import e3nn  # noqa: E402
import mace  # noqa: E402
from ase.calculators.calculator import all_changes  # noqa: E402
from mace.calculators import MACECalculator  # noqa: E402

PROPERTIES = ["energy", "forces", "stress"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model file written by mace's run_train")
    parser.add_argument("--test", required=True, help="test structures (extxyz)")
    parser.add_argument("--time-index", type=int, default=0, help="the structure to time")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("-o", "--output", required=True, help="predictions (npz)")
    args = parser.parse_args(argv)

    calc = MACECalculator(model_paths=args.model, device="cpu", default_dtype=args.dtype)
    structures = ase.io.read(args.test, index=":")
    energies, forces = [], []
    for atoms in structures:
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        energies.append(float(calc.results["energy"]))
        forces.append(np.asarray(calc.results["forces"], np.float64))
    temporary = args.output + ".part.npz"  # np.savez keeps a name ending in .npz as it is
    np.savez(temporary, energy=np.asarray(energies), forces=np.concatenate(forces))
    os.replace(temporary, args.output)

    atoms = structures[args.time_index].copy()
    start = time.perf_counter()
    calc.calculate(atoms, PROPERTIES, all_changes)
    first = time.perf_counter() - start
    if "stress" not in calc.results:
        sys.exit("mace_eval: the calculator returned no stress")
    for _ in range(args.warmup - 1):
        calc.calculate(atoms, PROPERTIES, all_changes)
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        calc.calculate(atoms, PROPERTIES, all_changes)
        times.append(1e3 * (time.perf_counter() - start))
    reply = {
        "params": int(sum(p.numel() for p in calc.models[0].parameters())),
        "versions": {"torch": torch.__version__, "mace-torch": mace.__version__, "e3nn": e3nn.__version__,
                     "threads": torch.get_num_threads()},
        "first_call_s": first,
        "call_ms": times,
        "median_ms": statistics.median(times),
        "atoms": len(atoms),
    }
    RESULT.write(json.dumps(reply) + "\n")
    RESULT.flush()


if __name__ == "__main__":
    main()
