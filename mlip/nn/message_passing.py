"""Sum of per-edge messages into their receivers, optionally over fixed-size chunks of edges,
so that the memory of a model call stops growing with the per-edge work beyond one chunk.

Unchunked, XLA keeps every per-edge intermediate of the message (edge-frame features, the
per-|m| blocks, radial weights: about 40 kB per edge for the small preset, 170 kB for medium,
forward and backward) alive at once, which at 100k atoms (about 6 M edges within 5 Å) is more
than any GPU holds. Chunked, a `lax.scan` runs the message of ``chunk`` edges at a time and adds
it into the [N, ...] sum; the body is rematerialised (`jax.checkpoint`) in the backward pass,
so only the scan's per-edge inputs (lengths, Wigner blocks, indices) and their cotangents are
stored for all edges, and the message's intermediates for one chunk. `edge_map` does the same
for per-edge functions (the Wigner blocks of the edge frames). The price is one extra
forward pass of the message in the backward pass. The sum is the same function; only the
order of floating-point additions changes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

#: Default edges per chunk (mlip.potential.Potential.edge_chunk): graphs with more padded edges
#: than this run chunked. 2^16 edges is ~1.5k atoms of a dense solid at 5 Å, so the
#: structures of training and of most relaxations run unchunked, exactly as before.
DEFAULT_EDGE_CHUNK = 1 << 16


def node_chunk(edge_chunk: int | None) -> int | None:
    """Nodes per chunk of node-wise layers (mlip.models.facet.node_chunked) for an edge chunk.
    The S2 mixing's per-node intermediates (grid points x hidden width, about 190 kB per node
    for the small preset) are several times a message's per edge (about 14 kB per block), so
    nodes go in chunks 16 times smaller than edges."""
    return None if edge_chunk is None else max(1, edge_chunk // 16)


def padded_edge_count(num_edges: int, chunk: int | None) -> int:
    """Edges after padding to a whole number of chunks (unchanged when not chunked)."""
    if chunk is None or num_edges <= chunk:
        return num_edges
    return -(-num_edges // chunk) * chunk


def pad_edges(vectors, senders, receivers, edge_mask, num_nodes: int, chunk: int | None):
    """Append padding edges up to `padded_edge_count`: zero vectors, masked, from the last
    node to itself (receivers stay sorted, as `edge_sum` needs)."""
    extra = padded_edge_count(vectors.shape[0], chunk) - vectors.shape[0]
    if extra == 0:
        return vectors, senders, receivers, edge_mask
    last = jnp.full((extra,), num_nodes - 1, senders.dtype)
    return (
        jnp.concatenate([vectors, jnp.zeros((extra, 3), vectors.dtype)]),
        jnp.concatenate([senders, last]),
        jnp.concatenate([receivers, last.astype(receivers.dtype)]),
        jnp.concatenate([edge_mask, jnp.zeros((extra,), bool)]),
    )


def edge_map(fn: Callable, edges, chunk: int | None):
    """fn(edges) for per-edge arrays [E, ...] (a pytree) -> per-edge outputs [E, ...], computed
    chunk by chunk when chunk is not None and E > chunk (E a multiple of chunk).

    For per-edge functions whose autodiff intermediates are large against their outputs (the
    Wigner blocks: about 650 floats per edge in the backward pass at lmax 3, for 84 outputs):
    each chunk is rematerialised in the backward pass, so only one chunk's intermediates exist
    at a time.
    """
    num_edges = jax.tree.leaves(edges)[0].shape[0]
    if chunk is None or num_edges <= chunk:
        return fn(edges)
    if num_edges % chunk:
        raise ValueError(f"{num_edges} edges are not a whole number of chunks of {chunk} (pad_edges)")
    chunks = jax.tree.map(lambda a: a.reshape((num_edges // chunk, chunk) + a.shape[1:]), edges)
    out = jax.lax.map(jax.checkpoint(fn), chunks)
    return jax.tree.map(lambda a: a.reshape((num_edges,) + a.shape[2:]), out)


def edge_sum(message: Callable, edges, receivers, num_nodes: int, chunk: int | None):
    """sum over edges e of message(edges[e]) into row receivers[e]: [num_nodes, ...].

    Args:
        message: per-edge arrays (a pytree, leading axis E') -> messages [E', ...]; called on
            all edges at once or on one chunk at a time (E' = chunk). It may close over node
            features and weights (their cotangents are summed over chunks).
        edges: pytree of per-edge arrays [E, ...].
        receivers: int [E], sorted.
        chunk: edges per chunk; None, or E <= chunk, sums in one pass. Otherwise E must be a
            multiple of chunk (`pad_edges`).
    """
    num_edges = receivers.shape[0]
    if chunk is None or num_edges <= chunk:
        return jax.ops.segment_sum(message(edges), receivers, num_segments=num_nodes, indices_are_sorted=True)
    if num_edges % chunk:
        raise ValueError(f"{num_edges} edges are not a whole number of chunks of {chunk} (pad_edges)")
    chunks = jax.tree.map(lambda a: a.reshape((num_edges // chunk, chunk) + a.shape[1:]), (edges, receivers))

    @jax.checkpoint  # the backward pass recomputes a chunk's message instead of storing it
    def add_chunk(total, part):
        part_edges, part_receivers = part
        values = message(part_edges)
        return total + jax.ops.segment_sum(values, part_receivers, num_segments=num_nodes, indices_are_sorted=True)

    first = jax.tree.map(lambda a: a[0], chunks[0])
    shape = jax.eval_shape(message, first)
    total = jnp.zeros((num_nodes,) + shape.shape[1:], shape.dtype)
    total, _ = jax.lax.scan(lambda t, part: (add_chunk(t, part), None), total, chunks)
    return total
