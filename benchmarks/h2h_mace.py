"""Head to head with MACE on the same data (issue 17, item 4): MACE (mace-torch's own training
entry point) and mlip trained on the same mlearn splits on one pinned CPU core, then tested on
the same test split.

Run from the repository root, with the peers' environment built first (benchmarks/peers/README.md):

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false .venv/bin/python benchmarks/h2h_mace.py \
        [--elements Si Mo] [--models mace-small mace-medium mlip-small mlip-medium] [--core 0] \
        [--epochs-scale 1.0 | --quick] [-o benchmarks/h2h.json]

Per element and model one training run, one after another, each on core ``--core`` alone:
this process pins itself there (mlip trains in it, one XLA thread) and starts MACE's
``python -m mace.cli.run_train`` and its evaluation (benchmarks/peers/mace_eval.py) under
``taskset -c CORE`` with one thread for torch and every math library.

Data (the same for both codes): ../shared/data/mlearn/<El>_{train,test}.json read with
mlip's reader; the training file split with mlip's own seeded split (the recipe's
valid_fraction, data.split_seed 0), and the three parts written to extxyz with the labels
under MACE's keys (REF_energy, REF_forces). Both codes read those files: mlip with data.train
/ valid / test, MACE with --train_file / --valid_file / --test_file.

Models:
- mlip-small, mlip-medium: the committed recipe benchmarks/mlearn/<El>.yaml, preset small or
  medium (model.preset), trained with ``mlip.train.train`` in this process.
- mace-small, mace-medium: MACE-MP-0 "small"-like (hidden irreps 128x0e, --max_L 0) and
  "medium"-like (128x0e+128x1o, --max_L 1): ScaleShiftMACE, 2 interactions, correlation 3,
  max_ell 3, 10 Bessel functions, polynomial cutoff 5, radial MLP [64, 64, 64], MLP_irreps
  16x0e, r_max 5 Å. MACE's recipe as its README gives it: E0s "average", weighted loss
  (energy 1, forces 100; stage two energy 1000, forces 100, lr 1e-3), Adam with AMSGrad, lr
  0.01, ReduceLROnPlateau, EMA 0.99, float32 (as mlip's recipe), batches of 4 structures
  (mlip's recipe: at most 4 structures / 200 atoms / 6,400 edges per batch).

Epoch budget (both codes alike): the mlip recipe's epochs (Si 30, Mo 60) with its one loss
stage switch (Si 20, Mo 30) as MACE's stage two start, both times ``--epochs-scale``. Which
model is tested: each code's own choice, the lowest validation loss within its last stage
(mlip best.mlip, MACE its stage-two checkpoint).

Measured per run: test energy MAE (meV/atom, per structure |dE| / atoms) and force MAE (meV/Å,
per component), both with mlip.evaluate.Metrics (mlip's test_metrics.json; MACE's predictions
through its MACECalculator scored by the same class); training wall time and CPU time (of the
training entry point, including its data reading, statistics, validation and test evaluation;
MACE's also its TorchScript compilation of the saved models) and the training loop alone
(mlip: metrics.jsonl's time_s at the last epoch, with its XLA compilations; MACE: "Started
training" to the last epoch's line of run_train's log); parameter count; inference: the median wall
time of one energy + forces + stress call through the code's ASE calculator on the largest
test structure, after warm-up (mlip.calculator.Calculator, whose neighbour list has a skin and
is not rebuilt for a fixed structure; MACECalculator, which rebuilds it every call).

``--quick``: 2 epochs (stage at 1) on the first 10 training and 10 test structures, a check
of the script, not a result. Progress goes to stdout, each run's log to ``--work``; every
number is written to ``-o`` (JSON, rewritten after each run).
"""

from __future__ import annotations

import os

from machine import cpu_model, set_single_thread_env  # benchmarks/machine.py

set_single_thread_env()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "../shared/data/mlearn"
MODELS = ("mace-small", "mace-medium", "mlip-small", "mlip-medium")
#: model -> its name in the table
LABELS = {"mace-small": "MACE MP-0-small-like", "mace-medium": "MACE MP-0-medium-like",
          "mlip-small": "mlip small", "mlip-medium": "mlip medium"}
MACE_MAX_L = {"mace-small": 0, "mace-medium": 1}
ENERGY_KEY, FORCES_KEY = "REF_energy", "REF_forces"  # MACE's default label names
R_MAX = 5.0  # Å, both codes
MACE_BATCH = 4  # structures; mlip's recipes: max_graphs 4
PROPERTIES = ["energy", "forces", "stress"]
#: run_train's log lines that bound its training loop (timestamp, what)
MACE_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO: (Started training|Epoch \d+:)")
QUICK_FRAMES = 10  # --quick: training and test structures
#: (warm-up calls, timed calls) of the inference timing; --quick uses the second
TIMING, QUICK_TIMING = (3, 20), (2, 5)


def log(message: str) -> None:
    print(f"[h2h {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {message}", flush=True)


def budget(recipe: Path, epochs_scale: float, quick: bool) -> tuple[int, int]:
    """(epochs, epoch of the loss stage switch) for both codes: the recipe's, scaled."""
    from mlip.errors import MlipError
    from mlip.train import load_config

    config = load_config(recipe)
    if len(config.loss.stages) != 1:
        raise MlipError(f"{recipe}: MACE has one stage switch (stage two); the recipe has {len(config.loss.stages)}")
    if quick:
        return 2, 1
    epochs = max(2, round(config.training.epochs * epochs_scale))
    return epochs, min(epochs - 1, max(1, round(config.loss.stages[0].epoch * epochs_scale)))


def write_extxyz(frames, path: Path) -> None:
    """``frames`` (mlip Frames) to extxyz, energy and forces under MACE's label names."""
    import io

    import ase
    import ase.io

    from mlip.fileio import atomic_write_bytes

    structures = []
    for frame in frames:
        atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.info[ENERGY_KEY] = frame.energy
        atoms.arrays[FORCES_KEY] = frame.forces
        structures.append(atoms)
    text = io.StringIO()
    ase.io.write(text, structures, format="extxyz")
    atomic_write_bytes(path, text.getvalue().encode())


def read_split(path: Path) -> list:
    """The frames of one of the written splits, as both codes read them."""
    from mlip.data.readers import read_frames

    return list(read_frames(path, format="extxyz", energy_key=ENERGY_KEY, forces_key=FORCES_KEY, stress_key=None))


def prepare(element: str, recipe: Path, work: Path, quick: bool) -> dict:
    """Split ``element``'s mlearn training file as mlip would (the recipe's valid_fraction and
    split seed) and write train / valid / test extxyz files under ``work``; their paths, sizes
    and the index of the largest test structure (the one timed)."""
    from mlip.data.readers import read_frames
    from mlip.train import load_config
    from mlip.train.data import split

    data = load_config(recipe).data
    train = list(read_frames(DATA / f"{element}_train.json"))
    test = list(read_frames(DATA / f"{element}_test.json"))
    if quick:
        train, test = train[:QUICK_FRAMES], test[:QUICK_FRAMES]
    fit, valid = split(train, data.valid_fraction, data.split_seed)
    files = {name: work / f"{element}_{name}.extxyz" for name in ("train", "valid", "test")}
    for name, frames in (("train", fit), ("valid", valid), ("test", test)):
        write_extxyz([frames[i] for i in range(len(frames))], files[name])
    sizes = [frame.n_atoms for frame in test]
    return {"files": files, "frames": {"train": len(fit), "valid": len(valid), "test": len(test)},
            "valid_fraction": data.valid_fraction, "split_seed": data.split_seed,
            "timed_index": int(np.argmax(sizes)), "timed_atoms": int(max(sizes))}


def time_calculator(calc, atoms, warmup: int, calls: int) -> dict:
    """Median wall time (ms) of an energy + forces + stress call through ``calc`` (an ASE
    calculator) on ``atoms``, after ``warmup`` calls; every call recomputes (all_changes)."""
    from ase.calculators.calculator import all_changes

    from mlip.errors import MlipError

    start = time.perf_counter()
    calc.calculate(atoms, PROPERTIES, all_changes)
    first = time.perf_counter() - start
    if "stress" not in calc.results:
        raise MlipError("the calculator returned no stress for a periodic test structure")
    for _ in range(warmup - 1):
        calc.calculate(atoms, PROPERTIES, all_changes)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        calc.calculate(atoms, PROPERTIES, all_changes)
        times.append(1e3 * (time.perf_counter() - start))
    return {"atoms": len(atoms), "first_call_s": first, "median_ms": statistics.median(times), "call_ms": times}


def run_mlip(model: str, recipe: Path, data: dict, epochs: int, stage: int, run_dir: Path, timing) -> dict:
    """Train the recipe (preset of ``model``) in this process; its errors, times, size, speed."""
    import dataclasses

    from mlip.calculator import Calculator
    from mlip.train import load_config, train

    files = data["files"]
    stage_weights = dataclasses.asdict(load_config(recipe).loss.stages[0])
    overrides = {
        "output_dir": str(run_dir),
        "data": {"train": str(files["train"]), "valid": str(files["valid"]), "test": str(files["test"]),
                 "format": "extxyz", "energy_key": ENERGY_KEY, "forces_key": FORCES_KEY, "stress_key": None},
        "model": {"preset": model.removeprefix("mlip-")},
        "training": {"epochs": epochs},
        "loss": {"stages": [{**stage_weights, "epoch": stage}]},
    }
    config = load_config(recipe, overrides)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(config, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    epochs_log = (run_dir / "metrics.jsonl").read_text().splitlines()
    atoms = read_split(files["test"])[data["timed_index"]].to_atoms()
    atoms.calc = None
    inference = time_calculator(Calculator(result.best_path), atoms, *timing)
    return {"params": result.potential.num_params, "steps": result.steps, "model_file": str(result.best_path),
            "train_wall_s": wall, "train_cpu_s": cpu, "train_loop_s": json.loads(epochs_log[-1])["time_s"],
            "metrics": metrics, "inference": inference, "log": str(run_dir / "train.log")}


def peer_env() -> dict:
    """This process's environment (one thread per library, set by set_single_thread_env)
    without what points Python at mlip's environment."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def mace_loop_s(out: Path) -> float | None:
    """Seconds from "Started training" to the last epoch's validation line in run_train's
    log ``out`` (its training loop, as mlip's metrics.jsonl time_s counts its own), or None."""
    stamps = []
    for line in out.read_text(errors="replace").splitlines():
        match = MACE_LOG_LINE.match(line)
        if match and (stamps or match.group(2).startswith("Started")):
            stamps.append(datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f"))
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mace_train_command(model: str, data: dict, epochs: int, stage: int, run_dir: Path, seed: int) -> list[str]:
    """mace-torch's run_train arguments: MACE-MP-0-small/medium-like, MACE's README recipe."""
    files = data["files"]
    return [
        "--name", "mace", "--work_dir", str(run_dir), "--seed", str(seed), "--device", "cpu",
        "--default_dtype", "float32",
        "--train_file", str(files["train"]), "--valid_file", str(files["valid"]), "--test_file", str(files["test"]),
        "--energy_key", ENERGY_KEY, "--forces_key", FORCES_KEY, "--E0s", "average",
        "--model", "ScaleShiftMACE", "--interaction", "RealAgnosticResidualInteractionBlock",
        "--interaction_first", "RealAgnosticResidualInteractionBlock",
        "--num_interactions", "2", "--num_channels", "128", "--max_L", str(MACE_MAX_L[model]),
        "--max_ell", "3", "--correlation", "3", "--r_max", str(R_MAX), "--num_radial_basis", "10",
        "--num_cutoff_basis", "5", "--radial_MLP", "[64, 64, 64]", "--MLP_irreps", "16x0e",
        "--loss", "weighted", "--energy_weight", "1", "--forces_weight", "100",
        "--stage_two", "--start_stage_two", str(stage), "--stage_two_energy_weight", "1000",
        "--stage_two_forces_weight", "100",
        "--lr", "0.01", "--amsgrad", "--ema", "--ema_decay", "0.99",
        "--batch_size", str(MACE_BATCH), "--max_num_epochs", str(epochs), "--error_table", "PerAtomMAE",
    ]


def run_mace(model: str, data: dict, epochs: int, stage: int, run_dir: Path, args, timing) -> dict:
    """Train with mace-torch's run_train pinned to ``args.core``, then evaluate its final model
    through MACECalculator (benchmarks/peers/mace_eval.py); errors scored by mlip's Metrics."""
    from mlip.errors import MlipError
    from mlip.evaluate import Metrics

    pin = ["taskset", "-c", str(args.core), args.peer_python]
    run_dir.mkdir(parents=True)
    out = run_dir / "run_train.out"
    wall, cpu = time.perf_counter(), children_cpu_s()
    with open(out, "wb") as stream:
        code = subprocess.run([*pin, "-m", "mace.cli.run_train", *mace_train_command(model, data, epochs, stage,
                                                                                     run_dir, args.seed)],
                              stdout=stream, stderr=subprocess.STDOUT, env=peer_env(), cwd=run_dir).returncode
    wall, cpu = time.perf_counter() - wall, children_cpu_s() - cpu
    if code != 0:
        raise MlipError(f"{model}: mace run_train exited with {code}; see {out}")
    model_file = run_dir / "mace_stagetwo.model"  # stage two's best checkpoint, as MACE saves it
    if not model_file.is_file():
        raise MlipError(f"{model}: run_train wrote no {model_file.name}; see {out}")

    predictions = run_dir / "test_predictions.npz"
    with open(run_dir / "mace_eval.err", "wb") as errors:
        evaluation = subprocess.run(
            [*pin, str(ROOT / "benchmarks/peers/mace_eval.py"), "--model", str(model_file), "--test",
             str(data["files"]["test"]), "--time-index", str(data["timed_index"]), "--warmup", str(timing[0]),
             "--calls", str(timing[1]), "--dtype", "float32", "-o", str(predictions)],
            stdout=subprocess.PIPE, stderr=errors, env=peer_env())
    if evaluation.returncode != 0:
        raise MlipError(f"{model}: mace_eval.py exited with {evaluation.returncode}; see {run_dir / 'mace_eval.err'}")
    reply = json.loads(evaluation.stdout.decode().strip().splitlines()[-1])

    predicted = np.load(predictions)
    metrics, start = Metrics(), 0
    for k, frame in enumerate(read_split(data["files"]["test"])):
        metrics.add_frame(frame, float(predicted["energy"][k]), predicted["forces"][start:start + frame.n_atoms])
        start += frame.n_atoms
    inference = {key: reply[key] for key in ("atoms", "first_call_s", "median_ms", "call_ms")}
    return {"params": reply["params"], "model_file": str(model_file), "train_wall_s": wall, "train_cpu_s": cpu,
            "train_loop_s": mace_loop_s(out),
            "metrics": metrics.to_dict(), "inference": inference, "versions": reply["versions"],
            "log": str(run_dir / "logs")}


def versions() -> dict:
    import jax

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"mlip": commit.stdout.strip() or None, "jax": jax.__version__}


def table(rows: list[dict]) -> str:
    lines = ["| element | model | params | epochs (stage at) | train wall (min) | loop (min) | CPU-h | "
             "E MAE (meV/atom) | F MAE (meV/Å) | inference (ms/call) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        loop = "-" if r["train_loop_s"] is None else f"{r['train_loop_s'] / 60:.1f}"
        lines.append(
            f"| {r['element']} | {LABELS[r['model']]} | {r['params']:,} | {r['epochs']} ({r['stage_epoch']}) | "
            f"{r['train_wall_s'] / 60:.1f} | {loop} | {r['cpu_hours']:.3f} | {r['energy_mae_mev_atom']:.2f} | "
            f"{r['forces_mae_mev_a']:.1f} | {r['inference']['median_ms']:.1f} ({r['inference']['atoms']} atoms) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", nargs="+", default=["Si", "Mo"], choices=["Si", "Ge", "Li", "Mo"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--core", type=int, default=0, help="the CPU core every run is pinned to")
    budget_group = parser.add_mutually_exclusive_group()
    budget_group.add_argument("--epochs-scale", type=float, default=1.0,
                              help="multiply the recipe's epochs and stage epoch (both codes)")
    budget_group.add_argument("--quick", action="store_true",
                              help="2 epochs on 10 training / 10 test structures: a check of the script")
    parser.add_argument("--seed", type=int, default=0, help="MACE's --seed (mlip: the recipe's seed)")
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-peers/bin/python"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlip-h2h"), help="data files and run directories")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks/h2h.json")
    args = parser.parse_args(argv)

    # Pinned before JAX starts its threads (XLA sizes its pool from the affinity); glibc's
    # malloc tuned as the `mlip` command does it (the mlearn runs were made with it).
    os.sched_setaffinity(0, {args.core})
    from mlip.errors import MlipError
    from mlip.fileio import atomic_write_bytes
    from mlip.runtime import tune_allocator

    tune_allocator()
    if any(m.startswith("mace") for m in args.models):
        if not Path(args.peer_python).is_file():
            raise MlipError(f"{args.peer_python}: no such Python; build .venv-peers (benchmarks/peers/README.md)")
        if shutil.which("taskset") is None:
            raise MlipError("taskset (util-linux) is needed to pin the MACE processes")
    if args.epochs_scale <= 0:
        raise MlipError(f"--epochs-scale must be positive, got {args.epochs_scale}")
    timing = QUICK_TIMING if args.quick else TIMING
    args.work.mkdir(parents=True, exist_ok=True)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "core": args.core, "load_average_at_start": os.getloadavg()[0]},
        "quick": args.quick, "epochs_scale": None if args.quick else args.epochs_scale,
        "versions": versions(),
        "policy": {"epochs": "the mlip recipe's epochs and stage epoch (MACE: --start_stage_two), "
                             "times --epochs-scale, for both codes",
                   "mace_batch_size": MACE_BATCH, "r_max": R_MAX, "dtype": "float32",
                   "inference": {"warmup": timing[0], "calls": timing[1], "statistic": "median wall time"}},
        "runs": [],
    }
    for element in args.elements:
        recipe = ROOT / f"benchmarks/mlearn/{element}.yaml"
        epochs, stage = budget(recipe, args.epochs_scale, args.quick)
        data = prepare(element, recipe, args.work, args.quick)
        log(f"{element}: {data['frames']['train']} training / {data['frames']['valid']} validation / "
            f"{data['frames']['test']} test structures; {epochs} epochs, stage at {stage}; timed structure "
            f"{data['timed_index']} ({data['timed_atoms']} atoms)")
        for model in args.models:
            run_dir = args.work / f"{element}-{model}"
            if run_dir.exists():  # a fresh run: neither code may resume an old one
                shutil.rmtree(run_dir)
            log(f"{element} {model}: training (log under {run_dir})")
            if model.startswith("mace"):
                result = run_mace(model, data, epochs, stage, run_dir, args, timing)
            else:
                result = run_mlip(model, recipe, data, epochs, stage, run_dir, timing)
            metrics = result.pop("metrics")
            row = {"element": element, "model": model, "label": LABELS[model], **result,
                   "train_frames": data["frames"]["train"], "valid_frames": data["frames"]["valid"],
                   "test_frames": data["frames"]["test"], "epochs": epochs, "stage_epoch": stage,
                   "cpu_hours": result["train_cpu_s"] / 3600,
                   "energy_mae_mev_atom": metrics["energy"]["mae"], "forces_mae_mev_a": metrics["forces"]["mae"],
                   "energy_rmse_mev_atom": metrics["energy"]["rmse"], "forces_rmse_mev_a": metrics["forces"]["rmse"],
                   "load_average_at_end": os.getloadavg()[0]}
            report["runs"].append(row)
            atomic_write_bytes(args.output, (json.dumps(report, indent=1) + "\n").encode())
            log(f"{element} {model}: {row['train_wall_s'] / 60:.1f} min ({row['cpu_hours']:.3f} CPU-h), "
                f"{row['params']:,} parameters, test E {row['energy_mae_mev_atom']:.2f} meV/atom, "
                f"F {row['forces_mae_mev_a']:.1f} meV/Å, {row['inference']['median_ms']:.1f} ms per E+F+S call")
    mace_versions = next((r["versions"] for r in report["runs"] if "versions" in r), None)
    print(f"\n{'QUICK CHECK (not a result): ' if args.quick else ''}mlearn, {report['machine']['cpu']}, "
          f"core {args.core}, {report['date']}; mlip {report['versions']['mlip']}, jax {report['versions']['jax']}"
          + (f"; torch {mace_versions['torch']}, mace-torch {mace_versions['mace-torch']}" if mace_versions else ""))
    print(table(report["runs"]))
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
