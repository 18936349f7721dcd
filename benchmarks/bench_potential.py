"""Energy + forces + stress on one CPU core: mlip's "small" and "medium" presets vs MACE.

Run pinned to a single core, from the repository root, with the peers' virtual environment
(torch + mace-torch, see benchmarks/peers/README.md) built first:

    taskset -c 0 .venv/bin/python benchmarks/bench_potential.py --peer-python .venv-peers/bin/python

Structures: diamond Si supercells of 64, 216 and 512 atoms (a = 5.43 Å) and fcc Cu of 108 and
500 atoms (a = 3.61 Å), every atom displaced by N(0, 0.03 Å); cutoff 5 Å for every model.
The MACE side (benchmarks/peers/mace_timing.py) runs in a second process, started by this
one, which reads the very same structures from a temporary extxyz file. Both processes inherit
this one's CPU affinity and are limited to one thread; they run one at a time, interleaved
call by call, round after round, so load from other processes hits them alike.

What is timed (steady state, after compilation / warm-up; median over rounds):

- mlip: ``jax.block_until_ready(potential(batch))`` on a padded batch built once (the
  bucket ladder's shape), i.e. the jitted value_and_grad over (positions, strain) that gives
  energy, forces and stress;
- MACE: ``model(batch, compute_force=True, compute_stress=True, training=False)`` on a batch
  built once, random weights, MACE-MP-0 "small" architecture, with its 89 elements ("mp0")
  and with only Si and Cu ("2el", the same species list as the mlip models);
- apart from that, the host-side graph build each side pays per step when it does not reuse
  its neighbour list: mlip ``build_graph`` + ``collate`` (vesin), MACE ``AtomicData`` +
  collation (matscipy).

Allocator: ``--mlip-allocator tuned`` calls ``mlip.runtime.tune_allocator()`` before JAX
starts, as the ``mlip`` command does (default: glibc as it comes, as in a plain Python script);
``--mace-allocator tuned`` gives the MACE process the same glibc settings through glibc's
MALLOC_* variables (TUNED_MALLOC_ENV), ``both`` runs a second MACE process with them, interleaved
with the first (columns "tuned malloc").

Float32 first; then, in the same run, float64 (JAX x64 mode switched on after the float32
table) for the --float64-presets (small) and MACE. Prints markdown tables; speed ratios are MACE time /
mlip time, so > 1 means mlip is faster.
"""

from __future__ import annotations

import os

from machine import cpu_model, set_single_thread_env  # benchmarks/machine.py

set_single_thread_env()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

CUTOFF = 5.0  # Å, for mlip and MACE alike
RATTLE = 0.03  # Å
SPECIES = ["Si", "Cu"]
#: name -> (label, element, lattice, a in Å, cubic-cell repeats)
SYSTEMS = {
    "si64": ("diamond Si", "Si", "diamond", 5.43, 2),
    "si216": ("diamond Si", "Si", "diamond", 5.43, 3),
    "si512": ("diamond Si", "Si", "diamond", 5.43, 4),
    "cu108": ("fcc Cu", "Cu", "fcc", 3.61, 3),
    "cu500": ("fcc Cu", "Cu", "fcc", 3.61, 5),
}
REPO = Path(__file__).resolve().parents[1]
#: glibc's environment variables with the values of mlip.runtime.MALLOPT_SETTINGS (one arena, no
#: mmap for large blocks, no trimming, 256 MiB top pad), for the MACE process of
#: --mace-allocator tuned/both: the same malloc settings as mlip's own, the way a torch user gets them.
TUNED_MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
    "MALLOC_TOP_PAD_": str(256 << 20),
}
#: MACE model (benchmarks/peers/mace_timing.py) -> table heading
MACE_LABELS = {"mp0": "MACE MP-0-small-like, 89 el.", "2el": "MACE, 2 el.",
               "mp0-medium": "MACE MP-0-medium-like, 89 el."}


def build_system(name: str):
    """The ase.Atoms of one benchmark structure (deterministic)."""
    _, element, lattice, a, repeats = SYSTEMS[name]
    atoms = bulk(element, lattice, a=a, cubic=True).repeat(repeats)
    atoms.rattle(stdev=RATTLE, seed=list(SYSTEMS).index(name))
    return atoms


class Peer:
    """The MACE timing server (benchmarks/peers/mace_timing.py) in the peers' Python."""

    def __init__(self, python: str, env: dict[str, str] | None = None):
        """env: variables added to this process's environment for the server's."""
        script = REPO / "benchmarks" / "peers" / "mace_timing.py"
        self.process = subprocess.Popen(
            [python, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, **(env or {})},
        )

    def __call__(self, cmd: str, **kwargs):
        self.process.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the MACE timing process exited (code {self.process.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"MACE side: {reply['error']}")
        return reply

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def run_dtype(dtype: str, presets: list[str], names: list[str], peers: dict[str, Peer], xyz: str, args, loads):
    """Times every model on every system in one precision; returns a results dict. peers: MACE
    timing servers by allocator ("glibc", "tuned"); each runs every model of args.mace_models,
    keyed "model" (glibc) or "model tuned"."""
    import jax

    from mlip.data.frame import frame_from_atoms
    from mlip.data.graph import build_graph, collate
    from mlip.data.padding import BucketLadder
    from mlip.potential import Potential

    float_type = np.dtype(dtype)
    potentials = {p: Potential.create(p, species=SPECIES, r_cut=CUTOFF, dtype=dtype) for p in presets}
    frames = [frame_from_atoms(build_system(n)) for n in names]

    def graph_and_batch(frame):
        graph = build_graph(frame, CUTOFF)
        shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
        return graph, collate([graph], *shape, dtype=float_type, labels=False)

    graphs, batches = zip(*(graph_and_batch(f) for f in frames))
    mace = [(model if allocator == "glibc" else f"{model} tuned", peer, model)
            for allocator, peer in peers.items() for model in args.mace_models]
    for peer in peers.values():
        peer_info = peer("setup", xyz=xyz, dtype=dtype, r_max=CUTOFF, num_bessel=10, seed=0,
                         models=args.mace_models)
        for g, system in zip(graphs, peer_info["systems"]):
            if (g.n_node, g.n_edge) != (system["atoms"], system["edges"]):
                raise RuntimeError(f"graphs differ: mlip {g.n_node}/{g.n_edge}, MACE {system}")
    peer = next(iter(peers.values()))

    def ours(preset, i):
        return jax.block_until_ready(potentials[preset](batches[i]))

    compile_s = {}
    for preset in presets:
        for i in range(len(names)):
            compile_s[preset, i] = timed(ours, preset, i)
            ours(preset, i)
    for key, server, model in mace:
        for i in range(len(names)):
            compile_s[key, i] = server("warmup", model=model, system=i, calls=2)["first_s"]

    times = {key: [] for key in compile_s}
    cpu_times = {key: [] for key in compile_s}  # CPU time of the process (all its threads)
    host = {("mlip", i): [] for i in range(len(names))} | {("mace", i): [] for i in range(len(names))}
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for i in range(len(names)):
            for preset in presets:
                if preset == "medium" and r >= args.medium_rounds:
                    continue
                cpu = time.process_time()
                times[preset, i].append(timed(ours, preset, i))
                cpu_times[preset, i].append(time.process_time() - cpu)
            for key, server, model in mace:
                reply = server("time", model=model, system=i)
                times[key, i].append(reply["seconds"])
                cpu_times[key, i].append(reply["cpu_seconds"])
            host["mlip", i].append(timed(graph_and_batch, frames[i]))
            host["mace", i].append(peer("data", system=i)["seconds"])
    return {
        "graphs": graphs,
        "padded": [b.shape for b in batches],
        "median": {k: float(np.median(v)) for k, v in times.items() if v},
        "cpu_median": {k: float(np.median(v)) for k, v in cpu_times.items() if v},
        "spread": {k: (min(v), max(v)) for k, v in times.items() if v},
        "host": {k: float(np.median(v)) for k, v in host.items()},
        "compile": compile_s,
        "params": {p: potentials[p].num_params for p in presets},
        "peer": peer_info,
        "mace": [key for key, _, _ in mace],
    }


def mace_label(key: str) -> str:
    """Table heading of a MACE timing key ("mp0", "2el tuned", ...)."""
    model, _, tuned = key.partition(" ")
    return MACE_LABELS[model] + (", tuned malloc" if tuned else "")


def print_model_table(result, presets, names, mlip_allocator: str, statistic: str = "median"):
    """statistic: "median" (wall time) or "cpu_median" (CPU time of each process)."""
    med, mace = result[statistic], result["mace"]
    mlip = " (tuned malloc)" if mlip_allocator == "tuned" else ""
    head = ["structure", "atoms", "edges"] + [f"mlip {p}{mlip} (ms)" for p in presets]
    head += [f"{mace_label(k)} (ms)" for k in mace]
    head += [f"{mace_label(k)} / {p}" for k in mace for p in presets]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for i, name in enumerate(names):
        graph = result["graphs"][i]
        cells = [SYSTEMS[name][0], f"{graph.n_node}", f"{graph.n_edge:,}"]
        cells += [f"{med[p, i] * 1e3:.0f}" for p in presets]
        cells += [f"{med[k, i] * 1e3:.0f}" for k in mace]
        cells += [f"{med[k, i] / med[p, i]:.2f}×" for k in mace for p in presets]
        print("| " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default=str(REPO / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (small, MACE)")
    parser.add_argument("--medium-rounds", type=int, default=3, help="timed rounds of medium")
    parser.add_argument("--float64-rounds", type=int, default=3, help="rounds of the float64 table")
    parser.add_argument("--no-float64", action="store_true", help="skip the float64 table")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--presets", default="small,medium", help="mlip presets of the float32 table")
    parser.add_argument("--float64-presets", default="small", help="mlip presets of the float64 table")
    parser.add_argument("--mace-models", default="mp0,2el",
                        help=f"MACE models to time, comma-separated, of {', '.join(MACE_LABELS)}")
    parser.add_argument("--mlip-allocator", choices=("glibc", "tuned"), default="glibc",
                        help="tuned: call mlip.runtime.tune_allocator() first, as the mlip command does")
    parser.add_argument("--mace-allocator", choices=("glibc", "tuned", "both"), default="glibc",
                        help="the MACE process's malloc: as shipped, with TUNED_MALLOC_ENV, or one of each")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    names = args.systems.split(",")
    presets = args.presets.split(",")
    args.mace_models = args.mace_models.split(",")
    if args.mlip_allocator == "tuned":
        from mlip.runtime import tune_allocator

        if not tune_allocator():  # before JAX starts its threads, as in mlip.cli.main
            parser.error("mlip.runtime.tune_allocator() left glibc alone (MALLOC_* or MLIP_SYSTEM_MALLOC set?)")

    import ase.io
    import flax
    import jax

    import mlip

    affinity = sorted(os.sched_getaffinity(0))
    if len(affinity) != 1:
        print(f"WARNING: not pinned to one core (affinity {affinity}); use taskset -c 0\n")
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        xyz = str(Path(directory) / "systems.extxyz")
        ase.io.write(xyz, [build_system(n) for n in names], format="extxyz")
        allocators = ["glibc", "tuned"] if args.mace_allocator == "both" else [args.mace_allocator]
        peers = {a: Peer(args.peer_python, TUNED_MALLOC_ENV if a == "tuned" else None) for a in allocators}
        try:
            results["float32"] = run_dtype("float32", presets, names, peers, xyz, args, loads)
            if not args.no_float64:
                jax.config.update("jax_enable_x64", True)
                args64 = argparse.Namespace(**{**vars(args), "rounds": args.float64_rounds})
                results["float64"] = run_dtype("float64", args.float64_presets.split(","), names, peers,
                                               xyz, args64, loads)
        finally:
            for peer in peers.values():
                peer.close()
    loads.append(os.getloadavg()[0])
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started

    f32 = results["float32"]
    versions = f32["peer"]["versions"]
    print(f"date {started:%Y-%m-%d %H:%M} UTC, {elapsed.total_seconds():.0f} s; CPU {cpu_model()}; affinity {affinity}")
    print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    if malloc:
        print(f"glibc malloc settings (both processes): {malloc}")
    print(f"mlip's malloc: {args.mlip_allocator}; MACE's: {args.mace_allocator}"
          + (f" (tuned: {TUNED_MALLOC_ENV})" if args.mace_allocator != "glibc" else ""))
    print(
        f"mlip {mlip.__version__}, jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}; peers: torch {versions['torch']}, "
        f"mace-torch {versions['mace-torch']}, e3nn {versions['e3nn']} ({versions['threads']} thread)"
    )
    print(f"cutoff {CUTOFF} Å; medians of {args.rounds} rounds (medium: {args.medium_rounds})\n")
    print("Parameters: " + ", ".join(f"mlip {p} {n:,}" for p, n in f32["params"].items()) + ", "
          + ", ".join(f"MACE {m} ({v['elements']} elements) {v['params']:,}" for m, v in f32["peer"]["models"].items()))
    print("\n### float32\n")
    print_model_table(f32, presets, names, args.mlip_allocator)
    print("\nCPU time of each process per call (user + system, all threads; less stretched by load):\n")
    print_model_table(f32, presets, names, args.mlip_allocator, "cpu_median")
    if "float64" in results:
        f64_presets = args.float64_presets.split(",")
        print(f"\n### float64 (medians of {args.float64_rounds} rounds)\n")
        print_model_table(results["float64"], f64_presets, names, args.mlip_allocator)
        print("\nCPU time per call:\n")
        print_model_table(results["float64"], f64_presets, names, args.mlip_allocator, "cpu_median")
    print("\n### host-side graph build per step (float32 run; ms)\n")
    print("| structure | atoms | padded (nodes, edges) | mlip build_graph + collate | MACE AtomicData + collate |")
    print("|---|---:|---:|---:|---:|")
    for i, name in enumerate(names):
        n, e, _ = f32["padded"][i]
        print(f"| {SYSTEMS[name][0]} | {f32['graphs'][i].n_node} | {n}, {e:,} | "
              f"{f32['host']['mlip', i] * 1e3:.1f} | {f32['host']['mace', i] * 1e3:.1f} |")
    print("\n### first call (compilation for mlip, s)\n")
    for dtype, result in results.items():
        parts = [f"{k[0]} {SYSTEMS[names[k[1]]][0].split()[-1]}{result['graphs'][k[1]].n_node} {v:.1f}"
                 for k, v in result["compile"].items()]
        print(f"{dtype}: " + ", ".join(parts))
    print("\nspread (min-max, ms):")
    for dtype, result in results.items():
        for key, (lo, hi) in result["spread"].items():
            print(f"  {dtype} {key[0]:6s} {names[key[1]]:6s} {lo * 1e3:8.0f} - {hi * 1e3:8.0f}")
    if args.json:
        serial = {
            dtype: {
                "median_s": {f"{k[0]}/{names[k[1]]}": v for k, v in r["median"].items()},
                "cpu_median_s": {f"{k[0]}/{names[k[1]]}": v for k, v in r["cpu_median"].items()},
                "host_s": {f"{k[0]}/{names[k[1]]}": v for k, v in r["host"].items()},
                "params": r["params"],
                "peer": r["peer"],
            }
            for dtype, r in results.items()
        }
        Path(args.json).write_text(json.dumps(serial, indent=1))


if __name__ == "__main__":
    sys.exit(main())
