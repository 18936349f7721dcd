"""Batched on-device MD (mlip.sim.md): NVE conserves energy as the ASE path does, thermostats
reach and hold their temperature, a structure runs the same alone or in a batch, atoms flying
apart stay exact, and blow-ups get a clear per-structure status."""

import dataclasses

import jax
import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlip.calculator import Calculator
from mlip.potential import Potential
from mlip.sim import md
from mlip.sim.batcher import NON_FINITE


@pytest.fixture(scope="module")
def potential():
    # scale 0.1: a gentle random potential (see tests/test_calculator.py's NVE test).
    potential = Potential.create("small", species=["H", "O", "Si"], r_cut=4.0, seed=0, dtype="float64",
                                 channels=8, mixing_hidden=8, readout_hidden=8)
    return dataclasses.replace(potential, config=dataclasses.replace(potential.config, scale=0.1))


def silicon(seed, temperature=300):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    return atoms


def test_nve_follows_and_conserves_energy_like_the_ase_path(potential):
    start = silicon(1)
    result = md(potential, [start, silicon(2)], ensemble="nve", steps=60, timestep=1.0, interval=10)[0]
    atoms = start.copy()
    atoms.calc = Calculator(potential, compilation_cache=None)
    reference = []
    dynamics = VelocityVerlet(atoms, 1.0 * units.fs)
    dynamics.attach(lambda: reference.append(atoms.get_total_energy()), interval=10)
    dynamics.run(60)
    np.testing.assert_allclose(result.atoms.positions, atoms.positions, atol=1e-8)
    np.testing.assert_allclose(result.atoms.get_velocities(), atoms.get_velocities(), atol=1e-8)
    conserved = np.array([entry["conserved"] for entry in result.log])
    np.testing.assert_allclose(conserved, reference, atol=1e-9)  # both from step 0
    assert result.status == "completed" and result.steps == 60
    assert np.ptp(conserved) <= np.ptp(reference) + 1e-9


def test_langevin_holds_temperature_and_batched_equals_single(potential):
    cold = bulk("Si", "diamond", a=5.43, cubic=True)  # starts at 0 K
    batch = md(potential, [silicon(3), cold], ensemble="nvt-langevin", steps=300, temperature=500,
               friction=0.05, interval=20, seed=7)
    temperatures = [entry["temperature"] for entry in batch[1].log]
    assert temperatures[0] == 0 and temperatures[1] > 100  # heated from 0 K within 20 fs
    assert 300 < np.mean(temperatures[6:]) < 800  # loose: 8 atoms fluctuate strongly
    alone = md(potential, [cold], ensemble="nvt-langevin", steps=300, temperature=500, friction=0.05,
               interval=20, seed=8)[0]  # structure 1 of the batch drew from seed + 1
    np.testing.assert_allclose(alone.atoms.positions, batch[1].atoms.positions, atol=1e-9)
    assert alone.energy == pytest.approx(batch[1].energy, abs=1e-9)


def test_nose_hoover_chain_reaches_target_and_conserves_its_extended_energy(potential):
    result = md(potential, [silicon(4, temperature=100)], ensemble="nvt", steps=400, temperature=600,
                tau=20.0, interval=20)[0]
    temperatures = np.array([entry["temperature"] for entry in result.log])
    conserved = np.array([entry["conserved"] for entry in result.log])
    assert 350 < np.mean(temperatures[9:]) < 900
    assert np.ptp(conserved) / 8 < 2e-3  # eV/atom: the thermostat's energy is accounted for


def test_npt_compresses_under_pressure_and_keeps_the_shape(potential):
    result = md(potential, [silicon(5)], ensemble="npt", steps=200, temperature=300, pressure=30.0,
                tau_p=100.0, interval=50, seed=1)[0]
    volumes = [entry["volume"] for entry in result.log]
    assert volumes[-1] < 0.97 * 5.43**3
    assert result.stress is not None and np.isclose(result.atoms.get_volume(), volumes[-1])
    cell = result.atoms.cell.array  # isotropic: the cube stays a cube
    np.testing.assert_allclose(cell, np.eye(3) * cell[0, 0], atol=1e-9)


def test_anisotropic_npt_restores_the_cubic_shape_of_silicon():
    # A physical potential (the bundled mlearn Si model): diamond Si stretched 4% along x (and,
    # in the same batch, along z) relaxes back towards a cube under the anisotropic barostat,
    # at the model's equilibrium volume (a = 5.46 Å); the isotropic one would keep the 4%.
    silicon_model = Potential.load("mlearn-si").astype("float64")
    stretched = []
    for axis in (0, 2):
        atoms = bulk("Si", "diamond", a=5.46, cubic=True)
        atoms.set_cell(atoms.cell.array @ np.diag(np.where(np.arange(3) == axis, 1.04, 1.0)), scale_atoms=True)
        stretched.append(atoms)
    results = md(silicon_model, stretched, ensemble="npt-aniso", steps=300, temperature=10, tau_p=50.0,
                 interval=300, seed=2)
    for axis, result in zip((0, 2), results):
        lengths = result.atoms.cell.lengths()
        others = np.delete(lengths, axis)
        assert lengths[axis] / others.mean() < 1.015  # from 1.04
        np.testing.assert_allclose(result.atoms.cell.angles(), 90.0, atol=0.5)
        assert abs(result.atoms.get_volume() / 5.46**3 - 1) < 0.02


def test_atoms_flying_apart_stay_exact(potential):
    water = molecule("H2O")
    water.center(vacuum=2.0)
    MaxwellBoltzmannDistribution(water, temperature_K=3e5, rng=np.random.default_rng(0))
    result = md(potential, [water], ensemble="nve", steps=40, timestep=1.0, interval=40)[0]
    final = result.atoms
    distances = final.get_all_distances()[np.triu_indices(len(final), 1)]
    assert distances.min() > 4.0 + 0.5  # all pairs left the cutoff and skin
    expected = potential.predict([final])[0]
    assert result.energy == pytest.approx(expected.energy, abs=1e-10)


def test_blow_up_is_a_per_structure_failure(potential):
    # Atoms thrown apart at absurd speed (as under a broken potential): the kinetic energy
    # leaves the float64 range; that structure fails with a clear status, its batch-mate runs
    # on and ends exactly where it ends alone.
    exploding = bulk("Si", "diamond", a=5.43, cubic=True)
    exploding.set_velocities(np.full((8, 3), 1e200) / units.fs)
    healthy = silicon(6)
    with jax.debug_nans(False):
        results = md(potential, [exploding, healthy], ensemble="nve", steps=30, interval=10)
    assert results[0].status == NON_FINITE and "non-finite" in results[0].message and not results[0].converged
    assert results[1].status == "completed" and results[1].steps == 30
    alone = md(potential, [healthy], ensemble="nve", steps=30, interval=10)[0]
    np.testing.assert_allclose(results[1].atoms.positions, alone.atoms.positions, atol=1e-10)


def test_a_run_whose_conserved_energy_drifts_is_not_completed(potential):
    from mlip.sim.batcher import DRIFT

    # 30 fs steps for Si under the unscaled random potential: unstable, heated to ~1e11 K
    # within 10 steps, yet every number stays finite.
    stiff = dataclasses.replace(potential, config=dataclasses.replace(potential.config, scale=1.0))
    start = silicon(0)
    result = md(stiff, [start], ensemble="nve", steps=40, timestep=30.0, interval=10)[0]
    assert result.status == DRIFT and not result.converged and "drifted by" in result.message
    unchecked = md(stiff, [start], ensemble="nve", steps=40, timestep=30.0, interval=10, max_drift=None)[0]
    assert unchecked.status == "completed"
