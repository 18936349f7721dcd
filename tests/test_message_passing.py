"""Chunked message sums (mlip.nn.message_passing): the same energies, forces and stress as one
pass, to float64 round-off, for every edge chain, and a runtime option that files never store."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from mlip.data.frame import frame_from_atoms
from mlip.data.graph import build_graph, collate
from mlip.errors import MlipError
from mlip.nn.message_passing import DEFAULT_EDGE_CHUNK, edge_map, edge_sum, pad_edges, padded_edge_count
from mlip.potential import Potential
from mlip.runtime import Runtime

R_CUT = 4.0


def tiny(preset="small", kernel="reference", **overrides):
    sizes = dict(channels=8, mixing_hidden=16, readout_hidden=8, kernel=kernel)
    return Potential.create(preset, species=["Si", "C"], r_cut=R_CUT, seed=3, dtype="float64", **{**sizes, **overrides})


def silicon_carbide():
    """A rattled 16-atom Si/C cell (224 edges within 4 Å), padded to 24 nodes and 244 edges."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1))
    atoms.numbers[::3] = 6
    atoms.rattle(0.1, seed=4)
    graph = build_graph(frame_from_atoms(atoms), R_CUT)
    return collate([graph], 24, graph.n_edge + 20, 2, labels=False)


def assert_same_outputs(got, expected, rtol):
    for name in ("energy", "energies", "forces", "stress"):
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(expected, name))
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max(), err_msg=name)


# Chunks of 100 and 128 edges: 3 and 2 chunks, the last one padded; nodes in chunks of
# 6 and 8 (mlip.nn.message_passing.node_chunk), so 4 and 3 node chunks.
@pytest.mark.parametrize("preset, chunk", [("small", 100), ("medium", 128)])
def test_chunked_equals_unchunked(preset, chunk):
    batch = silicon_carbide()
    potential = tiny(preset)
    whole = dataclasses.replace(potential, edge_chunk=None)(batch)
    chunked = dataclasses.replace(potential, edge_chunk=chunk)(batch)
    assert batch.senders.shape[0] > chunk  # several chunks, the last one padded
    assert_same_outputs(chunked, whole, 1e-13)
    # The default chunk is far above this graph: one pass, the program of edge_chunk=None.
    assert batch.senders.shape[0] <= DEFAULT_EDGE_CHUNK
    assert_same_outputs(potential(batch), whole, 0.0)


def test_chunked_parameter_gradients_equal_unchunked():
    """Training differentiates through the chunks too (cotangents of weights and node
    features are summed over the scan)."""
    from mlip.potential import compute

    batch = silicon_carbide()
    potential = tiny(channels=4)

    def loss(params, chunk):
        out = compute(potential.config, params, batch, Runtime(edge_chunk=chunk))
        return jnp.sum(out.energy**2) + jnp.sum(out.forces**2) + jnp.sum(out.stress**2)

    # jitted: op by op, this second-order gradient dispatches for a minute on the CPU.
    gradient = jax.jit(jax.grad(loss), static_argnums=1)
    whole, chunked = gradient(potential.params, None), gradient(potential.params, 96)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(np.abs(b).max(), 1e-30))


def test_chunked_kernel_in_the_model():
    """The Pallas edge chain (interpreted on the CPU) inside the chunks, at lmax 2 with a
    2-layer model (one block runs the general chain)."""
    batch = silicon_carbide()
    reference = dataclasses.replace(tiny(kernel="reference", channels=4), edge_chunk=None)(batch)
    kernel = tiny(kernel="pallas", channels=4)
    assert_same_outputs(dataclasses.replace(kernel, edge_chunk=128)(batch), reference, 1e-12)


def test_edge_sum_and_edge_map_match_one_pass():
    rng = np.random.default_rng(0)
    receivers = jnp.asarray(np.sort(rng.integers(0, 7, 40)))
    values = jnp.asarray(rng.normal(size=(40, 3)))
    weight = jnp.asarray(rng.normal(size=(3, 2)))

    def total(weight, chunk):
        return edge_sum(lambda v: jnp.tanh(v @ weight), values, receivers, 7, chunk)

    def mapped(weight, chunk):
        return edge_map(lambda v: jnp.tanh(v @ weight), values, chunk)

    expected = jax.ops.segment_sum(jnp.tanh(values @ weight), receivers, num_segments=7)
    for chunk in (None, 8, 40, 64):
        np.testing.assert_allclose(total(weight, chunk), expected, atol=1e-14)
    np.testing.assert_allclose(
        jax.grad(lambda w: jnp.sum(total(w, 8) ** 2))(weight), jax.grad(lambda w: jnp.sum(total(w, None) ** 2))(weight), atol=1e-13
    )
    np.testing.assert_allclose(mapped(weight, 8), jnp.tanh(values @ weight), atol=1e-14)
    np.testing.assert_allclose(
        jax.grad(lambda w: jnp.sum(mapped(w, 8) ** 3))(weight), jax.grad(lambda w: jnp.sum(mapped(w, None) ** 3))(weight), atol=1e-13
    )
    with pytest.raises(ValueError, match="whole number of chunks"):
        total(weight, 16)


def test_pad_edges_appends_masked_self_edges_of_the_last_node():
    vectors, senders, receivers, mask = pad_edges(
        jnp.ones((5, 3)), jnp.zeros(5, jnp.int32), jnp.arange(5, dtype=jnp.int32), jnp.ones(5, bool), 9, 4
    )
    assert padded_edge_count(5, 4) == 8 and padded_edge_count(5, None) == 5 and padded_edge_count(5, 8) == 5
    np.testing.assert_array_equal(receivers, [0, 1, 2, 3, 4, 8, 8, 8])
    np.testing.assert_array_equal(senders[5:], [8, 8, 8])
    assert not np.any(mask[5:]) and not np.any(vectors[5:])


def test_edge_chunk_is_a_runtime_option_not_saved(tmp_path):
    potential = dataclasses.replace(tiny(), edge_chunk=256)
    potential.save(tmp_path / "model.mlip")
    loaded = Potential.load(tmp_path / "model.mlip")
    assert loaded.edge_chunk == DEFAULT_EDGE_CHUNK
    assert "edge_chunk" not in dataclasses.asdict(loaded.config)
    with pytest.raises(MlipError, match="edge_chunk"):
        dataclasses.replace(potential, edge_chunk=0)
