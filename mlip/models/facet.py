"""The Facet-style model: species embedding -> interaction blocks -> per-atom energies.

One interaction block (DESIGN.md, "The model"):
    x_ij  = D_ij h_j                         rotate the sender's features into the edge frame
    m_ij  = SO2Conv(x_ij, radial(|r_ij|))    per-|m| linear maps, distance-modulated
    a_i   = sum_j D_ij^T m_ij / avg_neighbors  rotate back, sum over neighbours
    h_i  <- h_i + a_i;  h_i <- h_i + Mix(Norm(h_i))
The Wigner-D matrices D_ij are computed once per edge and shared by all blocks, and so is their
folded form (mlip.nn.edge_frame.folded_wigner), which the blocks after the first use when they
do not run the Pallas kernel. The energy of an atom is an MLP of its final scalar (l = 0)
channels, scaled and shifted, plus E0 of its species, plus half its ZBL pair repulsion
(optional, on by default).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Modules, not names: kernels imports mlip.nn, so whichever package is imported first, the
# other may still be initialising here.
from kernels import selection, so2_message
from mlip.models.config import FacetConfig
from mlip.nn.edge_frame import edge_rotation, folded_wigner, wigner_d
from mlip.nn.gate import Gate
from mlip.nn.norm import EquivariantRMSNorm
from mlip.nn.message_passing import edge_map, edge_sum, node_chunk, pad_edges
from mlip.nn.radial import RadialEmbedding, radial_embedding
from mlip.nn.s2_mixing import S2Mixing
from mlip.nn.so2_conv import ScalarSO2Convolution, SO2Convolution, scalar_so2_message
from mlip.nn.zbl import covalent_range, zbl_pair_energy


class Interaction(nn.Module):
    """One message-passing block on features h [N, (lmax+1)**2, C].

    ``edge_chain``: how the block computes rotate in -> SO(2) -> rotate back
    (kernels/so2_message.py), chosen once per model call (`FacetModel.edge_chain`).
    ``scalar_input``: h carries only l = 0 channels (the first block), so the convolution
    takes the cheap exact path `ScalarSO2Convolution` instead.
    ``edge_chunk``: edges per chunk of the message sum (mlip.nn.message_passing.edge_sum);
    None sums all edges in one pass.

    Call: ``(h, wigner, folded, lengths, senders, receivers, edge_mask)``, with ``wigner`` the
    per-edge Wigner blocks (used by the scalar path and the kernel) and ``folded`` their
    `folded_wigner` [E, K, (lmax+1)**2] (used by the general path without the kernel; None
    where no block needs it).
    """

    config: FacetConfig
    edge_chain: selection.Implementation | None
    scalar_input: bool = False
    edge_chunk: int | None = None

    @nn.compact
    def __call__(self, h, wigner, folded, lengths, senders, receivers, edge_mask):
        c = self.config
        radial_size = c.channels if self.scalar_input else SO2Convolution.radial_size(c.lmax, c.mmax, c.channels)
        radial_kernel = RadialEmbedding(c.num_radial, radial_size, c.r_cut, basis=c.radial_basis).kernel(h.dtype)
        if self.scalar_input:
            w0 = ScalarSO2Convolution(c.lmax, c.channels).weights(c.channels, h.dtype)
        else:
            weights = SO2Convolution(c.lmax, c.mmax, c.channels).weights(c.channels, h.dtype)

        # Weights and h are taken as they are, so that edge_sum may run this over chunks of
        # edges inside a jax transformation (where flax modules cannot be called).
        kernel = runs_kernel(self.edge_chain)

        def message(edges):
            frame, lengths, senders, edge_mask = edges
            radial = radial_embedding(lengths, radial_kernel, c.r_cut, c.num_radial, c.radial_basis)
            radial = jnp.where(edge_mask[:, None], radial, 0.0)  # padding edges carry no message
            if self.scalar_input:
                return scalar_so2_message(h[senders, 0], radial, frame, w0, c.lmax)
            if kernel:
                return so2_message.so2_message_pallas(
                    h[senders], frame, radial, weights, c.lmax, c.mmax, interpret=self.edge_chain.interpret
                )
            return so2_message.so2_message_folded(h[senders], frame, radial, weights, c.lmax, c.mmax)

        # Only the per-edge frame this block uses goes through the (chunked) sum.
        frame = list(wigner) if self.scalar_input or kernel else folded
        edges = (frame, lengths, senders, edge_mask)
        aggregated = edge_sum(message, edges, receivers, h.shape[0], self.edge_chunk)
        h = h + aggregated / c.avg_num_neighbors
        normed = EquivariantRMSNorm(c.lmax)(h)
        if c.mixing == "s2":
            mixing = S2Mixing(c.lmax, c.mixing_hidden, c.grid, c.grid_res_beta, c.grid_res_alpha, c.grid_order)
        else:
            mixing = Gate()
        return h + node_chunked(mixing, normed, node_chunk(self.edge_chunk))


def runs_kernel(edge_chain: selection.Implementation | None) -> bool:
    """Whether the general blocks run the Pallas kernel (on the Wigner blocks) rather than the
    folded pure-JAX chain."""
    return edge_chain is not None and edge_chain.name == "pallas"


def node_chunked(module: nn.Module, x, chunk: int | None):
    """module(x) for a node-wise module and x [N, ...], over chunks of ``chunk`` nodes when N
    is larger (None: one pass), each rematerialised in the backward pass: the S2 mixing's grid
    values are the largest per-node intermediates of the model (about 190 kB per node and
    layer for the small preset), so a 100k-atom call holds them for one chunk at a time.

    A flax lifted scan over the module (parameters broadcast, not split), so that its
    parameters keep their names: files load either way.
    """
    num_nodes = x.shape[0]
    if chunk is None or num_nodes <= chunk:
        return module(x)
    padded = -(-num_nodes // chunk) * chunk
    chunks = jnp.pad(x, [(0, padded - num_nodes)] + [(0, 0)] * (x.ndim - 1)).reshape((-1, chunk) + x.shape[1:])

    def body(mdl, carry, part):
        return carry, mdl(part)

    scan = nn.scan(nn.remat(body), variable_broadcast="params", split_rngs={"params": False})
    _, out = scan(module, None, chunks)
    return out.reshape((padded,) + x.shape[1:])[:num_nodes]


class FacetModel(nn.Module):
    """Per-atom energies from edge vectors and species.

    Call: ``model.apply(params, vectors, species, senders, receivers, edge_mask)`` with
        vectors: float [E, 3], r_ij in Å (zero for padding edges);
        species: int [N], index into ``config.species`` (any valid index for padding nodes);
        senders, receivers: int [E], receivers sorted;
        edge_mask: bool [E].
    Returns float [N], per-atom energies in eV (padding nodes must be masked by the caller).

    Runtime choices, not part of the architecture (the function is the same either way):
    ``edge_chunk``: with more than this many edges, messages are summed over chunks of that
    many edges (mlip.nn.message_passing), which bounds the memory per edge; None: one pass.
    ``edge_chain``: how blocks after the first compute their edge chain, already resolved
    for the platform (`kernels.selection.select`; mlip.potential.compute chooses it); None:
    the pure-JAX reference.
    """

    config: FacetConfig
    edge_chunk: int | None = None
    edge_chain: selection.Implementation | None = None  # None: the reference

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask):
        c = self.config
        vectors, senders, receivers, edge_mask = pad_edges(
            vectors, senders, receivers, edge_mask, species.shape[0], self.edge_chunk
        )
        dim = (c.lmax + 1) ** 2
        lengths2 = jnp.sum(vectors**2, axis=-1)
        # Double where: padding edges have r = 0, where sqrt has an infinite derivative.
        lengths = jnp.where(edge_mask, jnp.sqrt(jnp.where(edge_mask, lengths2, 1.0)), 0.0)
        wigner = edge_map(lambda v: wigner_d(edge_rotation(v), c.lmax), vectors, self.edge_chunk)
        folded = None
        if c.num_layers > 1 and not runs_kernel(self.edge_chain):
            # Once per call, shared by the blocks after the first (their edge chain).
            folded = edge_map(lambda w: folded_wigner(w, c.mmax), wigner, self.edge_chunk)
        embedding = nn.Embed(len(c.species), c.channels, name="species_embedding")(species)
        h = jnp.zeros((species.shape[0], dim, c.channels), vectors.dtype)
        h = h.at[:, 0, :].set(embedding.astype(vectors.dtype))
        for k in range(c.num_layers):
            # The first block takes the scalar path: only the later ones run the edge chain.
            h = Interaction(c, self.edge_chain, scalar_input=k == 0, edge_chunk=self.edge_chunk, name=f"interaction_{k}")(
                h, wigner, folded, lengths, senders, receivers, edge_mask
            )
        scalars = h[:, 0, :]
        hidden = nn.silu(nn.Dense(c.readout_hidden, name="readout_hidden")(scalars))
        out = nn.Dense(1, name="readout_out")(hidden)[:, 0]
        e0 = jnp.asarray(c.atomic_energies or (0.0,) * len(c.species), vectors.dtype)
        energy = c.scale * out + c.shift + e0[species]
        if c.zbl:
            numbers = jnp.asarray(c.species)[species]
            z_r, z_s = numbers[receivers], numbers[senders]
            r_max = covalent_range(z_r, z_s, c.r_cut, lengths.dtype) if c.zbl_range == "covalent" else c.r_cut
            pair = zbl_pair_energy(lengths, z_r, z_s, r_max, edge_mask)
            energy = energy + jax.ops.segment_sum(pair, receivers, num_segments=species.shape[0], indices_are_sorted=True)
        return energy
