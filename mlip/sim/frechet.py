"""Variable-cell coordinates of ASE's FrechetCellFilter, batched.

The degrees of freedom of a structure are its atoms' positions in the undeformed cell,
X = x F^-T, and the matrix logarithm L = log F of the deformation gradient F = (H0^-1 H)^T
(H0 the cell at the start, H the current one, rows are lattice vectors), so that

    F = exp(L),   H = H0 F^T,   x = X F^T.

The generalised forces are -dE/dX = f F for atoms and, for the cell, the gradient of the
enthalpy E + p V with respect to L divided by the atom count (ASE's ``exp_cell_factor``),
computed through the Fréchet derivative of the matrix exponential (the vector-Jacobian
product of `expm`). The optimiser moves the
cell coordinates n L (n atoms); ASE stores n log(n F) = n L + n log(n) I, which differs by a
constant, to which FIRE is blind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: exp by scaling and squaring: A = L / 2^s with |A|_1 <= 1/16, then a Taylor series of this
#: order (truncation error below 1e-20 relative), then s <= MAX_SQUARINGS squarings; exact to
#: rounding for |L|_1 < 2^12 (a cell stretched by e^4096). jax.scipy.linalg.expm is as exact
#: but its branches on the Padé order take minutes to compile inside a batched step.
TAYLOR_ORDER = 10
MAX_SQUARINGS = 16


def expm(matrices):
    """exp of each [..., 3, 3] matrix; differentiable (its VJP is the adjoint Fréchet
    derivative)."""
    norm = jnp.max(jnp.sum(jnp.abs(matrices), axis=-2), axis=-1)  # 1-norm
    squarings = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-300))) + 4, 0, MAX_SQUARINGS)
    scaled = matrices / (2.0**squarings)[..., None, None]
    eye = jnp.broadcast_to(jnp.eye(3, dtype=matrices.dtype), matrices.shape)

    # Loops as scans, not unrolled: XLA on the CPU compiles the unrolled 26 steps (and their
    # VJP) in ~3 s, a scan in ~0.7 s, and a batched relaxation step holds several of them.
    def taylor(carry, k):
        result, term = carry
        term = term @ scaled / k
        return (result + term, term), None

    orders = jnp.arange(1, TAYLOR_ORDER + 1, dtype=matrices.dtype)
    (result, _), _ = jax.lax.scan(taylor, (eye, eye), orders)

    def square(result, k):
        return jnp.where((k < squarings)[..., None, None], result @ result, result), None

    result, _ = jax.lax.scan(square, result, jnp.arange(MAX_SQUARINGS, dtype=squarings.dtype))
    return result


def deformation(log_deformation):
    """F = exp(L), [G, 3, 3]."""
    return expm(log_deformation)


def cartesian(filter_positions, log_deformation, reference_cell, node_graph):
    """(positions [N, 3], cell [G, 3, 3]) in Å from X [N, 3] and L [G, 3, 3]."""
    transposed = jnp.swapaxes(deformation(log_deformation), 1, 2)  # F^T
    positions = jnp.einsum("ni,nij->nj", filter_positions, transposed[node_graph])
    return positions, reference_cell @ transposed


def generalized_forces(forces, stress, cell, log_deformation, pressure, n_node, node_graph):
    """FrechetCellFilter's forces: atoms [N, 3] (eV/Å) and cell [G, 3, 3] (eV per atom).

    forces: [N, 3] eV/Å; stress: [G, 3, 3] eV/Å^3 (ASE sign); pressure: [G] eV/Å^3, the
    scalar pressure of the enthalpy; n_node: [G] atoms per structure (the cell factor).
    """
    F = deformation(log_deformation)
    volume = jnp.abs(jnp.linalg.det(cell))
    eye = jnp.eye(3, dtype=stress.dtype)
    virial = -volume[:, None, None] * (stress + pressure[:, None, None] * eye)
    # Gradient with respect to F (UnitCellFilter's), then the chain rule through exp.
    unit_cell_gradient = virial @ jnp.linalg.inv(jnp.swapaxes(F, 1, 2))
    _, pullback = jax.vjp(expm, log_deformation)
    (log_gradient,) = pullback(unit_cell_gradient)
    atom_forces = jnp.einsum("ni,nij->nj", forces, F[node_graph])
    return atom_forces, log_gradient / jnp.maximum(n_node, 1)[:, None, None]
