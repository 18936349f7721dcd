"""The GPU device check: one command, a few minutes on one GPU, every step time-capped and its
results written as soon as they exist, so that a run cut short still reports.

Steps, in order of value (issue 19):

    kernel     the fused Pallas edge chain vs its reference: first-use check (passed or fell
               back), forward and backward max errors, in-model energy/forces/stress (float32)
    potential  energy + forces + stress of `small` and `medium`, reference vs kernel, at about
               1k, 10k and 100k atoms of diamond Si: compile s, ms/call, atom-steps/s, memory
    largest    the largest system that fits, per preset (bisection on dense synthetic graphs)
    relax      mlip.sim.relax of many mixed-size Si crystals (µs per atom-step), and the ASE
               path on a few of them
    md         mlip.sim.md NVE at about 1k and 10k atoms: ns/day, atom-steps/s, energy drift
    train      one training step on MPtrj-like batches (8 structures, 400 atoms): frames/s
    precision  TF32 ("default") and bf16_3x ("high") vs full float32 ("highest") matmuls: errors
               of energy, forces and stress against float64, and NVE drift

Each step runs in its own process (a crash or an out-of-memory cannot take the others down)
under a deadline, and is killed 20 s past it. Results go to OUT/results.json and
OUT/results.md, rewritten every few seconds; the machine, date, JAX version and command head
them. ``--tiny`` runs the same steps and code paths at toy sizes on the CPU
(tests/test_device_check.py, so that the script cannot rot while no GPU is lent).

On the device machine (the device tool's `run`; benchmarks/device_wheels.sh prepares .whl/
here first, mlip's own wheel included, built from the working tree; and benchmarks/RESULTS.md, "GPU device check", gives the same call):

    command:   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && python3 benchmarks/device_check.py --out $OUT --budget 420 2>&1 | tee $OUT/log.txt
    carry:     [".whl"]
    timeout_s: 540

Here: ``python benchmarks/device_check.py --tiny --out /tmp/check``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# JAX and mlip are imported inside the step functions: the orchestrating process must not start
# a JAX backend, which would take the GPU's memory from the steps' processes.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: Step name -> share of the time budget (the shares of the steps run are scaled to it).
STEPS = {"kernel": 40, "potential": 140, "largest": 45, "relax": 60, "md": 45, "train": 25, "precision": 45}
#: Seconds a step may run past its deadline before it is killed.
GRACE = 20.0

#: Sizes of the full (GPU) run and of --tiny (CPU, seconds). Same code, other numbers.
FULL = dict(
    presets={"small": {}, "medium": {}}, kernel_edges=4096, model_atoms=1000, sizes=(1000, 10000, 100000),
    largest_start=100_000, largest_max=8_000_000, relax_count=1024, relax_ase=16, relax_steps=300,
    relax_atoms=12288, md_runs=((1000, 200), (10000, 100)), train_steps=20, train_frames=160, nve_atoms=1000,
    nve_steps=500, rounds=5, trained=True, repeat=True, precisions=("default", "high", "highest"),
)
#: --tiny: one preset at lmax 1 and 4 channels (the Pallas interpreter's compile time grows
#: fast with lmax), also in place of the trained model in relax, md and precision; one size,
#: one probe of the bisection, a few structures and steps, no second (compiled) runs.
TINY_MODEL = dict(lmax=1, mmax=1, channels=4, mixing_hidden=8, readout_hidden=4, num_radial=4)
TINY = dict(
    presets={"small": TINY_MODEL}, kernel_edges=40, model_atoms=8, sizes=(8,), largest_start=64, largest_max=64,
    relax_count=4, relax_ase=2, relax_steps=8, relax_atoms=128, md_runs=((8, 4),), train_steps=2, train_frames=8,
    nve_atoms=8, nve_steps=4, rounds=1, trained=False, repeat=False, precisions=("default", "highest"),
)


# --- the orchestrating process ------------------------------------------------------------------


def orchestrate(args) -> int:
    """Run each step in a child process under its deadline; merge what they write into OUT."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    steps = args.steps.split(",") if args.steps else list(STEPS)
    scale = args.budget / sum(STEPS[s] for s in steps)
    report = {"header": header(args), "steps": {}}
    start = time.monotonic()
    for name in steps:
        left = args.budget - (time.monotonic() - start)
        share = min(STEPS[name] * scale, left)
        if share < 5:
            report["steps"][name] = {"status": "skipped: time budget spent", "rows": []}
            write_report(out, report)
            continue
        report["steps"][name] = {"status": "running", "rows": []}
        status = run_step(name, share, scratch, args.tiny, lambda: merge(out, report, scratch, name))
        merge(out, report, scratch, name, status)
        print(f"[device_check] {name}: {status} ({time.monotonic() - start:.0f} s since start)", flush=True)
    report["header"]["wall_s"] = round(time.monotonic() - start, 1)
    write_report(out, report)
    return 0


def run_step(name: str, seconds: float, scratch: Path, tiny: bool, refresh) -> str:
    """Run one step's child until it ends or its deadline + GRACE passes; returns a status."""
    deadline = time.time() + seconds
    command = [sys.executable, __file__, "--step", name, "--deadline", str(deadline), "--scratch", str(scratch)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.95")  # the bisection wants the whole card
    child = subprocess.Popen(command + ["--tiny"] * tiny, env=env)
    while True:
        try:
            code = child.wait(timeout=3)
            return "done" if code == 0 else f"failed: exit code {code} (log.txt has its output)"
        except subprocess.TimeoutExpired:
            refresh()
            if time.time() > deadline + GRACE:
                child.kill()
                child.wait()
                return f"cut at its time cap ({seconds:.0f} s + {GRACE:.0f} s)"


def header(args) -> dict:
    """What ran where; the device itself is described by each step's child (its JAX backend)."""
    gpu = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        query = "--query-gpu=name,memory.total,driver_version"
        gpu = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "nvidia_smi": gpu or None,
        "mode": "tiny (CPU toy sizes)" if args.tiny else "full",
        "budget_s": args.budget,
        "matmul_precision": "highest, except where a row says otherwise",
        "mlip": mlip_source(),
    }


def mlip_source() -> str:
    """Where the children import mlip from, and the commit its wheel was built from (the wheel
    of benchmarks/device_wheels.sh writes .whl/BUILT_FROM)."""
    import importlib.util

    spec = importlib.util.find_spec("mlip")
    built = HERE.parent / ".whl" / "BUILT_FROM"
    origin = str(Path(spec.origin).parent) if spec and spec.origin else "not importable"
    return origin + (f" (wheel built from {built.read_text().strip()})" if built.exists() else "")


def merge(out: Path, report: dict, scratch: Path, name: str, status: str | None = None) -> None:
    """Copy a step's rows (and device info) from its scratch file into the report; write it."""
    path = scratch / f"{name}.json"
    if path.exists():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            data = json.loads(path.read_text())
            report["steps"][name]["rows"] = data["rows"]
            report["header"].setdefault("device", data["device"])
    if status is not None:
        report["steps"][name]["status"] = status
    write_report(out, report)


def write_report(out: Path, report: dict) -> None:
    atomic_write(out / "results.json", json.dumps(report, indent=1, default=str))
    atomic_write(out / "results.md", markdown(report))


def atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def markdown(report: dict) -> str:
    """The report as markdown: the header, then one table per step (columns: every key of its
    rows, in order of first appearance)."""
    lines = ["# mlip device check", ""] + [f"- {k}: {v}" for k, v in report["header"].items()]
    for name, step in report["steps"].items():
        lines += ["", f"## {name}: {step['status']}", ""]
        rows = step["rows"]
        if not rows:
            continue
        columns = list(dict.fromkeys(k for row in rows for k in row))
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


# --- the step processes -----------------------------------------------------------------------


class Rows:
    """A step's results, rewritten to its scratch file after every row (the orchestrator reads
    it while the step runs); ``left()`` is the seconds to the step's deadline."""

    def __init__(self, path: Path, deadline: float):
        import jax

        self.path, self.deadline, self.rows = path, deadline, []
        device = jax.devices()[0]
        self.device = {"kind": device.device_kind, "platform": device.platform, "count": jax.device_count(),
                       "jax": jax.__version__, "jaxlib": _version("jaxlib")}
        self._write()

    def add(self, **row) -> None:
        self.rows.append(row)
        print(f"  {row}", flush=True)
        self._write()

    def left(self) -> float:
        return self.deadline - time.time()

    def _write(self) -> None:
        atomic_write(self.path, json.dumps({"device": self.device, "rows": self.rows}, default=str))


def _version(package: str) -> str | None:
    import importlib.metadata

    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return None


def run_child(args) -> None:
    import jax

    if args.step == "precision":
        jax.config.update("jax_enable_x64", True)  # the float64 reference
    rows = Rows(Path(args.scratch) / f"{args.step}.json", args.deadline)
    sizes = TINY if args.tiny else FULL
    with jax.default_matmul_precision("highest"):
        STEP_FUNCTIONS[args.step](sizes, rows)


def silicon(num_atoms: int, rattle: float = 0.03):
    """Rattled diamond Si, the cubic supercell of about ``num_atoms`` atoms (8 per cell)."""
    from ase.build import bulk

    repeats = max(1, round((num_atoms / 8) ** (1 / 3)))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeats)
    atoms.rattle(stdev=rattle, seed=0)
    return atoms


def model(preset: str, overrides: dict, kernel: str = "reference", species=("Si",)):
    from mlip.potential import Potential

    return Potential.create(preset, species=list(species), r_cut=5.0, seed=0, dtype="float32", kernel=kernel, **overrides)


def simulation_model(sizes: dict):
    """The potential of relax, md and precision: the bundled mlearn Si model (small preset,
    trained: a random model's landscape is too rugged for relaxations to mean much), or the
    --tiny model."""
    from mlip.potential import Potential

    if sizes["trained"]:
        return "small (mlearn Si, trained)", Potential.load("mlearn-si")
    preset, overrides = next(iter(sizes["presets"].items()))
    return f"{preset} (random)", model(preset, overrides)


def with_kernel(potential, kernel: str):
    return dataclasses.replace(potential, kernel=kernel)


def padded(potential, atoms):
    """(graph, batch): ``atoms``' graph padded to the bucket ladder."""
    import numpy as np

    from mlip.data.frame import frame_from_atoms
    from mlip.data.graph import build_graph, collate
    from mlip.data.padding import BucketLadder

    graph = build_graph(frame_from_atoms(atoms), potential.config.r_cut)
    shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
    return graph, collate([graph], *shape, dtype=np.dtype(potential.dtype), labels=False)


def max_error(got, expected) -> float:
    """max |got - expected| / max |expected| over a pytree."""
    import jax
    import numpy as np

    errors = [np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) / max(np.max(np.abs(np.asarray(b, np.float64))), 1e-30)
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True)]
    return float(max(errors))


def selected(potential) -> str:
    """"pallas" or "fell back: ..." for a potential that asks for the kernel."""
    import jax

    from kernels import selection

    c = potential.config
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", selection.KernelFallbackWarning)
        choice = selection.select(potential.kernel, c.lmax, c.mmax, c.channels, potential.dtype, jax.default_backend())
    if choice.name == "pallas":
        return "pallas"
    return "fell back: " + " ".join(str(w.message) for w in caught)[:300] if caught else choice.name


def step_kernel(sizes: dict, rows: Rows) -> None:
    """(a) Kernel vs reference: first-use check, edge chain errors, in-model errors."""
    import functools

    import jax

    from kernels.so2_message import random_inputs, so2_message_pallas, so2_message_reference

    interpret = jax.devices()[0].platform == "cpu"
    for preset, overrides in sizes["presets"].items():
        potential = model(preset, overrides, kernel="pallas")
        c = potential.config
        rows.add(part="first-use check", preset=preset, result=selected(potential))
        inputs = random_inputs(jax.random.PRNGKey(0), c.lmax, c.mmax, c.channels, c.channels, sizes["kernel_edges"], 3, "float32")
        probe = jax.random.normal(jax.random.PRNGKey(1), (sizes["kernel_edges"], (c.lmax + 1) ** 2, c.channels))
        chains = {"pallas": functools.partial(so2_message_pallas, lmax=c.lmax, mmax=c.mmax, interpret=interpret),
                  "reference": functools.partial(so2_message_reference, lmax=c.lmax, mmax=c.mmax)}
        results = {}
        for name, chain in chains.items():
            try:
                results[name] = jax.jit(functools.partial(value_and_vjp, chain))(inputs, probe)
            except Exception as exc:  # a lowering failure is a result here
                rows.add(part="edge chain", preset=preset, result=f"{name} raised {type(exc).__name__}: {str(exc)[:300]}")
        if len(results) == 2:
            got, expected = results["pallas"], results["reference"]
            rows.add(part="edge chain", preset=preset, edges=sizes["kernel_edges"], forward_max_rel_error=max_error(got[0], expected[0]),
                     backward_max_rel_error=max_error(got[1], expected[1]))
        in_model(preset, potential, sizes, rows)


def value_and_vjp(chain, inputs, cotangent):
    """The edge chain's messages and the cotangents of its inputs (x, Wigner blocks, radial
    weights, SO(2) weights) for a given message cotangent."""
    import jax

    value, vjp = jax.vjp(chain, *inputs)
    return value, vjp(cotangent)


def in_model(preset: str, potential, sizes: dict, rows: Rows) -> None:
    """Energy, forces and stress of the model with the kernel against the reference."""
    import numpy as np

    graph, batch = padded(potential, silicon(sizes["model_atoms"]))
    try:
        got = potential(batch)
    except Exception as exc:
        rows.add(part="in model", preset=preset, result=f"raised {type(exc).__name__}: {str(exc)[:300]}")
        return
    expected = with_kernel(potential, "reference")(batch)
    n = graph.n_node
    forces = np.asarray(expected.forces[:n])
    rows.add(part="in model", preset=preset, atoms=n, energy_error_meV_per_atom=1e3 * abs(float(got.energy[0] - expected.energy[0])) / n,
             forces_max_error_eV_per_A=float(np.abs(np.asarray(got.forces[:n]) - forces).max()),
             forces_max_rel_error=float(np.abs(np.asarray(got.forces[:n]) - forces).max() / np.abs(forces).max()),
             stress_max_error_GPa=160.2177 * float(np.abs(np.asarray(got.stress[0]) - np.asarray(expected.stress[0])).max()))


def timed(compiled, arguments, rounds: int, seconds: float) -> list[float]:
    """Wall times of up to ``rounds`` calls (at least one), stopping after ``seconds``."""
    import jax

    times, start = [], time.perf_counter()
    while not times or (len(times) < rounds and time.perf_counter() - start < seconds):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*arguments))
        times.append(time.perf_counter() - t)
    return times


def measure_call(potential, batch, rounds: int, seconds: float) -> dict:
    """Compile, first call and median steady call of the potential on ``batch``; memory."""
    import jax

    from mlip.potential import _jitted

    start = time.perf_counter()
    compiled = _jitted(potential.config, potential.runtime).lower(potential.params, batch).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(potential.params, batch))
    times = timed(compiled, (potential.params, batch), rounds, seconds)
    analysis = compiled.memory_analysis()
    stats = jax.devices()[0].memory_stats() or {}
    program = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    return {"compile_s": compile_s, "ms_per_call": 1e3 * statistics.median(times), "calls": len(times),
            "program_GB": program / 1e9, "device_peak_GB_so_far": stats.get("peak_bytes_in_use", 0) / 1e9 or None}


def step_potential(sizes: dict, rows: Rows) -> None:
    """(b) E+F+S, small and medium, reference vs kernel, growing sizes (all 1k rows first)."""
    import jax

    kernels = ("reference", "pallas")
    potentials = {(p, k): model(p, o, kernel=k) for p, o in sizes["presets"].items() for k in kernels}
    for n in sizes["sizes"]:
        atoms = silicon(n)
        for (preset, kernel), potential in potentials.items():
            if rows.left() < 10:
                return rows.add(preset=preset, atoms=len(atoms), kernel=kernel, result="skipped: time cap")
            choice = selected(potential) if kernel == "pallas" else "reference"
            if choice != kernel:  # never time the fallback under the kernel's name
                rows.add(preset=preset, atoms=len(atoms), kernel=kernel, result=choice)
                continue
            graph, batch = padded(potential, atoms)
            try:
                r = measure_call(potential, batch, sizes["rounds"], min(10.0, rows.left() / 4))
            except Exception as exc:
                rows.add(preset=preset, atoms=graph.n_node, edges=graph.n_edge, kernel=kernel, result=f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            rows.add(preset=preset, atoms=graph.n_node, edges=graph.n_edge, padded_edges=batch.senders.shape[0], kernel=kernel,
                     edge_chunk=potential.edge_chunk if batch.senders.shape[0] > (potential.edge_chunk or 1 << 62) else "none",
                     **r, atom_steps_per_s=graph.n_node / (r["ms_per_call"] / 1e3))
            del batch
            jax.clear_caches()
            gc.collect()


def synthetic_batch(num_atoms: int, edges_per_atom: int):
    """A one-graph batch of ``num_atoms`` atoms with ``edges_per_atom`` edges each, built without
    a neighbour list (memory and time do not depend on where the atoms are): atoms uniform in a
    periodic box at the atom density of fcc Cu, each receiving from the next atoms in index order."""
    import numpy as np

    from mlip.data.graph import GraphBatch

    n, k = num_atoms + 1, edges_per_atom  # + a padding node
    rng = np.random.default_rng(0)
    side = (num_atoms / 0.085) ** (1 / 3)
    positions = np.zeros((n, 3), np.float32)
    positions[:num_atoms] = rng.uniform(0, side, (num_atoms, 3))
    receivers = np.repeat(np.arange(num_atoms, dtype=np.int32), k)
    senders = ((receivers + 1 + np.tile(np.arange(k, dtype=np.int32), num_atoms)) % num_atoms).astype(np.int32)
    edges = len(senders)
    node_mask = np.arange(n) < num_atoms
    return GraphBatch(
        positions=positions, numbers=np.full(n, 14, np.int32), node_graph=np.where(node_mask, 0, 1).astype(np.int32),
        node_mask=node_mask, senders=senders, receivers=receivers, shifts=np.zeros((edges, 3), np.int32),
        edge_mask=np.ones(edges, bool), cell=np.stack([np.eye(3) * side, np.eye(3)]).astype(np.float32),
        pbc=np.array([[True] * 3, [False] * 3]), graph_mask=np.array([True, False]),
        n_node=np.array([num_atoms, 1], np.int32),
    )


def fits(potential, num_atoms: int) -> tuple[bool, str]:
    """Whether one call at ``num_atoms`` (60 edges per atom) compiles and runs."""
    import jax

    from mlip.potential import _jitted

    batch = synthetic_batch(num_atoms, 60)
    try:
        compiled = _jitted(potential.config, potential.runtime).lower(potential.params, batch).compile()
        jax.block_until_ready(compiled(potential.params, batch))
        return True, ""
    except Exception as exc:
        message = str(exc)
        if "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower():
            return False, "out of memory"
        raise
    finally:
        del batch
        jax.clear_caches()
        gc.collect()


def step_largest(sizes: dict, rows: Rows) -> None:
    """(c) Per preset (kernel "auto", default edge chunk): double from ``largest_start`` atoms
    until a call fails, then bisect, until the bracket is within 10% or time runs out."""
    presets = list(sizes["presets"].items())
    for i, (preset, overrides) in enumerate(presets):
        potential = model(preset, overrides, kernel="auto")
        until = time.time() + rows.left() / (len(presets) - i)
        low, high, n = 0, None, sizes["largest_start"]
        while time.time() < until and n <= sizes["largest_max"] and (high is None or high > 1.1 * low):
            start = time.perf_counter()
            ok, why = fits(potential, n)
            rows.add(preset=preset, atoms=n, edges=60 * n, fits=ok, note=why, seconds=time.perf_counter() - start)
            low, high = (n, high) if ok else (low, n)
            n = 2 * n if high is None else (low + high) // 2
        rows.add(preset=preset, result=f"largest that ran: {low:,} atoms ({60 * low / 1e6:.2f} M edges)",
                 smallest_that_failed=high, edge_chunk=potential.edge_chunk)


def step_relax(sizes: dict, rows: Rows) -> None:
    """(d) Batched relaxation of many crystals, then the ASE path on a few (bench_sim.py)."""
    import numpy as np

    from bench_sim import crystals, rates, relax_ase, relax_batched
    from mlip import sim

    _, potential = simulation_model(sizes)
    structures = crystals(sizes["relax_count"])
    atoms = np.array([len(a) for a in structures])
    budget = sim.Budget(max_atoms=sizes["relax_atoms"], max_structures=sizes["relax_count"] + 1)
    for label in ("mlip.sim.relax, first call (compiles)", "mlip.sim.relax, compiled"):
        run = rates(relax_batched(potential, structures, 0.05, sizes["relax_steps"], budget), atoms)
        rows.add(path=label, structures=len(structures), **summary(run, structures))
        if not sizes["repeat"] or rows.left() < 1.5 * run["seconds"]:
            break
    few = structures[: sizes["relax_ase"]]
    if rows.left() > 20:
        relax_ase(potential, few[:3], 0.05, sizes["relax_steps"])  # compiles each size's shape
        run = rates(relax_ase(potential, few, 0.05, sizes["relax_steps"]), atoms[: len(few)])
        rows.add(path="ASE FIRE + FrechetCellFilter, mlip Calculator", structures=len(few), **summary(run, few))
    rows.add(path="anchor: batched MACE relaxation, H100 (published)", us_per_atom_step=3.0)


def summary(run: dict, structures) -> dict:
    return {"seconds": run["seconds"], "atom_steps": run["atom_steps"], "atom_steps_per_s": run["atom_steps_per_s"],
            "us_per_atom_step": run["us_per_atom_step"], "converged": f"{sum(run['converged'])}/{len(structures)}"}


def md_run(potential, atoms, steps: int, precision: str = "highest") -> dict:
    """One NVE run on the device (300 K start): seconds, and the conserved energy's drift."""
    from mlip import sim

    budget = sim.Budget(max_atoms=len(atoms) + 1, max_structures=2)
    start = time.perf_counter()
    potential = dataclasses.replace(potential, matmul_precision=precision)
    [result] = sim.md(potential, [atoms], ensemble="nve", steps=steps, timestep=1.0, init_temperature=300.0,
                      interval=max(1, steps // 10), budget=budget)
    seconds = time.perf_counter() - start
    conserved = [entry["conserved"] for entry in result.log]
    drift = max(abs(e - conserved[0]) for e in conserved) / len(atoms)
    return {"seconds": seconds, "status": result.status, "max_conserved_drift_meV_per_atom": 1e3 * drift}


def step_md(sizes: dict, rows: Rows) -> None:
    """(e) NVE of one Si crystal per size: twice (the first compiles), 1 fs steps."""
    _, potential = simulation_model(sizes)
    for n, steps in sizes["md_runs"]:
        atoms = silicon(n, rattle=0.02)
        for label in ("first call (compiles)", "compiled"):
            r = md_run(potential, atoms, steps)
            per_step = r["seconds"] / steps
            rows.add(atoms=len(atoms), steps=steps, run=label, **r, ms_per_step=1e3 * per_step,
                     atom_steps_per_s=len(atoms) / per_step, ns_per_day=86400 * 1e-6 / per_step)
            if not sizes["repeat"]:
                break
            if rows.left() < 1.5 * r["seconds"]:
                return
    rows.add(run="anchors (published): eSEN 3.2M params 53k atom-steps/s at 1.2k atoms on an H100; UMA-S ~69k on an H200")


def training_batches(count: int, species, r_cut: float):
    """MPtrj-sized random labelled crystals (2..192 atoms, log-uniform), packed into batches of
    at most 8 structures / 400 atoms / 16,000 edges (benchmarks/mptrj/mptrj-1k.yaml's budget),
    each padded to that one shape."""
    import numpy as np

    from mlip.data.graph import build_graph, collate
    from mlip.testing import random_frame

    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(count):
        n = int(np.exp(rng.uniform(np.log(2), np.log(192))))
        frame = random_frame(rng, n, elements=species, min_distance=1.6, size=(n / 0.06) ** (1 / 3))
        graphs.append(build_graph(frame, r_cut))
    batches, group = [], []
    for g in graphs:
        if group and (len(group) == 8 or sum(x.n_node for x in group) + g.n_node > 400 or sum(x.n_edge for x in group) + g.n_edge > 16000):
            batches.append((len(group), collate(group, 401, 16000, 9, dtype=np.float32)))
            group = []
        group.append(g)
    return batches


def step_train(sizes: dict, rows: Rows) -> None:
    """(f) Training steps (AdamW + EMA, loss on E, F, S) of `small` with 85 species."""
    import jax
    import jax.numpy as jnp

    from mlip.train.batches import stack_batches
    from mlip.train.config import LossConfig, OptimizerConfig
    from mlip.train.loss import Terms
    from mlip.train.step import batch_sharding, init_state, learning_rate_fn, make_mesh, make_optimizer, make_train_step

    species = tuple(range(1, 86))
    preset, overrides = next(iter(sizes["presets"].items()))
    potential = model(preset, overrides, species=species)
    batches = training_batches(sizes["train_frames"], species, potential.config.r_cut)
    optimizer_config = OptimizerConfig()
    optimizer = make_optimizer(optimizer_config, potential.params)
    mesh = make_mesh(jax.devices()[:1])
    train_step = make_train_step(potential.config, optimizer, LossConfig(energy_weight=10.0, forces_weight=100.0, stress_weight=100.0),
                                 learning_rate_fn(optimizer_config, 1000), 0.99, mesh, potential.runtime)
    state = init_state(potential.params, optimizer)
    weights = Terms(*(jnp.asarray(w, jnp.float32) for w in (10.0, 100.0, 100.0)))
    device_batches = [(k, jax.device_put(stack_batches([b]), batch_sharding(mesh))) for k, b in batches]
    start = time.perf_counter()
    state, metrics = train_step(state, device_batches[0][1], weights, jnp.float32(1.0))
    jax.block_until_ready(metrics)
    rows.add(part="first step (compiles)", seconds=time.perf_counter() - start, loss=float(metrics["loss"]))
    frames, start, steps = 0, time.perf_counter(), 0
    while steps < sizes["train_steps"] and (steps == 0 or rows.left() > 5):
        count, batch = device_batches[steps % len(device_batches)]
        state, metrics = train_step(state, batch, weights, jnp.float32(1.0))
        frames, steps = frames + count, steps + 1
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    rows.add(part="steady steps", preset=preset, steps=steps, frames=frames, seconds=seconds, frames_per_s=frames / seconds,
             steps_per_s=steps / seconds, batch="<= 8 structures / 400 atoms / 16,000 edges, padded to one shape",
             loss=float(metrics["loss"]))


def step_precision(sizes: dict, rows: Rows) -> None:
    """(g) Matmul precision of float32 ("default" = TF32 on GPUs, "high", "highest") against
    the float64 model, and NVE drift with TF32 vs full float32."""
    import jax
    import numpy as np

    name, simulated = simulation_model(sizes)
    candidates = {name: simulated}
    candidates.update({f"{p} (random)": model(p, o) for p, o in sizes["presets"].items() if p != "small"})
    atoms = silicon(sizes["model_atoms"], rattle=0.05)
    for name, potential in candidates.items():
        graph, batch64 = padded(potential.astype("float64"), atoms)
        reference = potential.astype("float64")(batch64)
        _, batch = padded(potential, atoms)
        n = graph.n_node
        forces = np.asarray(reference.forces[:n])
        for precision in sizes["precisions"]:
            out = dataclasses.replace(potential, matmul_precision=precision)(batch)
            jax.block_until_ready(out)
            rows.add(part="error vs float64", model=name, precision=precision, atoms=n,
                     energy_error_meV_per_atom=1e3 * abs(float(out.energy[0]) - float(reference.energy[0])) / n,
                     forces_max_error_eV_per_A=float(np.abs(np.asarray(out.forces[:n]) - forces).max()),
                     forces_rms_error_eV_per_A=float(np.sqrt(np.mean((np.asarray(out.forces[:n]) - forces) ** 2))),
                     stress_max_error_GPa=160.2177 * float(np.abs(np.asarray(out.stress[0]) - np.asarray(reference.stress[0])).max()))
            jax.clear_caches()
    atoms = silicon(sizes["nve_atoms"], rattle=0.02)
    for precision in ("default", "highest"):
        if rows.left() < 20:
            return rows.add(part="NVE drift", precision=precision, result="skipped: time cap")
        r = md_run(simulated, atoms, sizes["nve_steps"], precision)
        rows.add(part="NVE drift", model=name, precision=precision, atoms=len(atoms),
                 steps=sizes["nve_steps"], timestep_fs=1.0, **r)


STEP_FUNCTIONS = {"kernel": step_kernel, "potential": step_potential, "largest": step_largest, "relax": step_relax,
                  "md": step_md, "train": step_train, "precision": step_precision}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "device_check_out"), help="results folder (default $OUT)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for the CPU and the test suite")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all steps together")
    parser.add_argument("--steps", help=f"comma-separated subset of {','.join(STEPS)}, in that order")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # internal: one step's process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        run_child(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
