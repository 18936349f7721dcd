import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlip.nn.radial import RadialEmbedding, bessel_basis, bspline_basis, envelope, radial_basis

R_CUT = 4.5


def _derivatives(f):
    """Jitted r -> (f, f', f'') of a scalar function (jitted: eager debug-nans ops are slow)."""
    return jax.jit(lambda r: (f(r), jax.grad(f)(r), jax.grad(jax.grad(f))(r)))


def test_envelope_is_one_at_origin_and_vanishes_smoothly_at_cutoff():
    derivatives = _derivatives(lambda r: envelope(r, R_CUT))
    value, slope, curvature = derivatives(0.0)
    assert value == 1.0 and slope == 0.0 and curvature == 0.0
    for r in (R_CUT, np.nextafter(R_CUT, 0.0)):
        np.testing.assert_allclose(derivatives(r), 0.0, atol=1e-12)
    beyond = jnp.array([R_CUT, R_CUT + 1e-9, 6.0, 1e3])
    assert np.all(np.asarray(jax.vmap(derivatives)(beyond)) == 0.0)


def test_envelope_is_monotone_on_the_cutoff_interval():
    values = envelope(jnp.linspace(0.0, R_CUT, 1001), R_CUT)
    assert np.all(np.diff(values) <= 0.0)
    assert np.all((values >= 0.0) & (values <= 1.0))


@pytest.mark.parametrize("n_basis", [4, 5, 8])
def test_bspline_basis_sums_to_one_on_interior(n_basis):
    spacing = R_CUT / (n_basis - 1)
    r = jnp.linspace(spacing, R_CUT - spacing, 301)
    np.testing.assert_allclose(bspline_basis(r, R_CUT, n_basis).sum(axis=-1), 1.0, atol=1e-12)
    assert np.all(bspline_basis(jnp.linspace(0.0, 2 * R_CUT, 301), R_CUT, n_basis) >= 0.0)


def test_bspline_basis_is_c2_across_knots():
    n_basis = 6
    spacing = R_CUT / (n_basis - 1)
    second = jax.jit(jax.vmap(jax.hessian(lambda r: bspline_basis(r[None], R_CUT, n_basis)[0])))
    knots = spacing * np.arange(-1, n_basis + 1)  # interior and just-outside knots
    eps = 1e-7
    left, right = second(jnp.asarray(knots - eps)), second(jnp.asarray(knots + eps))
    np.testing.assert_allclose(left, right, atol=1e-5 / spacing**2)
    # Support ends are knots too: the function and its second derivative vanish there.
    assert np.all(bspline_basis(jnp.asarray([R_CUT + 2 * spacing]), R_CUT, n_basis) == 0.0)


@pytest.mark.parametrize("basis", ["bspline", "bessel"])
def test_radial_basis_finite_gradients_at_zero_and_zero_beyond_cutoff(basis):
    f = lambda r: radial_basis(r, R_CUT, 8, basis)
    values, jac = jax.jit(jax.vmap(lambda r: (f(r[None])[0], jax.jacfwd(f)(r[None])[0, :, 0])))(
        jnp.array([0.0, 1e-12, R_CUT + 0.1])
    )
    assert np.all(np.isfinite(values[:2])) and np.all(np.isfinite(jac[:2]))
    assert np.all(values[2] == 0.0) and np.all(jac[2] == 0.0)


def test_bessel_basis_limit_at_zero():
    small = bessel_basis(jnp.array([0.0, 1e-6]), R_CUT, 4)
    np.testing.assert_allclose(small[0], small[1], rtol=1e-10)
    np.testing.assert_allclose(small[0], np.sqrt(2 / R_CUT) * np.arange(1, 5) * np.pi / R_CUT)


@pytest.mark.parametrize("basis", ["bspline", "bessel"])
def test_radial_embedding_shapes_scale_and_gradients(basis):
    module = RadialEmbedding(n_basis=8, n_out=256, r_cut=R_CUT, basis=basis)
    inside = R_CUT * np.cbrt(np.random.default_rng(0).uniform(size=4000))  # uniform in a ball
    r = np.concatenate([[0.0], inside, [R_CUT, 7.0]])  # a padding edge, and two beyond the cutoff
    params = jax.jit(module.init)(jax.random.PRNGKey(1), r)  # jitted: compiles faster
    out = jax.jit(module.apply)(params, r)
    assert out.shape == (4003, 256) and out.dtype == jnp.float64
    assert 0.7 < float(jnp.mean(out[1:-2] ** 2)) < 1.4
    loss = lambda p, r: jnp.sum(module.apply(p, r) ** 2)
    grad_params, grad_r = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, r)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves((grad_params, grad_r)))
    assert np.all(out[-2:] == 0.0) and np.all(grad_r[-2:] == 0.0)


def test_unknown_basis_is_an_error():
    with pytest.raises(ValueError, match="basis"):
        radial_basis(jnp.ones(3), R_CUT, 4, "gaussian")
