"""Device neighbour list for a padded batch of structures, with a Verlet skin.

The edge set is exactly the host list's (mlip.data.neighbors.neighbor_list): every ordered
pair (i, j, shift) of atoms of the same structure with

    |positions[j] - positions[i] + shift @ cell| < radius,    radius = cutoff + skin

excluding i == j at zero shift, for triclinic cells, cells smaller than the radius (several
images of one neighbour), per-direction pbc and open boundaries. Positions need not be wrapped:
shifts refer to the positions as given, like the host list's.

Search: each atom i is compared with every atom j of its own structure (per-structure atom
offsets, so the cost is O(N * max_atoms * images), linear in the batch size) and every
periodic image in a static box of shifts, after wrapping positions into the cell. With
fractional coordinates f in [0, 1), a pair closer than r needs |f_j - f_i + S|_a < r |b_a|
along each lattice direction a (b_a: the reciprocal vector, column a of cell^-1), so
|S_a| <= floor(r |b_a|) + 1 = `images_needed`.

Fixed shapes: the list has a static ``capacity``; a build that finds more edges, or a cell
that needs more images than the static box holds, sets ``overflow`` (the list is then
incomplete and must not be used: the caller regrows on the host, see mlip.sim.batcher).

Active edges: the model only needs the pairs closer than its cutoff, about (r_cut / radius)^3
of the list (75% at 5 Å + 0.5 Å skin). With ``active_capacity`` set, every update also
compacts the list to those pairs (`activate`, a gather of O(E) distances), so the model runs on
``active_capacity`` edge slots instead of ``capacity``; more pairs inside the cutoff than that
sets ``overflow`` too. One list serves two ranges this way: with D3 dispersion its cutoff is
the dispersion's (31.75 Å), which reads every pair, and ``active_cutoff`` the model's.

Verlet skin: the list is rebuilt when, for any structure, it may miss a pair now closer than the
cutoff: the rule of mlip.data.neighbors.rebuild_needed, which the ASE calculator's host list
(mlip.calculator.SkinNeighborList) applies too.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlip.data.neighbors import edge_vectors, rebuild_needed


@dataclasses.dataclass(frozen=True)
class NeighborSpec:
    """Static sizes of a device neighbour list (hashable: a jit static argument).

    cutoff: the longest interaction cutoff, Å (the model's, or D3 dispersion's). skin: Verlet
    skin, Å (the list holds pairs within cutoff + skin). capacity: edges held. max_atoms:
    atoms of the largest structure. images: (nx, ny, nz), the largest |shift| searched along
    each lattice direction. active_capacity: edge slots for the pairs within
    ``active_cutoff`` (None: no compaction, the model sees the whole list). active_cutoff:
    the model's cutoff, Å, when shorter than ``cutoff`` (None: ``cutoff``).
    """

    cutoff: float
    skin: float
    capacity: int
    max_atoms: int
    images: tuple[int, int, int]
    active_capacity: int | None = None
    active_cutoff: float | None = None

    @property
    def radius(self) -> float:
        return self.cutoff + self.skin

    @property
    def model_cutoff(self) -> float:
        """Cutoff of the active edges (the model's), Å."""
        return self.cutoff if self.active_cutoff is None else self.active_cutoff

    def shift_box(self) -> np.ndarray:
        """int32 [M, 3]: every shift searched, M = prod(2 n + 1)."""
        ranges = [range(-n, n + 1) for n in self.images]
        return np.array(list(itertools.product(*ranges)), np.int32).reshape(-1, 3)


class NeighborList(NamedTuple):
    """Edges of a padded batch, sorted by receiver, and what is needed to check staleness.

    senders, receivers: int32 [E]; padding edges point from the last (padding) node to itself.
    shifts: int32 [E, 3], cell translation of the sender's image (zero for padding edges).
    edge_mask: bool [E].
    reference_positions: [N, 3], Å, positions at the build.
    reference_cell: [G, 3, 3], Å, cells at the build.
    count: int32 [], edges found at the last build (may exceed E: then ``overflow``).
    graph_count: int32 [G], edges of each structure at the last build.
    images: int32 [3], largest shift needed per direction at the last build, over the batch.
    overflow: bool [], the last build (or activation) did not fit (edges, images or active
        edges): the list is incomplete.
    builds: int32 [], builds so far.
    active: int32 [A], indices of the edges within the cutoff (see `activate`), or None.
    active_mask: bool [A], or None. active_count: int32 [], pairs within the cutoff, or None.
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    edge_mask: jax.Array
    reference_positions: jax.Array
    reference_cell: jax.Array
    count: jax.Array
    graph_count: jax.Array
    images: jax.Array
    overflow: jax.Array
    builds: jax.Array
    active: jax.Array | None = None
    active_mask: jax.Array | None = None
    active_count: jax.Array | None = None


class Topology(NamedTuple):
    """Which atom belongs where in a padded batch (see mlip.sim.system.System).

    node_graph: int32 [N]. node_mask: bool [N]. graph_start: int32 [G], first atom of each
    structure. n_node: int32 [G], real atoms per structure (0 for padding). pbc: bool [G, 3].
    """

    node_graph: jax.Array
    node_mask: jax.Array
    graph_start: jax.Array
    n_node: jax.Array
    pbc: jax.Array


def images_needed(cell, pbc, radius: float):
    """int [..., 3]: largest |shift| needed per lattice direction (0 where not periodic).

    cell: [..., 3, 3] non-singular (complete it along open directions); pbc: bool [..., 3].
    Works on numpy and JAX arrays.
    """
    xp = jnp if isinstance(cell, jax.Array) else np
    reciprocal = xp.linalg.norm(xp.linalg.inv(cell), axis=-2)  # |column a of cell^-1|
    return xp.where(pbc, xp.floor(radius * reciprocal).astype(xp.int32) + 1, 0)


def build(spec: NeighborSpec, positions, cell, topology: Topology) -> NeighborList:
    """All pairs within ``spec.radius`` (see the module docstring); traceable, static shapes."""
    n_nodes = positions.shape[0]
    graph = topology.node_graph
    node_cell = cell[graph]
    fractional = jnp.einsum("ni,nij->nj", positions, jnp.linalg.inv(cell)[graph])
    wrap = jnp.where(topology.pbc[graph], jnp.floor(fractional), 0.0)
    wrapped = positions - jnp.einsum("ni,nij->nj", wrap, node_cell)

    box = jnp.asarray(spec.shift_box())  # [M, 3]
    candidate = jnp.arange(spec.max_atoms)
    senders = topology.graph_start[graph][:, None] + candidate[None, :]  # [N, K]
    pair_ok = topology.node_mask[:, None] & (candidate[None, :] < topology.n_node[graph][:, None])
    senders = jnp.where(pair_ok, senders, n_nodes - 1)
    image_ok = jnp.all((box == 0)[None] | topology.pbc[:, None, :], axis=-1)  # [G, M]
    image_vectors = jnp.einsum("mi,gij->gmj", box.astype(positions.dtype), cell)  # [G, M, 3]

    vectors = (
        wrapped[senders][:, :, None, :]
        - wrapped[:, None, None, :]
        + image_vectors[graph][:, None, :, :]
    )  # [N, K, M, 3]
    inside = jnp.sum(vectors * vectors, axis=-1) < spec.radius**2
    itself = (senders == jnp.arange(n_nodes)[:, None])[:, :, None] & jnp.all(box == 0, axis=-1)
    hit = inside & pair_ok[:, :, None] & image_ok[graph][:, None, :] & ~itself

    count = jnp.sum(hit, dtype=jnp.int32)
    graph_count = jax.ops.segment_sum(jnp.sum(hit, axis=(1, 2), dtype=jnp.int32), graph, cell.shape[0])
    # Row-major order of (receiver, candidate, image): receivers come out sorted.
    (flat,) = jnp.nonzero(hit.reshape(-1), size=spec.capacity, fill_value=0)
    receiver, rest = jnp.divmod(flat, spec.max_atoms * box.shape[0])
    column, image = jnp.divmod(rest, box.shape[0])
    edge_mask = jnp.arange(spec.capacity) < count
    sender = senders[receiver, column]
    # Shifts relative to the unwrapped positions: x_w = x - wrap @ cell.
    shift = box[image] + (wrap[receiver] - wrap[sender]).astype(jnp.int32)
    # A structure that blew up (non-finite cell) has no edges and must not ask for images.
    finite = jnp.all(jnp.isfinite(cell), axis=(1, 2))
    needed = jnp.where(finite[:, None], images_needed(jnp.where(finite[:, None, None], cell, jnp.eye(3)), topology.pbc, spec.radius), 0)
    needed = jnp.max(needed, axis=0)
    pad = n_nodes - 1
    fresh = NeighborList(
        senders=jnp.where(edge_mask, sender, pad).astype(jnp.int32),
        receivers=jnp.where(edge_mask, receiver, pad).astype(jnp.int32),
        shifts=jnp.where(edge_mask[:, None], shift, 0).astype(jnp.int32),
        edge_mask=edge_mask,
        reference_positions=positions,
        reference_cell=cell,
        count=count,
        graph_count=graph_count,
        images=needed,
        overflow=(count > spec.capacity) | jnp.any(needed > jnp.asarray(spec.images)),
        builds=jnp.zeros((), jnp.int32),
    )
    return activate(spec, fresh, positions, cell, topology)


def activate(spec: NeighborSpec, neighbors: NeighborList, positions, cell, topology: Topology) -> NeighborList:
    """``neighbors`` with its edges within the model's cutoff (at ``positions``, ``cell``) gathered
    into ``spec.active_capacity`` slots, in list order (receivers stay sorted); unchanged when
    the spec has no active capacity."""
    if spec.active_capacity is None:
        return neighbors
    vectors = edge_vectors(positions, cell, neighbors, topology.node_graph)
    within = neighbors.edge_mask & (jnp.sum(vectors * vectors, axis=-1) < spec.model_cutoff**2)
    count = jnp.sum(within, dtype=jnp.int32)
    (active,) = jnp.nonzero(within, size=spec.active_capacity, fill_value=0)
    return neighbors._replace(
        active=active.astype(jnp.int32), active_mask=jnp.arange(spec.active_capacity) < count,
        active_count=count, overflow=neighbors.overflow | (count > spec.active_capacity),
    )


def stale(spec: NeighborSpec, neighbors: NeighborList, positions, cell, topology: Topology):
    """bool [G]: structures whose list may miss a pair closer than the cutoff now."""
    graph = topology.node_graph
    fractional = jnp.einsum("ni,nij->nj", positions, jnp.linalg.inv(cell)[graph])
    reference = jnp.einsum(
        "ni,nij->nj", neighbors.reference_positions, jnp.linalg.inv(neighbors.reference_cell)[graph]
    )
    moved = jnp.einsum("ni,nij->nj", fractional - reference, cell[graph])
    moved = jnp.where(topology.node_mask, jnp.sqrt(jnp.sum(moved * moved, axis=-1)), 0.0)
    displacement = jax.ops.segment_max(moved, graph, num_segments=cell.shape[0])
    displacement = jnp.maximum(displacement, 0.0)  # segment_max of an empty segment is -inf
    return rebuild_needed(spec.cutoff, spec.skin, neighbors.reference_cell, cell, displacement)


def update(spec: NeighborSpec, neighbors: NeighborList, positions, cell, topology: Topology):
    """The list for ``positions`` and ``cell``: ``neighbors`` while valid, else a new build."""

    def rebuild(_):
        fresh = build(spec, positions, cell, topology)
        return fresh._replace(builds=neighbors.builds + 1)

    def keep(_):
        return activate(spec, neighbors, positions, cell, topology)

    needed = jnp.any(stale(spec, neighbors, positions, cell, topology))
    return jax.lax.cond(needed, rebuild, keep, None)


def grown(spec: NeighborSpec, neighbors: NeighborList, factor: float) -> NeighborSpec:
    """A spec large enough for what the last (overflowing) build or activation needed, edges
    grown by ``factor`` so that a slowly growing edge count does not recompile every time."""
    def enough(capacity, count):
        return capacity if count <= capacity else int(np.ceil(count * factor))

    capacity = enough(spec.capacity, int(neighbors.count))
    active = spec.active_capacity
    if active is not None and neighbors.active_count is not None:
        active = min(enough(active, int(neighbors.active_count)), capacity)
    images = tuple(max(a, int(b)) for a, b in zip(spec.images, np.asarray(neighbors.images)))
    return dataclasses.replace(spec, capacity=capacity, images=images, active_capacity=active)


def padded(spec: NeighborSpec, neighbors: NeighborList, positions, cell, topology: Topology) -> NeighborList:
    """``neighbors`` with padding edges appended up to ``spec.capacity`` (>= its size) and
    activated for ``spec``, its overflow cleared unless it still does not fit."""
    extra = spec.capacity - neighbors.senders.shape[0]
    pad = neighbors.reference_positions.shape[0] - 1
    grown = neighbors._replace(
        senders=jnp.concatenate([neighbors.senders, jnp.full(extra, pad, jnp.int32)]),
        receivers=jnp.concatenate([neighbors.receivers, jnp.full(extra, pad, jnp.int32)]),
        shifts=jnp.concatenate([neighbors.shifts, jnp.zeros((extra, 3), jnp.int32)]),
        edge_mask=jnp.concatenate([neighbors.edge_mask, jnp.zeros(extra, bool)]),
        overflow=jnp.zeros((), bool),
    )
    return activate(spec, grown, positions, cell, topology)
