"""Graphs of structures: one structure on the host (`Graph`) and a padded batch (`GraphBatch`).

`build_graph` turns a `Frame` into a `Graph` (numpy; neighbour list included). `collate`
concatenates graphs and pads them to a fixed (nodes, edges, graphs) shape taken from a
`BucketLadder` (see mlip.data.padding), giving a `GraphBatch`: a pytree of arrays that a
jitted model consumes. mlip.data.neighbors.edge_vectors recomputes edge vectors from
positions and cell inside JAX, so forces and stress are gradients through both.

Padding layout (relied upon by every consumer):
- real nodes first, then padding nodes; the padding nodes belong to the last graph, which is
  always a padding graph (so there is at least one padding node and one padding graph);
- padding edges point from the last node to itself with zero shift (so their vector is zero:
  every norm of an edge vector must be NaN-safe, e.g. with a double ``where``);
- padding graphs have an identity cell (finite volume) and pbc False;
- masks say what is real; labels of padding entries are zero with ``has_*`` False.

Positions in a batch are each structure's positions moved near the origin (wrapped into the
cell along periodic directions, then centred), in float64 before any cast to the batch dtype:
edge vectors are unchanged, and a structure far from the origin (1e6 Å) loses no precision in
float32 (see `local_positions`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from mlip.data.frame import Frame, completed_cell
from mlip.data.neighbors import neighbor_list


class Graph(NamedTuple):
    """One structure with its radius graph, on the host (numpy)."""

    frame: Frame
    senders: np.ndarray  # int32 [n_edges]
    receivers: np.ndarray  # int32 [n_edges], sorted
    shifts: np.ndarray  # int32 [n_edges, 3]

    @property
    def n_node(self) -> int:
        return self.frame.n_atoms

    @property
    def n_edge(self) -> int:
        return len(self.senders)


def build_graph(frame: Frame, cutoff: float) -> Graph:
    """Radius graph of ``frame`` with cutoff ``cutoff`` (Å); see mlip.data.neighbors."""
    edges = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
    return Graph(frame, edges.senders, edges.receivers, edges.shifts)


def local_positions(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """Positions float64 [n, 3] (Å) and shifts int32 [n_edges, 3] of ``graph`` with every atom
    moved to its image inside the cell along periodic directions, then all translated so that
    their mean is the origin. Every edge vector r_ij = p_j - p_i + s @ cell is unchanged (the
    shift of an edge absorbs the images its atoms moved by), and so is the energy; only the
    float64 -> float32 rounding of large coordinates is gone."""
    frame = graph.frame
    positions, shifts = frame.positions, graph.shifts
    if not np.all(np.isfinite(positions)):
        raise frame.error("positions contain NaN or inf")
    if frame.pbc.any() and frame.n_atoms:
        cell = completed_cell(frame.cell, frame.pbc)
        images = np.floor(np.linalg.solve(cell.T, positions.T).T) * frame.pbc
        if np.abs(images).max() >= 2**30:  # the shifts are int32
            raise frame.error(f"positions are {np.abs(positions).max():.3g} Å from the origin, "
                              "over 2^30 cells away: wrap them into the cell")
        positions = positions - images @ cell
        shifts = (shifts + images[graph.senders] - images[graph.receivers]).astype(np.int32)
    if frame.n_atoms:
        positions = positions - positions.mean(axis=0)
    return positions, shifts


class Labels(NamedTuple):
    """DFT labels of a batch; entries of padding or unlabelled graphs are zero.

    energy: [G] total energy, eV.
    forces: [N, 3] eV/Å.
    stress: [G, 3, 3] eV/Å^3, ASE sign.
    has_energy, has_forces, has_stress: bool [G], whether graph g carries that label.
    weight: [G] loss weight of each structure's terms (1 unless the training data weights
        groups of structures, see `DataConfig.group_weights`; 0 for padding).
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    has_energy: np.ndarray
    has_forces: np.ndarray
    has_stress: np.ndarray
    weight: np.ndarray


class GraphBatch(NamedTuple):
    """A padded batch of G graphs with N nodes and E edges in total (a JAX pytree).

    positions: float [N, 3], Å.
    numbers: int32 [N], atomic numbers (0 for padding nodes).
    node_graph: int32 [N], graph of each node (padding nodes -> G - 1).
    node_mask: bool [N].
    senders: int32 [E], neighbour j of each edge.
    receivers: int32 [E], centre i of each edge, sorted ascending.
    shifts: int32 [E, 3], cell translation of the sender's image.
    edge_mask: bool [E].
    cell: float [G, 3, 3], Å, rows are lattice vectors.
    pbc: bool [G, 3].
    graph_mask: bool [G].
    n_node: int32 [G], nodes per graph (the last graph counts the padding nodes).
    labels: Labels, or None for unlabelled data.
    """

    positions: np.ndarray
    numbers: np.ndarray
    node_graph: np.ndarray
    node_mask: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    edge_mask: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    graph_mask: np.ndarray
    n_node: np.ndarray
    labels: Labels | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, E, G): the padded sizes, which decide the compiled shape."""
        return (len(self.numbers), len(self.senders), len(self.n_node))

    @property
    def num_real_graphs(self) -> int:
        return int(np.sum(self.graph_mask))


def collate(
    graphs: Sequence[Graph],
    n_node: int,
    n_edge: int,
    n_graph: int,
    *,
    dtype=np.float64,
    labels: bool = True,
    weights: Sequence[float] | None = None,
) -> GraphBatch:
    """Concatenate ``graphs`` and pad to exactly (n_node, n_edge, n_graph).

    Requires n_node > total nodes and n_graph > len(graphs) (room for the padding node and
    graph, see the module docstring) and n_edge >= total edges. ``dtype`` is the float dtype
    of positions, cell and labels. With ``labels=False`` the batch carries no Labels.
    ``weights``: one loss weight per graph (None: 1 each), stored in ``Labels.weight``.
    """
    nodes = np.array([g.n_node for g in graphs], dtype=np.int64)
    edges = np.array([g.n_edge for g in graphs], dtype=np.int64)
    real_nodes, real_edges, real_graphs = int(nodes.sum()), int(edges.sum()), len(graphs)
    if n_node <= real_nodes or n_edge < real_edges or n_graph <= real_graphs:
        raise ValueError(
            f"padding target (nodes={n_node}, edges={n_edge}, graphs={n_graph}) cannot hold "
            f"{real_nodes} nodes + 1, {real_edges} edges and {real_graphs} graphs + 1"
        )
    pad_node = n_node - 1
    offsets = np.concatenate([[0], np.cumsum(nodes)[:-1]]).astype(np.int64)

    def cat(parts, shape, fill, kind):
        out = np.full(shape, fill, dtype=kind)
        if parts:
            joined = np.concatenate(parts)
            out[: len(joined)] = joined
        return out

    frames = [g.frame for g in graphs]
    local = [local_positions(g) for g in graphs]
    senders = cat([g.senders + o for g, o in zip(graphs, offsets)], n_edge, pad_node, np.int32)
    receivers = cat([g.receivers + o for g, o in zip(graphs, offsets)], n_edge, pad_node, np.int32)
    graph_of_node = np.repeat(np.arange(real_graphs), nodes) if real_graphs else np.zeros(0)
    cells = np.tile(np.eye(3), (n_graph, 1, 1)).astype(dtype)
    pbc = np.zeros((n_graph, 3), bool)
    for g, frame in enumerate(frames):
        cells[g], pbc[g] = frame.cell, frame.pbc
    count = lambda sizes, total: np.concatenate(  # noqa: E731
        [sizes, np.zeros(n_graph - real_graphs - 1), [total - sizes.sum()]]
    ).astype(np.int32)
    return GraphBatch(
        positions=cat([positions for positions, _ in local], (n_node, 3), 0.0, dtype),
        numbers=cat([f.numbers for f in frames], n_node, 0, np.int32),
        node_graph=cat([graph_of_node], n_node, n_graph - 1, np.int32),
        node_mask=np.arange(n_node) < real_nodes,
        senders=senders,
        receivers=receivers,
        shifts=cat([shifts for _, shifts in local], (n_edge, 3), 0, np.int32),
        edge_mask=np.arange(n_edge) < real_edges,
        cell=cells,
        pbc=pbc,
        graph_mask=np.arange(n_graph) < real_graphs,
        n_node=count(nodes, n_node),
        labels=_collate_labels(frames, n_node, n_graph, dtype, weights) if labels else None,
    )


def _collate_labels(frames: Sequence[Frame], n_node: int, n_graph: int, dtype, weights) -> Labels:
    energy = np.zeros(n_graph, dtype)
    stress = np.zeros((n_graph, 3, 3), dtype)
    forces = np.zeros((n_node, 3), dtype)
    has = {name: np.zeros(n_graph, bool) for name in ("energy", "forces", "stress")}
    start = 0
    for g, frame in enumerate(frames):
        stop = start + frame.n_atoms
        if frame.energy is not None:
            energy[g], has["energy"][g] = frame.energy, True
        if frame.forces is not None:
            forces[start:stop], has["forces"][g] = frame.forces, True
        if frame.stress is not None:
            stress[g], has["stress"][g] = frame.stress, True
        start = stop
    weight = np.zeros(n_graph, dtype)
    weight[: len(frames)] = 1.0 if weights is None else np.asarray(weights, dtype)
    return Labels(energy, forces, stress, has["energy"], has["forces"], has["stress"], weight)
