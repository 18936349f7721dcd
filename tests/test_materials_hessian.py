"""Autodiff Hessian: central finite differences of the forces, symmetry, translation invariance."""

import numpy as np
import pytest
from ase.build import bulk

from mlip.calculator import Calculator
from mlip.potential import Potential


@pytest.fixture(scope="module")
def potential():
    return Potential.create("small", species=["Si"], r_cut=3.5, seed=2, dtype="float64",
                            channels=8, mixing_hidden=8, readout_hidden=8)


@pytest.fixture(scope="module")
def silicon():
    atoms = bulk("Si", "diamond", a=5.43) * (1, 1, 2)  # 4 atoms, small cell, many images
    atoms.rattle(0.05, seed=3)
    return atoms


def finite_difference_hessian(potential, atoms, h=1e-4):
    """[3N, 3N]: -(F(R + h e) - F(R - h e)) / 2h, row by row (eV/Å^2)."""
    rows = []
    for i in range(len(atoms)):
        for a in range(3):
            forces = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * h
                forces.append(potential.predict([moved])[0].forces.reshape(-1))
            rows.append(-(forces[0] - forces[1]) / (2 * h))
    return np.array(rows)


def test_hessian_equals_finite_differences(potential, silicon):
    # Blocks of 5 rows: the last block is partly padding, and rows cross block boundaries;
    # edges in chunks of 16: the chunked (rematerialised) message sum inside forward-over-reverse.
    hessian = potential.hessian(silicon, block=5, edge_chunk=16)
    assert hessian.shape == (12, 12)
    reference = finite_difference_hessian(potential, silicon)
    np.testing.assert_allclose(hessian, reference, atol=1e-6 * np.abs(reference).max())
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-10 * np.abs(hessian).max())
    # Moving every atom together changes nothing: rows sum to zero over atoms.
    np.testing.assert_allclose(hessian.reshape(12, 4, 3).sum(axis=1), 0.0, atol=1e-10 * np.abs(hessian).max())


def test_calculator_hessian(potential, silicon):
    calculator = Calculator(potential, compilation_cache=None)
    atoms = silicon.copy()
    atoms.calc = calculator
    atoms.get_potential_energy()
    np.testing.assert_allclose(calculator.get_hessian(), potential.hessian(atoms), rtol=1e-12, atol=1e-12)
