"""The jitted training step: data-parallel loss and gradient, AdamW update, parameter EMA.

    state, metrics = train_step(state, batches, weights, lr_factor)

``batches`` is a stacked GraphBatch [K, ...] (mlip.train.batches), sharded over the mesh's
"data" axis: each device runs its K / n_devices micro-batches in a `lax.scan`, gradients are
summed across devices with `psum`. Every term is divided by the step's global label counts,
so 1 device x K micro-batches and K devices x 1 give the same loss and update (tested).

The learning rate is applied outside the optax chain, as schedule(step) x ``lr_factor``: the
factor is the host-side plateau multiplier, passed in so that reducing it never recompiles.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mlip.data.graph import GraphBatch
from mlip.models.config import FacetConfig
from mlip.potential import PotentialOutput, compute
from mlip.runtime import Runtime
from mlip.train.config import LossConfig, OptimizerConfig
from mlip.train.loss import Terms, label_counts, penalty_sums, weighted_loss


class TrainState(NamedTuple):
    """Everything the device holds between steps (a pytree; checkpointed whole).

    step: int32 scalar, optimiser steps taken.
    params: model parameters.
    opt_state: optax state of the chain from `make_optimizer`.
    ema_params: exponential moving average of ``params`` (equal to params without EMA).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any


def trainable_labels(params, freeze: list[str]):
    """"frozen" for parameters whose path ("interaction_0/...") starts with a ``freeze`` prefix."""
    def label(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        name = name.removeprefix("params/")
        return "frozen" if any(name.startswith(prefix) for prefix in freeze) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: OptimizerConfig, params, freeze: list[str] = ()) -> optax.GradientTransformation:
    """Clip -> Adam moments -> decoupled weight decay (matrices only), without the learning
    rate (see the module docstring); frozen parameters get zero updates."""
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim >= 2 and "species_embedding" not in jax.tree_util.keystr(path), params
    )
    chain = optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.scale_by_adam(b1=config.beta1, b2=config.beta2, eps=config.eps),
        optax.add_decayed_weights(config.weight_decay, decay_mask) if config.weight_decay else optax.identity(),
    )
    if not freeze:
        return chain
    return optax.multi_transform({"train": chain, "frozen": optax.set_to_zero()}, trainable_labels(params, list(freeze)))


def learning_rate_fn(config: OptimizerConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """step -> learning rate: linear warmup over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` x peak at ``total_steps`` (schedule "cosine") or constant."""
    peak, warmup = config.learning_rate, max(config.warmup_steps, 0)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
        if config.schedule != "cosine":
            return peak * ramp
        progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        cosine = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return peak * jnp.where(step < warmup, ramp, cosine)

    return fn


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    # The EMA starts as a copy: the step donates the state, and one buffer cannot be donated twice.
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.tree.map(jnp.copy, params))


def make_mesh(devices) -> Mesh:
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
    """``tree``'s arrays copied whole onto every device of ``mesh``: the layout in which the
    train step returns its state, so that its first call compiles the program every later
    call reuses (a state on one device would compile it twice). Each process supplies the
    copies on its own devices, so this also works across hosts."""
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        value = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Stacked batches: leading (micro-batch) axis split over the devices."""
    return NamedSharding(mesh, P("data"))


def make_train_step(
    model: FacetConfig,
    optimizer: optax.GradientTransformation,
    loss: LossConfig,
    lr_fn: Callable,
    ema_decay: float | None,
    mesh: Mesh,
    runtime: Runtime,
):
    """The jitted step (see the module docstring). Returns (state, {"loss", "grad_norm", "lr"}).
    ``runtime``: matmul precision and kernel, as at every call site (mlip.runtime); its kernel
    is decided for the platform of the ``mesh``'s devices."""
    platform = mesh.devices.flat[0].platform

    def micro_loss(params, batch: GraphBatch, counts: Terms, weights: Terms):
        output: PotentialOutput = compute(model, params, batch, runtime, platform)
        return weighted_loss(penalty_sums(output, batch, loss.kind, loss.huber_delta), counts, weights)

    def device_loss_and_grad(params, batches, counts, weights):
        def body(carry, batch):
            value, grad = jax.value_and_grad(micro_loss)(params, batch, counts, weights)
            return jax.tree.map(jnp.add, carry, (value, grad)), None

        zero = (jnp.zeros((), batches.positions.dtype), jax.tree.map(jnp.zeros_like, params))
        (value, grad), _ = jax.lax.scan(body, zero, batches)
        return jax.lax.psum((value, grad), "data")

    sharded = jax.shard_map(
        device_loss_and_grad, mesh=mesh, in_specs=(P(), P("data"), P(), P()), out_specs=P(), check_vma=False
    )

    def step(state: TrainState, batches: GraphBatch, weights: Terms, lr_factor):
        counts = label_counts(batches)  # global: the sums span every device's shard
        value, grads = sharded(state.params, batches, counts, weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        lr = lr_fn(state.step) * lr_factor
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
        ema = state.ema_params
        if ema_decay is not None:
            t = state.step.astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
            # e + (1-d)(p-e) rather than d*e + (1-d)*p: a frozen parameter (p == e) then stays bit-exact.
            ema = jax.tree.map(lambda e, p: (e + (1 - decay) * (p - e)).astype(p.dtype), ema, params)
        else:
            ema = params
        new_state = TrainState(state.step + 1, params, opt_state, ema)
        return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads), "lr": lr}

    return jax.jit(step, donate_argnums=0)


def make_validation_step(model: FacetConfig, loss: LossConfig, runtime: Runtime, platform: str):
    """Jitted (params, batch) -> (output, penalty sums, label counts) for one unstacked batch
    on a device of ``platform`` (the validation of a training run)."""

    def validation_step(params, batch: GraphBatch):
        output = compute(model, params, batch, runtime, platform)
        return output, penalty_sums(output, batch, loss.kind, loss.huber_delta), label_counts(batch)

    return jax.jit(validation_step)
