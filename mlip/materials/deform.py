"""Deformed copies of a crystal and the relaxations the EOS and elastic fits share."""

from __future__ import annotations

import ase
import numpy as np

from mlip.errors import MlipError


def require_periodic(atoms: ase.Atoms, what: str) -> None:
    """Raise MlipError unless ``atoms`` is periodic in all three directions with a real cell."""
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise MlipError(f"{what} needs a cell periodic in all three directions (pbc={atoms.pbc.tolist()}); "
                        "give a bulk crystal, not a molecule, slab or wire")


def strained(atoms: ase.Atoms, strain: np.ndarray) -> ase.Atoms:
    """A copy of ``atoms`` with cell -> cell (1 + ε) and positions moved with it (same
    fractional coordinates). ``strain``: [3, 3] symmetric ε, dimensionless. Keeps the calculator."""
    deformed = atoms.copy()
    deformed.calc = atoms.calc
    deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return deformed


def relax_ions(atoms: ase.Atoms, *, fmax: float, steps: int, what: str) -> None:
    """Relax positions in place at fixed cell (BFGS) to max |F| < fmax (eV/Å), or raise."""
    from mlip.sim.ase import relax

    if not relax(atoms, fmax=fmax, steps=steps, optimizer="bfgs", progress=False):
        raise MlipError(f"{what} did not relax to fmax {fmax} eV/Å in {steps} steps; "
                        "raise --steps or --fmax, or pass --clamped-ions")


def relax_crystal(atoms: ase.Atoms, *, fmax: float, steps: int) -> None:
    """Relax positions and cell in place (BFGS + FrechetCellFilter) to fmax (eV/Å), or raise."""
    from mlip.sim.ase import relax

    converged = relax(atoms, fmax=fmax, steps=steps, relax_cell=True, optimizer="bfgs", progress=False)
    if not converged:
        raise MlipError(f"the structure did not relax (positions and cell) to fmax {fmax} eV/Å in "
                        f"{steps} steps; raise --steps, or pass --no-relax to use it as given")
