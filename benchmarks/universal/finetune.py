"""Fine-tuning from the universal model against training from scratch, on a quarter of the
mlearn Si training split (issue 12, item 6).

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 .venv/bin/python \
        benchmarks/universal/finetune.py --base MODEL [--fraction 0.25] \
        [-o benchmarks/universal/finetune.json]

Both runs use the mlearn Si recipe (benchmarks/mlearn/Si.yaml: 30 epochs, energy stage at 20)
on the same seeded ``--fraction`` of ../shared/data/mlearn/Si_train.json and are tested on the
full published test split. The fine-tuned run starts from ``--base`` (all parameters trained,
E0 refitted to the Si data, as ``finetune: {from: ...}`` does) with a 5x smaller learning rate,
the usual choice for fine-tuning (MACE's ``--foundation_model`` recipes lower it likewise).
Prints a markdown table and writes every number to ``-o`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "benchmarks/mlearn/Si.yaml"
TRAIN = ROOT / "../shared/data/mlearn/Si_train.json"
TEST = ROOT / "../shared/data/mlearn/Si_test.json"


def subset(fraction: float, seed: int, path: Path) -> int:
    """Write a seeded ``fraction`` of the Si training frames to ``path`` (extxyz); their count."""
    import ase.io

    from mlip.data.readers import read_frames

    frames = list(read_frames(TRAIN))
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(frames), size=max(1, round(fraction * len(frames))), replace=False))
    atoms = [frames[i].to_atoms() for i in keep]
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, atoms, format="extxyz")
    return len(atoms)


def run(name: str, train_file: Path, out_dir: Path, base: str | None, epochs: int | None) -> dict:
    """One training run of the Si recipe on ``train_file``; its test errors and wall time."""
    from mlip.train import load_config, train

    overrides = {"output_dir": str(out_dir / name), "data": {"train": str(train_file), "test": str(TEST)}}
    if base is not None:
        overrides["finetune"] = {"from": base}
        overrides["optimizer"] = {"learning_rate": 0.001}
    if epochs is not None:  # a quick check of the script; the comparison uses the recipe's
        overrides["training"] = {"epochs": epochs}
        overrides["loss"] = {"stages": []}
    config = load_config(RECIPE, overrides)
    started = time.perf_counter()
    result = train(config, progress=False)
    metrics = json.loads((out_dir / name / "test_metrics.json").read_text())
    return {"run": name, "wall_s": round(time.perf_counter() - started, 1), "steps": result.steps,
            "energy_mae_mev_atom": metrics["energy"]["mae"], "forces_mae_mev_a": metrics["forces"]["mae"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the universal model (a name or .mlip file)")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a quick check only)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlip-finetune"), help="run directories")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/universal/finetune.json"))
    args = parser.parse_args(argv)

    from mlip.fileio import atomic_write_bytes

    train_file = args.work / f"Si_train_{args.fraction:g}.extxyz"
    n = subset(args.fraction, args.seed, train_file)
    rows = [run("scratch", train_file, args.work, None, args.epochs),
            run("finetuned", train_file, args.work, args.base, args.epochs)]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "base": args.base, "fraction": args.fraction, "train_frames": n, "recipe": str(RECIPE.relative_to(ROOT)),
              "runs": rows}
    atomic_write_bytes(args.output, (json.dumps(report, indent=1) + "\n").encode())
    print(f"mlearn Si, {n} training frames ({args.fraction:.0%}), tested on the full test split\n")
    print("| run | E MAE (meV/atom) | F MAE (meV/Å) | wall (s) |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['energy_mae_mev_atom']:.2f} | {r['forces_mae_mev_a']:.1f} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
