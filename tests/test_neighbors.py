"""neighbor_list against ASE's reference implementation, edge case by edge case.

Every case compares the exact set of (receiver i, sender j, shift) triples with
``ase.neighborlist.primitive_neighbor_list``; agreement on shifts (not just distances) is what
the model needs, since it recomputes r_ij = pos[j] - pos[i] + shift @ cell on device.
Cases are drawn from seeded generators so failures are reproducible by seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.geometry import complete_cell
from ase.neighborlist import primitive_neighbor_list

from mlip.data.neighbors import Edges, edge_vectors, neighbor_list
from mlip.testing import random_cell

#: A cell much flatter and more sheared than random_cell produces: volume 0.03 Å^3, so a 2 Å
#: sphere holds about a thousand images of every atom.
EXTREME_CELL = np.array([[1.0, 0.0, 0.0], [0.95, 0.2, 0.0], [0.3, 0.2, 0.15]])

MIXED_PBC = [
    (True, True, False),
    (True, False, True),
    (False, True, True),
    (True, False, False),
    (False, True, False),
    (False, False, True),
]


def edge_set(edges: Edges) -> set[tuple[int, int, tuple[int, ...]]]:
    return set(
        zip(edges.receivers.tolist(), edges.senders.tolist(), map(tuple, edges.shifts.tolist()))
    )


def ase_edge_set(positions, cell, pbc, cutoff) -> set[tuple[int, int, tuple[int, ...]]]:
    """ASE's edges, with the cell completed as ase.neighborlist.neighbor_list does for Atoms.

    primitive_neighbor_list itself needs a non-singular cell: given zero rows along open
    directions it is slow and misses edges (checked against brute force), whereas
    neighbor_list must accept them.
    """
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    i, j, shifts = primitive_neighbor_list(
        "ijS", pbc, complete_cell(cell), positions, cutoff, self_interaction=False
    )
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))


def check_against_ase(positions, cell, pbc, cutoff) -> Edges:
    """Assert neighbor_list equals ASE's list and honours its documented invariants."""
    edges = neighbor_list(positions, cell, pbc, cutoff)
    assert edges.senders.dtype == edges.receivers.dtype == edges.shifts.dtype == np.int32
    assert edges.shifts.shape == (len(edges.senders), 3) == (len(edges.receivers), 3)

    ours = edge_set(edges)
    assert len(ours) == len(edges.senders), "duplicate edges"
    reference = ase_edge_set(positions, cell, pbc, cutoff)
    assert ours == reference, (
        f"{len(ours - reference)} edges not in ase, {len(reference - ours)} missing"
    )

    # Receiver-major, then sender: what segment_sum(indices_are_sorted=True) relies on.
    order = np.lexsort((edges.senders, edges.receivers))
    np.testing.assert_array_equal(order, np.arange(len(order)))

    lengths = np.linalg.norm(edge_vectors(positions, cell, edges), axis=1)
    assert np.all(lengths < cutoff)
    assert np.all(lengths > 0), "self-edge at zero shift"
    return edges


def displace_by_cells(rng, positions, cell, pbc, max_cells: int):
    """Move each atom by a random integer number (|n| <= max_cells) of periodic cell vectors."""
    steps = rng.integers(-max_cells, max_cells + 1, positions.shape) * np.asarray(pbc)
    return positions + steps @ cell


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("skew", [0.3, 0.9])
def test_triclinic_and_skewed_cells(seed, skew):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, rng.uniform(3.0, 10.0), skew)
    n_atoms = int(rng.integers(2, 25))
    positions = rng.uniform(0, 1, (n_atoms, 3)) @ cell
    positions = displace_by_cells(rng, positions, cell, [True] * 3, max_cells=3)
    check_against_ase(positions, cell, [True] * 3, rng.uniform(1.0, 6.0))


def test_extreme_cell():
    # One case only: ASE spends ~3 s on this cell whatever the positions.
    rng = np.random.default_rng(0)
    positions = rng.uniform(-2, 3, (3, 3)) @ EXTREME_CELL
    edges = check_against_ase(positions, EXTREME_CELL, [True] * 3, 2.0)
    assert len(edges.senders) > 1000


@pytest.mark.parametrize("seed", range(10))
def test_cells_much_smaller_than_cutoff(seed):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, rng.uniform(1.0, 2.0), skew=0.5)
    positions = rng.uniform(0, 1, (int(rng.integers(2, 5)), 3)) @ cell
    positions = displace_by_cells(rng, positions, cell, [True] * 3, max_cells=4)
    edges = check_against_ase(positions, cell, [True] * 3, 5.0)
    # Many images of the same neighbour, and of the atom itself.
    images_of_neighbour_1 = (edges.receivers == 0) & (edges.senders == 1)
    images_of_self = (edges.receivers == 0) & (edges.senders == 0)
    assert images_of_neighbour_1.sum() > 10 and images_of_self.sum() > 10


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pbc", MIXED_PBC)
@pytest.mark.parametrize("zero_open_vectors", [False, True])
def test_mixed_pbc(seed, pbc, zero_open_vectors):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, rng.uniform(2.0, 8.0), skew=0.5)
    positions = rng.uniform(-1, 2, (int(rng.integers(2, 20)), 3)) @ cell
    positions = displace_by_cells(rng, positions, cell, pbc, max_cells=3)
    if zero_open_vectors:
        cell = cell * np.asarray(pbc)[:, None]  # as ASE writes slabs and wires
    check_against_ase(positions, cell, pbc, rng.uniform(2.0, 5.0))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pbc", MIXED_PBC)
def test_zero_open_vectors_against_brute_force(seed, pbc):
    """The case where ASE needs its cell completed, checked independently of ASE."""
    rng = np.random.default_rng(seed)
    full_cell = random_cell(rng, rng.uniform(2.0, 6.0), skew=0.5)
    positions = rng.uniform(0, 1, (int(rng.integers(2, 12)), 3)) @ full_cell
    cell = full_cell * np.asarray(pbc)[:, None]
    cutoff = rng.uniform(2.0, 5.0)
    edges = neighbor_list(positions, cell, pbc, cutoff)
    assert edge_set(edges) == brute_force_edge_set(positions, full_cell, pbc, cutoff)


def brute_force_edge_set(positions, full_cell, pbc, cutoff):
    """Every (i, j, shift) with |r_ij| < cutoff, trying all shifts that could qualify.

    Positions must lie inside ``full_cell`` (fractional coordinates in [0, 1)), so a shift of
    n cells along k needs |n| < cutoff * |b_k| + 1, with b_k the reciprocal vector.
    """
    reciprocal_lengths = np.linalg.norm(np.linalg.inv(full_cell), axis=0)
    ranges = [
        range(-(bound := int(np.ceil(cutoff * length)) + 1), bound + 1) if periodic else [0]
        for length, periodic in zip(reciprocal_lengths, pbc)
    ]
    shifts = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    vectors = (
        positions[None, None, :, :]
        - positions[None, :, None, :]
        + (shifts @ full_cell)[:, None, None, :]
    )  # [shift, i, j, 3]
    s, i, j = np.nonzero(np.linalg.norm(vectors, axis=-1) < cutoff)
    return {
        (int(a), int(b), tuple(shifts[k].tolist()))
        for k, a, b in zip(s, i, j)
        if a != b or shifts[k].any()
    }


@pytest.mark.parametrize("seed", range(5))
def test_open_boundaries_with_zero_cell(seed):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-6, 6, (int(rng.integers(2, 40)), 3))
    check_against_ase(positions, np.zeros((3, 3)), [False] * 3, 3.0)


@pytest.mark.parametrize("pbc", [True, (True, True, False)])
def test_single_atom_sees_only_its_images(pbc):
    cell = np.array([[2.0, 0.0, 0.0], [0.5, 2.2, 0.0], [0.3, -0.4, 2.5]])
    edges = check_against_ase(np.array([[7.0, -3.0, 1.0]]), cell, pbc, 4.5)
    assert len(edges.senders) > 0
    assert np.all(edges.senders == 0) and np.all(edges.receivers == 0)
    # Each image at +S comes with its mirror at -S.
    assert edge_set(edges) == {(0, 0, tuple(-edges.shifts[e])) for e in range(len(edges.shifts))}


def test_empty_structure():
    edges = neighbor_list(np.zeros((0, 3)), np.eye(3) * 5.0, True, 5.0)
    assert [a.shape for a in edges] == [(0,), (0,), (0, 3)]
    assert all(a.dtype == np.int32 for a in edges)


def test_isolated_atoms_have_no_edges():
    positions = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    edges = check_against_ase(positions, np.eye(3) * 30.0, True, 5.0)
    assert len(edges.senders) == 0


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (False, True, False)])
def test_invariant_under_wrapping(seed, pbc):
    """Moving atom k by n_k cells maps edge (i, j, S) to (i, j, S + n_i - n_j), same vector."""
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, rng.uniform(2.0, 6.0), skew=0.7)
    wrapped = rng.uniform(0, 1, (int(rng.integers(2, 15)), 3)) @ cell
    steps = rng.integers(-4, 5, wrapped.shape) * np.asarray(pbc)
    unwrapped = wrapped + steps @ cell
    cutoff = rng.uniform(2.0, 5.0)

    edges_wrapped = neighbor_list(wrapped, cell, pbc, cutoff)
    edges_unwrapped = neighbor_list(unwrapped, cell, pbc, cutoff)
    mapped = Edges(
        edges_wrapped.senders,
        edges_wrapped.receivers,
        edges_wrapped.shifts + steps[edges_wrapped.receivers] - steps[edges_wrapped.senders],
    )
    assert edge_set(mapped) == edge_set(edges_unwrapped)
    pairs_wrapped, lengths_wrapped = sorted_distances(wrapped, cell, edges_wrapped)
    pairs_unwrapped, lengths_unwrapped = sorted_distances(unwrapped, cell, edges_unwrapped)
    np.testing.assert_array_equal(pairs_wrapped, pairs_unwrapped)
    np.testing.assert_allclose(lengths_wrapped, lengths_unwrapped, rtol=0, atol=1e-9)


def sorted_distances(positions, cell, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) pairs [n_edges, 2] and |r_ij| [n_edges] (Å), ordered by i, j, then length.

    Compared with a tolerance rather than rounded, since rounding can split values that
    differ only by float noise.
    """
    lengths = np.linalg.norm(edge_vectors(positions, cell, edges), axis=1)
    order = np.lexsort((lengths, edges.senders, edges.receivers))
    pairs = np.stack([edges.receivers, edges.senders], axis=1)
    return pairs[order], lengths[order]
