"""PBE elastic constants of Si from the mlearn DFT data itself, and the bundled model's on the same cells.

The mlearn Si set (Zuo et al., J. Phys. Chem. A 124, 731 (2020); PBE, VASP) holds its elastic
calculation: the relaxed 64-atom cell ("Ground state crystal", a = 10.937456 / 2 Å) and that
cell under Green-Lagrange strains of ±2..10% in each of the six Voigt modes, ions NOT relaxed
(the shear cells carry forces), with the DFT stress. This script fits C11 and C12 (normal modes,
where ions stay put by symmetry, so clamped = relaxed) and the clamped-ion C44 (shear modes) from
those stresses, and then from the bundled model's stresses on the very same cells: the model
against its own training data, independent of the `mlip elastic` workflow. The slope at zero
strain comes from a quadratic fit over |strain| <= --max-strain (default 4%); by cubic symmetry
each constant is averaged over its three modes.

    python benchmarks/si_dft_reference.py [--data ../shared/data/mlearn] [--model mlearn-si]
"""

import argparse
import json
import re
from pathlib import Path

import ase
import numpy as np

KBAR_TO_GPA = 0.1
VASP_ORDER = [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0)]  # mlearn's virial_stress order


def _elastic_frames(folder: Path):
    """(mode, strain, ase.Atoms, DFT stress [3, 3] GPa with ASE's sign) of every elastic cell."""
    for name in ("Si_train.json", "Si_test.json"):
        for entry in json.loads((folder / name).read_text()):
            match = re.search(r"mode (\d), strain (-?[\d.]+)", entry["description"])
            if entry["group"] != "Elastic" or not match:
                continue
            structure = entry["structure"]
            atoms = ase.Atoms(
                [site["species"][0]["element"] for site in structure["sites"]],
                positions=[site["xyz"] for site in structure["sites"]],
                cell=structure["lattice"]["matrix"], pbc=True,
            )
            stress = np.zeros((3, 3))
            for value, (a, b) in zip(entry["outputs"]["virial_stress"], VASP_ORDER):
                stress[a, b] = stress[b, a] = -value * KBAR_TO_GPA  # VASP: positive = compressive
            yield int(match[1]), float(match[2]), atoms, stress


def _slope(strains, stresses, max_strain):
    strains, stresses = np.asarray(strains), np.asarray(stresses)
    keep = np.abs(strains) <= max_strain + 1e-9
    return np.polyfit(strains[keep], stresses[keep], 2)[1]


def fit_constants(frames, max_strain):
    """{C11, C12, C44 (clamped ions), B} in GPa from (mode, strain, stress) triples."""
    c11, c12, c44 = [], [], []
    for mode in range(3):  # normal strain along axis `mode`: stress xx, yy, zz
        rows = [(s, st) for m, s, st in frames if m == mode]
        strains = [s for s, _ in rows]
        c11.append(_slope(strains, [st[mode, mode] for _, st in rows], max_strain))
        for other in {0, 1, 2} - {mode}:
            c12.append(_slope(strains, [st[other, other] for _, st in rows], max_strain))
    for mode in range(3, 6):
        rows = [(s, st) for m, s, st in frames if m == mode]
        # The sheared component: the largest off-diagonal stress at the largest strain.
        off_diagonal = np.abs(max(rows, key=lambda row: abs(row[0]))[1]) * (1 - np.eye(3))
        a, b = np.unravel_index(np.argmax(off_diagonal), (3, 3))
        # Green-Lagrange shear e_ab = strain is an engineering (Voigt) strain of 2 * strain.
        c44.append(_slope([2 * s for s, _ in rows], [st[a, b] for _, st in rows], 2 * max_strain))
    c11, c12, c44 = np.mean(c11), np.mean(c12), np.mean(c44)
    return {"C11": c11, "C12": c12, "C44_clamped": c44, "B": (c11 + 2 * c12) / 3}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn")
    parser.add_argument("--model", default="mlearn-si")
    parser.add_argument("--max-strain", type=float, default=0.04)
    args = parser.parse_args()
    from mlip.calculator import Calculator
    from mlip.registry import resolve_model
    from mlip.units import EV_PER_A3_TO_GPA

    frames = list(_elastic_frames(args.data))
    dft = fit_constants([(m, s, st) for m, s, _, st in frames], args.max_strain)
    calculator = Calculator(resolve_model(args.model), compilation_cache=None)
    model_frames = []
    for mode, strain, atoms, _ in frames:
        atoms.calc = calculator
        model_frames.append((mode, strain, atoms.get_stress(voigt=False) * EV_PER_A3_TO_GPA))
    model = fit_constants(model_frames, args.max_strain)
    print(f"{len(frames)} strained 64-atom cells of the mlearn Si data; slopes from |strain| <= {args.max_strain}")
    print(f"{'GPa':>12} {'PBE (data)':>11} {'model':>8}")
    for key in dft:
        print(f"{key:>12} {dft[key]:11.1f} {model[key]:8.1f}")


if __name__ == "__main__":
    main()
