"""ZBL screened-nuclear repulsion: the physical short-range limit of the pair energy.

E_ij = k Z_i Z_j / r * phi(r / a) * envelope(r),   a = 0.46850 / (Z_i^0.23 + Z_j^0.23) Å,
phi(x) = 0.18175 e^-3.19980x + 0.50986 e^-0.94229x + 0.28022 e^-0.40290x + 0.02817 e^-0.20162x,
k = e^2 / (4 pi eps0) = 14.399645 eV Å (Ziegler, Biersack, Littmark, 1985).

Added to the learned energy (as MACE-MP-0b does) so that atoms never fall through each other,
even for a freshly initialised model or far outside the training data; the smooth envelope
takes it to zero, with two vanishing derivatives, at the sum of covalent radii (`covalent_range`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from mlip.nn.radial import envelope

COULOMB_EV_A = 14.399645
_PHI_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
_PHI_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])


def zbl_pair_energy(lengths, z_receiver, z_sender, r_max, edge_mask):
    """Energy per directed edge, [E] eV: half of E_ij (each pair appears as i->j and j->i).

    lengths: [E] Å (zero for padding edges, which give exactly zero); z_*: [E] atomic numbers;
    r_max: Å, where the envelope takes the term to zero: a float or [E] (`covalent_range`).
    """
    dtype = lengths.dtype
    safe_r = jnp.where(edge_mask, lengths, 1.0)
    zi, zj = z_receiver.astype(dtype), z_sender.astype(dtype)
    a = 0.46850 / (zi**0.23 + zj**0.23)
    x = safe_r[:, None] / a[:, None]
    phi = jnp.sum(jnp.asarray(_PHI_C, dtype) * jnp.exp(-jnp.asarray(_PHI_D, dtype) * x), axis=-1)
    energy = 0.5 * COULOMB_EV_A * zi * zj / safe_r * phi * envelope(safe_r, r_max)
    return jnp.where(edge_mask, energy, 0.0)


def covalent_range(z_receiver, z_sender, r_cut: float, dtype):
    """[E] Å: the sum of the two covalent radii (ase.data.covalent_radii), at most ``r_cut``.

    The ZBL term is a short-range wall: ended at the covalent bond length, as MACE does, it is
    negligible at equilibrium distances. Ended at r_cut instead it adds ~1.5 eV/atom at Ge-Ge
    bond lengths, a stiff term the learned energy then has to cancel.
    """
    radii = jnp.asarray(covalent_radii, dtype)
    return jnp.minimum(radii[z_receiver] + radii[z_sender], r_cut)
