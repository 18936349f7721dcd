"""Packing data loader: batches filled up to node/edge/graph budgets, padded to a few shapes.

Unlike a loader with a fixed number of structures per batch, this one packs structures greedily
until the next one would exceed any budget, so batches of small and large crystals carry
similar work and similar memory. Each batch is padded with `BucketLadder.for_budget`, so full
batches share one shape and only the tail of an epoch (and rare odd batches) use lower rungs.

Order: with ``shuffle``, every epoch draws a fresh permutation from (seed, epoch), so a run
is reproducible and can resume at any epoch. For datasets stored in shards (anything with a
``shard_ranges`` attribute, e.g. `ShardedDataset`), the permutation is shard-local: shards
are shuffled, then frames are shuffled within windows of ``shuffle_shards`` consecutive
shards, so streaming from disk touches one window at a time and memory stays constant.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from mlip.data.frame import Frame
from mlip.data.graph import Graph, GraphBatch, build_graph, collate
from mlip.data.padding import BucketLadder
from mlip.errors import DataError

log = logging.getLogger("mlip.data")


class FrameDataset(Protocol):
    """Random access to frames: a list of Frames, or a `ShardedDataset` streamed from disk."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Frame: ...


def epoch_order(
    n_frames: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    shard_ranges: Sequence[tuple[int, int]] | None = None,
    shuffle_shards: int = 4,
) -> np.ndarray:
    """The frame order of one epoch: int [n_frames], a deterministic function of the arguments."""
    if not shuffle:
        return np.arange(n_frames)
    rng = np.random.default_rng([seed, epoch])
    if not shard_ranges:
        return rng.permutation(n_frames)
    shards = [shard_ranges[k] for k in rng.permutation(len(shard_ranges))]
    windows = [shards[k : k + shuffle_shards] for k in range(0, len(shards), shuffle_shards)]
    parts = []
    for window in windows:
        indices = np.concatenate([np.arange(start, stop) for start, stop in window])
        parts.append(rng.permutation(indices))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def build_graph_within(frame: Frame, cutoff: float, max_nodes: int, max_edges: int, options: str) -> Graph:
    """`build_graph`, or a DataError naming the frame when it alone exceeds the batch budget
    (``options``: the settings that raise it, for the message)."""
    graph = build_graph(frame, cutoff)
    if graph.n_node > max_nodes or graph.n_edge > max_edges:
        raise DataError(
            f"structure with {graph.n_node} atoms and {graph.n_edge} edges (cutoff {cutoff} Å) "
            f"exceeds the batch budget of {max_nodes} nodes and {max_edges} edges; raise {options}",
            graph.frame.source,
            graph.frame.index,
        )
    return graph


def pack_graphs(
    graphs: Iterable[Graph], max_nodes: int, max_edges: int, max_graphs: int
) -> Iterator[list[Graph]]:
    """Consecutive groups of ``graphs``, each filled greedily until the next graph would exceed
    a node, edge or graph budget (a group always holds at least one graph)."""
    group: list[Graph] = []
    nodes = edges = 0
    for graph in graphs:
        if group and (
            nodes + graph.n_node > max_nodes
            or edges + graph.n_edge > max_edges
            or len(group) == max_graphs
        ):
            yield group
            group, nodes, edges = [], 0, 0
        group.append(graph)
        nodes += graph.n_node
        edges += graph.n_edge
    if group:
        yield group


def padded_batches(
    graphs: Iterable[Graph], max_nodes: int, max_edges: int, max_graphs: int, *, labels: bool = True
) -> Iterator[tuple[list[Graph], GraphBatch]]:
    """Stream ``graphs`` as padded batches of at most (max_nodes, max_edges, max_graphs),
    packed greedily (`pack_graphs`), each with the graphs it holds. Memory is bounded by the
    budget, and few shapes compile: nodes and edges on the budget's ladder (full batches share
    its top rung), graphs always at the budget (graph slots cost next to nothing). A structure
    over the budget on its own is batched alone, with a shape of its own."""
    for group in pack_graphs(graphs, max_nodes, max_edges, max_graphs):
        nodes, edges = sum(g.n_node for g in group), sum(g.n_edge for g in group)
        over = nodes > max_nodes or edges > max_edges
        ladder = BucketLadder() if over else BucketLadder.for_budget(max_nodes, max_edges, max_graphs)
        n_node, n_edge, _ = ladder.shape_for(nodes, edges, len(group))
        yield group, collate(group, n_node, n_edge, max_graphs + 1, labels=labels)


class GraphLoader:
    """Iterates padded `GraphBatch`es over a dataset, packing to budgets.

    Args:
        dataset: frames with random access (list of Frame, ShardedDataset, ...).
        cutoff: neighbour-list radius, Å.
        max_nodes: node budget per batch (real atoms).
        max_edges: edge budget per batch (real directed edges).
        max_graphs: structure budget per batch.
        shuffle: reshuffle every epoch (see `epoch_order`).
        seed: base seed of the shuffle.
        shuffle_shards: shard window for shard-local shuffling of sharded datasets.
        dtype: float dtype of positions, cell and labels in the batches.

    A structure too large for the budgets on its own raises DataError naming it, since padding
    it would silently create a new, larger compiled shape.
    """

    def __init__(
        self,
        dataset: FrameDataset,
        cutoff: float,
        *,
        max_nodes: int,
        max_edges: int,
        max_graphs: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_shards: int = 4,
        dtype=np.float32,
    ):
        self.dataset = dataset
        self.cutoff = float(cutoff)
        self.max_nodes, self.max_edges, self.max_graphs = max_nodes, max_edges, max_graphs
        self.ladder = BucketLadder.for_budget(max_nodes, max_edges, max_graphs)
        self.shuffle, self.seed, self.shuffle_shards = shuffle, seed, shuffle_shards
        self.dtype = dtype

    def epoch(self, epoch: int = 0) -> Iterator[GraphBatch]:
        """Batches of epoch ``epoch``; the same epoch number always gives the same batches."""
        order = epoch_order(
            len(self.dataset),
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            shard_ranges=getattr(self.dataset, "shard_ranges", None),
            shuffle_shards=self.shuffle_shards,
        )
        graphs = (self._graph(int(index)) for index in order)
        for group in pack_graphs(graphs, self.max_nodes, self.max_edges, self.max_graphs):
            yield self._collate(group)

    def __iter__(self) -> Iterator[GraphBatch]:
        return self.epoch(0)

    def _graph(self, index: int) -> Graph:
        return build_graph_within(self.dataset[index], self.cutoff, self.max_nodes, self.max_edges, "max_nodes/max_edges")

    def _collate(self, graphs: list[Graph]) -> GraphBatch:
        nodes, edges = sum(g.n_node for g in graphs), sum(g.n_edge for g in graphs)
        shape = self.ladder.shape_for(nodes, edges, len(graphs))
        return collate(graphs, *shape, dtype=self.dtype)
