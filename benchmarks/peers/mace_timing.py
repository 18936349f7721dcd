"""MACE side of benchmarks/bench_potential.py: a timing server run with the peers' Python.

Not meant to be run by hand. ``bench_potential.py`` starts it as

    .venv-peers/bin/python benchmarks/peers/mace_timing.py

(inheriting its single-core affinity) and talks to it with one JSON object per line on
stdin/stdout, so that the two sides can be timed round after round, interleaved:

    {"cmd": "setup", "xyz": path, "dtype": "float32", "r_max": 5.0, "seed": 0, "models": [...]}
        -> {"versions": {...}, "models": {name: {"params": n, "elements": k}},
            "systems": [{"atoms": n, "edges": e}, ...]}
    {"cmd": "warmup", "model": name, "system": i, "calls": 1} -> {"first_s": t}
    {"cmd": "time", "model": name, "system": i}      -> {"seconds": t, "cpu_seconds": c, "energy": e}
    {"cmd": "data", "system": i}                     -> {"seconds": t}
    {"cmd": "quit"}

Models (random weights, built by mace_model.py; cutoff and Bessel count as given; "setup" builds
those named in its optional "models" list, by default "mp0" and "2el"):

- "mp0": architecture of MACE-MP-0 "small", with the 89 elements H..Ac of MACE-MP-0, as the
  foundation model has them;
- "2el": the same with only Si and Cu, the species of the mlip models it is compared with;
- "mp0-medium": architecture of MACE-MP-0 "medium" (128x0e+128x1o), 89 elements.

The element count matters for speed: MACE's residual skip connection is a tensor product of
the node features with the one-hot species (128 x n_elements x 128 weights per layer), and its
symmetric contraction has weights per element.

A "time" call is one energy + forces + stress evaluation, the model's normal path:
``model(batch, compute_force=True, compute_stress=True, training=False)`` (autograd, no
torch.no_grad), on a batch built once per system. "data" times what a MACE calculator does per
step before that: the neighbour list (matscipy), AtomicData and collation into a batch.
"""

from __future__ import annotations

import sys

from peer_process import json_channel_on_one_thread  # noqa: E402

PROTOCOL = json_channel_on_one_thread()

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
from mace import data as mace_data  # noqa: E402
from mace import tools  # noqa: E402
from mace.tools import torch_geometric  # noqa: E402


def make_batch(atoms: ase.Atoms, z_table, r_max: float) -> dict:
    """What MACECalculator does per step: neighbour list, AtomicData, collation."""
    config = mace_data.config_from_atoms(atoms)
    data = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max)
    loader = torch_geometric.dataloader.DataLoader([data], batch_size=1, shuffle=False, drop_last=False)
    return next(iter(loader)).to_dict()


#: model name -> (elements, MACE-MP-0 size)
MODELS = {"mp0": (MP0_ELEMENTS, "small"), "2el": (TWO_ELEMENTS, "small"), "mp0-medium": (MP0_ELEMENTS, "medium")}


class Server:
    def __init__(self):
        self.models, self.tables, self.batches, self.structures = {}, {}, {}, []
        self.r_max = 5.0

    def setup(self, xyz: str, dtype: str, r_max: float, num_bessel: int, seed: int,
              models: tuple[str, ...] = ("mp0", "2el")):
        torch.set_default_dtype(getattr(torch, dtype))
        torch.manual_seed(seed)
        self.r_max = r_max
        self.structures = ase.io.read(xyz, index=":")
        self.models, self.tables, self.batches = {}, {}, {}
        info = {}
        for name in models:
            elements, size = MODELS[name]
            self.models[name] = build_model(elements, r_max, num_bessel, size)
            self.tables[name] = tools.AtomicNumberTable(elements)
            self.batches[name] = [make_batch(a, self.tables[name], r_max) for a in self.structures]
            info[name] = {
                "params": int(sum(p.numel() for p in self.models[name].parameters())),
                "elements": len(elements),
            }
        systems = [
            {"atoms": len(a), "edges": int(b["edge_index"].shape[1])}
            for a, b in zip(self.structures, self.batches[models[0]])
        ]
        versions = {
            "torch": torch.__version__,
            "mace-torch": mace.__version__,
            "e3nn": e3nn.__version__,
            "numpy": np.__version__,
            "threads": torch.get_num_threads(),
        }
        return {"versions": versions, "models": info, "systems": systems}

    def evaluate(self, model: str, system: int):
        out = self.models[model](
            self.batches[model][system], compute_force=True, compute_stress=True, training=False
        )
        assert out["forces"] is not None and out["stress"] is not None
        return float(out["energy"].detach().sum())

    def warmup(self, model: str, system: int, calls: int):
        start = time.perf_counter()
        self.evaluate(model, system)
        first = time.perf_counter() - start
        for _ in range(calls - 1):
            self.evaluate(model, system)
        return {"first_s": first}

    def time(self, model: str, system: int):
        start, cpu = time.perf_counter(), time.process_time()
        energy = self.evaluate(model, system)
        return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "energy": energy}

    def data(self, system: int):
        start = time.perf_counter()
        make_batch(self.structures[system], next(iter(self.tables.values())), self.r_max)
        return {"seconds": time.perf_counter() - start}


def main():
    server = Server()
    out = PROTOCOL
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            break
        try:
            reply = getattr(server, command)(**request)
        except Exception as exc:  # report to the orchestrator instead of dying silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
