"""SO(2) convolution (eSCN): the edge-frame linear map that replaces a full tensor product.

In the edge frame (edge along +y) the edge's spherical harmonics are non-zero only at m = 0, so
a tensor product with them decouples by |m|: m = 0 is one dense map over (l, channel); for
m > 0 a rotation by alpha about y turns each (+m, -m) pair by the same 2D rotation by m alpha
at every l (in e3nn's basis: x+ <- cos(m alpha) x+ - sin(m alpha) x-), so any map of the
complex-multiplication form [[W1, -W2], [W2, W1]] commutes with it. Orders |m| > mmax are
dropped. Cost per edge: sum_m (lmax - m + 1)^2 C_in C_out, O(L^3 C^2) instead of O(L^6 C^2).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def _orders(lmax: int, mmax: int) -> list[int]:
    """Number of degrees l = m..lmax carrying order m, for m = 0..mmax."""
    if not 0 <= mmax <= lmax:
        raise ValueError(f"need 0 <= mmax <= lmax, got mmax={mmax}, lmax={lmax}")
    return [lmax - m + 1 for m in range(mmax + 1)]


def _index_maps(lmax: int, mmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Constant index maps between e3nn's layout (index l*l + l + m) and the m-blocked layout
    [m=0: l=0..lmax | m=1: +1 over l, -1 over l | m=2: ...] of K = sum (2 - [m=0]) n_m components.

    Returns:
        gather: int [K], e3nn index of each blocked component.
        scatter: int [(lmax+1)**2], blocked position of each e3nn component, K (a zero row)
            for |m| > mmax.
    """
    gather = []
    for m in range(mmax + 1):
        degrees = np.arange(m, lmax + 1)
        for sign in (1, -1) if m else (1,):
            gather.append(degrees * degrees + degrees + sign * m)
    gather = np.concatenate(gather)
    scatter = np.full((lmax + 1) ** 2, len(gather))
    scatter[gather] = np.arange(len(gather))
    return gather, scatter


class SO2Convolution(nn.Module):
    """Distance-modulated SO(2) linear map of edge-frame features.

    Call: (x_edge float [E, (lmax+1)**2, C_in], radial float [E, radial_size(lmax, mmax, C_in)])
    -> float [E, (lmax+1)**2, channels_out], all in the edge frame (edge along +y); components
    with |m| > mmax are exactly zero. ``radial`` scales the inputs per (m, l, channel) before
    the linear maps. Weights are drawn so that unit-variance inputs and radial weights of unit
    mean square give outputs of unit variance. Parameters take the dtype of x_edge at init.
    """

    lmax: int
    mmax: int
    channels_out: int

    @staticmethod
    def radial_size(lmax: int, mmax: int, channels_in: int) -> int:
        """Number of per-edge radial weights: one per (m, l >= m, input channel), m = 0..mmax."""
        return sum(_orders(lmax, mmax)) * channels_in

    @staticmethod
    def parameter_shapes(lmax: int, mmax: int, channels_in: int, channels_out: int) -> dict[str, tuple]:
        """Shape of each weight: "w0" [(lmax+1) C_in, (lmax+1) C_out] for m = 0, and for
        m > 0 "w{m}" [2, n_m C_in, n_m C_out] holding (W1, W2), n_m = lmax - m + 1."""
        shapes = {}
        for m, n in enumerate(_orders(lmax, mmax)):
            shape = (n * channels_in, n * channels_out)
            shapes[f"w{m}"] = shape if m == 0 else (2, *shape)
        return shapes

    @staticmethod
    def num_parameters(lmax: int, mmax: int, channels_in: int, channels_out: int) -> int:
        """Total number of weights (there are no biases: a bias would break equivariance for
        l > 0 and is left to the node update for l = 0)."""
        shapes = SO2Convolution.parameter_shapes(lmax, mmax, channels_in, channels_out)
        return sum(int(np.prod(s)) for s in shapes.values())

    def __call__(self, x_edge, radial):
        return so2_linear(x_edge, radial, self.weights(x_edge.shape[-1], x_edge.dtype), self.lmax, self.mmax)

    @nn.compact
    def weights(self, channels_in: int, dtype) -> dict:
        """The weights, {"w0": ..., "w1": ...} in the shapes of `parameter_shapes`, created on
        first use. Separate from the call so that the fused edge chain (kernels/so2_message.py)
        can take them without the edge-frame features. Each output sums fan_in unit-variance
        terms (twice the rows for m > 0, whose blocks act as complex numbers), hence the scale.
        """
        weights = {}
        for name, shape in self.parameter_shapes(self.lmax, self.mmax, channels_in, self.channels_out).items():
            fan_in = shape[-2] * (1 if name == "w0" else 2)
            weights[name] = self.param(name, nn.initializers.normal(fan_in**-0.5), shape, dtype)
        return weights


def so2_linear(x_edge, radial, weights: dict, lmax: int, mmax: int):
    """The map of `SO2Convolution` with given weights (the layout of its parameter_shapes).

    x_edge [E, (lmax+1)**2, C_in] and radial [E, radial_size] -> [E, (lmax+1)**2, C_out], all
    in the edge frame; components with |m| > mmax of the result are exactly zero.
    """
    num_edges, dim, channels_in = x_edge.shape
    if dim != (lmax + 1) ** 2:
        raise ValueError(f"x_edge has {dim} components, lmax={lmax} needs {(lmax + 1) ** 2}")
    gather, scatter = _index_maps(lmax, mmax)
    blocked = so2_linear_blocked(x_edge[:, gather], radial, weights, lmax, mmax)
    zero = jnp.zeros((num_edges, 1, blocked.shape[-1]), blocked.dtype)  # target of |m| > mmax
    return jnp.concatenate([blocked, zero], axis=1)[:, scatter]


def so2_linear_blocked(x_blocked, radial, weights: dict, lmax: int, mmax: int):
    """`so2_linear` in the m-blocked layout of `_index_maps` (K components, |m| <= mmax only):
    x_blocked [E, K, C_in] and radial [E, radial_size] -> [E, K, C_out], in the edge frame.

    The radial row of (l, m) is shared by +m and -m, so each block of order m > 0, [E, 2n, C]
    (+m over l = m..lmax, then -m), is scaled by its rows [E, n, C] one sign half at a time:
    slices, not a gather.
    """
    num_edges, num_kept, channels_in = x_blocked.shape
    orders = _orders(lmax, mmax)
    kept = orders[0] + 2 * sum(orders[1:])
    if num_kept != kept:
        raise ValueError(f"x_blocked has {num_kept} components, lmax={lmax}, mmax={mmax} keep {kept}")
    expected = SO2Convolution.radial_size(lmax, mmax, channels_in)
    if radial.shape != (num_edges, expected):
        raise ValueError(f"radial has shape {radial.shape}, expected ({num_edges}, {expected})")
    channels_out = weights["w0"].shape[-1] // (lmax + 1)
    radial = radial.reshape(num_edges, -1, channels_in)
    blocks, start, row = [], 0, 0
    for m, n in enumerate(orders):
        signs = 1 if m == 0 else 2  # m > 0: both signs, +m then -m, each over l = m..lmax
        rows = radial[:, row : row + n]
        # One product per sign half, not one broadcast over a sign axis: the backward pass of the
        # broadcast reduces over that middle axis, which XLA CPU ran ~2x slower than the whole
        # block's matmuls (so2_linear_blocked's forward + backward 42-55 -> 22-28 ms, Cu 108).
        halves = [x_blocked[:, start + s * n : start + (s + 1) * n] * rows for s in range(signs)]
        x = halves[0] if m == 0 else jnp.concatenate(halves, axis=1)
        block = x.reshape(num_edges, signs * n * channels_in) @ _block_matrix(weights[f"w{m}"], m)
        blocks.append(block.reshape(num_edges, signs * n, channels_out))
        start += signs * n
        row += n
    return jnp.concatenate(blocks, axis=1)


def _block_matrix(weight, m: int):
    """The matrix acting on the flattened block of order m (row vectors on the left).

    For m > 0 the block is [x+, x-] and the matrix [[W1, W2], [-W2, W1]], so that
    y+ = x+ W1 - x- W2 and y- = x+ W2 + x- W1: multiplication by W1 + i W2 of x+ + i x-.
    """
    if m == 0:
        return weight
    w1, w2 = weight
    return jnp.block([[w1, w2], [-w2, w1]])


class ScalarSO2Convolution(nn.Module):
    """The SO(2) convolution of scalar-only features, as in the first interaction block.

    When the sender carries only l = 0 channels, its edge-frame features are those scalars
    (D^0 = 1), only the m = 0 map acts, and only its l_in = 0 rows matter: the message in the
    edge frame is y[l, m=0] = (x * radial) W_l, for l = 0..lmax. Rotating back keeps row m = 0
    of each D^l, i.e. the direction's spherical harmonic Y_l(r̂) up to normalisation. This is
    what `SO2Convolution` computes on such input, without the (lmax+1)^2-wide rotations and
    the m > 0 blocks that would multiply zeros (about a quarter of a small-preset call).

    Call: ``(scalars [E, C_in], radial [E, C_in], wigner blocks) -> [E, (lmax+1)**2, C_out]``,
    already rotated back to the global frame.
    """

    lmax: int
    channels_out: int

    def __call__(self, scalars, radial, wigner):
        return scalar_so2_message(scalars, radial, wigner, self.weights(scalars.shape[-1], scalars.dtype), self.lmax)

    @nn.compact
    def weights(self, channels_in: int, dtype):
        """The weight "w0" [C_in, (lmax+1) C_out], created on first use (taken apart from the call
        for the same reason as `SO2Convolution.weights`)."""
        shape = (channels_in, (self.lmax + 1) * self.channels_out)
        return self.param("w0", nn.initializers.normal(channels_in**-0.5), shape, dtype)


def scalar_so2_message(scalars, radial, wigner, w0, lmax: int):
    """`ScalarSO2Convolution`'s map with given weights w0 [C_in, (lmax+1) C_out]:
    (scalars [E, C_in], radial [E, C_in], Wigner blocks up to lmax) -> [E, (lmax+1)**2, C_out]."""
    num_edges = scalars.shape[0]
    y = ((scalars * radial) @ w0).reshape(num_edges, lmax + 1, -1)
    # Row m = 0 of D^l sits at index l of the block (m runs -l..l).
    return jnp.concatenate([wigner[l][:, l, :, None] * y[:, l, None, :] for l in range(lmax + 1)], axis=1)
