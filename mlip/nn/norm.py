"""Equivariant RMS norm for features [N, (lmax+1)**2, C]."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def degree_index(lmax: int) -> np.ndarray:
    """int [(lmax+1)**2]: the degree l of each component in e3nn's ordering."""
    return np.concatenate([np.full(2 * l + 1, l) for l in range(lmax + 1)])


class EquivariantRMSNorm(nn.Module):
    """Divide a node's features by their RMS over all (l, m, channel); learned scale per (l, c).

    The sum of squares over all components is rotation invariant, so the norm is equivariant.
    It is deliberately one RMS per node, not one per degree: on a symmetric site (e.g. a
    diamond or fcc atom) the l = 1, 2 features vanish, and a per-degree RMS would turn them
    into x/|x|, a cusp where the energy is continuous but its slope is unbounded (a random
    model's MD then gains eV per atom in a femtosecond). The scalar channels keep this RMS away
    from zero; ``eps`` keeps zero features (padding nodes) finite with finite gradients.
    """

    lmax: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):  # [N, (lmax+1)**2, C] -> same
        channels = x.shape[-1]
        rms = jnp.sqrt(jnp.mean(x**2, axis=(1, 2), keepdims=True) + self.eps)
        scale = self.param("scale", nn.initializers.ones, (self.lmax + 1, channels), x.dtype)
        return x / rms * scale[degree_index(self.lmax)]
