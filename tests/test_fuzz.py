"""Fuzzing the whole path a structure takes (file -> reader -> graph -> potential -> ASE
calculator) with random cells, positions, species and labels: the answer is a finite result,
the same on every path, or an MlipError (DataError) naming the problem; never another
exception, never a silent nan."""

import ase
import ase.io
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlip.calculator import Calculator
from mlip.data.graph import build_graph
from mlip.data.readers import read_frames
from mlip.errors import MlipError
from mlip.potential import Potential

SPECIES = (1, 14)  # the model's; the fuzzer also draws elements it lacks


@pytest.fixture(scope="module")
def potential():
    return Potential.create("small", species=list(SPECIES), r_cut=3.0, seed=0, dtype="float64", lmax=1, mmax=1,
                            num_layers=1, channels=4, mixing_hidden=8, readout_hidden=4)


finite = st.floats(-12.0, 12.0, allow_nan=False)


@st.composite
def structures(draw):
    """(ase.Atoms with random labels, expected to be valid?) of 0-5 atoms."""
    n = draw(st.integers(0, 5))
    numbers = draw(st.lists(st.sampled_from(SPECIES + (8, 79)), min_size=n, max_size=n))
    positions = np.array(draw(st.lists(st.tuples(finite, finite, finite), min_size=n, max_size=n)), float).reshape(n, 3)
    positions += draw(st.sampled_from([0.0, 1e6]))  # far from the origin
    if n and draw(st.booleans()) and draw(st.booleans()):
        positions[0, draw(st.integers(0, 2))] = draw(st.sampled_from([np.nan, np.inf]))
    cell = np.diag(draw(st.tuples(*[st.floats(2.5, 9.0)] * 3))) + np.array(
        draw(st.lists(finite, min_size=9, max_size=9))).reshape(3, 3) * draw(st.sampled_from([0.0, 0.3]))
    if draw(st.booleans()) and draw(st.booleans()):
        cell[2] = cell[0]  # singular
    pbc = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    if draw(st.booleans()):
        atoms.info["energy"] = draw(st.floats(-100, 100))
    if draw(st.booleans()):
        atoms.arrays["forces"] = np.array(draw(st.lists(finite, min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    if draw(st.booleans()):
        atoms.info["stress"] = np.array(draw(st.lists(finite, min_size=6, max_size=6))) * 1e-3
    return atoms


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(atoms=structures())
def test_any_structure_gets_a_finite_result_or_a_clear_error(potential, atoms, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "frame.xyz"
    ase.io.write(path, atoms, format="extxyz")
    try:
        (frame,) = read_frames(path, require_labels=False)
        build_graph(frame, potential.config.r_cut)
        (prediction,) = potential.predict([frame])
    except MlipError:
        return
    assert np.isfinite(prediction.energy) and np.all(np.isfinite(prediction.forces))
    assert prediction.forces.shape == (len(atoms), 3) and (prediction.stress is None) == (not atoms.pbc.all())
    atoms.calc = Calculator(potential, compilation_cache=None)
    try:
        energy = atoms.get_potential_energy()
    except MlipError:
        return
    # The calculator keeps atoms closer than 0.5 Å out as the reader does; otherwise it agrees.
    assert energy == pytest.approx(prediction.energy, abs=1e-7)
    np.testing.assert_allclose(atoms.get_forces(), prediction.forces, atol=1e-7)
