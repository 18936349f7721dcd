"""Phonons through phonopy: force constants from finite displacements equal those of the
autodiff Hessian; the command writes its files; missing phonopy is a one-line error."""

import json
import sys

import numpy as np
import pytest
from ase.build import bulk

from mlip.calculator import Calculator
from mlip.cli import main
from mlip.errors import MlipError
from mlip.potential import Potential

phonons = pytest.importorskip("mlip.materials.phonons")
pytest.importorskip("phonopy")


def test_hessian_force_constants_equal_finite_displacements():
    # Gated mixing is exactly rotation-equivariant (the S2 grid is so only to its resolution),
    # and phonopy's symmetrisation is off: it would impose diamond's mirror operations, which
    # the model's SO(2) convolution (chiral m-pair mixing) need not respect, on one side only.
    potential = Potential.create("small", species=["Si"], r_cut=3.5, seed=2, dtype="float64",
                                 channels=8, mixing_hidden=8, readout_hidden=8, mixing="gate")
    cell = phonons.primitive_cell(bulk("Si", "diamond", a=5.43))
    by_hessian = phonons.make_phonopy(cell, [2, 2, 2], symmetry=False)
    phonons.hessian_force_constants(by_hessian, potential)
    by_displacements = phonons.make_phonopy(cell, [2, 2, 2], symmetry=False)
    phonons.displacement_force_constants(by_displacements, Calculator(potential, compilation_cache=None),
                                         distance=1e-3)
    reference = by_displacements.force_constants
    np.testing.assert_allclose(by_hessian.force_constants, reference, atol=1e-5 * np.abs(reference).max())
    bands = [phonons.band_structure(p, npoints=20).frequencies for p in (by_hessian, by_displacements)]
    np.testing.assert_allclose(bands[0], bands[1], atol=1e-4 * np.abs(bands[1]).max())


def test_phonons_command(tmp_path, capsys):
    import ase.io

    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, bulk("Si", "diamond", a=5.45))
    prefix = tmp_path / "ph"
    assert main(["phonons", str(structure), "--model", "mlearn-si", "--supercell", "2", "2", "2", "--mesh", "6", "6", "6", "-o", str(prefix)]) == 0
    frequencies = json.loads(prefix.with_suffix(".json").read_text())["frequencies_THz"]
    np.testing.assert_allclose(frequencies["Gamma"][:3], 0.0, atol=0.05)  # acoustic sum rule
    assert min(frequencies["X"]) > 1.0  # a stable crystal
    for suffix in ("-bands.dat", "-dos.dat", "-thermal.dat"):
        assert np.loadtxt(f"{prefix}{suffix}").shape[0] > 5
    assert prefix.with_suffix(".png").stat().st_size > 0


def test_missing_phonopy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "phonopy", None)  # import phonopy raises ImportError
    with pytest.raises(MlipError, match=r'pip install "mlip-facet\[phonons\]"'):
        phonons.require_phonopy()
