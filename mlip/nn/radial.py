"""Radial embedding of edge lengths: a fixed smooth basis times a cutoff envelope, then one
linear map to the per-path weights of the SO(2) convolution (no per-edge MLP).

Lengths r are in Å. Padding edges have r = 0; every function here is finite there, with finite
gradients, and exactly zero (value and gradient) for r >= r_cut.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BASES = ("bspline", "bessel")


def envelope(r, r_cut: float):
    """Quintic smoothstep cutoff 1 - 10x^3 + 15x^4 - 6x^5, x = r / r_cut; float [...] -> [...].

    The lowest-degree polynomial that is 1 with zero slope and curvature at r = 0 and 0 with
    zero slope and curvature at r = r_cut: energies stay C2 as neighbours cross the cutoff
    (smooth forces, finite force derivatives in MD), it decreases monotonically on [0, r_cut]
    (derivative -30 x^2 (1-x)^2 / r_cut), and being flat at r = 0 it leaves the basis untouched
    at short range. It is exactly 0, gradient included, for r >= r_cut.
    """
    x = r / r_cut
    # Horner form; the polynomial is finite everywhere, so one `where` keeps gradients clean.
    smooth = 1.0 + x**3 * (-10.0 + x * (15.0 - 6.0 * x))
    return jnp.where(x < 1.0, smooth, 0.0)


def _cubic_bspline(u):
    """Cardinal cubic B-spline of u (knot spacing 1, centred at 0, support |u| < 2); C2."""
    a = jnp.abs(u)
    inner = (4.0 - 6.0 * a**2 + 3.0 * a**3) / 6.0
    outer = (2.0 - a) ** 3 / 6.0
    return jnp.where(a < 1.0, inner, jnp.where(a < 2.0, outer, 0.0))


def bspline_basis(r, r_cut: float, n_basis: int):
    """Cubic B-splines with uniform knots on [0, r_cut]; float [E] (Å) -> float [E, n_basis].

    Function i is centred at c_i = i h, h = r_cut / (n_basis - 1), support (c_i - 2h, c_i + 2h):
    the knot grid is uniform and extends two spacings beyond both ends, so the functions sum
    to 1 on [h, r_cut - h] and each is C2 everywhere.
    """
    if n_basis < 2:
        raise ValueError(f"bspline_basis needs n_basis >= 2, got {n_basis}")
    spacing = r_cut / (n_basis - 1)
    centres = np.linspace(0.0, r_cut, n_basis)
    return _cubic_bspline((r[..., None] - centres) / spacing)


def bessel_basis(r, r_cut: float, n_basis: int):
    """sqrt(2/r_cut) sin(n pi r / r_cut) / r for n = 1..n_basis; float [E] (Å) -> [E, n_basis].

    Written with sinc, whose value (n pi / r_cut) and derivatives at r = 0 are exact limits.
    """
    n = np.arange(1, n_basis + 1)
    return np.sqrt(2.0 / r_cut) * (n * np.pi / r_cut) * jnp.sinc(n * r[..., None] / r_cut)


def radial_basis(r, r_cut: float, n_basis: int, basis: str = "bspline"):
    """The named basis ("bspline" or "bessel") times the envelope; float [E] -> [E, n_basis]."""
    functions = {"bspline": bspline_basis, "bessel": bessel_basis}
    if basis not in functions:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    return functions[basis](r, r_cut, n_basis) * envelope(r, r_cut)[..., None]


def _unit_output_init(r_cut: float, n_basis: int, basis: str):
    """Kernel initialiser giving outputs of unit mean square over neighbours spread uniformly in
    the cutoff sphere (density ~ r^2 on [0, r_cut]) for weights drawn iid normal."""

    def init(key, shape, dtype=jnp.float32):
        r = jnp.linspace(0.0, r_cut, 257, dtype=dtype)[1:]
        values = radial_basis(r, r_cut, n_basis, basis)
        mean_square = jnp.sum(r**2 * jnp.sum(values**2, axis=-1)) / jnp.sum(r**2)
        return jax.random.normal(key, shape, dtype) / jnp.sqrt(mean_square)

    return init


class RadialEmbedding(nn.Module):
    """Per-edge weights from edge lengths: Dense(basis(r) * envelope(r)), no bias, no MLP.

    Call: r float [E] in Å -> float [E, n_out]. No bias, so the output vanishes with its
    derivatives at r_cut. Parameters take the dtype of r at initialisation. `kernel` gives
    the weights alone and `radial_embedding` the map with given weights, so that the model can
    run it over chunks of edges inside a jax transformation (mlip.nn.message_passing).
    """

    n_basis: int
    n_out: int
    r_cut: float
    basis: str = "bspline"

    def __call__(self, r):
        return radial_embedding(r, self.kernel(r.dtype), self.r_cut, self.n_basis, self.basis)

    @nn.compact
    def kernel(self, dtype):
        """The [n_basis, n_out] weights, created on first use."""
        init = _unit_output_init(self.r_cut, self.n_basis, self.basis)
        # Under "Dense_0/kernel", where an nn.Dense held it before: older files load, and the
        # same seed draws the same weights.
        return _Kernel(self.n_basis, self.n_out, init, dtype, name="Dense_0")()


class _Kernel(nn.Module):
    """One weight matrix [n_in, n_out] named "kernel", as nn.Dense names its own."""

    n_in: int
    n_out: int
    initializer: Callable
    dtype: Any

    @nn.compact
    def __call__(self):
        return self.param("kernel", self.initializer, (self.n_in, self.n_out), self.dtype)


def radial_embedding(r, kernel, r_cut: float, n_basis: int, basis: str = "bspline"):
    """`RadialEmbedding`'s map with given weights: r [E] (Å), kernel [n_basis, n_out] -> [E, n_out]."""
    return radial_basis(r, r_cut, n_basis, basis) @ kernel
