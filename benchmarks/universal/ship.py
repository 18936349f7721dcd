"""Ship a trained universal model: copy it into mlip/assets and register it, with its card.

    python benchmarks/universal/ship.py benchmarks/universal/run/best.mlip \
        --card benchmarks/universal/card.json [--name universal-small] [--default]

The card is card.py's JSON for this very file (its test errors against DFT go into
mlip/assets/models.json, which `mlip models` prints); the model's elements must cover the
bundled example structure (SrTiO3). ``--default`` makes it the model (and its example the
structure) of every command run without ``--model``. Re-running replaces the entry of the
same name, so a better model of a later session ships the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "mlip" / "assets"
EXAMPLE = "SrTiO3-perovskite.extxyz"


FIRST_STAGE_DATA = ("40,411 SevenNet-0 labels of generated crystals (benchmarks/universal/labels) + "
                    "2,069 DFT frames (mptrj-highest-stress-1k, MatterSim mpf-TP)")


def entry(name: str, file: str, card: dict, default: bool, training_data: str, command: str) -> dict:
    """The models.json entry of a universal model from its card (card.py's JSON)."""
    model = card["errors"]["model"]
    errors = {
        "data": f"{Path(card['data']).name} ({card['frames']} MPtrj DFT frames, never trained on)",
        "energy_mae_mev_per_atom": round(model["energy"]["mae"], 1),
        "forces_mae_mev_per_a": round(model["forces"]["mae"], 1),
        "stress_mae_gpa": round(model["stress"]["mae"], 3),
    }
    if "relaxation" in card:
        errors["relaxed_volume_median_error_vs_teacher"] = round(card["relaxation"]["median_volume_error"], 4)
    return {
        "name": name,
        "file": file,
        "default": default,
        "example": EXAMPLE,
        "description": "small preset on the 89 MPtrj elements, distilled from SevenNet-0 plus real DFT "
                       "frames (issue 12; benchmarks/RESULTS.md, \"Universal model\")",
        "training_data": training_data,
        "teacher": card["teacher"],
        "test_errors": errors,
        "command": f"{command}; python benchmarks/universal/card.py MODEL -o card.json",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--card", type=Path, required=True)
    parser.add_argument("--name", default="universal-small")
    parser.add_argument("--default", action="store_true")
    parser.add_argument("--training-data", default=FIRST_STAGE_DATA, help="what the model was trained on, in words")
    parser.add_argument("--command", default="mlip train benchmarks/universal/universal.yaml",
                        help="the training command(s) that made the model")
    args = parser.parse_args(argv)

    import ase.io

    from mlip.errors import MlipError
    from mlip.fileio import atomic_write_bytes
    from mlip.potential import Potential

    card = json.loads(args.card.read_text())
    if Path(card["model"]).resolve() != args.model.resolve():
        raise MlipError(f"{args.card} measured {card['model']}, not {args.model}")
    potential = Potential.load(args.model)
    missing = set(ase.io.read(ASSETS / EXAMPLE).get_chemical_symbols()) - set(potential.config.species_symbols)
    if missing:
        raise MlipError(f"{args.model} lacks {sorted(missing)} of the example structure {EXAMPLE}")
    file = f"{args.name}.mlip"
    shutil.copyfile(args.model, ASSETS / file)
    registry_path = ASSETS / "models.json"
    registry = json.loads(registry_path.read_text())
    models = [m for m in registry["models"] if m["name"] != args.name]
    if args.default:
        for m in models:
            m["default"] = False
    models.insert(0, entry(args.name, file, card, args.default, args.training_data, args.command))
    atomic_write_bytes(registry_path, (json.dumps({"models": models}, indent=1, ensure_ascii=False) + "\n").encode())
    print(f"shipped {args.model} as {args.name} ({ASSETS / file}){', the default' if args.default else ''}")


if __name__ == "__main__":
    main()
