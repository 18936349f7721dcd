"""`mlip eos`, `mlip elastic` and `mlip phonons`: the command-line faces of mlip.materials. GPa appear only here."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mlip.cli import add_command
from mlip.errors import MlipError
from mlip.units import EV_PER_A3_TO_GPA


def _prepare(args):
    """The structure (calculator attached, relaxed unless --no-relax) and the output prefix."""
    from mlip.calculator import Calculator
    from mlip.cli import bundled_model, bundled_structure, load_model
    from mlip.fileio import read_atoms
    from mlip.materials.deform import relax_crystal, require_periodic

    path = args.structure or bundled_structure()
    if not Path(path).is_file():
        raise MlipError(f"{path}: no such structure file")
    try:
        atoms = read_atoms(path, index=args.index)
    except Exception as exc:  # ase raises many types for unreadable files
        raise MlipError(f"{path}: cannot read a structure ({exc})") from None
    require_periodic(atoms, f"mlip {args.command}")
    atoms.calc = Calculator(load_model(args.model or bundled_model()))
    if not args.no_relax:
        relax_crystal(atoms, fmax=args.fmax, steps=args.steps)
    prefix = args.output or Path(f"{Path(path).stem}-{args.command}")
    return atoms, prefix


def _write_json(path: Path, result: dict) -> None:
    from mlip.fileio import atomic_write_text

    atomic_write_text(path, lambda f: json.dump(result, f, indent=1))


def _cmd_eos(args) -> None:
    from mlip.materials.eos import equation_of_state, plot_eos

    start = time.perf_counter()
    atoms, prefix = _prepare(args)
    fit = equation_of_state(atoms, max_strain=args.max_strain, points=args.points,
                            relax_atoms=not args.clamped_ions, fmax=args.fmax, steps=args.steps)
    result = {"v0_A3": fit.v0, "e0_eV": fit.e0, "b0_GPa": fit.b0 * EV_PER_A3_TO_GPA, "b0_prime": fit.b0_prime,
              "n_atoms": len(atoms), "volumes_A3": fit.volumes.tolist(), "energies_eV": fit.energies.tolist()}
    _write_json(Path(f"{prefix}.json"), result)
    plot_eos(fit, Path(f"{prefix}.png"), title=atoms.get_chemical_formula())
    print(f"Birch-Murnaghan: V0 {fit.v0:.3f} Å^3 ({fit.v0 / len(atoms):.3f}/atom), E0 {fit.e0:.4f} eV, "
          f"B0 {result['b0_GPa']:.1f} GPa, B0' {fit.b0_prime:.2f}  [{time.perf_counter() - start:.0f} s]")
    print(f"wrote {prefix}.json, {prefix}.png")


def _cmd_elastic(args) -> None:
    from mlip.materials.elastic import moduli, plot_stiffness, stiffness

    start = time.perf_counter()
    atoms, prefix = _prepare(args)
    c = stiffness(atoms, strains=args.strains, relax_atoms=not args.clamped_ions, fmax=args.fmax, steps=args.steps)
    c_gpa = c * EV_PER_A3_TO_GPA
    averages = moduli(c_gpa)
    result = {"C_GPa": c_gpa.tolist(), **{f"{k}_GPa" if k != "poisson" else k: v for k, v in averages._asdict().items()},
              "strains": list(args.strains), "relaxed_ions": not args.clamped_ions}
    _write_json(Path(f"{prefix}.json"), result)
    plot_stiffness(c_gpa, Path(f"{prefix}.png"), title=atoms.get_chemical_formula())
    with np.printoptions(precision=1, suppress=True, linewidth=120):
        print(f"C_ij (GPa, Voigt order xx yy zz yz xz xy):\n{c_gpa}")
    print(f"bulk modulus (V/R/H) {averages.bulk_voigt:.1f} / {averages.bulk_reuss:.1f} / {averages.bulk_hill:.1f} GPa, "
          f"shear modulus {averages.shear_voigt:.1f} / {averages.shear_reuss:.1f} / {averages.shear_hill:.1f} GPa, "
          f"Young's {averages.young:.1f} GPa, Poisson {averages.poisson:.3f}  [{time.perf_counter() - start:.0f} s]")
    print(f"wrote {prefix}.json, {prefix}.png")


def _write_table(path: Path, header: str, columns) -> None:
    from mlip.fileio import atomic_write_text

    atomic_write_text(path, lambda f: np.savetxt(f, np.column_stack(columns), header=header, fmt="%.6f"))


def _special_point_frequencies(bands) -> dict:
    """{label: frequencies (THz)} at each special point of the path (first occurrence)."""
    result = {}
    for x, label in zip(bands.special_distance, bands.labels):
        for name in label.split(","):
            index = int(np.argmin(np.abs(bands.distance - x)))
            result.setdefault("Gamma" if name == "G" else name, bands.frequencies[index].round(4).tolist())
    return result


def _cmd_phonons(args) -> None:
    from mlip.materials import phonons

    phonons.require_phonopy()  # before any work
    start = time.perf_counter()
    atoms, prefix = _prepare(args)
    cell = atoms if args.no_primitive else phonons.primitive_cell(atoms, args.symprec)
    phonon = phonons.make_phonopy(cell, args.supercell)
    if args.force_constants == "hessian":
        phonons.hessian_force_constants(phonon, atoms.calc.potential)
    else:
        phonons.displacement_force_constants(phonon, atoms.calc, distance=args.displacement)
    bands = phonons.band_structure(phonon)
    dos = phonons.density_of_states(phonon, mesh=args.mesh)
    thermal = phonons.thermal_properties(phonon, t_max=args.t_max)
    _write_table(Path(f"{prefix}-bands.dat"), f"distance (1/Å), frequencies (THz); special points "
                 f"{dict(zip(bands.labels, bands.special_distance.round(5).tolist()))}",
                 [bands.distance, bands.frequencies])
    _write_table(Path(f"{prefix}-dos.dat"), "frequency (THz), DOS (1/THz per primitive cell)", dos)
    _write_table(Path(f"{prefix}-thermal.dat"), "T (K), free energy (kJ/mol), entropy (J/K/mol), heat capacity "
                 "(J/K/mol), per mole of primitive cells",
                 [thermal["temperatures"], thermal["free_energy"], thermal["entropy"], thermal["heat_capacity"]])
    special = _special_point_frequencies(bands)
    _write_json(Path(f"{prefix}.json"), {"supercell": args.supercell, "force_constants": args.force_constants,
                                         "n_atoms_primitive": len(cell), "frequencies_THz": special})
    phonons.plot_phonons(bands, dos, Path(f"{prefix}.png"), title=cell.get_chemical_formula())
    for label, frequencies in special.items():
        print(f"{label:>5}: {' '.join(f'{f:7.3f}' for f in frequencies)} THz")
    room = int(np.argmin(np.abs(thermal["temperatures"] - 300)))
    print(f"at {thermal['temperatures'][room]:.0f} K: F {thermal['free_energy'][room]:.3f} kJ/mol, "
          f"S {thermal['entropy'][room]:.3f} J/K/mol, Cv {thermal['heat_capacity'][room]:.3f} J/K/mol "
          f"(per mole of {cell.get_chemical_formula()})  [{time.perf_counter() - start:.0f} s]")
    if bands.frequencies.min() < -0.1:
        print(f"warning: imaginary modes down to {bands.frequencies.min():.2f} THz (shown negative): "
              "the structure is dynamically unstable or not relaxed")
    print(f"wrote {prefix}.json, {prefix}.png, {prefix}-bands.dat, {prefix}-dos.dat, {prefix}-thermal.dat")


def _add_common(parser) -> None:
    parser.add_argument("structure", nargs="?", type=Path, help="crystal structure file (default: the bundled 64-atom Si)")
    parser.add_argument("--index", default="-1", help="frame of the file to use (default the last)")
    parser.add_argument("--model", help="potential file or bundled model name (default: the bundled model)")
    parser.add_argument("--no-relax", action="store_true", help="use the structure as given (default: relax positions and cell first)")
    parser.add_argument("--clamped-ions", action="store_true", help="do not relax positions in each deformed cell")
    parser.add_argument("--fmax", type=float, default=1e-3, help="force tolerance of every relaxation, eV/Å (default 0.001)")
    parser.add_argument("--steps", type=int, default=300, help="most optimiser steps per relaxation (default 300)")
    parser.add_argument("-o", "--output", type=Path, help="output prefix for PREFIX.json and PREFIX.png (default STRUCTURE-COMMAND)")


def add_parsers(commands) -> None:
    """Add ``eos``, ``elastic`` and ``phonons`` to the ``mlip`` subcommand parsers."""
    eos = add_command(
        commands, "eos", _cmd_eos,
        help="equation of state: Birch-Murnaghan V0, E0, B0, B0'",
        description="Energies of a crystal scaled to volumes within ±MAX_STRAIN, fitted by a "
        "Birch-Murnaghan equation of state; writes the fit (JSON) and a plot (PNG).",
    )
    _add_common(eos)
    eos.add_argument("--max-strain", type=float, default=0.06, help="largest relative volume change (default 0.06)")
    eos.add_argument("--points", type=int, default=7, help="number of volumes (default 7)")
    elastic = add_command(
        commands, "elastic", _cmd_elastic,
        help="elastic constants Cij, bulk/shear/Young's moduli, Poisson ratio (Voigt-Reuss-Hill)",
        description="The 6x6 stiffness of a 3D-periodic crystal from linear fits of stress against "
        "strain for each Voigt component, and its polycrystalline averages; writes JSON and a PNG.",
    )
    _add_common(elastic)
    elastic.add_argument("--strains", type=float, nargs="+", default=[-0.01, -0.005, 0.005, 0.01],
                         help="Voigt strains applied to each component (default -0.01 -0.005 0.005 0.01)")
    phonons = add_command(
        commands, "phonons", _cmd_phonons,
        help="phonon band structure, DOS and thermal properties through phonopy (extra [phonons])",
        description="Harmonic phonons of a crystal with phonopy: force constants of a supercell of "
        "its primitive cell by finite displacements or from the autodiff Hessian; band structure "
        "along the standard path, DOS and thermal properties (data files and a PNG).",
    )
    _add_common(phonons)
    phonons.add_argument("--supercell", type=int, nargs=3, default=[3, 3, 3], help="supercell of the primitive cell (default 3 3 3)")
    phonons.add_argument("--force-constants", choices=["displacements", "hessian"], default="displacements",
                         help="phonopy's finite displacements (default) or the autodiff Hessian")
    phonons.add_argument("--displacement", type=float, default=0.01, help="finite displacement, Å (default 0.01)")
    phonons.add_argument("--no-primitive", action="store_true", help="build the supercell of the cell as given, not of its primitive cell")
    phonons.add_argument("--symprec", type=float, default=1e-3, help="spglib symmetry tolerance, Å (default 0.001)")
    phonons.add_argument("--mesh", type=int, nargs=3, default=[20, 20, 20], help="q-mesh of the DOS and thermal properties")
    phonons.add_argument("--t-max", type=float, default=1000.0, help="highest temperature of the thermal table, K")
