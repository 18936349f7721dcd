"""The training loss: weighted per-atom energy, force and stress errors of a padded batch.

Each term is a sum of per-item penalties divided by a count of labelled items (see
`LossConfig`). Sums and counts are kept apart so that a step made of several micro-batches,
on one device or many, divides by the step's global counts and so gives exactly the loss (and
gradient) of one big batch: `step_loss` takes the counts as an argument.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mlip.data.graph import GraphBatch
from mlip.potential import PotentialOutput


class Terms(NamedTuple):
    """One value per loss term: energy, forces, stress."""

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array


def label_counts(batch: GraphBatch) -> Terms:
    """Labelled items in ``batch`` (float scalars): structures with an energy, force components
    of atoms with forces, stress components of periodic structures with a stress. Stacked
    batches (a leading micro-batch axis) are counted in full."""
    labels = batch.labels
    has_forces = jnp.take_along_axis(labels.has_forces, batch.node_graph, axis=-1) & batch.node_mask
    periodic = jnp.all(batch.pbc, axis=-1)
    return Terms(
        energy=jnp.sum(labels.has_energy & batch.graph_mask).astype(jnp.float32),
        forces=3.0 * jnp.sum(has_forces).astype(jnp.float32),
        stress=9.0 * jnp.sum(labels.has_stress & batch.graph_mask & periodic).astype(jnp.float32),
    )


def penalty_sums(output: PotentialOutput, batch: GraphBatch, kind: str, huber_delta: float) -> Terms:
    """Sums of penalties over the labelled items of one (unstacked) batch, each structure's
    (and its atoms') penalties scaled by its ``Labels.weight``. The counts are not weighted:
    weights of 1 give the plain mean, and a weight of 3 counts a structure as three copies."""
    labels = batch.labels

    def penalty(error):
        if kind == "huber":
            return optax.huber_loss(error, delta=huber_delta)
        return jnp.square(error)

    has_energy = labels.has_energy & batch.graph_mask
    per_atom = (output.energy - labels.energy) / jnp.maximum(batch.n_node, 1)
    has_forces = labels.has_forces[batch.node_graph] & batch.node_mask
    has_stress = labels.has_stress & output.stress_mask
    weight, node_weight = labels.weight, labels.weight[batch.node_graph]
    return Terms(
        energy=jnp.sum(jnp.where(has_energy, weight * penalty(per_atom), 0.0)),
        forces=jnp.sum(jnp.where(has_forces[:, None], node_weight[:, None] * penalty(output.forces - labels.forces), 0.0)),
        stress=jnp.sum(jnp.where(has_stress[:, None, None], weight[:, None, None] * penalty(output.stress - labels.stress), 0.0)),
    )


def weighted_loss(sums: Terms, counts: Terms, weights: Terms) -> jax.Array:
    """Σ_t weight_t x sum_t / count_t (a term with no labelled items contributes zero)."""
    return sum(w * s / jnp.maximum(c, 1.0) for s, c, w in zip(sums, counts, weights))
