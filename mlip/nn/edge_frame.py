"""Edge frames: a rotation per edge taking the edge direction onto the polar axis +y, and the
real Wigner-D matrices of that rotation in e3nn-jax's basis, built without Euler angles.

Convention: for a rotation matrix R and e3nn-jax's spherical harmonics Y^l,
``D^l(R) @ Y^l(v) == Y^l(R @ v)``, and ``D^l(R)`` equals ``e3nn_jax.Irrep(l, p).D_from_matrix(R)``.
In e3nn-jax (0.21) the l = 1 harmonics are ordered (x, y, z), so D^1 is R itself.

Everything is polynomial in the unit vector except one division by 1 + |r_y| >= 1, so values
and gradients are finite everywhere, at the poles and for zero-length (padding) edges included.
"""

from __future__ import annotations

import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np


def edge_rotation(vectors: jax.Array) -> jax.Array:
    """Rotations [E, 3, 3] with ``R @ (v / |v|) = (0, 1, 0)`` for edge vectors [E, 3] (Å).

    Rodrigues' rotation taking u to ŷ, ``R_u = c I + K + k kᵀ / (1 + c)`` with k = u × ŷ,
    c = u_y and K the cross-product matrix of k, is smooth except at u = -ŷ. So it is
    applied to u = s r̂ with s = sign(r_y) (s = +1 on the equator), giving R_u r̂ = s ŷ, and the
    southern hemisphere is then turned by 180° about z: R = diag(s, s, 1) R_u. The roll about
    +y jumps where s switches sign at the equator; that is harmless because everything
    downstream (the SO(2) convolution) commutes with rotations about y.

    Zero vectors (padding edges) give the identity with zero gradient (double ``where``).
    """
    norm2 = jnp.sum(vectors**2, axis=-1, keepdims=True)
    is_zero = norm2 == 0
    safe = jnp.where(is_zero, jnp.array([0.0, 1.0, 0.0], vectors.dtype), vectors)
    unit = safe / jnp.sqrt(jnp.where(is_zero, 1.0, norm2))
    # Piecewise constant, so it contributes no gradient; the >= keeps the equator north.
    sign = jnp.where(unit[:, 1:2] >= 0, 1.0, -1.0).astype(vectors.dtype)
    flip = jnp.concatenate([sign, sign, jnp.ones_like(sign)], axis=-1)  # diag(s, s, 1)
    return flip[:, :, None] * _rotation_to_north(sign * unit)


def _rotation_to_north(u: jax.Array) -> jax.Array:
    """Rodrigues rotations [E, 3, 3] taking unit vectors u [E, 3] with u_y >= 0 onto +y."""
    ux, c, uz = u[:, 0], u[:, 1], u[:, 2]
    zero = jnp.zeros_like(c)
    k = jnp.stack([-uz, zero, ux], axis=-1)  # u × ŷ
    cross = jnp.stack(
        [
            jnp.stack([zero, -ux, zero], -1),
            jnp.stack([ux, zero, uz], -1),
            jnp.stack([zero, -uz, zero], -1),
        ],
        axis=-2,
    )  # [k]_×
    outer = k[:, :, None] * k[:, None, :] / (1 + c)[:, None, None]
    return c[:, None, None] * jnp.eye(3, dtype=u.dtype) + cross + outer


@functools.lru_cache(maxsize=None)
def _coupling(l: int) -> np.ndarray:
    """[2l-1, 3, 2l+1]: Clebsch-Gordan coefficients (l-1) ⊗ 1 -> l, scaled to orthonormal
    columns, so that ``D^l = Qᵀ (D^{l-1} ⊗ D^1) Q`` (e3nn's are normalised to 1/(2l+1))."""
    return e3nn.clebsch_gordan(l - 1, 1, l) * np.sqrt(2 * l + 1)


def wigner_d(rotation: jax.Array, lmax: int) -> list[jax.Array]:
    """Real Wigner-D blocks [E, 2l+1, 2l+1] for l = 0..lmax of rotations [E, 3, 3].

    D^0 = 1, D^1 = R (e3nn-jax orders l = 1 as x, y, z), and D^l for l >= 2 by projecting
    D^{l-1} ⊗ D^1 onto degree l with Clebsch-Gordan coefficients: O(l^4) per edge, no angles.
    """
    blocks = [jnp.ones(rotation.shape[:1] + (1, 1), rotation.dtype), rotation]
    for l in range(2, lmax + 1):
        q = jnp.asarray(_coupling(l), rotation.dtype)
        blocks.append(jnp.einsum("abc,eaA,ebB,ABd->ecd", q, blocks[-1], rotation, q))
    return blocks[: lmax + 1]


def block_diag_wigner(blocks: list[jax.Array]) -> jax.Array:
    """The full block-diagonal Wigner-D matrix [E, (lmax+1)**2, (lmax+1)**2] from its blocks."""
    dim = len(blocks) ** 2
    full = jnp.zeros(blocks[0].shape[:1] + (dim, dim), blocks[0].dtype)
    for l, block in enumerate(blocks):
        full = full.at[:, l * l : (l + 1) ** 2, l * l : (l + 1) ** 2].set(block)
    return full


def folded_wigner(blocks: list[jax.Array], mmax: int) -> jax.Array:
    """The rows of `block_diag_wigner` that the SO(2) convolution keeps, in its m-blocked order:
    [E, K, (lmax+1)**2] with K = sum over m <= mmax of (2 - [m = 0]) (lmax - m + 1).

    Row k is the row of e3nn index gather[k] (`mlip.nn.so2_conv._index_maps`), so for features
    x [E, (lmax+1)**2, C] in the global frame, ``einsum("ekj,ejc->ekc", F, x)`` is the edge-frame
    features already in the blocked order of `mlip.nn.so2_conv.so2_linear_blocked` (the rows
    with |m| > mmax, which the convolution drops, are not computed), and
    ``einsum("eki,ekc->eic", F, y)`` rotates blocked edge-frame messages y back, the dropped
    rows being zero. One dot each way replaces lmax + 1 per-degree dots, a concatenate and the
    constant-index gather and scatter of the blocked layout (benchmarks/RESULTS.md, issue 17).

    Memory: K (lmax+1)**2 floats per edge against the blocks' sum (2l+1)**2: 81 against 35 at
    lmax = mmax = 2, 224 against 84 at lmax 3, mmax 2. It is built once per model call and
    shared by the interaction blocks; per edge it is small against one block's message
    intermediates (about 14 kB per edge for the small preset), and chunked calls hold it per
    chunk (`mlip.nn.message_passing.edge_map`). The zeros off the diagonal blocks are
    multiplied too (the dot does (lmax+1)**2 / (2l+1) times the per-degree work per row); on the
    CPU the one dense batched dot is faster all the same.
    """
    lmax = len(blocks) - 1
    if not 0 <= mmax <= lmax:
        raise ValueError(f"need 0 <= mmax <= lmax, got mmax={mmax}, lmax={lmax}")
    dim = (lmax + 1) ** 2
    rows = []
    for m in range(mmax + 1):
        for sign in (1, -1) if m else (1,):
            for l in range(m, lmax + 1):
                # Row m of D^l (index l + m in its block), placed in its degree's columns.
                rows.append(jnp.pad(blocks[l][:, l + sign * m], ((0, 0), (l * l, dim - (l + 1) ** 2))))
    return jnp.stack(rows, axis=1)


def rotate_to_edge_frame(x: jax.Array, blocks: list[jax.Array]) -> jax.Array:
    """Features [E, (L+1)**2, C] in the global frame -> the edge frame, ``D x`` per degree.

    L may be below the lmax of ``blocks``; only the first L+1 blocks are used.
    """
    return _apply(x, blocks, "eij,ejc->eic")


def rotate_from_edge_frame(x: jax.Array, blocks: list[jax.Array]) -> jax.Array:
    """Features [E, (L+1)**2, C] in the edge frame -> the global frame, ``Dᵀ x`` per degree."""
    return _apply(x, blocks, "eji,ejc->eic")


def _apply(x: jax.Array, blocks: list[jax.Array], subscripts: str) -> jax.Array:
    lmax = round(np.sqrt(x.shape[1])) - 1
    if (lmax + 1) ** 2 != x.shape[1] or lmax >= len(blocks):
        raise ValueError(f"{x.shape[1]} components is not (l+1)**2 for l < {len(blocks)}")
    parts = [
        jnp.einsum(subscripts, blocks[l], x[:, l * l : (l + 1) ** 2]) for l in range(lmax + 1)
    ]
    return jnp.concatenate(parts, axis=1)
