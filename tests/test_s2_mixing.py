"""Spherical-grid mixing and gate: projections, equivariance (exact or to grid accuracy),
gradients, shapes and dtypes."""

import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mlip.nn.gate import Gate, normalized_silu
from mlip.nn.s2_mixing import S2Mixing, grid_resolution, projection_matrices

# Measured at the default resolutions with ``measure`` below (float64; see the table in
# mlip/nn/s2_mixing.py). Bounds are twice the measured level.
MEASURED_ERROR = {("gausslegendre", 2): 2.5e-4, ("gausslegendre", 3): 5.8e-4,
                  ("lebedev", 2): 9.4e-6, ("lebedev", 3): 4.6e-5}


@functools.lru_cache(maxsize=None)
def wigner_matrices(n_rotations=8, seed=0, lmax=3) -> np.ndarray:
    """float64 [n_rotations, (lmax+1)**2, (lmax+1)**2]: D of random rotations, e3nn's basis.

    D is block diagonal by degree, so its leading (l+1)**2 block serves every l <= lmax.
    """
    rotations = Rotation.random(n_rotations, random_state=seed).as_matrix()
    irreps = e3nn.Irreps.spherical_harmonics(lmax)
    return np.asarray(jax.jit(jax.vmap(irreps.D_from_matrix))(rotations))


def equivariance_error(fn, x, lmax, n_rotations=8, seed=0) -> float:
    """Mean over random rotations of ||fn(D x) - D fn(x)|| / ||fn(x)||; fn maps [..., dim, C]."""
    rotate = lambda wigner, x: jnp.einsum("ij,...jc->...ic", wigner, x)

    @jax.jit
    def errors(x, wigners):
        y = fn(x)
        error = lambda wigner: jnp.linalg.norm(fn(rotate(wigner, x)) - rotate(wigner, y))
        return jax.vmap(error)(wigners) / jnp.linalg.norm(y)

    dim = (lmax + 1) ** 2
    wigners = jnp.asarray(wigner_matrices(n_rotations, seed)[:, :dim, :dim], x.dtype)
    return float(jnp.mean(errors(x, wigners)))


def features(lmax, n=64, channels=16, seed=0):
    """Unit-normal float64 coefficients [n, (lmax+1)**2, channels]."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, (lmax + 1) ** 2, channels)))


@functools.lru_cache(maxsize=None)
def s2_params(hidden=32, channels=16):
    """Freshly initialised S2Mixing parameters (key 1). They do not depend on lmax or the grid
    (flax seeds each parameter by its name), so one compiled init serves every configuration."""
    x = features(2, n=1, channels=channels)
    return jax.jit(S2Mixing(2, hidden).init)(jax.random.PRNGKey(1), x)


@functools.lru_cache(maxsize=None)
def gate_params(lmax=3):
    return jax.jit(Gate().init)(jax.random.PRNGKey(3), features(lmax, n=1))


@functools.lru_cache(maxsize=None)
def measure(lmax, grid="gausslegendre", **resolution) -> float:
    """Equivariance error of a freshly initialised S2Mixing (hidden 32) on unit-normal float64
    features [64, (lmax+1)**2, 16]."""
    module, params = S2Mixing(lmax, 32, grid, **resolution), s2_params()
    return equivariance_error(lambda x: module.apply(params, x), features(lmax), lmax)


@pytest.mark.parametrize("grid", ["gausslegendre", "lebedev"])
@pytest.mark.parametrize("lmax", [2, 3])
def test_from_grid_inverts_to_grid(lmax, grid):
    to_grid, from_grid = projection_matrices(lmax, grid, grid_resolution(lmax, grid))
    assert to_grid.shape[1] == from_grid.shape[0] == (lmax + 1) ** 2
    np.testing.assert_allclose(from_grid @ to_grid, np.eye((lmax + 1) ** 2), atol=1e-10)


def test_minimal_resolution_still_inverts():
    to_grid, from_grid = projection_matrices(3, "gausslegendre", (4, 7))
    assert grid_resolution(3, "gausslegendre", 4, 7) == (4, 7)
    np.testing.assert_allclose(from_grid @ to_grid, np.eye(16), atol=1e-10)


@pytest.mark.parametrize("grid", ["gausslegendre", "lebedev"])
def test_band_limited_pointwise_maps_are_exactly_equivariant(grid):
    # A channel-mixing linear map keeps degree <= lmax and squaring gives degree <= 2 lmax; the
    # projection back then integrates degree <= 3 lmax, exact on the default grids: no aliasing.
    lmax = 3
    to_grid, from_grid = projection_matrices(lmax, grid, grid_resolution(lmax, grid))
    mixing = np.random.default_rng(2).normal(size=(16, 16))
    pointwise = lambda g: jnp.concatenate([g @ mixing, g**2], axis=-1)
    on_grid = lambda x: jnp.einsum("gi,nic->ngc", to_grid, x)
    fn = lambda x: jnp.einsum("ig,ngc->nic", from_grid, pointwise(on_grid(x)))
    assert equivariance_error(fn, features(lmax), lmax) < 1e-12


@pytest.mark.parametrize("grid", ["gausslegendre", "lebedev"])
@pytest.mark.parametrize("lmax", [2, 3])
def test_s2_mixing_equivariance_at_default_resolution(lmax, grid):
    error = measure(lmax, grid)
    assert 1e-8 < error < 2 * MEASURED_ERROR[grid, lmax]  # approximate, and by the measured amount


def test_s2_mixing_error_falls_with_resolution():
    # Measured: 5.8e-4 at the default 10 x 20, 6.8e-5 at 13 x 26.
    assert measure(3, res_beta=13, res_alpha=26) < measure(3) / 4


def test_matches_the_mlp_applied_at_every_grid_point():
    # S2Mixing applies its linear layers to coefficients (cheaper); check against the plain
    # definition: grid values -> Dense, SiLU, Dense at each point -> projection back.
    params = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), s2_params()["params"])
    params["bias"] = np.random.default_rng(3).normal(size=32)
    resolution = grid_resolution(2, "gausslegendre")
    to_grid, from_grid = projection_matrices(2, "gausslegendre", resolution)
    x = np.asarray(features(2, n=3))
    hidden = np.einsum("gi,nic->ngc", to_grid, x) @ params["linear_in"]["kernel"] + params["bias"]
    expected = from_grid @ (normalized_silu(hidden) @ params["linear_out"]["kernel"])
    actual = S2Mixing(2, 32).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(actual, expected, atol=1e-12)


def test_gate_is_equivariant():
    params = gate_params()
    assert equivariance_error(lambda x: Gate().apply(params, x), features(3), 3) < 1e-10


@pytest.mark.parametrize("module", [S2Mixing(2, 32), S2Mixing(3, 32, "lebedev"), Gate()])
def test_shapes_gradients_and_dtypes(module):
    lmax = getattr(module, "lmax", 3)
    params = gate_params() if isinstance(module, Gate) else s2_params()
    x64 = features(lmax, n=5)
    def loss(params, x):
        y = module.apply(params, x)
        return jnp.sum(y**2), y

    (_, y64), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x64)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    y32 = jax.jit(module.apply)(params, x64.astype(jnp.float32))
    assert y64.shape == y32.shape == x64.shape
    assert (y64.dtype, y32.dtype) == (jnp.float64, jnp.float32)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)


def test_batch_axes_and_zero_input():
    apply = functools.partial(jax.jit(S2Mixing(2, 32).apply), s2_params())
    x = features(2, n=6).reshape(2, 3, 9, 16)
    np.testing.assert_allclose(apply(x)[1], apply(x[1]), atol=1e-14)
    assert bool(jnp.all(jnp.isfinite(apply(jnp.zeros_like(x)))))


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="res_beta"):
        grid_resolution(3, "gausslegendre", res_beta=3)
    with pytest.raises(ValueError, match="order"):
        grid_resolution(3, "lebedev", order=5)
    with pytest.raises(ValueError, match="unknown grid"):
        grid_resolution(2, "healpix")
    with pytest.raises(ValueError, match="components"):
        S2Mixing(2, 8).init(jax.random.PRNGKey(0), features(3, n=2))
    with pytest.raises(ValueError, match="components"):
        Gate().init(jax.random.PRNGKey(0), jnp.ones((2, 5, 4)))


@pytest.mark.benchmark
def test_print_error_table():
    """Regenerates the equivariance table in mlip/nn/s2_mixing.py's docstring (run with -s)."""
    for r, order in zip(range(5, 14), range(11, 28, 2)):
        gl = [measure(lmax, res_beta=r, res_alpha=2 * r) for lmax in (2, 3)]
        leb = [measure(lmax, "lebedev", order=order) for lmax in (2, 3)]
        n_leb = projection_matrices(2, "lebedev", (order,))[0].shape[0]
        print(f"{r:6d} x {2 * r:<2d} {2 * r * r:16d}    {gl[0]:.1e}   {gl[1]:.1e}   "
              f"{order:9d} {n_leb:7d}    {leb[0]:.1e}   {leb[1]:.1e}")
