"""Spherical-grid mixing: the nonlinear self-interaction of the Facet-style model.

Each channel's coefficients x [..., (lmax+1)**2, C] define a function on the sphere,
f_c(r) = sum_i x[i, c] Y_i(r). ``S2Mixing`` samples these functions on a quadrature grid, applies
one MLP over channels at every grid point (Dense C -> hidden, SiLU, Dense hidden -> C; the same
weights everywhere) and projects back onto degrees <= lmax.

Normalisation: the real spherical harmonics of e3nn-jax with ``normalization="integral"``
(orthonormal on the sphere, ∫ Y_i Y_j dΩ = δ_ij), so that ``from_grid = to_grid.T * weights``
and, for unit-variance coefficients, grid values have variance (lmax+1)**2 / 4π (0.72 for
lmax 2, 1.27 for lmax 3): unit scale, which suits the MLP's variance-preserving init.
"component" normalisation would give variance (lmax+1)**2 (9 to 16) instead.

Grids (the ``grid`` field):

- ``"gausslegendre"``: res_beta Gauss-Legendre nodes in y = cos(β) (the polar axis is +y) times
  res_alpha uniform azimuths; n_grid = res_beta * res_alpha. Exact for products of degree
  < min(2 res_beta, res_alpha), so from_grid @ to_grid = identity needs res_beta >= lmax + 1 and
  res_alpha >= 2 lmax + 1. Default res_beta = 3 lmax + 1, res_alpha = 2 res_beta.
- ``"lebedev"``: scipy's Lebedev rule of the given ``order`` (exact to that degree); needs
  order >= 2 lmax. Default order 8 lmax + 3 (19 for lmax 2, 27 for lmax 3). 20 to 30 % fewer
  points than Gauss-Legendre for the same equivariance error, and no clustering at the poles.
  The model (FacetConfig) uses Lebedev at its default order.

Equivariance. A pointwise function of the grid values is equivariant on the continuous sphere,
but its output is not band-limited, so the quadrature aliases degrees > lmax into the result
and rotating the input first changes the output slightly. Measured relative error
||f(D x) - D f(x)|| / ||f(x)|| (mean over 8 random rotations; 64 nodes, C = 16, hidden = 32,
coefficients ~ N(0, 1), freshly initialised float64 parameters; tests/test_s2_mixing.py):

    Gauss-Legendre                            Lebedev
    res_beta x res_alpha  n_grid  lmax 2   lmax 3     order  n_grid  lmax 2   lmax 3
     5 x 10                 50    4.0e-3   3.1e-2      11      50    1.2e-3   1.9e-2
     6 x 12                 72    8.5e-4   1.5e-2      13      74    4.8e-4   1.2e-2
     7 x 14                 98    2.5e-4*  6.7e-3      15      86    9.4e-5   2.9e-3
     8 x 16                128    8.2e-5   2.6e-3      17     110    4.0e-5   1.4e-3
     9 x 18                162    2.4e-5   1.2e-3      19     146    9.4e-6*  5.8e-4
    10 x 20                200    1.1e-5   5.8e-4*     21     170    3.2e-6   2.3e-4
    11 x 22                242    3.7e-6   2.6e-4      23     194    3.4e-6   1.6e-4
    12 x 24                288    1.7e-6   1.3e-4      25     230    1.0e-6   9.0e-5
    13 x 26                338    7.0e-7   6.8e-5      27     266    4.1e-7   4.6e-5*
    (* = default for that lmax; other seeds vary by about ±30 %)

The error falls about geometrically with resolution (the SiLU MLP is smooth, so the band
content it creates decays fast). It grows with how nonlinear the MLP is over the input's range:
coefficients of scale 2 instead of 1 give about 7x the error. A whole model compounds it over
layers and is more sensitive in the stress (a sum of many small terms): with Lebedev order 13
(lmax 2), a random-init 2-layer model showed a 2.5e-3 relative rotation error in stress, hence
the higher default orders, below 1e-4 per layer, far under a model's force error. Cost per node and layer: 2 (lmax+1)**2 n_grid hidden
multiply-adds for the two projections, n_grid hidden activations, and 2 (lmax+1)**2 C hidden
for the linear layers (applied to coefficients, see ``S2Mixing``). Regenerate the table with
``pytest -m benchmark tests/test_s2_mixing.py -s``.
"""

from __future__ import annotations

import functools

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import lebedev_rule

from mlip.nn.gate import normalized_silu

GRIDS = ("gausslegendre", "lebedev")


def grid_resolution(
    lmax: int,
    grid: str,
    res_beta: int | None = None,
    res_alpha: int | None = None,
    order: int | None = None,
) -> tuple[int, ...]:
    """The resolution key of a grid, filling defaults: (res_beta, res_alpha) or (order,).

    Raises ValueError for an unknown grid, a parameter of the other grid, or a resolution too
    coarse for from_grid @ to_grid to be the identity at this lmax.
    """
    if grid == "gausslegendre":
        if order is not None:
            raise ValueError("order applies to the lebedev grid; use res_beta, res_alpha")
        res_beta = res_beta if res_beta is not None else 3 * lmax + 1
        res_alpha = res_alpha if res_alpha is not None else 2 * res_beta
        if res_beta < lmax + 1 or res_alpha < 2 * lmax + 1:
            raise ValueError(
                f"lmax {lmax} needs res_beta >= {lmax + 1}, res_alpha >= {2 * lmax + 1}"
            )
        return res_beta, res_alpha
    if grid == "lebedev":
        if res_beta is not None or res_alpha is not None:
            raise ValueError("res_beta, res_alpha apply to the gausslegendre grid; use order")
        order = order if order is not None else 8 * lmax + 3
        if order < 2 * lmax:
            raise ValueError(f"lmax {lmax} needs a Lebedev order >= {2 * lmax}")
        return (order,)
    raise ValueError(f"unknown grid {grid!r}; expected one of {GRIDS}")


def sphere_grid(grid: str, resolution: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature points [n_grid, 3] (unit vectors) and weights [n_grid] summing to 4π."""
    if grid == "lebedev":
        points, weights = lebedev_rule(*resolution)
        return points.T, weights
    res_beta, res_alpha = resolution
    y, weights_y = np.polynomial.legendre.leggauss(res_beta)
    alpha = 2 * np.pi * np.arange(res_alpha) / res_alpha
    sin_beta = np.sqrt(1 - y**2)[:, None]
    # e3nn's convention: polar axis +y, azimuth alpha measured from +z towards +x.
    points = np.stack(
        np.broadcast_arrays(sin_beta * np.sin(alpha), y[:, None], sin_beta * np.cos(alpha)), -1
    )
    weights = np.outer(weights_y, np.full(res_alpha, 2 * np.pi / res_alpha))
    return points.reshape(-1, 3), weights.reshape(-1)


@functools.lru_cache(maxsize=None)
def projection_matrices(lmax: int, grid: str, resolution: tuple[int, ...]):
    """(to_grid [n_grid, (lmax+1)**2], from_grid [(lmax+1)**2, n_grid]), float64, read-only.

    ``to_grid`` evaluates the orthonormal real harmonics at the grid points; ``from_grid`` is
    the quadrature of the projection onto them, so from_grid @ to_grid is the identity
    (to rounding) whenever ``grid_resolution`` accepted the resolution.
    """
    points, weights = sphere_grid(grid, resolution)
    # Float64 whatever the global JAX setting (the matrices are built once and cast at use), and
    # evaluated now even when the first call comes from inside a jit trace.
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        irreps = e3nn.Irreps.spherical_harmonics(lmax)
        # One compiled call costs several times less than e3nn's op-by-op dispatch.
        harmonics = jax.jit(
            lambda r: e3nn.spherical_harmonics(irreps, r, True, normalization="integral").array
        )
        to_grid = np.asarray(harmonics(points), dtype=np.float64)
    from_grid = np.ascontiguousarray((to_grid * weights[:, None]).T)
    to_grid.flags.writeable = from_grid.flags.writeable = False
    return to_grid, from_grid


class S2Mixing(nn.Module):
    """Pointwise MLP over channels on a sphere grid. x [..., (lmax+1)**2, C] -> same shape.

    Fields: ``hidden`` is the MLP width; ``grid`` one of ``GRIDS``; ``res_beta``, ``res_alpha``
    (gausslegendre) or ``order`` (lebedev) set the resolution, defaults per ``grid_resolution``.
    Equivariant up to the grid's aliasing error (module docstring). The first layer has a bias
    (a constant on the grid, rotation invariant), the last none: an output constant would only
    shift l = 0, which the following layers can do themselves.
    """

    lmax: int
    hidden: int
    grid: str = "gausslegendre"
    res_beta: int | None = None
    res_alpha: int | None = None
    order: int | None = None

    @property
    def resolution(self) -> tuple[int, ...]:
        """(res_beta, res_alpha) or (order,), with defaults filled in."""
        return grid_resolution(self.lmax, self.grid, self.res_beta, self.res_alpha, self.order)

    @nn.compact
    def __call__(self, x):
        if x.shape[-2] != (self.lmax + 1) ** 2:
            raise ValueError(f"lmax {self.lmax} needs {(self.lmax + 1) ** 2} components: {x.shape}")
        to_grid, from_grid = projection_matrices(self.lmax, self.grid, self.resolution)
        to_grid, from_grid = jnp.asarray(to_grid, x.dtype), jnp.asarray(from_grid, x.dtype)
        # The linear layers act on channels and the projections on components, so they commute:
        # applying the linear layers to the (lmax+1)**2 coefficients rather than the n_grid
        # values is the same function at several times fewer operations.
        h = nn.Dense(self.hidden, use_bias=False, name="linear_in")(x)
        bias = self.param("bias", nn.initializers.zeros, (self.hidden,), jnp.float32)
        h = normalized_silu(jnp.einsum("gi,...ih->...gh", to_grid, h) + bias)
        h = jnp.einsum("ig,...gh->...ih", from_grid, h)
        return nn.Dense(x.shape[-1], use_bias=False, name="linear_out")(h)
