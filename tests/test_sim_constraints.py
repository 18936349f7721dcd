"""Constraints in the batched engine (mlip.sim): ASE's FixAtoms and FixCartesian, read from each
structure, hold in relaxations (with and without the cell filter) and in MD, step for step as
ASE's optimiser, filter and integrator treat them."""

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.constraints import FixAtoms, FixCartesian, FixBondLength
from ase.filters import FrechetCellFilter
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE

from mlip.calculator import Calculator
from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.sim import md, relax


@pytest.fixture(scope="module")
def potential():
    return Potential.create("small", species=["Si"], r_cut=4.0, seed=0, dtype="float64",
                            channels=8, mixing_hidden=8, readout_hidden=8)


def rattled(constraint):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.set_cell(atoms.cell.array @ np.diag([1.02, 0.99, 1.0]), scale_atoms=True)
    atoms.set_constraint(constraint)
    return atoms


@pytest.mark.parametrize("constraint, relax_cell", [
    (FixAtoms([0, 5]), True),
    (FixCartesian([1, 2], mask=[True, False, True]), False),
])
def test_relaxation_with_constraints_equals_ase(potential, constraint, relax_cell):
    atoms = rattled(constraint)
    result = relax(potential, [atoms], fmax=0.02, relax_cell=relax_cell, max_steps=200)[0]
    reference = atoms.copy()
    reference.calc = Calculator(potential, compilation_cache=None)
    optimizer = FIRE(FrechetCellFilter(reference) if relax_cell else reference, logfile=None)
    assert optimizer.run(fmax=0.02, steps=200)
    assert result.status == "converged" and result.steps == optimizer.nsteps
    np.testing.assert_allclose(result.atoms.positions, reference.positions, atol=1e-6)
    np.testing.assert_allclose(result.atoms.cell.array, reference.cell.array, atol=1e-6)
    free = np.ones((len(atoms), 3), bool)
    if isinstance(constraint, FixAtoms):
        free[constraint.index] = False
    else:
        free[constraint.index] = ~constraint.mask
    if relax_cell:  # fixed atoms are carried along with the deforming cell, as in ASE
        assert not np.allclose(result.atoms.cell.array, atoms.cell.array, atol=1e-3)
        np.testing.assert_allclose(result.atoms.get_scaled_positions()[~free.any(axis=1)],
                                   atoms.get_scaled_positions()[~free.any(axis=1)], atol=1e-9)
    else:  # fixed components do not move
        np.testing.assert_allclose(result.atoms.positions[~free], atoms.positions[~free], rtol=0, atol=1e-12)


def test_md_with_fixed_atoms_equals_ase(potential):
    atoms = rattled(FixAtoms([0, 5]))
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))  # zero for fixed atoms
    result = md(potential, [atoms], ensemble="nve", steps=30, timestep=1.0, interval=10)[0]
    reference = atoms.copy()
    reference.calc = Calculator(potential, compilation_cache=None)
    VelocityVerlet(reference, 1.0 * units.fs).run(30)
    np.testing.assert_allclose(result.atoms.positions, reference.positions, atol=1e-8)
    np.testing.assert_allclose(result.atoms.positions[[0, 5]], atoms.positions[[0, 5]], rtol=0, atol=1e-12)
    assert result.log[-1]["temperature"] == pytest.approx(reference.get_temperature(), rel=1e-6)  # 3n - 6 dof
    thermostatted = md(potential, [atoms], ensemble="nvt-langevin", steps=30, temperature=900, interval=30)[0]
    np.testing.assert_allclose(thermostatted.atoms.positions[[0, 5]], atoms.positions[[0, 5]], rtol=0, atol=1e-12)


def test_unsupported_constraints_are_named(potential):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.set_constraint(FixBondLength(0, 1))
    with pytest.raises(MlipError, match="FixBondLengths is not supported by the batched engine"):
        relax(potential, [atoms])
    with pytest.raises(MlipError, match="constraints cannot hold"):
        md(potential, [rattled(FixAtoms([0]))], ensemble="npt", steps=1)
