"""ZBL repulsion: the published formula, the cutoff, and a repulsive core in the full model."""

import jax.numpy as jnp
import numpy as np

from mlip.data.frame import make_frame
from mlip.nn.zbl import zbl_pair_energy
from mlip.potential import Potential


def test_matches_the_zbl_formula_and_vanishes_at_the_cutoff():
    r = np.array([0.5, 1.0, 2.0, 5.0, 0.0])
    z = np.array([14, 14, 8, 14, 14])
    mask = np.array([True, True, True, True, False])
    got = np.asarray(zbl_pair_energy(jnp.asarray(r), jnp.asarray(z), jnp.asarray(z), 5.0, jnp.asarray(mask)))
    # Hand evaluation of Ziegler-Biersack-Littmark for r = 1 Å, Si-Si, times the envelope.
    a = 0.46850 / (2 * 14**0.23)
    x = 1.0 / a
    phi = 0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x) + 0.02817 * np.exp(-0.20162 * x)
    u = 1.0 / 5.0
    expected = 0.5 * 14.399645 * 196 / 1.0 * phi * (1 - 10 * u**3 + 15 * u**4 - 6 * u**5)
    np.testing.assert_allclose(got[1], expected, rtol=1e-12)
    assert got[0] > got[1] > 0 and got[3] == 0.0 and got[4] == 0.0


def test_zbl_ends_at_the_covalent_bond_length_and_old_files_keep_the_cutoff(tmp_path):
    from ase.data import covalent_radii

    from mlip.nn.zbl import covalent_range

    z = jnp.asarray([32, 32, 8])
    r_max = covalent_range(z, jnp.asarray([32, 32, 1]), 5.0, jnp.float64)
    np.testing.assert_allclose(r_max, [2 * covalent_radii[32]] * 2 + [covalent_radii[8] + covalent_radii[1]])
    got = zbl_pair_energy(jnp.asarray([2.0, 2.45, 0.9]), z, jnp.asarray([32, 32, 1]), r_max, jnp.ones(3, bool))
    assert got[0] > 0 and got[1] == 0.0 and got[2] > 0  # Ge-Ge bonds are 2.45 Å: no ZBL there

    potential = Potential.create("small", species=["Si"], r_cut=4.0, dtype="float64", channels=8,
                                 mixing_hidden=16, readout_hidden=8)
    assert potential.config.zbl_range == "covalent"
    old = potential.config.to_dict()
    del old["zbl_range"]  # a file written before the field: ZBL ended at r_cut
    assert type(potential.config).from_dict(old).zbl_range == "cutoff"


def test_model_is_repulsive_at_short_range():
    potential = Potential.create("small", species=["Si"], r_cut=4.0, dtype="float64", channels=8,
                                 mixing_hidden=16, readout_hidden=8)
    energies = [potential.predict([make_frame(np.array([14, 14]), np.array([[0, 0, 0], [r, 0.1, 0.2]]))])[0].energy for r in (0.3, 0.5, 0.8)]
    assert energies[0] > energies[1] > energies[2]
    assert energies[0] > 100  # eV: the nuclei cannot be pushed through each other
