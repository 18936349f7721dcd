"""Edge frames and angle-free Wigner-D matrices: accuracy against e3nn-jax, behaviour at the
poles, at the equator (where the frame's roll jumps) and for zero-length padding edges.

Every test uses the same edge batch and jitted helpers, so each function compiles once: eager
evaluation compiles every small op per shape and makes this file ~10x slower."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from mlip.nn.edge_frame import (
    block_diag_wigner,
    edge_rotation,
    rotate_from_edge_frame,
    rotate_to_edge_frame,
    wigner_d,
)

LMAX = 4
CHANNELS = 3
Y = np.array([0.0, 1.0, 0.0])


def _awkward_vectors(rng: np.random.Generator) -> np.ndarray:
    """[42, 3] edge vectors (Å): random, exactly at ±y, within 1e-9 and 1e-12 of the poles,
    random lengths from 1e-30 to 1e30, on and just off the equator (rows NORTH and SOUTH
    straddle it), and two zero vectors (padding) last."""
    tilt = rng.normal(size=(4, 3))
    tilt /= np.linalg.norm(tilt, axis=1, keepdims=True)
    near_poles = [sign * Y + eps * t for sign in (1, -1) for eps in (1e-9, 1e-12) for t in tilt]
    equator = [[1.0, 0.0, 0.0], [0.0, -1e-300, 1.0], [0.3, 1e-12, -0.7], [0.3, -1e-12, -0.7]]
    scaled = rng.normal(size=(8, 3)) * 10.0 ** rng.uniform(-30, 30, (8, 1))
    random = rng.normal(size=(8, 3))
    poles = [Y, -Y, 2.5 * Y, -0.7 * Y]
    return np.concatenate([random, poles, near_poles, scaled, equator, np.zeros((2, 3))])


VECTORS = _awkward_vectors(np.random.default_rng(0))
NONZERO = slice(0, -2)
NORTH, SOUTH = 38, 39
assert VECTORS[NORTH, 1] == 1e-12 and VECTORS[SOUTH, 1] == -1e-12
UNIT = VECTORS[NONZERO] / np.linalg.norm(VECTORS[NONZERO], axis=1, keepdims=True)
_FEATURE_SHAPE = (len(VECTORS), (LMAX + 1) ** 2, CHANNELS)
X, WEIGHTS = jnp.asarray(np.random.default_rng(1).normal(size=(2,) + _FEATURE_SHAPE))


def roll_invariants(x_edge: jax.Array) -> jax.Array:
    """[E, (LMAX+1)**2, C] edge-frame features -> [E, (LMAX+1)**2, C] quantities unchanged by
    a rotation about y: the m = 0 components and, per 0 < m <= l, the squared norm of the
    (+m, -m) pair (stored twice, at both indices)."""
    idx = np.arange((LMAX + 1) ** 2)
    l = np.floor(np.sqrt(idx)).astype(int)
    m = idx - l * l - l
    pairs = x_edge**2 + x_edge[:, l * l + l - m] ** 2
    return jnp.where((m == 0)[None, :, None], x_edge, pairs)


@jax.jit
def frame_blocks(vectors):
    return wigner_d(edge_rotation(vectors), LMAX)


rotation = jax.jit(edge_rotation)
wigner = jax.jit(wigner_d, static_argnums=1)
block_diag = jax.jit(block_diag_wigner)
to_edge = jax.jit(rotate_to_edge_frame)
from_edge = jax.jit(rotate_from_edge_frame)
invariants = jax.jit(lambda vectors, x: roll_invariants(to_edge(x, frame_blocks(vectors))))


def _edge_energies(vectors, x, weights):
    """[E]: per-edge scalars that depend on the edge direction only through roll invariants."""
    return jnp.sum(weights * invariants(vectors, x), axis=(1, 2))


def _invariant_energy(vectors, x, weights):
    return jnp.sum(_edge_energies(vectors, x, weights))


edge_energies = jax.jit(_edge_energies)


@jax.jit
def jacobians(vectors, x, weights):
    """Forward- and reverse-mode gradients [E, 3] of the invariant energy, compiled together."""
    return {
        "jacfwd": jax.jacfwd(_invariant_energy)(vectors, x, weights),
        "jacrev": jax.jacrev(_invariant_energy)(vectors, x, weights),
    }


@jax.jit
def harmonics(vectors) -> list[jax.Array]:
    """e3nn-jax's spherical harmonics Y^l [E, 2l+1] for l = 0..LMAX (component normalisation)."""
    irreps = e3nn.Irreps([e3nn.Irrep(l, (-1) ** l) for l in range(LMAX + 1)])
    return e3nn.spherical_harmonics(irreps, vectors, normalize=True).chunks


@jax.jit
def e3nn_wigner(rotations):
    """Reference blocks from e3nn-jax (through Euler angles)."""
    return [jax.vmap(e3nn.Irrep(l, (-1) ** l).D_from_matrix)(rotations) for l in range(LMAX + 1)]


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3, 3] random proper rotations (numpy, so nothing to compile)."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q * np.sign(np.linalg.det(q))[:, None, None]


def eye_like(matrices):
    return np.broadcast_to(np.eye(matrices.shape[-1]), matrices.shape)


def test_rotation_is_proper_and_maps_edge_to_y():
    rot = np.asarray(rotation(jnp.asarray(VECTORS)))
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), eye_like(rot), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    mapped = np.einsum("eij,ej->ei", rot[NONZERO], UNIT)
    np.testing.assert_allclose(mapped, np.broadcast_to(Y, UNIT.shape), atol=1e-12)
    np.testing.assert_array_equal(rot[-2:], eye_like(rot[-2:]))  # padding edges


def test_wigner_matches_e3nn():
    rotations = jnp.concatenate(
        [random_rotations(np.random.default_rng(3), 34), rotation(jnp.asarray(VECTORS))[:8]]
    )
    for l, (block, reference) in enumerate(zip(wigner(rotations, LMAX), e3nn_wigner(rotations))):
        np.testing.assert_allclose(block, reference, atol=1e-10, err_msg=f"l={l}")


def test_wigner_is_an_orthogonal_representation_near_the_poles():
    # e3nn's D_from_matrix goes through Euler angles and is only ~1e-9 accurate 1e-9 from the
    # poles, so there the check is the homomorphism D(R1 R2) = D(R1) D(R2) instead.
    r1 = rotation(jnp.asarray(VECTORS))
    r2 = jnp.roll(r1, 1, axis=0)
    d1, d2, d12 = (block_diag(wigner(r, LMAX)) for r in (r1, r2, r1 @ r2))
    np.testing.assert_allclose(d12, d1 @ d2, atol=1e-12)
    np.testing.assert_allclose(d1 @ jnp.swapaxes(d1, 1, 2), eye_like(d1), atol=1e-12)


def test_edge_harmonics_are_m0_in_the_edge_frame():
    blocks = frame_blocks(jnp.asarray(VECTORS))
    for l, y in enumerate(harmonics(jnp.asarray(UNIT))):
        rotated = jnp.einsum("eij,ej->ei", blocks[l][NONZERO], y[:, 0])
        expected = np.zeros(2 * l + 1)
        expected[l] = np.sqrt(2 * l + 1)  # Y^l(+y) in e3nn's component normalisation
        expected = np.broadcast_to(expected, rotated.shape)
        np.testing.assert_allclose(rotated, expected, atol=1e-11, err_msg=f"l={l}")


def test_rotate_round_trip_and_block_diag():
    blocks = frame_blocks(jnp.asarray(VECTORS))
    x_edge = to_edge(X, blocks)
    np.testing.assert_allclose(x_edge, block_diag(blocks) @ X, atol=1e-12)
    np.testing.assert_allclose(from_edge(x_edge, blocks), X, atol=1e-12)
    # Features of lower degree than the blocks use the first blocks only.
    np.testing.assert_allclose(to_edge(X[:, :9], blocks), x_edge[:, :9], atol=1e-12)


def test_roll_invariants_are_invariant_under_rotation_about_y():
    angles = np.random.default_rng(2).uniform(0, 2 * np.pi, len(VECTORS))
    c, s = np.cos(angles), np.sin(angles)
    roll = np.zeros((len(VECTORS), 3, 3))
    roll[:, 0, 0], roll[:, 0, 2], roll[:, 1, 1], roll[:, 2, 0], roll[:, 2, 2] = c, s, 1, -s, c
    rolled = to_edge(X, wigner(jnp.asarray(roll), LMAX))
    np.testing.assert_allclose(roll_invariants(rolled), roll_invariants(X), atol=1e-12)


def test_edge_frame_features_are_invariant_up_to_roll():
    """Rotating the edge and the features together leaves the edge-frame features unchanged up
    to a roll about y: the equivariance the SO(2) convolution relies on."""
    q = random_rotations(np.random.default_rng(4), 1)[0]
    x_rotated = to_edge(X, wigner(jnp.broadcast_to(q, (len(VECTORS), 3, 3)), LMAX))
    before = invariants(jnp.asarray(VECTORS), X)
    after = invariants(jnp.asarray(VECTORS) @ q.T, x_rotated)
    np.testing.assert_allclose(after[NONZERO], before[NONZERO], atol=1e-9)


def test_gradients_are_finite_and_zero_for_padding():
    for name, g in jacobians(jnp.asarray(VECTORS), X, WEIGHTS).items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), name
        np.testing.assert_array_equal(g[-2:], 0.0, err_msg=name)


def test_roll_invariants_and_gradients_continuous_across_equator():
    # Same direction and features on both sides: give the southern edge the northern features.
    x = X.at[SOUTH].set(X[NORTH])
    w = WEIGHTS.at[SOUTH].set(WEIGHTS[NORTH])
    vectors = jnp.asarray(VECTORS)
    values, grad = invariants(vectors, x), jacobians(vectors, x, w)["jacrev"]
    np.testing.assert_allclose(values[SOUTH], values[NORTH], atol=1e-10)
    np.testing.assert_allclose(grad[SOUTH], grad[NORTH], atol=1e-9)


def test_gradient_matches_finite_differences():
    """Every awkward direction: at and near the poles, and on the equator, whose central
    differences straddle both branches. Steps and gradients are scaled by each edge's length."""
    vectors = jnp.asarray(VECTORS)
    length = np.linalg.norm(VECTORS, axis=1)
    h = 1e-5
    fd = []
    for i in range(3):  # edges are independent, so one step per coordinate moves all edges
        step = np.zeros_like(VECTORS)
        step[:, i] = h * length
        plus, minus = (edge_energies(vectors + sign * step, X, WEIGHTS) for sign in (1, -1))
        fd.append((plus - minus) / (2 * h))
    fd = np.stack(fd, axis=1)[NONZERO]
    for name, grad in jacobians(vectors, X, WEIGHTS).items():
        scaled = grad[NONZERO] * length[NONZERO, None]
        np.testing.assert_allclose(scaled, fd, rtol=1e-6, atol=1e-8, err_msg=name)
