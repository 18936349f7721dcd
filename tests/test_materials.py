"""EOS and elastic constants: analytic calculators (the fits recover what they were given), the
bundled Si model (cubic symmetry, B from Cij equals B0 from the EOS), bad input, the commands."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.lj import LennardJones
from ase.eos import birchmurnaghan
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.calculator import Calculator
from mlip.cli import main
from mlip.errors import MlipError
from mlip.materials.elastic import moduli, stiffness
from mlip.materials.eos import equation_of_state, fit_birch_murnaghan
from mlip.potential import Potential

BM = dict(E0=-10.8, B0=0.6, BP=4.3, V0=40.9)  # eV, eV/Å^3, -, Å^3


class AnalyticCrystal(AseCalculator):
    """E = Birch-Murnaghan(V) and σ = C ε(cell) with ε the symmetric strain from ``cell0``:
    an exactly known equation of state and stiffness."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, cell0, c):
        super().__init__()
        self.cell0, self.c = np.asarray(cell0), np.asarray(c)

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        deformation = np.linalg.solve(self.cell0, self.atoms.cell.array)  # 1 + ε
        strain = 0.5 * (deformation + deformation.T) - np.eye(3)
        voigt = full_3x3_to_voigt_6_stress(strain) * np.array([1, 1, 1, 2, 2, 2])  # engineering shear
        self.results = {"energy": birchmurnaghan(self.atoms.get_volume(), **BM),
                        "forces": np.zeros((len(self.atoms), 3)), "stress": self.c @ voigt}


def random_stiffness(seed=0):
    """[6, 6] symmetric positive definite, eV/Å^3 (a triclinic crystal)."""
    a = np.random.default_rng(seed).normal(size=(6, 6))
    return 0.3 * (a @ a.T / 6 + np.eye(6))


def analytic_silicon():
    atoms = bulk("Si", "diamond", a=5.47)
    atoms.calc = AnalyticCrystal(atoms.cell.array, random_stiffness())
    return atoms


def test_eos_recovers_birch_murnaghan():
    atoms = analytic_silicon()
    atoms.set_cell(atoms.cell * (BM["V0"] / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
    fit = equation_of_state(atoms, max_strain=0.06, points=7)
    np.testing.assert_allclose([fit.e0, fit.b0, fit.b0_prime, fit.v0], list(BM.values()), rtol=1e-6)


def test_stiffness_recovers_analytic_tensor():
    atoms = analytic_silicon()
    np.testing.assert_allclose(stiffness(atoms), atoms.calc.c, rtol=1e-9, atol=1e-12)


def test_moduli_of_an_isotropic_solid():
    bulk_modulus, shear = 100.0, 40.0  # GPa
    c = np.diag([0.0, 0, 0, shear, shear, shear])
    c[:3, :3] = bulk_modulus - 2 * shear / 3
    c[np.arange(3), np.arange(3)] = bulk_modulus + 4 * shear / 3
    m = moduli(c)
    np.testing.assert_allclose([m.bulk_voigt, m.bulk_reuss, m.shear_voigt, m.shear_reuss], [100, 100, 40, 40])
    np.testing.assert_allclose(m.young, 9 * 100 * 40 / (300 + 40))
    np.testing.assert_allclose(m.poisson, (300 - 80) / (2 * 340))


def test_bad_input_is_one_clear_error():
    volumes = np.linspace(30, 40, 7)
    with pytest.raises(MlipError, match="no minimum"):
        fit_birch_murnaghan(volumes, -volumes)  # E falls all the way: no minimum in range
    with pytest.raises(MlipError, match="at least 5"):
        fit_birch_murnaghan(volumes[:3], volumes[:3])
    slab = analytic_silicon()
    slab.pbc = [True, True, False]
    with pytest.raises(MlipError, match="periodic in all three"):
        stiffness(slab)
    with pytest.raises(MlipError, match="mechanically unstable"):
        moduli(-np.eye(6))
    rattled = bulk("Ar", "fcc", a=5.2, cubic=True)
    rattled.rattle(0.2, seed=0)
    rattled.calc = LennardJones(sigma=3.4, epsilon=0.01, rc=8.0, smooth=True)
    with pytest.raises(MlipError, match="did not relax .* in 2 steps"):
        equation_of_state(rattled, relax_atoms=True, fmax=1e-4, steps=2)


@pytest.fixture(scope="module")
def relaxed_silicon():
    from mlip.materials.deform import relax_crystal

    atoms = bulk("Si", "diamond", a=5.45)
    atoms.calc = Calculator(Potential.load("mlearn-si"), compilation_cache=None)
    relax_crystal(atoms, fmax=1e-3, steps=100)
    return atoms


def test_bundled_silicon_is_cubic_and_consistent(relaxed_silicon):
    c = stiffness(relaxed_silicon, relax_atoms=True, fmax=1e-3)
    c11, c12, c44 = np.diag(c)[:3], c[[0, 0, 1], [1, 2, 2]], np.diag(c)[3:]
    scale = c11.mean()
    np.testing.assert_allclose(c11, c11.mean(), atol=1e-3 * scale)
    np.testing.assert_allclose(c12, c12.mean(), atol=1e-3 * scale)
    np.testing.assert_allclose(c44, c44.mean(), atol=1e-3 * scale)
    np.testing.assert_allclose(c[:3, 3:], 0.0, atol=1e-3 * scale)
    np.testing.assert_allclose(c[3:, 3:] - np.diag(c44), 0.0, atol=1e-3 * scale)
    eos = equation_of_state(relaxed_silicon)
    assert abs((c11.mean() + 2 * c12.mean()) / 3 / eos.b0 - 1) < 0.03


def test_commands(tmp_path, capsys):
    import ase.io

    structure = tmp_path / "si.extxyz.gz"  # compressed structures read as they are
    ase.io.write(structure, bulk("Si", "diamond", a=5.45))
    assert main(["eos", str(structure), "--model", "mlearn-si", "-o", str(tmp_path / "eos")]) == 0
    fit = json.loads((tmp_path / "eos.json").read_text())
    assert 50 < fit["b0_GPa"] < 200 and (tmp_path / "eos.png").stat().st_size > 0
    assert main(["elastic", str(structure), "--model", "mlearn-si", "--clamped-ions", "-o", str(tmp_path / "elastic")]) == 0
    result = json.loads((tmp_path / "elastic.json").read_text())
    assert np.shape(result["C_GPa"]) == (6, 6) and (tmp_path / "elastic.png").stat().st_size > 0
    slab = bulk("Si", "diamond", a=5.45)
    slab.pbc = [True, True, False]
    ase.io.write(tmp_path / "slab.extxyz", slab)
    capsys.readouterr()
    assert main(["elastic", str(tmp_path / "slab.extxyz")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "periodic in all three directions" in error
