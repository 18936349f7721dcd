"""The real training frames that contain H, C, B, N or P (molecular units: hydroxides, water,
carbonates, borates, nitrates, phosphates, organics), written to an extxyz outside the
repository for `mlip generate` (see RESULTS.md, "Third stage": the student is +191 meV/atom
too weakly bound on such test frames, +49 on the rest).

    python benchmarks/universal/mol-seeds/molecular_frames.py /tmp/real-mol.extxyz
    mlip generate /tmp/real-mol.extxyz --elemental 0 --compounds 0 --random 0 --real 600 \\
        --max-atoms 64 --substitutions 900 --substitution-max-atoms 64 --min-per-element 0 \\
        --seed 4 -o benchmarks/universal/mol-seeds/seeds.extxyz.xz
"""

import sys
from pathlib import Path

import ase.io

DATA = Path(__file__).resolve().parents[3] / "../shared/data"
FILES = [DATA / "mptrj/mptrj-highest-stress-1k.xyz", DATA / "mattersim/mpf-TP.xyz"]  # never mptrj-random-1k
MOLECULAR = {"H", "C", "B", "N", "P"}

frames = []
for path in FILES:
    for atoms in ase.io.read(path, ":"):
        if MOLECULAR & set(atoms.get_chemical_symbols()):
            atoms.calc = None
            atoms.info = {}
            frames.append(atoms)
ase.io.write(sys.argv[1], frames, format="extxyz")
print(f"{sys.argv[1]}: {len(frames)} frames with {'/'.join(sorted(MOLECULAR))}")
