"""Harmonic phonons through phonopy (an optional extra: ``pip install "mlip-facet[phonons]"``).

Force constants come either from phonopy's finite displacements (forces of displaced
supercells, symmetry-reduced) or from the autodiff Hessian of the undisplaced supercell
(`mlip.materials.hessian`); the two agree to the finite-difference error. Frequencies are in
THz (phonopy's unit), along ASE's standard band path of the primitive cell, on a q-mesh for the
DOS, and the thermal properties per mole of primitive cells (kJ/mol, J/K/mol).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import ase
import numpy as np

from mlip.errors import MlipError
from mlip.materials.deform import require_periodic


class Bands(NamedTuple):
    """Dispersion along a band path: distance [Q] (1/Å, cumulative), frequencies [Q, 3M] (THz),
    special-point positions [S] (1/Å) and their labels [S] (ASE's names, G = Gamma)."""

    distance: np.ndarray
    frequencies: np.ndarray
    special_distance: np.ndarray
    labels: list


def require_phonopy():
    """The phonopy module, or MlipError saying what to install."""
    try:
        import phonopy
    except ImportError:
        raise MlipError('phonons need phonopy: pip install "mlip-facet[phonons]" (or pip install phonopy)') from None
    return phonopy


def primitive_cell(atoms: ase.Atoms, symprec: float = 1e-3) -> ase.Atoms:
    """The standardised primitive cell of ``atoms`` (spglib, symmetrised positions), no calculator."""
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's notice about its error handling
        found = spglib.standardize_cell(cell, to_primitive=True, symprec=symprec)
    if found is None:
        raise MlipError(f"spglib found no symmetry at symprec {symprec} Å; relax the structure or raise --symprec")
    lattice, positions, numbers = found
    return ase.Atoms(numbers=numbers, cell=lattice, scaled_positions=positions, pbc=True)


def make_phonopy(atoms: ase.Atoms, supercell, *, symmetry: bool = True) -> "phonopy.Phonopy":  # noqa: F821
    """A phonopy object with ``atoms`` as its unit (and primitive) cell and a diagonal
    ``supercell`` [3] of it. With ``symmetry`` phonopy displaces only symmetry-distinct atoms and
    imposes the crystal's full point group, improper operations included, on the force
    constants; without, it displaces every atom and takes the forces as they are."""
    phonopy = require_phonopy()
    from phonopy.structure.atoms import PhonopyAtoms

    require_periodic(atoms, "phonons")
    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions())
    return phonopy.Phonopy(unit, supercell_matrix=np.diag(supercell), primitive_matrix=None,
                           is_symmetry=symmetry)


def _to_ase(cell) -> ase.Atoms:
    return ase.Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def displacement_force_constants(phonon, calculator, *, distance: float = 0.01) -> None:
    """Set ``phonon.force_constants`` ([n, n, 3, 3] eV/Å^2) from forces of displaced supercells
    (displacement ``distance`` Å) computed with the ASE ``calculator``. Every displacement is
    made in both directions (central differences: error O(distance^2), not O(distance) as for
    the one-sided displacements phonopy chooses at sites without inversion, e.g. diamond's)."""
    phonon.generate_displacements(distance=distance, is_plusminus=True)
    forces = []
    for cell in phonon.supercells_with_displacements:
        displaced = _to_ase(cell)
        displaced.calc = calculator
        forces.append(displaced.get_forces())
    phonon.forces = np.array(forces)
    phonon.produce_force_constants(fc_calculator="traditional", show_drift=False)


def hessian_force_constants(phonon, potential) -> None:
    """Set ``phonon.force_constants`` ([n, n, 3, 3] eV/Å^2) from the autodiff Hessian of the
    undisplaced supercell: Φ[i, j, a, b] = H[3i + a, 3j + b]."""
    supercell = _to_ase(phonon.supercell)
    n = len(supercell)
    hessian = potential.hessian(supercell).reshape(n, 3, n, 3)
    phonon.force_constants = np.ascontiguousarray(hessian.transpose(0, 2, 1, 3))


def band_structure(phonon, *, npoints: int = 200) -> Bands:
    """Frequencies along ASE's standard path for the primitive cell's lattice (Setyawan-Curtarolo)."""
    path = ase.cell.Cell(phonon.primitive.cell).bandpath(npoints=npoints)
    phonon.run_qpoints(path.kpts)  # reduced coordinates of the primitive reciprocal lattice
    distance, special_distance, labels = path.get_linear_kpoint_axis()
    return Bands(distance, phonon.qpoints.frequencies, special_distance, list(labels))


def density_of_states(phonon, *, mesh=(20, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Total DOS on a q-``mesh``: frequencies [F] (THz) and states [F] (1/THz per primitive cell)."""
    phonon.run_mesh(list(mesh), is_gamma_center=True)  # keeps the point-group reduction
    phonon.run_total_dos()
    return phonon.total_dos.frequency_points, phonon.total_dos.dos


def thermal_properties(phonon, *, t_max: float = 1000.0, t_step: float = 50.0) -> dict:
    """Harmonic thermal properties from 0 to t_max K (needs `density_of_states`' mesh first):
    temperatures (K), free_energy (kJ/mol), entropy and heat_capacity (J/K/mol), per mole of
    primitive cells. The three zero-frequency acoustic modes at Gamma are left out (they are
    translations: kept in, they add a spurious -kT log(tiny frequency) to the free energy)."""
    phonon.run_thermal_properties(t_min=0, t_max=t_max, t_step=t_step, exclude_gamma_acoustic=True)
    table = phonon.thermal_properties
    return {name: np.asarray(getattr(table, name)) for name in ("temperatures", "free_energy", "entropy", "heat_capacity")}


def plot_phonons(bands: Bands, dos: tuple[np.ndarray, np.ndarray], path, *, title: str = "") -> None:
    """Write a PNG: the dispersion along the band path (THz) and the DOS beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4), dpi=120, sharey=True,
                                         gridspec_kw={"width_ratios": [3, 1]})
    left.plot(bands.distance, bands.frequencies, color="C0", lw=1)
    for x in bands.special_distance:
        left.axvline(x, color="0.7", lw=0.5)
    left.axhline(0, color="0.5", lw=0.5)
    left.set(xlim=(bands.distance[0], bands.distance[-1]), xticks=bands.special_distance,
             xticklabels=["Γ" if s == "G" else s for s in bands.labels], ylabel="frequency (THz)", title=title)
    right.plot(dos[1], dos[0], color="C1")
    right.set(xlabel="DOS (1/THz)", xlim=(0, None))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
