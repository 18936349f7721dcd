"""Write a synthetic MPtrj: a file in MPtrj's JSON layout, built from the real sample.

MPtrj itself (MPtrj_2022.9_full.json: 1,580,395 frames of 145,923 materials, 89 elements,
about 11 GB) cannot be downloaded on our machines, so data-pipeline scale is shown with this
stand-in. Each synthetic material is a real frame of the sample (``--sample``, by default
../shared/data/mptrj/mptrj-random-1k.xyz) relaxing: its frames keep the template's elements
and atom count, with the cell strained by up to ``--strain`` and the atoms rattled by
``--rattle`` Å, so sizes, elements, neighbour counts and label ranges follow the sample.
Labels are the template's (per-atom energy, forces, stress) plus noise of the sample's scale.
Frames per material follow a geometric law with MPtrj's mean (10.8).

The layout is what `mlip.data.pymatgen_json.iter_mptrj` reads, with every field of the real
file: ``{mp_id: {frame_id: {structure: pymatgen Structure dict, uncorrected_total_energy,
corrected_total_energy, energy_per_atom, ef_per_atom, e_per_atom_relaxed, ef_per_atom_relaxed,
force, stress (kBar, VASP sign), magmom, bandgap, mp_id}}}``. Written one material at a time
(constant memory), seeded, with a progress bar.

    python benchmarks/mptrj/synthetic_mptrj.py -o /tmp/mptrj-synth/mptrj-synth.json --frames 100000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from ase.io import iread
from tqdm import tqdm

#: MPtrj_2022.9_full.json: frames, and frames per material on average (1,580,395 / 145,923).
MPTRJ_FRAMES = 1_580_395
FRAMES_PER_MATERIAL = 10.83
DEFAULT_SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/mptrj/mptrj-random-1k.xyz"
#: eV/Å^3 (ASE sign) -> kBar (VASP sign): the inverse of mlip.units.vasp_kbar_to_ase_stress.
ASE_TO_VASP_KBAR = -1602.1766208


def read_templates(path: Path) -> list[dict]:
    """The sample's frames as arrays: numbers, positions, cell, energy per atom, forces, stress."""
    templates = []
    for atoms in iread(str(path), index=":"):
        templates.append({
            "numbers": atoms.numbers.copy(),
            "positions": atoms.positions.copy(),
            "cell": np.array(atoms.cell),
            "energy_per_atom": atoms.get_potential_energy() / len(atoms),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress(voigt=False),
        })
    if not templates:
        raise SystemExit(f"{path}: no frames")
    return templates


def material(rng, template: dict, mp_id: str, n_frames: int, args) -> dict:
    """``n_frames`` frames of one synthetic material, as MPtrj's ``{frame_id: frame}``."""
    numbers, n = template["numbers"], len(template["numbers"])
    symbols = [chemical_symbols[z] for z in numbers]
    e_relaxed = template["energy_per_atom"] + rng.normal(0, 0.05)
    ef_relaxed = rng.uniform(-3.0, 0.5)  # formation energy per atom, eV
    correction = rng.choice([0.0, rng.uniform(-0.7, 0.0)])  # MP2020: zero for most materials
    magnetic = rng.random() < 0.4
    bandgap = float(max(0.0, rng.normal(1.0, 1.5)))
    # One batch of draws per material: strains [k, 3, 3], rattles [k, n, 3], label noise.
    strains = np.eye(3) + args.strain * rng.uniform(-1, 1, (n_frames, 3, 3))
    strains = 0.5 * (strains + strains.transpose(0, 2, 1))
    cells = template["cell"] @ strains
    fractional = np.linalg.solve(template["cell"].T, template["positions"].T).T
    positions = fractional @ cells + rng.normal(0, args.rattle, (n_frames, n, 3))
    fractional = np.einsum("kni,kij->knj", positions, np.linalg.inv(cells))
    # Energies fall towards the relaxed one along the trajectory, as in an ionic relaxation.
    e_per_atom = e_relaxed + np.abs(rng.normal(0, 0.03, n_frames)) * np.linspace(1, 0, n_frames)
    forces = template["forces"] + rng.normal(0, 0.05, (n_frames, n, 3))
    forces -= forces.mean(axis=1, keepdims=True)  # VASP forces sum to zero
    stress = template["stress"] + rng.normal(0, 2e-4, (n_frames, 3, 3))
    stress = ASE_TO_VASP_KBAR * 0.5 * (stress + stress.transpose(0, 2, 1))
    magmoms = rng.normal(0, 1.5, (n_frames, n)) if magnetic else None
    frames = {}
    for k in range(n_frames):
        volume = abs(float(np.linalg.det(cells[k])))
        lengths = np.linalg.norm(cells[k], axis=1)
        angles = [math.degrees(math.acos(np.dot(cells[k][a], cells[k][b]) / (lengths[a] * lengths[b])))
                  for a, b in ((1, 2), (0, 2), (0, 1))]
        sites = [
            {"species": [{"element": s, "occu": 1}], "abc": abc, "xyz": xyz,
             "properties": {"magmom": None if magmoms is None else m}, "label": s}
            for s, abc, xyz, m in zip(symbols, fractional[k].round(8).tolist(),
                                      positions[k].round(8).tolist(),
                                      [None] * n if magmoms is None else magmoms[k].round(3).tolist())
        ]
        energy = float(e_per_atom[k] * n)
        frames[f"{mp_id}-{k // 50}-{k % 50}"] = {
            "structure": {
                "@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
                "lattice": {"matrix": cells[k].round(8).tolist(), "pbc": [True, True, True],
                            "a": lengths[0], "b": lengths[1], "c": lengths[2],
                            "alpha": angles[0], "beta": angles[1], "gamma": angles[2], "volume": volume},
                "properties": {},
                "sites": sites,
            },
            "uncorrected_total_energy": energy,
            "corrected_total_energy": energy + correction * n,
            "energy_per_atom": float(e_per_atom[k]),
            "ef_per_atom": float(ef_relaxed + e_per_atom[k] - e_relaxed),
            "e_per_atom_relaxed": float(e_relaxed),
            "ef_per_atom_relaxed": ef_relaxed,
            "force": forces[k].round(8).tolist(),
            "stress": stress[k].round(8).tolist(),
            "magmom": None if magmoms is None else magmoms[k].round(3).tolist(),
            "bandgap": bandgap,
            "mp_id": mp_id,
        }
    return frames


def write(args) -> tuple[int, int]:
    """Stream the synthetic file to ``args.output``; returns (frames, materials) written."""
    rng = np.random.default_rng(args.seed)
    templates = read_templates(args.sample)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.name + ".part")
    written = materials = 0
    with open(temp, "w") as file, tqdm(total=args.frames, unit=" frames", desc=str(out)) as bar:
        file.write("{")
        while written < args.frames:
            n_frames = min(int(rng.geometric(1 / FRAMES_PER_MATERIAL)), args.frames - written)
            template = templates[int(rng.integers(len(templates)))]
            mp_id = f"mp-{materials + 1}"
            body = json.dumps(material(rng, template, mp_id, n_frames, args))
            file.write(("," if materials else "") + f'"{mp_id}":' + body)
            written += n_frames
            materials += 1
            bar.update(n_frames)
        file.write("}")
    os.replace(temp, out)  # a complete file or none
    return written, materials


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, help="output JSON file (keep it outside the repository)")
    parser.add_argument("--frames", type=int, default=MPTRJ_FRAMES, help="frames to write (default: MPtrj's)")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="real MPtrj frames (extxyz) to follow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strain", type=float, default=0.03, help="largest cell strain component")
    parser.add_argument("--rattle", type=float, default=0.03, help="position noise, Å (standard deviation)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    started = time.perf_counter()
    frames, materials = write(args)
    size = Path(args.output).stat().st_size
    print(f"wrote {frames} frames of {materials} materials, {size / 1e9:.2f} GB, to {args.output} "
          f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
