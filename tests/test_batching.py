"""Graph batches, padding and the packing loader."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlip.data.graph import build_graph, collate, local_positions
from mlip.data.loader import GraphLoader, epoch_order
from mlip.data.neighbors import edge_vectors
from mlip.data.padding import BucketLadder, Ladder
from mlip.errors import DataError
from mlip.testing import random_frame

CUTOFF = 3.0


def pair_energy(positions, cell, batch):
    """A smooth pair potential per graph, [G] eV; padding edges have r = 0 (double where)."""
    vectors = edge_vectors(positions, cell, batch, batch.node_graph)
    r2 = jnp.sum(vectors**2, axis=-1)
    safe = jnp.where(batch.edge_mask, r2, 1.0)
    r = jnp.sqrt(safe)
    pair = jnp.where(batch.edge_mask & (r < CUTOFF), (1 - r / CUTOFF) ** 2 * jnp.exp(-r), 0.0)
    edge_graph = batch.node_graph[batch.receivers]
    return 0.5 * jax.ops.segment_sum(pair, edge_graph, num_segments=len(batch.n_node))


@jax.jit
def _energy_and_forces(batch):
    def total(positions):
        per_graph = pair_energy(positions, batch.cell, batch)
        return jnp.sum(per_graph), per_graph

    (_, per_graph), grad = jax.value_and_grad(total, has_aux=True)(batch.positions)
    return per_graph, -grad


def energy_and_forces(batch):
    per_graph, forces = _energy_and_forces(batch)
    return np.asarray(per_graph), np.asarray(forces)


def reference_energy(frame):
    """The same pair energy for one structure, in numpy with no batching at all."""
    graph = build_graph(frame, CUTOFF)
    r = np.linalg.norm(edge_vectors(frame.positions, frame.cell, graph), axis=1)
    return 0.5 * np.sum((1 - r / CUTOFF) ** 2 * np.exp(-r))


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    kinds = [dict(pbc=True), dict(pbc=False), dict(pbc=[True, True, False]), dict(pbc=True, size=2.0)]
    return [random_frame(rng, int(rng.integers(1, 12)), **kinds[k % 4]) for k in range(8)]


def test_padding_never_changes_results(frames):
    graphs = [build_graph(f, CUTOFF) for f in frames]
    n_node = sum(g.n_node for g in graphs)
    n_edge = sum(g.n_edge for g in graphs)
    tight = collate(graphs, n_node + 1, n_edge, len(graphs) + 1)
    loose = collate(graphs, n_node + 37, n_edge + 101, len(graphs) + 5)
    e_tight, f_tight = energy_and_forces(tight)
    e_loose, f_loose = energy_and_forces(loose)
    expected = [reference_energy(f) for f in frames]
    np.testing.assert_allclose(e_tight[: len(frames)], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(e_loose[: len(frames)], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(e_loose[len(frames) :], 0.0)
    np.testing.assert_allclose(f_loose[:n_node], f_tight[:n_node], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(f_loose[n_node:], 0.0)
    # Each graph alone gives the same numbers as inside the batch.
    start = 0
    for g, graph in enumerate(graphs):
        alone = collate([graph], graph.n_node + 1, graph.n_edge, 2)
        e_alone, f_alone = energy_and_forces(alone)
        np.testing.assert_allclose(e_alone[0], e_loose[g], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(f_alone[: graph.n_node], f_loose[start : start + graph.n_node], atol=1e-12)
        start += graph.n_node


def test_batch_layout(frames):
    graphs = [build_graph(f, CUTOFF) for f in frames]
    n_node = sum(g.n_node for g in graphs)
    n_edge = sum(g.n_edge for g in graphs)
    batch = collate(graphs, n_node + 5, n_edge + 7, len(graphs) + 3)
    assert batch.shape == (n_node + 5, n_edge + 7, len(graphs) + 3)
    assert np.all(np.diff(batch.receivers) >= 0), "edges must stay sorted by receiver"
    assert batch.n_node.sum() == n_node + 5 and batch.edge_mask.sum() == n_edge
    assert np.all(batch.senders[~batch.edge_mask] == n_node + 4)
    assert np.all(batch.node_graph[~batch.node_mask] == len(graphs) + 2)
    assert batch.num_real_graphs == len(frames)
    np.testing.assert_allclose(np.linalg.det(batch.cell[~batch.graph_mask]), 1.0)
    vectors = np.asarray(edge_vectors(jnp.asarray(batch.positions), jnp.asarray(batch.cell), batch, batch.node_graph))
    np.testing.assert_array_equal(vectors[~batch.edge_mask], 0.0)
    start = 0
    for g, graph in zip(frames, graphs):
        edges = slice(start, start + graph.n_edge)
        np.testing.assert_allclose(vectors[edges], edge_vectors(g.positions, g.cell, graph), atol=1e-12)
        start += graph.n_edge
    labels = batch.labels
    assert labels.has_energy.sum() == len(frames) and not labels.has_energy[-1]
    np.testing.assert_allclose(labels.energy[: len(frames)], [f.energy for f in frames])
    np.testing.assert_allclose(labels.forces[:n_node], np.concatenate([f.forces for f in frames]))


def test_collate_rejects_too_small_target(frames):
    graphs = [build_graph(f, CUTOFF) for f in frames[:2]]
    n_node = sum(g.n_node for g in graphs)
    with pytest.raises(ValueError, match="cannot hold"):
        collate(graphs, n_node, 10_000, 3)  # no room for the padding node


def test_gradients_flow_through_cell():
    frame = random_frame(np.random.default_rng(3), 6, size=3.0)
    graph = build_graph(frame, CUTOFF)
    batch = collate([graph], graph.n_node + 1, graph.n_edge + 4, 2)

    def energy(cell):
        return jnp.sum(pair_energy(jnp.asarray(batch.positions), cell, batch))

    cell = jnp.asarray(batch.cell)
    grad = np.asarray(jax.grad(energy)(cell))
    step = 1e-6
    bump = np.zeros_like(batch.cell)
    bump[0, 1, 2] = step
    finite = (energy(cell + bump) - energy(cell - bump)) / (2 * step)
    np.testing.assert_allclose(grad[0, 1, 2], finite, rtol=1e-6, atol=1e-10)
    assert np.all(np.isfinite(grad))


def test_ladder_rungs_are_geometric_and_capped():
    ladder = Ladder(minimum=16, growth=1.5, multiple=8)
    rungs = ladder.rungs(10_000)
    assert rungs[0] == 16 and all(r % 8 == 0 for r in rungs)
    assert all(1.3 < b / a < 1.75 for a, b in zip(rungs[2:], rungs[3:]))
    assert [ladder.fit(n) for n in (1, 16, 17, 100)] == [16, 16, 24, 128]
    capped = Ladder(minimum=16, maximum=501)
    assert capped.fit(500) == 501 and capped.rungs(501)[-1] == 501
    with pytest.raises(ValueError, match="exceeds"):
        capped.fit(502)


def varied_frames(n, seed=0):
    """Structures from 1 to 200 atoms at densities varying by 3x, of every pbc kind."""
    rng = np.random.default_rng(seed)
    pbcs = [True, False, [True, True, False], [True, False, False]]
    out = []
    for k in range(n):
        n_atoms = int(rng.integers(1, 201))
        density = rng.uniform(0.03, 0.09)
        out.append(random_frame(rng, n_atoms, size=(n_atoms / density) ** (1 / 3), pbc=pbcs[k % 4], labels=False))
    return out


def test_thousand_varied_structures_map_to_a_handful_of_shapes():
    frames = varied_frames(1000)
    loader = GraphLoader(frames, CUTOFF, max_nodes=2048, max_edges=40_000, max_graphs=64, seed=1)
    shapes = {}
    seen = []
    for batch in loader.epoch(0):
        shapes[batch.shape] = shapes.get(batch.shape, 0) + 1
        seen.extend(batch.numbers[batch.node_mask].tolist())
        assert batch.node_mask.sum() <= 2048 and batch.edge_mask.sum() <= 40_000
        assert batch.graph_mask.sum() <= 64
    assert len(shapes) <= 6, shapes
    top = max(shapes.values())
    assert top >= 0.6 * sum(shapes.values()), f"most batches should share the top shape: {shapes}"
    assert len(seen) == sum(f.n_atoms for f in frames)
    # One structure at a time (as a calculator sees them), the ladder alone bounds the shapes.
    ladder = BucketLadder()
    single = {ladder.shape_for(f.n_atoms, build_graph(f, CUTOFF).n_edge, 1) for f in frames}
    # A mixed dataset one structure at a time is not the loader's path, but the ladder still
    # bounds it: 8 node rungs span 1-200 atoms, times a few edge rungs for 3x density and pbc.
    assert len(single) <= 60, len(single)


def test_loader_epochs_are_deterministic_permutations():
    frames = varied_frames(60, seed=5)
    for k, f in enumerate(frames):
        f.index = k
    loader = GraphLoader(frames, CUTOFF, max_nodes=512, max_edges=20_000, max_graphs=8, seed=3, dtype=np.float64)

    def order(epoch):
        return [int(i) for b in loader.epoch(epoch) for i in _frame_ids(b, frames)]

    first, again, second = order(0), order(0), order(1)
    assert sorted(first) == list(range(60))
    assert first == again and first != second


def _frame_ids(batch, frames):
    # Identify frames by their first atom's position in the batch (unique for random structures).
    starts = np.concatenate([[0], np.cumsum(batch.n_node[: batch.num_real_graphs])[:-1]])
    first = {tuple(np.round(local_positions(build_graph(f, CUTOFF))[0][0], 9)): f.index for f in frames}
    return [first[tuple(np.round(batch.positions[s].astype(np.float64), 9))] for s in starts]


def test_shard_local_shuffle_stays_in_windows():
    ranges = [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 55)]
    order = epoch_order(55, seed=0, epoch=2, shard_ranges=ranges, shuffle_shards=2)
    assert sorted(order.tolist()) == list(range(55))
    shard_of = np.searchsorted([r[1] for r in ranges], order, side="right")
    sizes = [stop - start for start, stop in ranges]
    window, taken = set(), 0
    for shard in shard_of:  # the order is a run of windows, each covering <= 2 whole shards
        window.add(int(shard))
        taken += 1
        assert len(window) <= 2
        if taken == sum(sizes[s] for s in window) and len(window) == 2:
            window, taken = set(), 0
    np.testing.assert_array_equal(epoch_order(55, seed=0, epoch=2, shard_ranges=ranges, shuffle_shards=2), order)


def test_loader_rejects_structure_larger_than_budget():
    frames = varied_frames(4, seed=2)
    frames[2].source, frames[2].index = "big.xyz", 7
    frames[2] = random_frame(np.random.default_rng(0), 300)
    frames[2].source, frames[2].index = "big.xyz", 7
    loader = GraphLoader(frames, CUTOFF, max_nodes=256, max_edges=100_000, shuffle=False)
    with pytest.raises(DataError, match=r"big.xyz, frame 7: structure with 300 atoms"):
        list(loader.epoch(0))


def test_loader_streams_a_sharded_dataset_from_disk(tmp_path):
    from mlip.data.shards import ShardedDataset, write_shards

    frames = varied_frames(40, seed=9)
    write_shards(frames, tmp_path / "data", frames_per_shard=7, progress=False)
    dataset = ShardedDataset(tmp_path / "data")
    loader = GraphLoader(dataset, CUTOFF, max_nodes=600, max_edges=30_000, max_graphs=8, seed=0, dtype=np.float64)
    graphs, atoms = 0, 0
    for batch in loader.epoch(3):
        assert len(dataset.loaded_shards) <= 4  # constant memory: one shuffle window at most
        atoms += int(batch.node_mask.sum())
        graphs += batch.num_real_graphs
    assert atoms == sum(f.n_atoms for f in frames)
    assert graphs == 40
