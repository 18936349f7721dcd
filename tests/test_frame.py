"""make_frame's coercion and shape checks, validate_frame's checks, and the ASE round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlip.data.frame import make_frame, stress_to_matrix, validate_frame
from mlip.errors import DataError
from mlip.testing import random_frame

SOURCE = "data/train.extxyz"


def water(**overrides):
    """A labelled, valid molecule (open boundaries, zero cell) tagged with a source and index."""
    arguments = dict(
        numbers=[8, 1, 1],
        positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]],
        energy=-14.2,
        forces=np.zeros((3, 3)),
        stress=np.zeros((3, 3)),
        source=SOURCE,
        index=7,
    )
    arguments.update(overrides)
    return make_frame(**arguments)


def crystal(**overrides):
    """Two atoms in a 3 Å cubic periodic cell."""
    arguments = dict(
        numbers=[14, 14],
        positions=[[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]],
        cell=np.eye(3) * 3.0,
        pbc=True,
        source=SOURCE,
        index=7,
    )
    arguments.update(overrides)
    return make_frame(**arguments)


def assert_data_error(frame, *fragments, **kwargs) -> DataError:
    """validate_frame raises a DataError naming the source, frame index and each fragment."""
    with pytest.raises(DataError) as info:
        validate_frame(frame, **kwargs)
    message = str(info.value)
    assert info.value.source == SOURCE and info.value.frame == 7
    assert message.startswith(f"{SOURCE}, frame 7: "), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_valid_frames_pass_unchanged():
    for frame in (water(), crystal()):
        assert validate_frame(frame) is frame


def test_open_boundaries_with_zero_cell_are_fine():
    frame = water()
    np.testing.assert_array_equal(frame.cell, np.zeros((3, 3)))
    assert not frame.pbc.any()
    validate_frame(frame)


def test_random_frames_with_spaced_atoms_pass():
    rng = np.random.default_rng(0)
    for pbc in (True, (True, True, False), (True, False, False), False):
        validate_frame(random_frame(rng, 12, pbc=pbc, min_distance=1.0))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_positions(value):
    positions = np.array(water().positions)
    positions[1, 2] = value
    assert_data_error(water(positions=positions), "positions", "NaN or inf")


@pytest.mark.parametrize(
    "name, value",
    [
        ("energy", np.nan),
        ("forces", np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.0, 0.0, 0.0]])),
        ("stress", [0.0, 0.0, np.nan, 0.0, 0.0, 0.0]),
    ],
)
def test_non_finite_labels(name, value):
    assert_data_error(water(**{name: value}), name, "NaN or inf")


def test_non_finite_cell():
    cell = np.eye(3) * 3.0
    cell[2, 2] = np.nan
    assert_data_error(crystal(cell=cell), "cell", "NaN or inf")


def test_zero_volume_periodic_cell():
    cell = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 3.0, 0.0]])  # c = a + b
    assert_data_error(crystal(cell=cell), "zero-volume")


def test_zero_area_slab():
    # Two parallel in-plane vectors: the periodic directions span a line, not a plane.
    cell = np.array([[3.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert_data_error(crystal(cell=cell, pbc=(True, True, False)), "zero-area")


def test_zero_length_wire():
    cell = np.diag([0.0, 5.0, 5.0])
    assert_data_error(crystal(cell=cell, pbc=(True, False, False)), "zero-length")


def test_slab_with_zero_open_vector_is_fine():
    cell = np.diag([3.0, 3.0, 0.0])
    validate_frame(crystal(cell=cell, pbc=(True, True, False)))


@pytest.mark.parametrize("number", [0, 119, -1])
def test_unknown_atomic_number(number):
    assert_data_error(water(numbers=[8, number, 1]), f"atomic number {number}")


def test_no_atoms():
    frame = make_frame(np.zeros(0, int), np.zeros((0, 3)), source=SOURCE, index=7)
    assert_data_error(frame, "no atoms")


def test_overlapping_atoms():
    positions = [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [0.1, 0.0, 0.0]]
    error = assert_data_error(water(positions=positions), "atoms 0 and 2", "0.1 Å apart")
    assert "0.5 Å" in error.problem  # the threshold, so the user knows what to relax


def test_overlap_across_the_periodic_boundary():
    positions = [[0.05, 1.0, 1.0], [2.9, 1.0, 1.0]]  # 0.15 Å apart through the x face
    assert_data_error(crystal(positions=positions), "atoms 0 and 1", "0.15 Å apart")


def test_min_distance_is_configurable():
    frame = crystal()  # nearest neighbours 2.6 Å apart
    validate_frame(frame, min_distance=2.5)
    assert_data_error(frame, "2.598 Å apart", min_distance=2.7)


def test_close_atoms_warn_and_ignore():
    frame = water(positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [0.1, 0.0, 0.0]])
    with pytest.warns(UserWarning, match=r"frame 7: atoms 0 and 2 are 0\.1 Å apart"):
        assert validate_frame(frame, close_atoms="warn") is frame
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_frame(frame, close_atoms="ignore") is frame


def test_atom_too_close_to_its_own_image():
    frame = make_frame([1], [[0.1, 0.1, 0.1]], np.eye(3) * 0.4, True, source=SOURCE, index=7)
    assert_data_error(frame, "atom 0 and its own periodic image", "0.4 Å apart")


def test_own_image_along_open_direction_is_not_checked():
    cell = np.diag([0.4, 5.0, 5.0])
    frame = make_frame([1], [[0.0, 0.0, 0.0]], cell, (False, True, True), source=SOURCE, index=7)
    validate_frame(frame)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(positions=np.zeros((3, 2))), "positions has shape (3, 2)"),
        (dict(positions=np.zeros((2, 3))), "positions has shape (2, 3)"),
        (dict(positions=[["a", 0, 0]] * 3), "positions is not numeric"),
        (dict(forces=np.zeros((2, 3))), "forces has shape (2, 3)"),
        (dict(cell=np.zeros((2, 3))), "cell has shape (2, 3)"),
        (dict(energy=[1.0, 2.0]), "energy must be a scalar"),
        (dict(stress=np.zeros(5)), "stress has shape (5,)"),
        (dict(numbers=[8.0, 1.0, 1.0]), "1-d integer array"),
        (dict(numbers=[[8, 1, 1]]), "1-d integer array"),
        (dict(atom_extras={"magmoms": np.zeros(2)}), "'magmoms' has shape (2,)"),
    ],
)
def test_make_frame_shape_errors(overrides, fragment):
    with pytest.raises(DataError, match="frame 7") as info:
        water(**overrides)
    assert fragment in str(info.value)
    assert info.value.source == SOURCE


def test_make_frame_coerces():
    frame = make_frame(
        np.array([14, 8], dtype=np.int64),
        [[0, 0, 0], [1, 1, 1]],
        cell=list(range(9)),  # flat [9] -> [3, 3]
        pbc=True,
        energy=np.array([-3.0]),
    )
    assert frame.numbers.dtype == np.int32
    assert frame.positions.dtype == np.float64
    np.testing.assert_array_equal(frame.cell, np.arange(9.0).reshape(3, 3))
    np.testing.assert_array_equal(frame.pbc, [True, True, True])
    assert frame.energy == -3.0 and isinstance(frame.energy, float)
    assert frame.forces is None and frame.stress is None


def test_stress_voigt_order_is_ase():
    xx, yy, zz, yz, xz, xy = 1.0, 2.0, 3.0, 4.0, 5.0, 6.0
    expected = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    np.testing.assert_array_equal(stress_to_matrix([xx, yy, zz, yz, xz, xy]), expected)
    np.testing.assert_array_equal(stress_to_matrix(expected.ravel()), expected)
    np.testing.assert_array_equal(stress_to_matrix(expected), expected)


def test_stress_voigt_matches_ase_conversion():
    from ase.stress import full_3x3_to_voigt_6_stress

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(3, 3))
    matrix = matrix + matrix.T
    np.testing.assert_allclose(stress_to_matrix(full_3x3_to_voigt_6_stress(matrix)), matrix)


def test_stress_bad_shape():
    with pytest.raises(DataError, match="Voigt"):
        stress_to_matrix(np.zeros((2, 2)))


def test_to_atoms_round_trip():
    rng = np.random.default_rng(1)
    frame = random_frame(rng, 5, pbc=(True, True, False))
    frame.atom_extras["magmoms"] = rng.normal(size=5)
    frame.info["material_id"] = "mp-149"

    atoms = frame.to_atoms()
    np.testing.assert_array_equal(atoms.numbers, frame.numbers)
    np.testing.assert_array_equal(atoms.positions, frame.positions)
    np.testing.assert_array_equal(atoms.cell.array, frame.cell)
    np.testing.assert_array_equal(atoms.pbc, frame.pbc)
    np.testing.assert_array_equal(atoms.arrays["magmoms"], frame.atom_extras["magmoms"])
    assert atoms.info["material_id"] == "mp-149"

    back = make_frame(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(),
        stress=atoms.get_stress(),  # Voigt, ASE order
    )
    assert back.energy == frame.energy
    np.testing.assert_array_equal(back.forces, frame.forces)
    np.testing.assert_allclose(back.stress, frame.stress, rtol=0, atol=1e-15)


def test_to_atoms_without_labels_has_no_calculator():
    frame = make_frame([1, 1], [[0, 0, 0], [0.74, 0, 0]])
    assert frame.to_atoms().calc is None
