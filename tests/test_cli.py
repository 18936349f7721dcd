"""The `mlip` command line, end to end (in-process, through mlip.cli.main)."""

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip.cli import main
from mlip.data.shards import ShardedDataset


def test_inspect_bundled_structure(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "Si64, 64 atoms, pbc=TTT" in out
    # Diamond Si within 5 Å: 4 + 12 + 12 neighbours (the 4th shell is at 5.43 Å).
    assert "1792 (28.00 neighbours per atom)" in out
    assert "read 1 frame\n" in out


def test_inspect_reports_bad_input_in_one_line(tmp_path, capsys):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.positions[1] = atoms.positions[0] + [0.1, 0, 0]
    path = tmp_path / "overlap.xyz"
    ase.io.write(path, atoms)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlip: error: ") and "overlap.xyz, frame 0: atoms 0 and 1 are 0.1 Å apart" in err
    assert "Traceback" not in err


def test_convert_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = []
    for k in range(5):
        atoms = bulk("Si", "diamond", a=5.43).repeat(1 + k % 2)
        atoms.rattle(0.05, seed=k)
        atoms.info["REF_energy"] = -5.0 * len(atoms)
        atoms.arrays["REF_forces"] = rng.normal(size=(len(atoms), 3))
        atoms.info["REF_stress"] = rng.normal(size=6) * 1e-3
        frames.append(atoms)
    source = tmp_path / "train.xyz"
    ase.io.write(source, frames)
    out = tmp_path / "shards"
    args = ["convert", str(source), "-o", str(out), "-q", "--energy-key", "REF_energy", "--forces-key", "REF_forces", "--stress-key", "REF_stress"]
    assert main(args) == 0
    dataset = ShardedDataset(out)
    assert len(dataset) == 5
    np.testing.assert_allclose(dataset[3].forces, frames[3].arrays["REF_forces"])
    assert main(args) == 2  # refuses to overwrite an existing dataset
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0  # a shard directory, as well as a file
    out_text = capsys.readouterr().out
    assert "5 frames, 38 atoms (2-16 per frame), 1 elements" in out_text and "energy 5/5, forces 5/5, stress 5/5" in out_text


def test_create_and_predict(tmp_path, capsys):
    model = tmp_path / "si.mlip"
    assert main(["create", "--species", "Si", "--r-cut", "4.0", "-o", str(model)]) == 0
    assert "small preset" in capsys.readouterr().out
    assert main(["predict", str(model), str(tmp_path / "missing.xyz")]) == 2
    assert "missing.xyz" in capsys.readouterr().err
    from mlip.registry import bundled_card

    silicon = bundled_card("mlearn-si").example
    assert main(["predict", str(model), str(silicon)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("frame 0: 64 atoms, energy ") and "pressure" in out
    copper = tmp_path / "cu.xyz"
    ase.io.write(copper, bulk("Cu", "fcc", a=3.6))
    assert main(["predict", str(model), str(copper)]) == 2
    assert "element(s) Cu not in this potential's species (Si)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from mlip.potential import Potential

    path = tmp_path_factory.mktemp("model") / "si.mlip"
    Potential.create("small", species=["Si"], r_cut=4.0, channels=8, mixing_hidden=16, readout_hidden=8).save(path)
    return path


def test_relax_command_writes_structure_and_trajectory(tiny_model, tmp_path, capsys):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    source = tmp_path / "si.xyz"
    ase.io.write(source, atoms)
    out = tmp_path / "relaxed.extxyz"
    code = main(["relax", str(source), "--model", str(tiny_model), "--engine", "ase", "--fmax", "0.05", "--steps", "400",
                 "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "converged: energy" in printed and "pressure" in printed
    relaxed = ase.io.read(out)
    assert len(relaxed) == 8 and np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.05
    assert len(ase.io.read(out.with_suffix(".traj"), ":")) > 1


def test_md_command_logs_and_writes_trajectory(tiny_model, tmp_path, capsys):
    source = tmp_path / "si.xyz"
    ase.io.write(source, bulk("Si", "diamond", a=5.43, cubic=True))
    log, traj = tmp_path / "md.log", tmp_path / "md.traj"
    for ensemble in ("nve", "nvt", "npt"):
        args = ["md", str(source), "--model", str(tiny_model), "--ensemble", ensemble, "--steps", "20",
                "--interval", "5", "--log", str(log), "--traj", str(traj), "-q"]
        assert main(args) == 0
        assert "ns/day" in capsys.readouterr().out
        assert len(log.read_text().splitlines()) == 1 + 5  # header + steps 0, 5, 10, 15, 20
        assert len(ase.io.read(traj, ":")) == 5


def test_relax_defaults_to_the_bundled_model_and_structure(tmp_path, monkeypatch, capsys):
    """The README's main job: the default model relaxes its example structure (mlip models)."""
    from mlip.registry import default_model

    card = default_model()
    monkeypatch.chdir(tmp_path)
    assert main(["relax", "--cell", "--fmax", "0.05", "--steps", "300", "-q"]) == 0
    out = capsys.readouterr().out
    assert "(bundled)" in out and "converged" in out
    start = ase.io.read(card.example)
    relaxed = ase.io.read(tmp_path / f"{card.example.stem}-relaxed.extxyz")
    assert relaxed.get_chemical_symbols() == start.get_chemical_symbols()
    # Both examples are strained cubic 2x2x2 supercells: relaxing makes the cell cubic again
    # at the model's lattice constant (Si: 5.47 Å in PBE, mlearn-si 5.467 by its EOS; SrTiO3: 3.94 Å).
    lengths = relaxed.cell.cellpar()[:3] / 2
    assert np.ptp(lengths) < 0.02 * lengths.mean()
    assert np.allclose(relaxed.cell.cellpar()[3:], 90.0, atol=1.0)
    expected = {"Si64-diamond": 5.46, "SrTiO3-perovskite": 3.94}[card.example.stem]
    assert abs(lengths.mean() / expected - 1) < 0.02


def test_relax_and_md_of_many_structures_run_batched(tiny_model, tmp_path, capsys):
    structures = [bulk("Si", "diamond", a=5.43, cubic=True), bulk("Si", "diamond", a=5.5)]
    for seed, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=seed)
    source = tmp_path / "many.xyz"
    ase.io.write(source, structures)
    out = tmp_path / "relaxed.extxyz"
    code = main(["relax", str(source), "--model", str(tiny_model), "--steps", "400", "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "relaxed 2 structures" in printed and "structures/s" in printed and "2 converged" in printed
    relaxed = ase.io.read(out, ":")
    assert [len(a) for a in relaxed] == [8, 2] and all(a.info["relax_status"] == "converged" for a in relaxed)
    assert all(np.linalg.norm(a.get_forces(), axis=1).max() < 0.05 for a in relaxed)
    assert main(["relax", str(source), "--model", str(tiny_model), "--traj", str(tmp_path / "t.traj")]) == 2
    assert "--traj works for one structure only" in capsys.readouterr().err

    log = tmp_path / "md.log"
    code = main(["md", str(source), "--model", str(tiny_model), "--ensemble", "nvt-langevin", "--steps", "10",
                 "--interval", "5", "--log", str(log), "-o", str(tmp_path / "final.extxyz"), "-q"])
    assert code == 0 and "atom-steps/s" in capsys.readouterr().out
    assert len(log.read_text().splitlines()) == 1 + 2 * 3  # header + 2 structures x steps 0, 5, 10
    assert len(ase.io.read(tmp_path / "final.extxyz", ":")) == 2


def test_the_ase_path_runs_only_when_asked_for(tiny_model, tmp_path, capsys):
    # One frame runs on the batched engine like many (never chosen by the frame count); the
    # ASE path only on --engine ase (or --traj / an ASE optimiser), for one structure only.
    source, log = tmp_path / "one.xyz", tmp_path / "md.log"
    ase.io.write(source, bulk("Si", "diamond", a=5.43, cubic=True))
    common = ["md", str(source), "--model", str(tiny_model), "--ensemble", "nvt", "--steps", "4", "--interval", "2",
              "--log", str(log), "-q"]
    assert main(common) == 0 and "1 structures, 4 steps of nvt" in capsys.readouterr().out
    assert log.read_text().startswith("frame step potential_energy_eV")  # the batched engine's log
    assert main(common + ["--engine", "ase"]) == 0 and "ns/day" in capsys.readouterr().out
    assert log.read_text().startswith("Time[ps]")  # ASE's MDLogger
    ase.io.write(tmp_path / "two.xyz", [bulk("Si", "diamond", a=5.43)] * 2)
    for option in (["--engine", "ase"], ["--optimizer", "bfgs"]):
        assert main(["relax", str(tmp_path / "two.xyz"), "--model", str(tiny_model), *option, "-q"]) == 2
        assert f"{' '.join(option)} works for one structure only" in capsys.readouterr().err


def test_cell_relaxation_of_a_slab_is_refused_in_one_line_on_both_paths(tiny_model, tmp_path, capsys):
    slab = bulk("Si", "diamond", a=5.43, cubic=True)
    slab.center(vacuum=5.0, axis=2)
    slab.pbc = (True, True, False)
    for frames, name in (([slab], "slab.xyz"), ([slab, bulk("Si", "diamond", a=5.43)], "both.xyz")):
        ase.io.write(tmp_path / name, frames)
        assert main(["relax", str(tmp_path / name), "--model", str(tiny_model), "--cell", "-q"]) == 2
        err = capsys.readouterr().err
        assert f"{name}, frame 0 is not periodic in all three directions (pbc=TTF)" in err and "Traceback" not in err
    assert not (tmp_path / "slab-relaxed.traj").exists() and not (tmp_path / "slab-relaxed.extxyz").exists()


def test_skipped_frames_keep_their_file_index(tiny_model, tmp_path, capsys):
    good = bulk("Si", "diamond", a=5.43)
    good.rattle(0.05, seed=0)
    bad = good.copy()
    bad.positions[1] = bad.positions[0] + [0.1, 0, 0]
    source = tmp_path / "three.xyz"
    ase.io.write(source, [bad, good, good])
    out = tmp_path / "relaxed.extxyz"
    code = main(["relax", str(source), "--model", str(tiny_model), "--steps", "1", "--fmax", "1e-6",
                 "--on-error", "skip", "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert code == 2 and f"{source}, frame 1: not converged" in printed and f"{source}, frame 2: not" in printed
    assert [a.info["source_frame"] for a in ase.io.read(out, ":")] == [1, 2]


def test_cell_relaxation_does_not_flood_the_output_with_logm_warnings(tiny_model, recwarn):
    import warnings

    from mlip.calculator import Calculator
    from mlip.sim.ase import relax

    atoms = bulk("Si", "diamond", a=5.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = Calculator(tiny_model)
    warnings.simplefilter("always")
    relax(atoms, relax_cell=True, steps=10, progress=False)
    assert not [w for w in recwarn if "logm" in str(w.message)]
