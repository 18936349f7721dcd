"""D3(BJ) dispersion (mlip.nn.dispersion): against the reference s-dftd3 (PyPI `dftd3`), against
its own finite differences, and through the calculator and the command line (float64)."""

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import all_changes

from mlip.calculator import Calculator
from mlip.cli import main
from mlip.errors import MlipError
from mlip.nn.dispersion import PBE, D3Dispersion
from mlip.potential import Potential


def _structures():
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    ethanol = molecule("CH3CH2OH")
    ethanol.center(4.0)
    salt = bulk("NaCl", "rocksalt", a=5.6)
    salt.set_cell(salt.cell.array @ [[1, 0.1, 0], [0, 1, 0.05], [0, 0, 1.02]], scale_atoms=True)
    salt.rattle(0.05, seed=2)
    rng = np.random.default_rng(3)  # a transition metal, and a CN far from every reference
    mixed = Atoms("ZnOCHN", positions=rng.uniform(0, 6, (5, 3)), cell=[[7, 0, 0], [1, 7.5, 0], [0.5, 0.3, 8]], pbc=True)
    return {"Si8": si, "ethanol": ethanol, "NaCl triclinic": salt, "ZnOCHN": mixed}


@pytest.mark.parametrize("name", ["Si8", "ethanol", "ZnOCHN"])
def test_equals_the_reference_dftd3(name):
    dftd3_ase = pytest.importorskip("dftd3.ase", reason="the reference s-dftd3 (pip install dftd3) is not installed")
    atoms = _structures()[name]
    # Two-body D3(BJ)-PBE: s9 = 0 turns off s-dftd3's three-body term.
    atoms.calc = dftd3_ase.DFTD3(damping="d3bj", params_tweaks={"s6": PBE.s6, "s8": PBE.s8, "a1": PBE.a1, "a2": PBE.a2, "s9": 0.0})
    result = D3Dispersion()(atoms)
    assert abs(result.energy - atoms.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(result.forces, atoms.get_forces(), atol=1e-7)
    if atoms.pbc.all():
        np.testing.assert_allclose(result.stress, atoms.get_stress(voigt=False), atol=1e-8)
    else:
        assert result.stress is None
    assert result.energies.sum() == pytest.approx(result.energy, abs=1e-10)


def test_forces_and_stress_are_derivatives_of_the_energy():
    atoms = _structures()["NaCl triclinic"]
    d3 = D3Dispersion()
    result = d3(atoms)
    # The cutoffs are sharp (as in s-dftd3): a step this small moves no pair across them.
    h = 1e-6
    for atom, axis in [(0, 0), (1, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            energies.append(d3(moved).energy)
        assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(result.forces[atom, axis], abs=1e-7)
    for a, b in [(0, 0), (0, 1), (2, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h / 2
            strain[b, a] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            energies.append(d3(strained).energy)
        assert (energies[0] - energies[1]) / (2 * h) / atoms.get_volume() == pytest.approx(result.stress[a, b], abs=1e-8)
    np.testing.assert_allclose(result.forces.sum(axis=0), 0, atol=1e-10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "si.mlip"
    Potential.create("small", species=["Si"], r_cut=4.0, channels=8, mixing_hidden=16, readout_hidden=8).save(path)
    return path


def test_calculator_adds_dispersion_to_every_result(tiny_model):
    atoms = _structures()["Si8"]
    plain = Calculator(tiny_model, dtype="float64", compilation_cache=None)
    with_d3 = Calculator(tiny_model, dtype="float64", compilation_cache=None, dispersion="d3bj")
    d3 = D3Dispersion()(atoms)
    plain.calculate(atoms.copy(), ["energy", "forces", "stress"], all_changes)
    with_d3.calculate(atoms.copy(), ["energy", "forces", "stress"], all_changes)
    assert with_d3.results["energy"] == pytest.approx(plain.results["energy"] + d3.energy, abs=1e-9)
    np.testing.assert_allclose(with_d3.results["forces"], plain.results["forces"] + d3.forces, atol=1e-9)
    np.testing.assert_allclose(with_d3.results["energies"], plain.results["energies"] + d3.energies, atol=1e-9)
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    expected = plain.results["stress"] + np.array([d3.stress[a, b] for a, b in voigt])
    np.testing.assert_allclose(with_d3.results["stress"], expected, atol=1e-10)


def test_bad_names_and_elements_are_one_line_errors():
    with pytest.raises(MlipError, match="unknown dispersion 'd4'"):
        D3Dispersion.from_name("d4")
    with pytest.raises(MlipError, match=r"no reference data for atomic number\(s\) \[110\]"):
        D3Dispersion()(Atoms(numbers=[14, 110], positions=[[0, 0, 0], [2.5, 0, 0]]))


def test_d3_on_the_command_line(tiny_model, tmp_path, capsys):
    source = tmp_path / "si.xyz"
    ase.io.write(source, _structures()["Si8"])
    energies = []
    for flags in ([], ["--d3"]):
        assert main(["predict", str(tiny_model), str(source), "--dtype", "float64", *flags]) == 0
        energies.append(float(capsys.readouterr().out.split("energy ")[1].split()[0]))
    assert energies[1] - energies[0] == pytest.approx(D3Dispersion()(ase.io.read(source)).energy, abs=1e-5)


def test_reused_pair_list_gives_the_results_of_a_fresh_build():
    atoms = _structures()["ZnOCHN"]
    d3 = D3Dispersion(skin=1.0)
    d3(atoms)
    rng = np.random.default_rng(0)
    for step in range(3):  # moves under skin/2: the list is kept
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        kept, fresh = d3(atoms), D3Dispersion(skin=1.0)(atoms)
        assert kept.energy == pytest.approx(fresh.energy, abs=1e-12)
        np.testing.assert_allclose(kept.forces, fresh.forces, atol=1e-12)
    assert d3.builds == 1
    atoms.positions[0] += [1.5, 0, 0]  # more than skin/2
    d3(atoms)
    assert d3.builds == 2
