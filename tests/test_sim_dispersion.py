"""D3(BJ) dispersion inside the batched engine (mlip.sim): the same energy, forces and stress
as the ASE calculator with ``dispersion="d3bj"``, and the same relaxation (float64)."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from mlip.calculator import Calculator
from mlip.cli import main
from mlip.errors import MlipError
from mlip.nn.dispersion import D3Dispersion
from mlip.potential import Potential
from mlip.sim import relax


@pytest.fixture(scope="module")
def potential():
    return Potential.create("small", species=["H", "C", "O", "Si"], r_cut=4.0, seed=0, dtype="float64",
                            channels=8, mixing_hidden=8, readout_hidden=8)


def _structures():
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    si.set_cell(si.cell.array @ [[1, 0.05, 0], [0, 1, 0.02], [0, 0, 1.01]], scale_atoms=True)
    boxed = molecule("CH3CH2OH")  # a molecule in a periodic box: many images within 31.75 Å
    boxed.center(3.0)
    boxed.pbc = True
    free = molecule("CH3CH2OH")  # and with open boundaries
    free.rotate(30, "x")
    return [si, boxed, free]


def _calculated(potential, atoms, dispersion):
    atoms = atoms.copy()
    atoms.calc = Calculator(potential, compilation_cache=None, dispersion=dispersion)
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def test_batched_energy_forces_stress_equal_the_calculator(potential):
    structures = _structures()
    # Zero steps: the results at the input geometry, all three structures in one batch (fmax
    # 100: "converged", as the command-line test below, which then reuses this compilation).
    results = relax(potential, structures, fmax=100.0, max_steps=0, dispersion="d3bj")
    for atoms, result in zip(structures, results):
        energy, forces, stress = _calculated(potential, atoms, "d3bj")
        assert abs(result.energy - energy) < 1e-6
        np.testing.assert_allclose(result.forces, forces, atol=1e-6)
        if stress is None:
            assert result.stress is None
        else:
            np.testing.assert_allclose(result.stress, stress, atol=1e-7)
        assert abs(D3Dispersion()(atoms).energy) > 0.05  # far above the tolerance (test_dispersion: the
        # calculator's result is the model's plus this)


@pytest.mark.benchmark  # ~1 min of CPU (a cell-relax program and 20 ASE steps with D3); CI keeps the
# energy/forces/stress equality above and the CLI relax below
def test_batched_relaxation_with_d3_equals_ase(potential):
    atoms = _structures()[0]
    (result,) = relax(potential, [atoms], fmax=0.05, relax_cell=True, max_steps=60, dispersion="d3bj")
    reference = atoms.copy()
    reference.calc = Calculator(potential, compilation_cache=None, dispersion="d3bj")
    optimizer = FIRE(FrechetCellFilter(reference), logfile=None)
    converged = optimizer.run(fmax=0.05, steps=60)
    assert result.converged == converged and result.steps == optimizer.nsteps
    assert abs(result.energy - reference.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(result.atoms.positions, reference.positions, atol=1e-6)
    np.testing.assert_allclose(result.atoms.cell.array, reference.cell.array, atol=1e-6)


def test_unknown_dispersion_is_a_one_line_error(potential):
    with pytest.raises(MlipError, match="unknown dispersion 'd4'"):
        relax(potential, _structures()[:1], dispersion="d4")


def test_d3_runs_on_the_batched_engine_from_the_command_line(potential, tmp_path, capsys):
    import ase.io

    model, source, output = tmp_path / "model.mlip", tmp_path / "three.xyz", tmp_path / "out.extxyz"
    potential.save(model)
    structures = _structures()
    ase.io.write(source, structures)
    assert main(["relax", str(source), "--model", str(model), "--d3", "--steps", "0", "--fmax", "100", "-o",
                 str(output), "-q"]) == 0
    assert "relaxed 3 structures" in capsys.readouterr().out
    for atoms, written in zip(structures, ase.io.read(output, ":")):
        assert written.get_potential_energy() == pytest.approx(_calculated(potential, atoms, "d3bj")[0], abs=1e-6)
