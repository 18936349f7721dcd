"""Signed energy errors of a universal model: is it biased on real materials near equilibrium?

    python benchmarks/universal/bias.py MODEL [--test-frames 300] [--label-frames 600] [--teacher sevenn-0]

Prints the mean signed error (model - label, meV/atom) and the MAE on the first
``--test-frames`` of mptrj-random-1k (DFT, never trained on); on ``--label-frames`` random
frames of benchmarks/universal/labels grouped by seed origin and labelling method; and on the
first 100 frames of each real DFT training file. The test frames are also grouped (number of
elements, GGA+U or GGA, H/C/B/N/P or not, size, volume per atom, largest DFT force). With
``--teacher``, the teacher's signed errors on the same test frames are printed next to the
model's, and the teacher and the model relax the bundled SrTiO3 example (positions and cell,
FIRE + FrechetCellFilter, fmax 0.05 eV/Å) with the model (mlip.sim) and with the teacher (ASE),
and prints the lattice constants and energies per atom.
"""

from __future__ import annotations

import argparse
import collections
import warnings
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "../shared/data"


def signed_errors(calc, frames) -> np.ndarray:
    """meV/atom, model - label, one per frame."""
    errors = []
    for frame in frames:
        atoms = frame.to_atoms()
        atoms.calc = calc
        errors.append(1e3 * (atoms.get_potential_energy() - frame.energy) / len(atoms))
    return np.array(errors)


#: Metals that MPtrj computed with GGA+U in oxides and fluorides (MP's U values).
U_METALS = {"Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W"}

#: Elements of molecular units.
MOLECULAR = {"H", "C", "B", "N", "P"}


def test_groups(frames) -> dict[str, np.ndarray]:
    """Indices of the test frames by number of elements, GGA+U or GGA, H/C/B/N/P or not, size,
    volume per atom and largest DFT force (how far the frame is from a minimum)."""
    groups = collections.defaultdict(list)
    for k, frame in enumerate(frames):
        symbols = {chemical_symbols[z] for z in frame.numbers.tolist()}
        groups[f"{min(len(symbols), 5)}{'+' if len(symbols) >= 5 else ''} elements"].append(k)
        plus_u = bool(symbols & U_METALS) and bool(symbols & {"O", "F"})
        groups["GGA+U (O or F with " + "/".join(sorted(U_METALS)) + ")" if plus_u else "GGA"].append(k)
        # Molecular units (hydroxides, carbonates, borates, nitrates, phosphates): the third
        # stage's largest bias (RESULTS.md, "Third stage").
        groups["with H/C/B/N/P" if symbols & MOLECULAR else "without H/C/B/N/P"].append(k)
        n = frame.n_atoms
        groups["atoms <= 16" if n <= 16 else "atoms 17-48" if n <= 48 else "atoms > 48"].append(k)
        volume = abs(np.linalg.det(frame.cell)) / n
        groups["< 12 Å^3/atom" if volume < 12 else "12-16 Å^3/atom" if volume < 16 else ">= 16 Å^3/atom"].append(k)
        if frame.forces is not None:
            fmax = float(np.linalg.norm(frame.forces, axis=1).max())
            groups["max |F| < 0.05 eV/Å" if fmax < 0.05 else "max |F| 0.05-0.5 eV/Å" if fmax < 0.5
                   else "max |F| >= 0.5 eV/Å"].append(k)
    return {name: np.array(members) for name, members in sorted(groups.items())}


def row(name: str, errors: np.ndarray) -> str:
    return f"| {name} | {len(errors)} | {errors.mean():+.1f} | {np.abs(errors).mean():.1f} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--test-frames", type=int, default=300)
    parser.add_argument("--label-frames", type=int, default=600)
    parser.add_argument("--teacher", help="also relax the SrTiO3 example with this teacher (mlip.distill.teachers)")
    args = parser.parse_args(argv)

    from mlip.calculator import Calculator
    from mlip.data.readers import read_frames
    from mlip.data.shards import ShardedDataset
    from mlip.potential import Potential

    potential = Potential.load(args.model)
    calc = Calculator(potential)
    print("| frames | n | mean signed (meV/atom) | MAE |\n|---|---:|---:|---:|")
    test = list(read_frames(DATA / "mptrj/mptrj-random-1k.xyz", index=f":{args.test_frames}"))
    ours = signed_errors(calc, test)
    print(row("mptrj-random-1k (test)", ours))
    theirs = teacher = None
    if args.teacher:
        from mlip.distill.teachers import get_teacher

        teacher = get_teacher(args.teacher).build()
        theirs = signed_errors(teacher, test)
        print(row(f"mptrj-random-1k (test), the teacher {args.teacher}", theirs))
    for name, members in test_groups(test).items():
        print(row(f"test: {name}", ours[members]) + ("" if theirs is None else
              f" teacher: {theirs[members].mean():+.1f}, MAE {np.abs(theirs[members]).mean():.1f} |"))
    labels = ShardedDataset(ROOT / "benchmarks/universal/labels")
    groups = collections.defaultdict(list)
    for i in np.random.default_rng(0).permutation(len(labels))[: args.label_frames]:
        frame = labels[int(i)]
        groups[f"{frame.info['origin'].split(':')[0]} / {frame.info['method'].split(':')[0]}"].append(frame)
    for name in sorted(groups):
        print(row(name, signed_errors(calc, groups[name])))
    for path in ("mptrj/mptrj-highest-stress-1k.xyz", "mattersim/mpf-TP.xyz"):
        print(row(Path(path).name, signed_errors(calc, read_frames(DATA / path, index=":100"))))
    if teacher is not None:
        relax_example(potential, teacher)


def relax_example(potential, teacher) -> None:
    """Model (mlip.sim) and teacher (ASE) relaxations of the bundled SrTiO3 example."""
    import ase.io
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from mlip import sim

    start = ase.io.read(ROOT / "mlip/assets/SrTiO3-perovskite.extxyz")
    ours = sim.relax(potential, [start.copy()], fmax=0.05, relax_cell=True, max_steps=300)[0]
    reference = start.copy()
    reference.calc = teacher  # an ASE calculator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's logm inside the cell filter
        FIRE(FrechetCellFilter(reference), logfile=None).run(fmax=0.05, steps=300)
    for name, atoms, energy in (("model", ours.atoms, ours.energy),
                                ("teacher", reference, reference.get_potential_energy())):
        cell = atoms.cell.cellpar()
        print(f"SrTiO3 {name}: a = {(atoms.get_volume() / 8) ** (1 / 3):.3f} Å, lengths/2 "
              f"{np.round(cell[:3] / 2, 3).tolist()}, angles {np.round(cell[3:], 2).tolist()}, "
              f"{energy / len(atoms):.3f} eV/atom")


if __name__ == "__main__":
    main()
