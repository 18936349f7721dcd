"""Graph sizes stored at conversion (n_edges.npy), packing from them, and loader workers."""

from __future__ import annotations

import json

import ase.io
import jax
import numpy as np
import pytest

from mlip.cli import main
from mlip.data import shards
from mlip.data.graph import build_graph
from mlip.data.shards import open_dataset, write_shards
from mlip.errors import DataError, MlipError
from mlip.testing import random_frame
from mlip.train import batches as batches_module
from mlip.train.batches import StepBatches
from mlip.train.data import Concat, graph_sizes, split
from mlip.train.statistics import compute_statistics

PBCS = [(True, True, True), (False, False, False), (True, True, False), (True, False, True)]


def frames(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [random_frame(rng, int(rng.integers(1, 9)), size=4.0, pbc=PBCS[i % 4]) for i in range(n)]


def step_batches(dataset, **options) -> StepBatches:
    defaults = dict(micro_batches=2, max_nodes=24, max_edges=600, max_graphs=4, shuffle=True, seed=3)
    return StepBatches(dataset, 3.5, **{**defaults, **options})


def assert_same_batches(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("compact", [False, True])
def test_stored_edge_counts_match_the_graphs_the_loader_builds(tmp_path, compact):
    data = frames(17)
    writer = shards.ShardWriter(tmp_path, 6, compact=compact, edge_cutoffs=(3.5, 5.0))
    for frame in data[:10]:
        writer.add(frame)
    writer.finish([])
    writer = shards.ShardWriter.reopen(tmp_path, 6, compact=compact)  # appending keeps counting
    for frame in data[10:]:
        writer.add(frame)
    writer.finish([])
    ds = open_dataset(tmp_path)
    assert ds.edge_cutoffs == [3.5, 5.0] and ds.n_edges(4.0) is None
    for cutoff in (3.5, 5.0):
        assert ds.n_edges(cutoff).tolist() == [build_graph(ds[i], cutoff).n_edge for i in range(17)]
    assert ds.n_edges(5.0).sum() > ds.n_edges(3.5).sum() > 0


def test_counts_are_optional_and_checked(tmp_path):
    write_shards(frames(5), tmp_path / "plain", progress=False)
    plain = open_dataset(tmp_path / "plain")
    assert plain.edge_cutoffs == [] and plain.n_edges(5.0) is None
    assert not (tmp_path / "plain" / shards.N_EDGES_FILE).exists()
    write_shards(frames(5), tmp_path / "ds", progress=False, edge_cutoffs=[5.0])
    np.save(tmp_path / "ds" / shards.N_EDGES_FILE, np.zeros((4, 1), np.int32))
    with pytest.raises(DataError, match=r"n_edges.npy.*edge counts have shape \(4, 1\)"):
        open_dataset(tmp_path / "ds")
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    (tmp_path / "ds" / "index.json").write_text(json.dumps({**index, "edge_cutoffs": [-1]}))
    with pytest.raises(DataError, match="edge_cutoffs"):
        open_dataset(tmp_path / "ds")
    with pytest.raises(MlipError, match="edge cutoffs must be positive and distinct"):
        write_shards(frames(2), tmp_path / "bad", progress=False, edge_cutoffs=[5.0, 5.0])


def test_packing_from_stored_counts_builds_no_graph_and_gives_the_same_steps(tmp_path, monkeypatch):
    data = frames(40)
    write_shards(data, tmp_path / "counted", frames_per_shard=8, progress=False, edge_cutoffs=[3.5])
    write_shards(data, tmp_path / "plain", frames_per_shard=8, progress=False)
    train, _ = split(open_dataset(tmp_path / "counted"), 0.2, seed=1)
    plain, _ = split(open_dataset(tmp_path / "plain"), 0.2, seed=1)  # the same, no stored counts
    built = []
    original = batches_module.build_graph_within
    monkeypatch.setattr(batches_module, "build_graph_within", lambda *a: built.append(1) or original(*a))
    stored = step_batches(train)
    steps = stored.steps_per_epoch(1)
    assert built == [] and steps > 2  # packed without a single neighbour list
    reference = step_batches(plain)
    assert reference._index_groups(1) == stored._index_groups(1)
    for a, b in zip(stored.epoch(1), reference.epoch(1), strict=True):
        assert_same_batches(a, b)
    sizes = graph_sizes(Concat([train, train]), 3.5)
    assert sizes[1].tolist() == 2 * [build_graph(train[i], 3.5).n_edge for i in range(len(train))]
    assert graph_sizes(train, 5.0) is None and graph_sizes(Concat([train, data]), 3.5) is None


def test_a_frame_over_the_budget_is_named_before_the_first_step(tmp_path):
    data = frames(6)
    data[4] = random_frame(np.random.default_rng(1), 30, size=4.0)
    write_shards(data, tmp_path, progress=False, edge_cutoffs=[3.5])
    with pytest.raises(DataError, match=r"shard-00000.npz.*frame 4.*30 atoms.*exceeds the batch budget"):
        step_batches(open_dataset(tmp_path)).steps_per_epoch()


def test_worker_processes_give_the_same_batches(tmp_path):
    data = frames(24)
    write_shards(data, tmp_path, frames_per_shard=8, progress=False)  # no counts: workers size them
    serial, parallel = step_batches(open_dataset(tmp_path)), step_batches(open_dataset(tmp_path), workers=1)
    assert parallel.steps_per_epoch(0) == serial.steps_per_epoch(0)
    for a, b in zip(parallel.epoch(0, start_step=1), serial.epoch(0, start_step=1), strict=True):
        assert_same_batches(a, b)
    with pytest.raises(MlipError, match="workers must be >= 0"):
        step_batches(data, workers=-1)


def test_statistics_from_shards_and_stored_counts_are_the_same_to_the_bit(tmp_path):
    data = frames(30)
    data[3].energy = data[17].energy = None  # no energy: in the element set, not in the E0 fit
    write_shards(data, tmp_path / "counted", frames_per_shard=7, progress=False, edge_cutoffs=[3.5])
    write_shards(data, tmp_path / "plain", frames_per_shard=7, progress=False)

    def statistics(dataset):
        return compute_statistics(dataset, 3.5, sample_frames=12, progress=False)

    in_memory = statistics(data)  # frame by frame, every neighbour list built
    assert statistics(open_dataset(tmp_path / "counted")) == in_memory == statistics(open_dataset(tmp_path / "plain"))
    subsets = [split(d, 0.3, seed=2)[0] for d in (data, open_dataset(tmp_path / "counted"))]
    assert statistics(subsets[1]) == statistics(subsets[0])
    assert in_memory.frames == 28 and in_memory.avg_num_neighbors > 0


def test_cli_convert_counts_edges_at_5_angstrom_by_default(tmp_path):
    rng = np.random.default_rng(2)
    data = [random_frame(rng, 4, size=5.0, min_distance=1.0) for _ in range(4)]
    ase.io.write(tmp_path / "in.extxyz", [frame.to_atoms() for frame in data])
    assert main(["convert", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "a"), "-q"]) == 0
    assert open_dataset(tmp_path / "a").edge_cutoffs == [5.0]
    assert main(["convert", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "b"), "-q", "--edge-cutoffs"]) == 0
    assert open_dataset(tmp_path / "b").edge_cutoffs == []


def test_a_process_builds_only_its_own_micro_batches(tmp_path, monkeypatch):
    """On several hosts each process builds the micro-batches of its own devices: those equal
    the full step's, at the same shape; the others are empty padding, built from no frame."""
    data = frames(30)
    write_shards(data, tmp_path, frames_per_shard=8, progress=False, edge_cutoffs=[3.5])
    everything = step_batches(open_dataset(tmp_path), micro_batches=4)
    mine = step_batches(open_dataset(tmp_path), micro_batches=4, local=[2, 3])
    built = []
    original = batches_module.build_graph_within
    monkeypatch.setattr(batches_module, "build_graph_within", lambda *a: built.append(1) or original(*a))
    steps = list(mine.epoch(0))
    groups = mine._index_groups(0)
    assert len(built) == sum(len(g) for s in range(len(steps)) for g in groups[4 * s + 2: 4 * s + 4])
    for a, b in zip(steps, everything.epoch(0), strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert x.shape == y.shape and np.array_equal(x[2:], y[2:])
        assert not np.any(a.graph_mask[:2])  # padding: no real structure
