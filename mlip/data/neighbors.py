"""Host-side radius graph for periodic, mixed-pbc and open structures.

The search uses vesin (a small C++ cell-list library): it handles triclinic and very skewed
cells, cells smaller than the cutoff (several images of one neighbour, and of the atom itself)
and per-direction pbc, and returns exactly the (i, j, shift) set of
``ase.neighborlist.primitive_neighbor_list`` at a fraction of its cost (benchmarks/).

Edge convention, used everywhere in mlip: an edge carries a message from ``senders[e]`` (j)
to ``receivers[e]`` (i); its vector is

    r_ij = positions[j] - positions[i] + shifts[e] @ cell        (Å)

and is recomputed from positions and cell inside the model (`edge_vectors`, the only place the
formula is written)
so that forces and stress are gradients through both. Edges are sorted by receiver, which
lets ``segment_sum(..., indices_are_sorted=True)`` take its fast path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import vesin


class Edges(NamedTuple):
    """Directed edges of one structure, sorted by receiver (then sender).

    senders: int32 [n_edges], index j of the neighbour.
    receivers: int32 [n_edges], index i of the centre atom.
    shifts: int32 [n_edges, 3], integer cell translation of the sender's image.
    """

    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray


def neighbor_list(positions, cell, pbc, cutoff: float) -> Edges:
    """All ordered pairs (i, j, shift) with |r_ij| < cutoff, excluding i == j at zero shift.

    Args:
        positions: float [n_atoms, 3], Å. Need not be wrapped into the cell.
        cell: float [3, 3], Å, rows are lattice vectors. Ignored along non-periodic directions
            (it may be zero there, as ASE writes molecules).
        pbc: bool [3] or bool, periodicity per lattice direction.
        cutoff: radius in Å.

    Returns:
        Edges sorted by receiver. Both (i, j) and (j, i) are present (a full list).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if len(positions) == 0:
        empty = np.zeros(0, np.int32)
        return Edges(empty, empty, np.zeros((0, 3), np.int32))
    # One thread: vesin's multi-threaded output order varies between runs, which would make
    # the order of images of the same (i, j) pair, and so float sums, irreproducible.
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True, n_threads=1)
    i, j, shifts = calculator.compute(positions, cell, [bool(p) for p in pbc], "ijS")
    # Receiver-major, then sender: a canonical, sorted order. A stable sort of one int64 key
    # gives the same permutation as np.lexsort((j, i)) at a quarter of the cost, and np.take
    # of int32 arrays permutes about twice as fast as fancy indexing of vesin's uint64 ones:
    # at 100k atoms the reordering otherwise costs more than vesin (benchmarks/RESULTS.md).
    order = np.argsort(i.astype(np.int64) * len(positions) + j.astype(np.int64), kind="stable")
    return Edges(
        senders=np.take(j.astype(np.int32), order),
        receivers=np.take(i.astype(np.int32), order),
        shifts=np.take(shifts.astype(np.int32, copy=False), order, axis=0),
    )


def edge_vectors(positions, cell, edges, node_graph=None):
    """The edge vectors r_ij = positions[j] - positions[i] + shifts[e] @ cell (Å), [E, 3]: the
    one place mlip writes this formula (host and device, numpy and JAX alike).

    Args:
        positions: [N, 3], Å (numpy or JAX; a JAX caller may differentiate through them).
        cell: [3, 3] (one structure) or [G, 3, 3] with ``node_graph`` (a padded batch), Å.
        edges: anything with ``senders``, ``receivers`` and ``shifts`` (int [E, 3]): Edges,
            mlip.data.graph.Graph / GraphBatch, mlip.sim.neighbors.NeighborList.
        node_graph: int [N], each atom's structure, for a batched ``cell``.

    Padding edges (from the padding atom to itself, zero shift) give exactly zero vectors.
    """
    xp = np if isinstance(positions, np.ndarray) and isinstance(cell, np.ndarray) else jnp
    shifts = edges.shifts.astype(positions.dtype)
    if node_graph is None:
        offsets = shifts @ cell
    else:  # each edge's structure's cell
        offsets = xp.einsum("ei,eij->ej", shifts, cell[node_graph[edges.receivers]])
    return positions[edges.senders] - positions[edges.receivers] + offsets


def rebuild_needed(cutoff: float, skin: float, reference_cell, cell, displacement):
    """Whether a list of pairs within ``cutoff + skin`` (Å), built when the cell was
    ``reference_cell``, may miss a pair now closer than ``cutoff``: the Verlet skin rule.

    With F = H0^-1 H the cell deformation since the build (rows are lattice vectors) and u_i
    the displacement of atom i in fractional coordinates expressed in the current cell, any
    pair's vector is r = r0 F + (u_j - u_i), so |r| >= |r0| s_min(F) - 2 max|u|. The list is
    stale when (cutoff + skin) s_min(F) - 2 max|u| < cutoff: for a fixed cell the usual "an
    atom moved more than skin/2". Edges between cutoff and cutoff + skin carry zero energy
    (the radial envelope), so a list kept by this rule gives the results of a fresh build.

    reference_cell, cell: [..., 3, 3] (complete, non-singular); displacement: [...], max |u|
    per structure, Å. Returns bool [...]. numpy or JAX.
    """
    xp = np if isinstance(cell, np.ndarray) else jnp
    deformation = xp.linalg.solve(reference_cell, cell)
    s_min = xp.linalg.svd(deformation, compute_uv=False)[..., -1]
    return (cutoff + skin) * s_min - 2 * displacement < cutoff
