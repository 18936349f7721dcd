import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlip.nn.radial import RadialEmbedding
from mlip.nn.so2_conv import SO2Convolution

SHAPES = [(2, 2), (3, 2), (3, 3)]
C_IN, C_OUT, EDGES = 5, 3, 7


@jax.jit
@functools.partial(jnp.vectorize, signature="(3,3)->(16,16)")
def _wigner_d_lmax3(rotation):
    blocks = [e3nn.Irrep(l, (-1) ** l).D_from_matrix(rotation) for l in range(4)]
    return jax.scipy.linalg.block_diag(*blocks)


def wigner_d(rotation, lmax: int):
    """float [..., (lmax+1)**2, (lmax+1)**2]: block-diagonal real Wigner-D of 3x3 rotations
    [..., 3, 3], acting on e3nn's spherical harmonics as Y(R x) = D(R) Y(x), for lmax <= 3.
    Compiled once for lmax = 3 and sliced: e3nn's D_from_matrix is slow eagerly and to compile."""
    dim = (lmax + 1) ** 2
    return _wigner_d_lmax3(rotation)[..., :dim, :dim]


def rotation_about_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def to_edge_frame(vector: np.ndarray, helper: np.ndarray) -> np.ndarray:
    """A rotation taking ``vector`` onto +y; its roll about y is set by ``helper`` (arbitrary)."""
    y = vector / np.linalg.norm(vector)
    x = np.cross(y, helper)
    x /= np.linalg.norm(x)
    return np.stack([x, y, np.cross(x, y)])


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


@functools.cache
def setup(lmax, mmax):
    """(jitted apply, params, x_edge, radial): random float64 inputs and random weights in the
    layout of SO2Convolution.parameter_shapes, built with numpy once per shape because
    compiling jax.random dominates these tests (initialisation is tested on its own)."""
    rng = np.random.default_rng(lmax * 10 + mmax)
    shapes = SO2Convolution.parameter_shapes(lmax, mmax, C_IN, C_OUT)
    params = {"params": {name: rng.normal(size=shape) for name, shape in shapes.items()}}
    x = rng.normal(size=(EDGES, (lmax + 1) ** 2, C_IN))
    radial = rng.normal(size=(EDGES, SO2Convolution.radial_size(lmax, mmax, C_IN)))
    return jax.jit(SO2Convolution(lmax, mmax, C_OUT).apply), params, x, radial


def orders(lmax):
    return np.concatenate([np.arange(-l, l + 1) for l in range(lmax + 1)])


def test_the_y_rotation_turns_each_pair_by_m_alpha_at_every_degree():
    """The premise of the pairing: in e3nn's basis D(R_y(a)) maps (x+, x-) to
    (cos(ma) x+ - sin(ma) x-, sin(ma) x+ + cos(ma) x-), with the same sign at every l."""
    lmax, angle = 3, 0.37
    d = np.asarray(wigner_d(rotation_about_y(angle), lmax))
    for l in range(1, lmax + 1):
        for m in range(1, l + 1):
            plus, minus = l * l + l + m, l * l + l - m
            c, s = np.cos(m * angle), np.sin(m * angle)
            np.testing.assert_allclose(d[np.ix_([plus, minus], [plus, minus])], [[c, -s], [s, c]], atol=1e-12)


@pytest.mark.parametrize("lmax, mmax", SHAPES)
def test_equivariant_under_rotations_about_the_edge_axis(lmax, mmax):
    apply, params, x, radial = setup(lmax, mmax)
    out = apply(params, x, radial)
    for angle in (0.3, 2.1, -1.234):
        d = wigner_d(rotation_about_y(angle), lmax)
        rotated = apply(params, jnp.einsum("ij,ejc->eic", d, x), radial)
        np.testing.assert_allclose(rotated, jnp.einsum("ij,ejc->eic", d, out), atol=1e-10)


@pytest.mark.parametrize("lmax, mmax", SHAPES)
def test_shapes_and_dropped_orders(lmax, mmax):
    apply, params, x, radial = setup(lmax, mmax)
    out = apply(params, x, radial)
    assert out.shape == (EDGES, (lmax + 1) ** 2, C_OUT) and out.dtype == jnp.float64
    dropped = np.abs(orders(lmax)) > mmax
    assert np.all(out[:, dropped] == 0.0)
    assert np.all(out[:, ~dropped] != 0.0)
    shapes = SO2Convolution.parameter_shapes(lmax, mmax, C_IN, C_OUT)
    initial = jax.eval_shape(SO2Convolution(lmax, mmax, C_OUT).init, jax.random.PRNGKey(0), x, radial)
    assert jax.tree.map(lambda p: p.shape, initial["params"]) == shapes
    num_parameters = SO2Convolution.num_parameters(lmax, mmax, C_IN, C_OUT)
    assert sum(p.size for p in jax.tree.leaves(initial)) == num_parameters


def test_edge_messages_rotated_back_are_equivariant():
    """D_e^T SO2Conv(D_e h) with D_e taking the edge onto +y (any roll) is an equivariant
    function of (edge vector, features) under arbitrary rotations."""
    lmax = mmax = 3
    apply, params, h, radial = setup(lmax, mmax)
    vectors = np.random.default_rng(2).normal(size=(EDGES, 3))

    def messages(vectors, h, helper):
        d = wigner_d(np.stack([to_edge_frame(v, helper) for v in vectors]), lmax)
        out = apply(params, jnp.einsum("eij,ejc->eic", d, h), radial)
        return jnp.einsum("eji,ejc->eic", d, out)

    q = random_rotation(3)
    dq = wigner_d(q, lmax)
    expected = jnp.einsum("ij,ejc->eic", dq, messages(vectors, h, np.array([1.0, 0.3, 0.2])))
    # A different helper changes every edge's roll: the message must not depend on it.
    actual = messages(vectors @ q.T, jnp.einsum("ij,ejc->eic", dq, h), np.array([0.1, 0.2, 1.0]))
    np.testing.assert_allclose(actual, expected, atol=1e-10)


def test_unit_variance_at_initialisation():
    lmax, mmax, channels = 3, 2, 64
    conv = SO2Convolution(lmax, mmax, channels)
    x = np.random.default_rng(4).normal(size=(128, (lmax + 1) ** 2, channels))
    radial = np.ones((128, SO2Convolution.radial_size(lmax, mmax, channels)))
    params = jax.jit(conv.init)(jax.random.PRNGKey(4), x, radial)  # jitted: compiles faster
    out = jax.jit(conv.apply)(params, x, radial)
    variance = jnp.var(out[:, np.abs(orders(lmax)) <= mmax])
    assert 0.8 < float(variance) < 1.25


def test_gradients_are_finite_through_radial_embedding():
    lmax, mmax, r_cut = 3, 2, 5.0
    apply, conv_params, x, _ = setup(lmax, mmax)
    radial_module = RadialEmbedding(8, SO2Convolution.radial_size(lmax, mmax, C_IN), r_cut)
    lengths = jnp.array([0.0, 1.0, 2.5, 4.9, 5.0, 6.0, 3.0])  # padding, in range, at and past r_cut
    shapes = jax.eval_shape(radial_module.init, jax.random.PRNGKey(0), lengths)
    radial_params = jax.tree.map(lambda p: np.random.default_rng(6).normal(size=p.shape), shapes)

    def loss(params, lengths, x):
        radial = radial_module.apply(params[0], lengths)
        return jnp.sum(apply(params[1], x, radial) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))((radial_params, conv_params), lengths, x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert all(np.any(g != 0.0) for g in jax.tree.leaves(grads[0]))
    assert np.all(grads[1][4:6] == 0.0)  # no force from neighbours at or beyond the cutoff


def test_invalid_arguments():
    with pytest.raises(ValueError, match="mmax"):
        SO2Convolution.radial_size(2, 3, 4)
    apply, params, x, radial = setup(2, 2)
    with pytest.raises(ValueError, match="radial"):
        apply(params, x, radial[:, 1:])


@pytest.mark.parametrize("lmax, mmax", [(2, 2), (3, 2)])
def test_scalar_path_equals_the_general_convolution_on_scalar_input(lmax, mmax):
    from mlip.nn.edge_frame import edge_rotation, rotate_from_edge_frame, rotate_to_edge_frame
    from mlip.nn.edge_frame import wigner_d as edge_wigner_d
    from mlip.nn.so2_conv import ScalarSO2Convolution

    rng = np.random.default_rng(7)
    edges, c_in, c_out = 6, 4, 5
    vectors = jnp.asarray(rng.normal(size=(edges, 3)))
    blocks = edge_wigner_d(edge_rotation(vectors), lmax)
    scalars = jnp.asarray(rng.normal(size=(edges, c_in)))
    x = jnp.zeros((edges, (lmax + 1) ** 2, c_in)).at[:, 0].set(scalars)
    radial = jnp.asarray(rng.normal(size=(edges, SO2Convolution.radial_size(lmax, mmax, c_in))))
    general = SO2Convolution(lmax, mmax, c_out)
    params = general.init(jax.random.PRNGKey(0), x, radial)
    expected = rotate_from_edge_frame(general.apply(params, rotate_to_edge_frame(x, blocks), radial), blocks)
    # The scalar path uses the l_in = 0 rows of the m = 0 weights and the (m=0, l=0) radial row.
    w0 = params["params"]["w0"][:c_in]
    got = ScalarSO2Convolution(lmax, c_out).apply({"params": {"w0": w0}}, scalars, radial[:, :c_in], blocks)
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("lmax, mmax", [(1, 0), (2, 1), (2, 2), (3, 2), (3, 3), (4, 2)])
def test_folded_rotation_equals_the_per_degree_chain(lmax, mmax):
    """The model's edge chain with the folded Wigner matrix (one dot each way, no gathers) is
    the per-degree chain (rotate, gather to the m-blocked layout, SO(2), scatter, rotate back):
    values and the gradients of every input, through the fold into the Wigner blocks, float64,
    padding edges included."""
    from kernels.so2_message import random_inputs, so2_message_folded, so2_message_reference
    from mlip.nn.edge_frame import block_diag_wigner, folded_wigner
    from mlip.nn.so2_conv import _index_maps

    x, wigner, radial, weights = random_inputs(jax.random.PRNGKey(lmax + 10 * mmax), lmax, mmax, 6, 5, 11, 2, jnp.float64)
    gather, _ = _index_maps(lmax, mmax)
    np.testing.assert_array_equal(folded_wigner(list(wigner), mmax), block_diag_wigner(list(wigner))[:, gather])
    probe = jax.random.normal(jax.random.PRNGKey(1), (11, (lmax + 1) ** 2, 5), jnp.float64)

    def folded(x, wigner, radial, weights):
        return so2_message_folded(x, folded_wigner(list(wigner), mmax), radial, weights, lmax, mmax)

    def value_and_gradients(message):
        def loss(*args):
            return jnp.sum(probe * message(*args))

        return jax.jit(lambda *a: (message(*a), jax.grad(loss, argnums=(0, 1, 2, 3))(*a)))(x, wigner, radial, weights)

    got = value_and_gradients(folded)
    expected = value_and_gradients(functools.partial(so2_message_reference, lmax=lmax, mmax=mmax))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * float(np.abs(b).max()))
