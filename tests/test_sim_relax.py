"""Batched on-device relaxation (mlip.sim.relax): the same path as ASE's FIRE +
FrechetCellFilter with mlip's Calculator, in-flight refilling, regrowth, clear failures."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from ase.build import bulk, molecule
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from mlip.calculator import Calculator
from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.sim import Budget, relax
from mlip.sim.batcher import TOO_LARGE, _compiled_by_key
from mlip.sim.frechet import expm
from mlip.units import EV_PER_A3_TO_GPA


@pytest.fixture(scope="module")
def potential():
    return Potential.create("small", species=["H", "O", "Si"], r_cut=4.0, seed=0, dtype="float64",
                            channels=8, mixing_hidden=8, readout_hidden=8)


def silicon(k, cubic=True):
    atoms = bulk("Si", "diamond", a=5.43, cubic=cubic)
    atoms.rattle(0.04, seed=k)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.015 * k * np.array([[1, 0.2, 0], [0, -0.5, 0], [0, 0, 0.3]])),
                   scale_atoms=True)
    return atoms


def ase_relax(potential, atoms, fmax, pressure=0.0, steps=300):
    atoms = atoms.copy()
    atoms.calc = Calculator(potential, compilation_cache=None)
    target = FrechetCellFilter(atoms, scalar_pressure=pressure / EV_PER_A3_TO_GPA) if atoms.pbc.all() else atoms
    optimizer = FIRE(target, logfile=None)
    converged = optimizer.run(fmax=fmax, steps=steps)
    return atoms, optimizer.nsteps, converged


def assert_same_relaxation(result, reference):
    atoms, steps, converged = reference
    n = len(atoms)
    assert result.converged == converged and result.steps == steps
    assert abs(result.energy - atoms.get_potential_energy()) / n < 1e-4
    np.testing.assert_allclose(result.atoms.positions, atoms.positions, atol=1e-6)
    np.testing.assert_allclose(result.atoms.cell.array, atoms.cell.array, atol=1e-6)
    np.testing.assert_allclose(result.forces, atoms.get_forces(), atol=1e-6)


def test_batched_fire_with_cell_equals_ase_and_refills_in_flight(potential):
    structures = [silicon(0), silicon(1, cubic=False), silicon(2), molecule("H2O")]
    structures[3].center(vacuum=2.0)
    before = _compiled_by_key.cache_info().misses
    # Two structure slots for four structures: finished ones leave, waiting ones take over
    # (the tail's shrinking off: one shape).
    results = relax(potential, structures, fmax=0.02, relax_cell=True, max_steps=300,
                    budget=Budget(max_atoms=20, max_structures=2, chunk=40, shrink=False))
    for atoms, result in zip(structures, results):
        assert result.status == "converged"
        assert_same_relaxation(result, ase_relax(potential, atoms, 0.02))
    assert results[3].stress is None and results[0].stress.shape == (3, 3)
    assert _compiled_by_key.cache_info().misses - before == 1  # one compiled shape for the whole run (misses: the cache may be full)
    assert structures[0].calc is None and results[0].atoms.get_potential_energy() == results[0].energy


def test_tail_shrinks_to_the_last_structures_and_changes_no_result(potential):
    # Nothing waits once all five are in the batch; when the last one runs alone it fills at
    # most a quarter of the 34 atom slots, so the batch is repacked into 16 slots (one more
    # compiled shape) and goes on from the same state: every result is the unshrunk run's.
    structures = [silicon(k) for k in range(4)] + [silicon(3, cubic=False)]
    runs = {}
    for shrink in (False, True):
        before = _compiled_by_key.cache_info().misses
        runs[shrink] = relax(potential, structures, fmax=0.02, relax_cell=True, max_steps=300,
                             budget=Budget(max_atoms=64, shrink=shrink))
        runs[shrink, "shapes"] = _compiled_by_key.cache_info().misses - before
    # The second run starts in the first one's compiled shape; only the shrunk one is new.
    assert (runs[False, "shapes"], runs[True, "shapes"]) == (1, 1)
    for kept, shrunk in zip(runs[False], runs[True]):
        assert shrunk.status == kept.status == "converged" and shrunk.steps == kept.steps
        assert abs(shrunk.energy - kept.energy) < 1e-9
        np.testing.assert_allclose(shrunk.atoms.positions, kept.atoms.positions, atol=1e-9)
        np.testing.assert_allclose(shrunk.atoms.cell.array, kept.atoms.cell.array, atol=1e-9)
    assert len({r.steps for r in runs[True]}) > 1  # they finish at different steps: a real tail


def test_capacity_regrows_under_pressure_and_matches_ase(potential):
    # 40 GPa shrinks the cell: the edge count outgrows the initial capacity and must regrow.
    atoms = silicon(1)
    compiled = _compiled_by_key.cache_info().misses
    results = relax(potential, [atoms], fmax=0.05, relax_cell=True, pressure=40.0, max_steps=300)
    reference = ase_relax(potential, atoms, 0.05, pressure=40.0)
    assert_same_relaxation(results[0], reference)
    assert reference[0].get_volume() < 0.9 * atoms.get_volume()
    assert _compiled_by_key.cache_info().misses - compiled >= 2  # the first capacity, then a grown one


def test_structures_over_budget_fail_clearly_and_others_run(potential):
    small, big = silicon(0), silicon(0).repeat((2, 1, 1))
    results = relax(potential, [big, small], fmax=0.1, budget=Budget(max_atoms=10))
    assert results[0].status == TOO_LARGE and "16 atoms" in results[0].message
    assert not results[0].converged and np.isnan(results[0].energy)
    assert results[1].converged


def test_bad_arguments_are_clear_errors(potential):
    with pytest.raises(MlipError, match="structure 0: element.*Cu"):
        relax(potential, [bulk("Cu", "fcc", a=3.6)])
    with pytest.raises(MlipError, match="fmax > 0"):
        relax(potential, [silicon(0)], fmax=0.0)
    with pytest.raises(MlipError, match="invalid batch budget"):
        dataclasses.replace(Budget(), max_atoms=0)


def test_descent_is_a_second_optimiser_on_the_same_batcher(potential):
    # Steepest descent with a line search, through the same batcher and cell filter as FIRE:
    # it converges (atoms alone, and with the cell under pressure) to a point that ASE's FIRE
    # + FrechetCellFilter, started there, accepts as a minimum without moving, below the start.
    atoms = silicon(2)
    for relax_cell, pressure in ((False, 0.0), (True, 5.0)):
        result = relax(potential, [atoms], fmax=0.005, relax_cell=relax_cell, pressure=pressure, max_steps=600,
                       optimizer="descent")[0]
        assert result.status == "converged" and result.steps > 5
        reference = result.atoms.copy()
        reference.calc = Calculator(potential, compilation_cache=None)
        target = FrechetCellFilter(reference, scalar_pressure=pressure / EV_PER_A3_TO_GPA) if relax_cell else reference
        assert FIRE(target, logfile=None).run(fmax=0.005, steps=5)
        np.testing.assert_allclose(reference.positions, result.atoms.positions, atol=2e-3)
        np.testing.assert_allclose(reference.cell.array, result.atoms.cell.array, atol=2e-3)
        start = atoms.copy()
        start.calc = Calculator(potential, compilation_cache=None)
        enthalpy = pressure / EV_PER_A3_TO_GPA * (result.atoms.get_volume() - atoms.get_volume())
        assert result.energy + enthalpy < start.get_potential_energy() - 1e-3
    with pytest.raises(MlipError, match="unknown optimizer 'bfgs'"):
        relax(potential, [atoms], optimizer="bfgs")


def test_cell_filter_expm_equals_scipy_and_its_vjp_finite_differences():
    # The Fréchet cell filter's exp (scaling and squaring, as scans) against scipy from a
    # tiny to a large 1-norm (0 to 15 squarings), and its VJP against central differences.
    # The largest is antisymmetric (its exp a rotation): a general matrix of that norm has an
    # exp beyond float64, where inf against inf checks nothing.
    rng = np.random.default_rng(0)
    matrices = rng.normal(size=(6, 3, 3)) * np.array([1e-6, 0.01, 0.3, 2.0, 30.0, 500.0])[:, None, None]
    matrices[-1] -= matrices[-1].T
    assert np.abs(matrices[-1]).sum(axis=0).max() > 2**10  # 15 squarings
    got = np.asarray(expm(jnp.asarray(matrices)))
    for matrix, result in zip(matrices, got):
        want = scipy.linalg.expm(matrix)
        assert np.isfinite(want).all()
        # Each squaring doubles the rounding error: 2^s ulps of the largest entry, s squarings.
        squarings = max(0, np.ceil(np.log2(np.abs(matrix).sum(axis=0).max())) + 4)
        scale = max(1e-13, 4 * 2**squarings * np.finfo(float).eps) * np.abs(want).max()
        np.testing.assert_allclose(result, want, rtol=1e-11, atol=scale)
    point, cotangent, direction = (rng.normal(size=(2, 3, 3)) * 0.4 for _ in range(3))
    _, pullback = jax.vjp(expm, jnp.asarray(point))
    analytic = np.sum(np.asarray(pullback(jnp.asarray(cotangent))[0]) * direction)
    h = 1e-6
    numeric = np.sum(cotangent * (np.asarray(expm(jnp.asarray(point + h * direction)))
                                  - np.asarray(expm(jnp.asarray(point - h * direction))))) / (2 * h)
    assert abs(analytic - numeric) < 1e-8 * max(1.0, abs(numeric))
