"""Training steps' data: K micro-batches per step, padded to one shape and stacked.

A step consumes K = devices x accumulate micro-batches, each packed greedily to the per-device
budgets (mlip.data.loader.pack_graphs) in the epoch's seeded order. The K micro-batches are
padded to the largest of their ladder shapes and stacked on a leading axis, which the train
step splits across devices. The last step of an epoch is filled up with empty micro-batches
(no labelled items: they add nothing to the loss), so every frame is used once per epoch.

Packing needs every frame's graph size (atoms, edges) before the first step. A converted
directory stores the edge counts (``mlip convert --edge-cutoffs``, see mlip.data.shards), so
training starts without building a neighbour list; otherwise every graph is built once first.
Either way the sizes, and so the steps, are the same.

A background thread builds the next steps (neighbour lists, collation, transfer to the
devices) while the current one trains; with ``workers`` > 0, that many processes build the
neighbour lists and batches, in order, a few steps ahead, so the steps are the same too.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import queue
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

from mlip.data.graph import Graph, GraphBatch, build_graph, collate
from mlip.data.loader import FrameDataset, build_graph_within, epoch_order, pack_graphs
from mlip.data.padding import BucketLadder
from mlip.errors import MlipError
from mlip.train.data import graph_sizes

#: Frames per task when worker processes size the graphs of a dataset without stored counts.
_SIZE_CHUNK = 2000


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
        workers: processes that build neighbour lists and batches (0: the caller's thread).
        local: positions (0..K-1) of the step's micro-batches that this process builds; the
            others are empty padding of the same shape (None: all). On several hosts each
            process feeds only its own devices, so it builds only their micro-batches: the
            loader's work is split over the hosts instead of repeated on each.
        weights: float [n_frames], each frame's loss weight (`Labels.weight`); None: 1 each.
    """

    def __init__(self, dataset: FrameDataset, cutoff: float, *, micro_batches: int, max_nodes: int,
                 max_edges: int, max_graphs: int, shuffle: bool, seed: int, dtype=np.float32,
                 workers: int = 0, local: Sequence[int] | None = None, weights: np.ndarray | None = None):
        if workers < 0:
            raise MlipError(f"loader workers must be >= 0, got {workers}")
        self.dataset, self.cutoff, self.k = dataset, float(cutoff), micro_batches
        self.max_nodes, self.max_edges, self.max_graphs = max_nodes, max_edges, max_graphs
        self.ladder = BucketLadder.for_budget(max_nodes, max_edges, max_graphs)
        self.shuffle, self.seed, self.dtype, self.workers = shuffle, seed, dtype, workers
        self.local = frozenset(range(micro_batches) if local is None else local)
        if weights is not None and len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} frame weights for {len(dataset)} frames")
        self.weights = weights
        self._groups: dict[int, list[list[int]]] = {}
        # Graph sizes (packing needs them): stored at conversion, else built on first use.
        self._n_node: np.ndarray | None = None
        self._n_edge: np.ndarray | None = None

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return -(-len(self._index_groups(epoch)) // self.k)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[GraphBatch]:
        """Stacked batches of ``epoch`` from its step ``start_step`` on (for resuming)."""
        groups = self._index_groups(epoch)
        steps = (groups[s * self.k : (s + 1) * self.k] for s in range(start_step, self.steps_per_epoch(epoch)))
        if self.workers == 0:
            yield from map(self._step, steps)
            return
        with self._pool() as pool:
            yield from _ordered(pool, self._step, steps, ahead=2 * self.workers)

    def _step(self, groups: list[list[int]]) -> GraphBatch:
        """The stacked batch of one step's micro-batches (frame indices), padded to one shape.
        The shape comes from the graph sizes (`_sizes`), so every process agrees on it while
        building only its `local` micro-batches."""
        n_node, n_edge = self._sizes()
        groups = groups + [[]] * (self.k - len(groups))
        shapes = [self.ladder.shape_for(int(n_node[g].sum()), int(n_edge[g].sum()), len(g)) for g in groups]
        shape = tuple(max(dims) for dims in zip(*shapes))
        groups = [g if k in self.local else [] for k, g in enumerate(groups)]
        return stack_batches([
            collate([self._graph(i) for i in g], *shape, dtype=self.dtype,
                    weights=None if self.weights is None else self.weights[g])
            for g in groups
        ])

    def _index_groups(self, epoch: int) -> list[list[int]]:
        """Frame indices of each micro-batch of ``epoch``, packed from the graph sizes (see
        `_sizes`). The groups of the last two epochs are cached."""
        if epoch not in self._groups:
            n_node, n_edge = self._sizes()
            order = epoch_order(len(self.dataset), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                shard_ranges=getattr(self.dataset, "shard_ranges", None))
            sized = map(_Sized, order.tolist(), n_node[order].tolist(), n_edge[order].tolist())
            groups = pack_graphs(sized, self.max_nodes, self.max_edges, self.max_graphs)
            self._groups = {k: v for k, v in self._groups.items() if k == epoch - 1}
            self._groups[epoch] = [[s.index for s in group] for group in groups]
        return self._groups[epoch]

    def _sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Atoms and edges of every frame's graph, int64 [n_frames] each: the counts stored at
        conversion, else from building every graph once (in the workers, if any). A frame over
        the budgets on its own raises DataError naming it, before any step."""
        if self._n_node is None:
            sizes = graph_sizes(self.dataset, self.cutoff)
            if sizes is None:
                sizes = self._built_sizes()
            over = np.flatnonzero((sizes[0] > self.max_nodes) | (sizes[1] > self.max_edges))
            if len(over):
                self._graph(int(over[0]))  # raises, naming the frame
            self._n_node, self._n_edge = sizes
        return self._n_node, self._n_edge

    def _built_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Sizes from building every graph, in frame order (shard by shard on disk)."""
        chunks = [range(a, min(a + _SIZE_CHUNK, len(self.dataset))) for a in range(0, len(self.dataset), _SIZE_CHUNK)]
        if self.workers == 0:
            sizes = list(map(self._chunk_sizes, chunks))
        else:
            with self._pool() as pool:
                sizes = list(pool.map(_call_in_worker, itertools.repeat("_chunk_sizes"), chunks))
        sizes = np.concatenate(sizes or [np.zeros((0, 2), np.int64)])
        return sizes[:, 0], sizes[:, 1]

    def _chunk_sizes(self, indices: range) -> np.ndarray:
        """int64 [len(indices), 2]: atoms and edges of each frame's graph (no budget check)."""
        graphs = (build_graph(self.dataset[i], self.cutoff) for i in indices)
        return np.array([(g.n_node, g.n_edge) for g in graphs], np.int64).reshape(-1, 2)

    def _pool(self) -> ProcessPoolExecutor:
        """Worker processes, each with a copy of this object (dataset included, shards not
        loaded). Forked from a fork server that has imported this module but started no JAX
        backend (forking this process is unsafe: JAX's threads), so a pool starts fast."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return ProcessPoolExecutor(self.workers, mp_context=context,
                                   initializer=_set_worker_batches, initargs=(self,))

    def __getstate__(self) -> dict:
        """Pickled for worker processes without the cached epochs' groups."""
        return {**self.__dict__, "_groups": {}}

    def _graph(self, index: int) -> Graph:
        return build_graph_within(self.dataset[index], self.cutoff, self.max_nodes, self.max_edges,
                                  "data.max_nodes / data.max_edges")


#: This process's copy of the StepBatches it works for, when it is a worker process.
_worker_batches: StepBatches | None = None


def _set_worker_batches(batches: StepBatches) -> None:
    global _worker_batches
    _worker_batches = batches


def _call_in_worker(method: str, argument):
    return getattr(_worker_batches, method)(argument)


def _ordered(pool: ProcessPoolExecutor, method, items: Iterator, ahead: int) -> Iterator:
    """``method(item)`` for each item, run in ``pool`` (on its copy of the object) at most
    ``ahead`` items ahead of the consumer, yielded in order: memory stays bounded."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(_call_in_worker, method.__name__, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
