"""The edge chain of an interaction block as one fused Pallas kernel, next to its reference.

For every edge e = (i <- j), with D_e the block-diagonal Wigner-D of its edge frame:

    message_e = D_eᵀ SO2(D_e x_e, radial_e; W)        x_e [(L+1)**2, C_in] -> [(L+1)**2, C_out]

where SO2 is `mlip.nn.so2_conv.so2_linear` (per-|m| maps, |m| <= mmax, scaled by radial weights).

- `so2_message_reference`: the model's own functions (edge_frame rotations around so2_linear),
  per degree, on the Wigner blocks: the kernel's reference (and its second derivatives).
- `so2_message_folded`: the same function as one dot each way with the folded Wigner matrix
  (`mlip.nn.edge_frame.folded_wigner`), without the constant-index gathers of the blocked
  layout: what the model runs when it does not run the kernel (faster on the CPU; equal to the
  reference to rounding, tests/test_so2_conv.py).
- `so2_message_pallas`: one pass over tiles of edges. Each tile reads its sender features, its
  Wigner blocks and radial weights once and writes its message once; the edge-frame features and
  the per-|m| products stay on chip, where the reference writes each of them to memory as an
  [E, components, C] array and reads it back, forward and backward.

Inside the kernel every value is a [tile, C] slice of one component (or a [tile] column of one
Wigner entry): the Triton lowering needs loads and stores whose sizes are powers of two, so edges
are padded to a multiple of the tile and channels to a power of two >= 16 (the smallest tl.dot),
with zeros that contribute nothing. The rotations are per-degree multiply-adds on the vector
units (2l+1 per kept component and channel, no zeros of the block-diagonal); the SO(2) blocks are
[tile, C] x [C, C_out] matmuls per (m, l_in, l_out), in the input dtype at full precision.

Gradients (`jax.custom_vjp`): the backward of the kernel is a second Pallas kernel that returns
the per-edge cotangents (features, Wigner blocks, radial weights) in one pass; the weight
cotangent, a reduction over all edges, is left to XLA (and is dead code, removed by XLA, when
only forces are needed). The backward kernel is itself a custom_vjp whose backward is the
autodiff of the reference, so second derivatives (force training) are exact; forward-mode
autodiff (jax.jvp, jax.hessian) is not available through the kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mlip.nn.edge_frame import edge_rotation, rotate_from_edge_frame, rotate_to_edge_frame, wigner_d
from mlip.nn.so2_conv import SO2Convolution, so2_linear, so2_linear_blocked

#: Edges per kernel program. Not tuned: no GPU has been available to measure it.
TILE = 32
_HIGHEST = jax.lax.Precision.HIGHEST


def so2_message_reference(x, wigner, radial, weights: dict, lmax: int, mmax: int):
    """Messages [E, (lmax+1)**2, C_out] in the global frame.

    Args:
        x: [E, (lmax+1)**2, C_in], the senders' features in the global frame.
        wigner: lmax + 1 Wigner-D blocks [E, 2l+1, 2l+1] of the edge frames (edge_frame.wigner_d).
        radial: [E, SO2Convolution.radial_size(lmax, mmax, C_in)] radial weights (zero on
            padding edges, which then carry zero messages).
        weights: SO2Convolution's parameters {"w0", "w1", ...}.
    """
    # Named like the model's parts, so that profiles (benchmarks/profile_potential.py) split them.
    with jax.named_scope("rotate_to_edge_frame"):
        x_edge = rotate_to_edge_frame(x, wigner)
    with jax.named_scope("SO2Convolution"):
        message = so2_linear(x_edge, radial, weights, lmax, mmax)
    with jax.named_scope("rotate_from_edge_frame"):
        return rotate_from_edge_frame(message, wigner)


def so2_message_folded(x, folded, radial, weights: dict, lmax: int, mmax: int):
    """The same function as `so2_message_reference`, with the folded Wigner matrix
    ``folded`` [E, K, (lmax+1)**2] (`mlip.nn.edge_frame.folded_wigner` of the blocks) in place
    of the blocks: rotate into the edge frame and into the m-blocked order in one dot, the SO(2)
    blocks, and back in one dot. Other arguments and the result as in `so2_message_reference`.
    """
    with jax.named_scope("rotate_to_edge_frame"):
        x_blocked = jnp.einsum("ekj,ejc->ekc", folded, x)
    with jax.named_scope("SO2Convolution"):
        message = so2_linear_blocked(x_blocked, radial, weights, lmax, mmax)
    with jax.named_scope("rotate_from_edge_frame"):
        return jnp.einsum("eki,ekc->eic", folded, message)


def so2_message_pallas(x, wigner, radial, weights: dict, lmax: int, mmax: int, *, interpret: bool = False, tile: int = TILE):
    """The same function as `so2_message_reference`, by the fused kernel (``interpret``: run
    the kernel body with the Pallas interpreter, on any backend, e.g. the CPU in tests)."""
    wigner = tuple(wigner)
    if len(wigner) != lmax + 1:
        raise ValueError(f"{len(wigner)} Wigner blocks for lmax={lmax}")
    return _differentiable_kernel(lmax, mmax, interpret, tile)(x, wigner, radial, weights)


# --- layout -----------------------------------------------------------------------------------


def _kept(lmax: int, mmax: int):
    """Edge-frame components the SO(2) map keeps: (l, m, radial row), m signed, |m| <= mmax.
    The radial row of (l, ±m) is that of SO2Convolution's radial layout [m = 0..mmax][l >= m]."""
    kept, row = [], 0
    for m in range(mmax + 1):
        for l in range(m, lmax + 1):
            kept += [(l, s * m, row + l - m) for s in ((1, -1) if m else (1,))]
        row += lmax - m + 1
    return kept


def _lane(channels: int) -> int:
    """Channels padded to a power of two, at least 16."""
    return max(16, 1 << (channels - 1).bit_length())


def _pad(a, axis: int, size: int):
    if a.shape[axis] == size:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths)


def _padded(x, wigner, radial, weights, lmax, mmax, tile, cotangent=None):
    """Inputs padded for the kernel: edges to a multiple of ``tile``, channels to `_lane`;
    radial as [E, rows, C]; weights as [n, C, n, C_out] (m = 0) and [2, n, C, n, C_out]."""
    num_edges, _, c_in = x.shape
    c_out = weights["w0"].shape[-1] // (lmax + 1)
    edges, lane_in, lane_out = -(-num_edges // tile) * tile, _lane(c_in), _lane(c_out)
    x = _pad(_pad(x, 0, edges), 2, lane_in)
    wigner = tuple(_pad(d, 0, edges) for d in wigner)
    radial = _pad(_pad(radial.reshape(num_edges, -1, c_in), 0, edges), 2, lane_in)
    blocks = []
    for m in range(mmax + 1):
        n = lmax - m + 1
        w = weights[f"w{m}"].reshape((2,) * (m > 0) + (n, c_in, n, c_out))
        blocks.append(_pad(_pad(w, w.ndim - 3, lane_in), w.ndim - 1, lane_out))
    padded = (x, wigner, radial, tuple(blocks))
    if cotangent is not None:
        padded += (_pad(_pad(cotangent, 0, edges), 2, lane_out),)
    return padded


def _specs(arrays, tile):
    """BlockSpecs: arrays with an edge axis are tiled along it, the weights are whole."""

    def edge_tiled(a):
        return pl.BlockSpec((tile,) + a.shape[1:], lambda i, nd=a.ndim: (i,) + (0,) * (nd - 1))

    def whole(a):
        return pl.BlockSpec(a.shape, lambda i, nd=a.ndim: (0,) * nd)

    x, wigner, radial, blocks, *rest = arrays
    return [edge_tiled(x), *map(edge_tiled, wigner), edge_tiled(radial), *map(whole, blocks), *map(edge_tiled, rest)]


# --- kernel bodies: static loops over components, every value a [tile, C] slice ----------------
# Every component, Wigner entry and weight block is loaded once per tile and reused.


def _load_components(ref, dim):
    """The (l+1)**2 components of a [tile, dim, C] block, each [tile, C]."""
    return [ref[:, i, :] for i in range(dim)]


def _load_wigner(d_refs, kept):
    """{(l, m, j): [tile]}: the entries D^l[l+m, j] of the kept rows (the others are unused)."""
    return {(l, m, j): d_refs[l][:, l + m, j] for l, m, _ in kept for j in range(2 * l + 1)}


def _load_weights(w_refs, lmax, mmax):
    """{(m, part, l_in, l_out): [C, C_out]}, part 0 = W0 or W1, part 1 = W2."""
    weights = {}
    for m in range(mmax + 1):
        for a in range(m, lmax + 1):
            for b in range(m, lmax + 1):
                if m == 0:
                    weights[(0, 0, a, b)] = w_refs[0][a, :, b, :]
                else:
                    for part in (0, 1):
                        weights[(m, part, a, b)] = w_refs[m][part, a - m, :, b - m, :]
    return weights


def _rotate_in(components, wigner, kept):
    """{(l, m): [tile, C]}: the kept edge-frame components of D x, from x's components."""
    return {
        (l, m): sum(wigner[(l, m, j)][:, None] * components[l * l + j] for j in range(2 * l + 1))
        for l, m, _ in kept
    }


def _rotate_out(values, wigner, lmax, kept):
    """Dᵀ applied to edge-frame components {(l, m): [tile, C]}: a list of (l+1)**2 [tile, C]."""
    out = []
    for l in range(lmax + 1):
        orders = [m for k, m, _ in kept if k == l]
        out += [sum(wigner[(l, m, i)][:, None] * values[(l, m)] for m in orders) for i in range(2 * l + 1)]
    return out


def _dot(a, b, transpose_b=False):
    dims = (((1,), (1 if transpose_b else 0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, precision=_HIGHEST, preferred_element_type=a.dtype)


def _so2(z, weights, lmax, mmax, transpose=False):
    """The SO(2) map of edge-frame components {(l, m): [tile, C]}, or its transpose.

    m = 0: u_l' = sum_l z_l W0[l, l']. m > 0, as complex numbers z+ + i z- times W1 + i W2:
    u+_l' = sum_l z+_l W1 - z-_l W2 and u-_l' = sum_l z+_l W2 + z-_l W1 (SO2Convolution's
    convention). The transpose maps cotangents of u back to cotangents of z:
    z+_l = sum_l' u+_l' W1ᵀ + u-_l' W2ᵀ and z-_l = sum_l' u-_l' W1ᵀ - u+_l' W2ᵀ.
    """
    out = {}
    for m in range(mmax + 1):
        degrees = range(m, lmax + 1)
        for a in degrees:  # the degree of the result
            if transpose:
                w1 = [weights[(m, 0, a, b)] for b in degrees]
                w2 = [weights[(m, 1, a, b)] for b in degrees] if m else []
            else:
                w1 = [weights[(m, 0, b, a)] for b in degrees]
                w2 = [weights[(m, 1, b, a)] for b in degrees] if m else []
            if m == 0:
                out[(a, 0)] = sum(_dot(z[(b, 0)], w, transpose) for b, w in zip(degrees, w1))
                continue
            pairs = [(z[(b, m)], z[(b, -m)]) for b in degrees]
            if transpose:
                out[(a, m)] = sum(_dot(p, v1, True) + _dot(q, v2, True) for (p, q), v1, v2 in zip(pairs, w1, w2))
                out[(a, -m)] = sum(_dot(q, v1, True) - _dot(p, v2, True) for (p, q), v1, v2 in zip(pairs, w1, w2))
            else:
                out[(a, m)] = sum(_dot(p, v1) - _dot(q, v2) for (p, q), v1, v2 in zip(pairs, w1, w2))
                out[(a, -m)] = sum(_dot(p, v2) + _dot(q, v1) for (p, q), v1, v2 in zip(pairs, w1, w2))
    return out


def _forward_body(*refs, lmax, mmax):
    x_ref, d_refs, r_ref = refs[0], refs[1 : lmax + 2], refs[lmax + 2]
    w_refs, out_ref = refs[lmax + 3 : lmax + 4 + mmax], refs[-1]
    kept = _kept(lmax, mmax)
    wigner = _load_wigner(d_refs, kept)
    y = _rotate_in(_load_components(x_ref, x_ref.shape[1]), wigner, kept)
    z = {(l, m): y[(l, m)] * r_ref[:, row, :] for l, m, row in kept}
    u = _so2(z, _load_weights(w_refs, lmax, mmax), lmax, mmax)
    for index, value in enumerate(_rotate_out(u, wigner, lmax, kept)):
        out_ref[:, index, :] = value


def _backward_body(*refs, lmax, mmax):
    """Cotangents of x, of every Wigner block and of the radial weights, for one edge tile."""
    x_ref, d_refs, r_ref = refs[0], refs[1 : lmax + 2], refs[lmax + 2]
    w_refs, g_ref = refs[lmax + 3 : lmax + 4 + mmax], refs[lmax + 4 + mmax]
    gx_ref, gd_refs, gr_ref = refs[lmax + 5 + mmax], refs[lmax + 6 + mmax : 2 * lmax + 7 + mmax], refs[-1]
    kept = _kept(lmax, mmax)
    wigner, weights = _load_wigner(d_refs, kept), _load_weights(w_refs, lmax, mmax)
    x, g = _load_components(x_ref, x_ref.shape[1]), _load_components(g_ref, g_ref.shape[1])
    radial = {row: r_ref[:, row, :] for _, _, row in kept}
    y = _rotate_in(x, wigner, kept)
    u = _so2({(l, m): y[(l, m)] * radial[row] for l, m, row in kept}, weights, lmax, mmax)
    gz = _so2(_rotate_in(g, wigner, kept), weights, lmax, mmax, transpose=True)
    gy = {(l, m): gz[(l, m)] * radial[row] for l, m, row in kept}
    for row in radial:
        gr_ref[:, row, :] = sum(gz[(l, m)] * y[(l, m)] for l, m, r in kept if r == row)
    for index, value in enumerate(_rotate_out(gy, wigner, lmax, kept)):
        gx_ref[:, index, :] = value
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            for i in range(2 * l + 1):
                if (l, m) in u:  # D[l+m, i] rotates back u (against g) and rotates in x (against gy)
                    entry = jnp.sum(u[(l, m)] * g[l * l + i] + gy[(l, m)] * x[l * l + i], axis=1)
                else:  # rows with |m| > mmax are not used
                    entry = jnp.zeros(x_ref.shape[:1], x_ref.dtype)
                gd_refs[l][:, l + m, i] = entry


# --- pallas_call wrappers and their derivatives -------------------------------------------------


def _forward(x, wigner, radial, weights, lmax, mmax, interpret, tile):
    arrays = _padded(x, wigner, radial, weights, lmax, mmax, tile)
    edges, dim, c_out = arrays[0].shape[0], x.shape[1], arrays[3][0].shape[-1]
    out = pl.pallas_call(
        functools.partial(_forward_body, lmax=lmax, mmax=mmax),
        out_shape=jax.ShapeDtypeStruct((edges, dim, c_out), x.dtype),
        grid=(edges // tile,),
        in_specs=_specs(arrays, tile),
        out_specs=pl.BlockSpec((tile, dim, c_out), lambda i: (i, 0, 0)),
        interpret=interpret,
    )(arrays[0], *arrays[1], arrays[2], *arrays[3])
    return out[: x.shape[0], :, : weights["w0"].shape[-1] // (lmax + 1)]


def _edge_cotangents(x, wigner, radial, weights, cotangent, lmax, mmax, interpret, tile):
    """(dx, dwigner, dradial) of <cotangent, message>, by the backward kernel."""
    arrays = _padded(x, wigner, radial, weights, lmax, mmax, tile, cotangent)
    padded_x, padded_wigner, padded_radial = arrays[:3]
    shapes = [padded_x, *padded_wigner, padded_radial]
    out_shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in shapes]
    grads = pl.pallas_call(
        functools.partial(_backward_body, lmax=lmax, mmax=mmax),
        out_shape=out_shapes,
        grid=(padded_x.shape[0] // tile,),
        in_specs=_specs(arrays, tile),
        out_specs=[pl.BlockSpec((tile,) + a.shape[1:], lambda i, nd=a.ndim: (i,) + (0,) * (nd - 1)) for a in shapes],
        interpret=interpret,
    )(padded_x, *padded_wigner, padded_radial, *arrays[3], arrays[4])
    num_edges, c_in = x.shape[0], x.shape[2]
    gx = grads[0][:num_edges, :, :c_in]
    gwigner = tuple(g[:num_edges] for g in grads[1:-1])
    gradial = grads[-1][:num_edges, :, :c_in].reshape(radial.shape)
    return gx, gwigner, gradial


def _edge_cotangents_reference(x, wigner, radial, weights, cotangent, lmax, mmax):
    _, vjp = jax.vjp(lambda *a: so2_message_reference(*a, weights, lmax, mmax), x, wigner, radial)
    return vjp(cotangent)


def _weight_cotangent(x, wigner, radial, weights, cotangent, lmax, mmax):
    """d<cotangent, message>/dW = the VJP of so2_linear in the edge frame, where the cotangent
    of its output is D cotangent (rotating back is Dᵀ). A sum over all edges: left to XLA."""
    x_edge = rotate_to_edge_frame(x, wigner)
    _, vjp = jax.vjp(lambda w: so2_linear(x_edge, radial, w, lmax, mmax), weights)
    return vjp(rotate_to_edge_frame(cotangent, wigner))[0]


@functools.lru_cache(maxsize=None)
def _differentiable_kernel(lmax: int, mmax: int, interpret: bool, tile: int):
    """(x, wigner tuple, radial, weights) -> messages, with the kernels' custom VJPs."""

    @jax.custom_vjp
    def edge_cotangents(x, wigner, radial, weights, cotangent):
        return _edge_cotangents(x, wigner, radial, weights, cotangent, lmax, mmax, interpret, tile)

    def edge_cotangents_fwd(*args):
        return edge_cotangents(*args), args

    def edge_cotangents_bwd(args, cotangents):
        # Second derivatives: through the reference's autodiff (exact, in XLA).
        reference = functools.partial(_edge_cotangents_reference, lmax=lmax, mmax=mmax)
        return jax.vjp(reference, *args)[1](cotangents)

    edge_cotangents.defvjp(edge_cotangents_fwd, edge_cotangents_bwd)

    @jax.custom_vjp
    def message(x, wigner, radial, weights):
        return _forward(x, wigner, radial, weights, lmax, mmax, interpret, tile)

    def message_fwd(*args):
        return message(*args), args

    def message_bwd(args, cotangent):
        gx, gwigner, gradial = edge_cotangents(*args, cotangent)
        return gx, gwigner, gradial, _weight_cotangent(*args, cotangent, lmax, mmax)

    message.defvjp(message_fwd, message_bwd)
    return message


@functools.partial(jax.jit, static_argnums=range(1, 8))  # one compilation, not one per op
def random_inputs(key, lmax: int, mmax: int, channels_in: int, channels_out: int, num_edges: int, num_padding: int, dtype):
    """A random input of the edge chain: (x, wigner, radial, weights), the Wigner blocks of
    random edge directions and, on the last ``num_padding`` edges, of zero-length padding edges
    (identity frames) with zero radial weights, as the model makes them."""
    keys = jax.random.split(key, 4 + mmax + 1)
    vectors = jax.random.normal(keys[0], (num_edges, 3), dtype)
    real = jnp.arange(num_edges) < num_edges - num_padding
    vectors = jnp.where(real[:, None], vectors, 0.0)
    wigner = tuple(wigner_d(edge_rotation(vectors), lmax))
    x = jax.random.normal(keys[1], (num_edges, (lmax + 1) ** 2, channels_in), dtype)
    radial_size = SO2Convolution.radial_size(lmax, mmax, channels_in)
    radial = jnp.where(real[:, None], jax.random.normal(keys[2], (num_edges, radial_size), dtype), 0.0)
    shapes = SO2Convolution.parameter_shapes(lmax, mmax, channels_in, channels_out)
    weights = {name: jax.random.normal(k, shape, dtype) / shape[-2] ** 0.5 for k, (name, shape) in zip(keys[4:], shapes.items())}
    return x, wigner, radial, weights
