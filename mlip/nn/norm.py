"""Equivariant RMS norm for features [N, (lmax+1)**2, C]."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def degree_index(lmax: int) -> np.ndarray:
    """int [(lmax+1)**2]: the degree l of each component in e3nn's ordering."""
    return np.concatenate([np.full(2 * l + 1, l) for l in range(lmax + 1)])


class EquivariantRMSNorm(nn.Module):
    """Divide each degree l by the RMS of its (m, channel) components; learned scale per (l, c).

    The RMS of a degree is rotation invariant, so the norm is equivariant. Scalars (l = 0) are
    also centred over channels. ``eps`` inside the square root keeps zero features (padding
    nodes) finite with finite gradients.
    """

    lmax: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):  # [N, (lmax+1)**2, C] -> same
        channels = x.shape[-1]
        scalars = x[:, :1] - jnp.mean(x[:, :1], axis=-1, keepdims=True)
        x = jnp.concatenate([scalars, x[:, 1:]], axis=1)
        degrees = degree_index(self.lmax)
        parts = []
        for l in range(self.lmax + 1):
            block = x[:, degrees == l]
            rms = jnp.sqrt(jnp.mean(block**2, axis=(1, 2), keepdims=True) + self.eps)
            parts.append(block / rms)
        scale = self.param("scale", nn.initializers.ones, (self.lmax + 1, channels), x.dtype)
        return jnp.concatenate(parts, axis=1) * scale[degrees]
