"""Which implementation of the edge chain a model runs: a runtime choice (`mlip.runtime.Runtime.kernel`,
never saved with a model), resolved for the platform the call runs on, with the kernel checked
against its reference on first use.

    "reference"  the pure-JAX model everywhere (`so2_message_folded`; the kernel is checked
                 against `so2_message_reference`, the same function per degree, to rounding);
    "pallas"     the fused Pallas kernel (Triton on GPU; the Pallas interpreter on CPU, slow,
                 for tests);
    "auto"       "pallas" if the platform is "gpu", else "reference" (`resolve`).

The platform is an argument: the caller names where its computation runs (a training run: the
platform of its devices; `mlip.potential.compute`, and so Potential, Calculator and mlip.sim:
``jax.default_backend()``, where JAX runs a computation whose inputs are not placed elsewhere).

Before a model first uses the kernel on a platform, `select` runs kernel and reference on a
small random input of the model's shapes (lmax, mmax, channels, dtype), values and gradients.
If they disagree beyond tolerance, or the kernel fails to compile or run, it warns loudly
(`KernelFallbackWarning`) and the model runs the reference there for the rest of the process.
One model call never mixes the two: the choice is made once, before tracing its edges.
"""

from __future__ import annotations

import concurrent.futures
import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.so2_message import random_inputs, so2_message_pallas, so2_message_reference

CHOICES = ("auto", "reference", "pallas")
#: Largest accepted max |kernel - reference| / max |reference| over values and gradients. Both
#: sides run at full matmul precision in the check; float32 sums of ~10^3 terms stay near 1e-6.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
#: The check's input: 61 real edges and 3 padding edges (two kernel tiles).
CHECK_EDGES, CHECK_PADDING = 64, 3


class Implementation(NamedTuple):
    """How the model computes its edge chain: ``name`` "reference" or "pallas"; ``interpret``:
    run the Pallas kernel with the interpreter (on CPU)."""

    name: str
    interpret: bool = False


class KernelFallbackWarning(RuntimeWarning):
    """A kernel disagreed with its reference (or failed) on this device; the reference runs."""


def resolve(choice: str, platform: str) -> str:
    """"reference" or "pallas": ``choice`` with "auto" decided for ``platform`` ("cpu", "gpu",
    "tpu", as jax.Device.platform names them): the fused kernel on GPUs only."""
    if choice not in CHOICES:
        raise ValueError(f"kernel must be one of {CHOICES}, got {choice!r}")
    if choice == "auto":
        return "pallas" if platform == "gpu" else "reference"
    return choice


def select(choice: str, lmax: int, mmax: int, channels: int, dtype, platform: str) -> Implementation:
    """The implementation of the edge chain for a model with these shapes on ``platform``:
    `resolve`, then the kernel's first-use check there (the reference if it fails)."""
    if resolve(choice, platform) == "reference":
        return Implementation("reference")
    interpret = platform == "cpu"
    error = _check(platform, interpret, lmax, mmax, channels, jnp.dtype(dtype).name)
    if error is None:
        return Implementation("pallas", interpret)
    warnings.warn(
        f"The fused Pallas edge-chain kernel (kernels/so2_message.py) failed its check against "
        f"the reference on {platform} for lmax={lmax}, mmax={mmax}, channels={channels}, "
        f"{jnp.dtype(dtype).name}: {error}. Falling back to the pure-JAX reference on this device; "
        f"results are correct but slower. Set kernel='reference' to silence this.",
        KernelFallbackWarning,
        stacklevel=2,
    )
    return Implementation("reference")


@functools.lru_cache(maxsize=None)
def _check(platform: str, interpret: bool, lmax: int, mmax: int, channels: int, dtype: str) -> str | None:
    """None if kernel and reference agree on a random input (values and all gradients) on
    ``platform``'s first device, else why not. Cached: once per platform and shape. `select`
    may be called while the model is traced, and JAX's tracing state is per thread: a worker
    thread runs the check eagerly."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_compare, platform, interpret, lmax, mmax, channels, dtype).result()


def _compare(platform: str, interpret: bool, lmax: int, mmax: int, channels: int, dtype: str) -> str | None:
    try:
        with jax.default_device(jax.devices(platform)[0]), jax.default_matmul_precision("highest"):
            inputs = random_inputs(jax.random.PRNGKey(7), lmax, mmax, channels, channels, CHECK_EDGES, CHECK_PADDING, dtype)
            kernel = functools.partial(so2_message_pallas, lmax=lmax, mmax=mmax, interpret=interpret)
            reference = functools.partial(so2_message_reference, lmax=lmax, mmax=mmax)
            got = jax.jit(functools.partial(_value_and_gradients, kernel))(inputs)
            expected = jax.jit(functools.partial(_value_and_gradients, reference))(inputs)
    except Exception as exc:  # a kernel that does not compile or run here must not stop the model
        return f"it raised {type(exc).__name__}: {exc}"
    errors = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(float(np.max(np.abs(np.asarray(b)))), 1e-30))
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected))
    ]
    if not all(np.isfinite(errors)) or max(errors) > TOLERANCE[dtype]:
        return f"relative error {max(errors):.2e} > {TOLERANCE[dtype]:.0e}"
    return None


def _value_and_gradients(message, inputs):
    """The message and the gradients of a fixed random projection of it w.r.t. every input."""
    x, wigner, radial, weights = inputs
    probe = jax.random.normal(jax.random.PRNGKey(8), (x.shape[0], x.shape[1], weights["w0"].shape[-1] // len(wigner)), x.dtype)
    value = message(*inputs)
    gradients = jax.grad(lambda *a: jnp.sum(probe * message(*a)), argnums=(0, 1, 2, 3))(*inputs)
    return value, gradients
