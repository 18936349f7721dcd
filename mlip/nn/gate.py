"""Gated nonlinearity: the exactly equivariant alternative to spherical-grid mixing.

Also home of the activations rescaled to unit second moment, shared with ``s2_mixing``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit

from mlip.nn.norm import degree_index


def _inverse_rms_under_normal(fn) -> float:
    """1 / sqrt(E[fn(z)^2]) for z ~ N(0, 1), by Gauss-Hermite quadrature (numpy ``fn``)."""
    z, w = np.polynomial.hermite_e.hermegauss(100)
    return float(1.0 / np.sqrt(np.sum(w * fn(z) ** 2) / np.sum(w)))


# Computed with numpy so that importing mlip does not start a JAX backend.
_SILU_SCALE = _inverse_rms_under_normal(lambda z: z * expit(z))
_SIGMOID_SCALE = _inverse_rms_under_normal(expit)


def normalized_silu(x):
    """SiLU scaled so that unit-normal inputs give unit second moment (keeps init at unit scale)."""
    return _SILU_SCALE * jax.nn.silu(x)


def normalized_sigmoid(x):
    """Sigmoid scaled so that unit-normal inputs give unit second moment."""
    return _SIGMOID_SCALE * jax.nn.sigmoid(x)


class Gate(nn.Module):
    """Scalars through SiLU; each (l > 0, channel) block scaled by a gate computed from scalars.

    x [..., (lmax+1)**2, C] -> same shape. The gates are ``sigmoid(Dense(scalars))``, one per
    (l, channel), shared by the 2l+1 components of the block. Scaling a whole block by an
    invariant keeps it equivariant, so the layer is exact for any rotation (no grid). SiLU and
    sigmoid are rescaled to unit second moment, keeping unit-scale features at unit scale.
    """

    @nn.compact
    def __call__(self, x):
        lmax = _lmax_of(x)
        if lmax == 0:
            return normalized_silu(x)
        channels = x.shape[-1]
        scalars = x[..., 0, :]
        gates = nn.Dense(lmax * channels, name="gates")(scalars)
        gates = normalized_sigmoid(gates).reshape(*scalars.shape[:-1], lmax, channels)
        # Component i (l >= 1) uses the gate of its degree: row degree_index(lmax)[i] - 1.
        vectors = x[..., 1:, :] * gates[..., degree_index(lmax)[1:] - 1, :]
        return jnp.concatenate([normalized_silu(scalars)[..., None, :], vectors], axis=-2)


def _lmax_of(x) -> int:
    """lmax of features [..., (lmax+1)**2, C]; raises on a non-square component count."""
    lmax = round(np.sqrt(x.shape[-2])) - 1
    if (lmax + 1) ** 2 != x.shape[-2]:
        raise ValueError(f"features need (lmax+1)**2 components on axis -2, got shape {x.shape}")
    return lmax
