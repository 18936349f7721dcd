"""Training steps' data: K micro-batches per step, padded to one shape and stacked.

A step consumes K = devices x accumulate micro-batches, each packed greedily to the per-device
budgets (mlip.data.loader.pack_graphs) in the epoch's seeded order. The K micro-batches are
padded to the largest of their ladder shapes and stacked on a leading axis, which the train
step splits across devices. The last step of an epoch is filled up with empty micro-batches
(no labelled items: they add nothing to the loss), so every frame is used once per epoch.

A background thread builds the next steps (neighbour lists, collation, transfer to the
devices) while the current one trains.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np

from mlip.data.graph import Graph, GraphBatch, collate
from mlip.data.loader import FrameDataset, build_graph_within, epoch_order, pack_graphs
from mlip.data.padding import BucketLadder


def stack_batches(batches: list[GraphBatch]) -> GraphBatch:
    """One GraphBatch whose arrays have a leading axis over ``batches`` (all the same shape)."""
    import jax

    return jax.tree.map(lambda *arrays: np.stack(arrays), *batches)


class StepBatches:
    """Stacked micro-batches of one epoch, K per step (see the module docstring).

    Args:
        dataset: frames with random access.
        cutoff: neighbour-list radius, Å.
        micro_batches: K, micro-batches per step.
        max_nodes, max_edges, max_graphs: budgets of one micro-batch.
        shuffle, seed: seeded per-epoch order (mlip.data.loader.epoch_order).
        dtype: float dtype of positions, cell and labels.
    """

    def __init__(self, dataset: FrameDataset, cutoff: float, *, micro_batches: int, max_nodes: int,
                 max_edges: int, max_graphs: int, shuffle: bool, seed: int, dtype=np.float32):
        self.dataset, self.cutoff, self.k = dataset, float(cutoff), micro_batches
        self.max_nodes, self.max_edges, self.max_graphs = max_nodes, max_edges, max_graphs
        self.ladder = BucketLadder.for_budget(max_nodes, max_edges, max_graphs)
        self.shuffle, self.seed, self.dtype = shuffle, seed, dtype
        self._groups: dict[int, list[list[int]]] = {}
        # Graph sizes, filled on first use (packing needs them; -1 = not yet known).
        self._n_node = np.full(len(dataset), -1, np.int64)
        self._n_edge = np.full(len(dataset), -1, np.int64)

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return -(-len(self._index_groups(epoch)) // self.k)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[GraphBatch]:
        """Stacked batches of ``epoch`` from its step ``start_step`` on (for resuming)."""
        groups = self._index_groups(epoch)
        for s in range(start_step, self.steps_per_epoch(epoch)):
            chunk = [[self._graph(i) for i in group] for group in groups[s * self.k : (s + 1) * self.k]]
            chunk += [[]] * (self.k - len(chunk))
            shapes = [self.ladder.shape_for(sum(g.n_node for g in c), sum(g.n_edge for g in c), len(c))
                      for c in chunk]
            shape = tuple(max(dims) for dims in zip(*shapes))
            yield stack_batches([collate(c, *shape, dtype=self.dtype) for c in chunk])

    def _index_groups(self, epoch: int) -> list[list[int]]:
        """Frame indices of each micro-batch of ``epoch``. Packing needs every graph's size, so
        the first call builds every neighbour list once (sizes are kept; for MPtrj-sized data
        this first pass takes minutes). The groups of the last two epochs are cached."""
        if epoch not in self._groups:
            order = epoch_order(len(self.dataset), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                shard_ranges=getattr(self.dataset, "shard_ranges", None))
            sized = (_Sized(int(i), *self._size(int(i))) for i in order)
            groups = pack_graphs(sized, self.max_nodes, self.max_edges, self.max_graphs)
            self._groups = {k: v for k, v in self._groups.items() if k == epoch - 1}
            self._groups[epoch] = [[s.index for s in group] for group in groups]
        return self._groups[epoch]

    def _size(self, index: int) -> tuple[int, int]:
        if self._n_node[index] < 0:
            graph = self._graph(index)
            self._n_node[index], self._n_edge[index] = graph.n_node, graph.n_edge
        return int(self._n_node[index]), int(self._n_edge[index])

    def _graph(self, index: int) -> Graph:
        return build_graph_within(self.dataset[index], self.cutoff, self.max_nodes, self.max_edges,
                                  "data.max_nodes / data.max_edges")


class _Sized:
    """A frame index with its graph size, for pack_graphs."""

    __slots__ = ("index", "n_node", "n_edge")

    def __init__(self, index: int, n_node: int, n_edge: int):
        self.index, self.n_node, self.n_edge = index, n_node, n_edge


def prefetch(items: Iterator, transform: Callable, size: int = 2) -> Iterator:
    """Yield ``transform(item)`` for each item, computed ``size`` items ahead in a thread.

    Exceptions in the producer are re-raised in the consumer; closing the generator stops it.
    """
    out: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                out.put(transform(item))
            out.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            out.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)
