"""Bad input of every kind ends in a correct result or one clear error (issue 13): float64
models on the command line, bounded-memory prediction, large coordinates, non-finite results,
corrupt files. Tiny models, small structures."""

import dataclasses

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk, molecule

from mlip.cli import main
from mlip.data.frame import frame_from_atoms
from mlip.errors import DataError, MlipError
from mlip.potential import Potential

TINY = dict(channels=8, mixing_hidden=16, readout_hidden=8, lmax=1, mmax=1, num_layers=1)


def tiny(species=("Si",), dtype="float64", **overrides):
    return Potential.create("small", species=list(species), r_cut=4.0, seed=1, dtype=dtype, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def si32():
    return tiny(dtype="float32")


@pytest.fixture
def x64_off():
    """The command line as a fresh process sees it: JAX's x64 mode off."""
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", True)


def test_cli_switches_x64_on_for_float64_models(tmp_path, capsys, x64_off):
    jax.config.update("jax_enable_x64", True)
    model = tmp_path / "m64.mlip"
    tiny().save(model)
    jax.config.update("jax_enable_x64", False)
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.02, seed=0)
    atoms.info["energy"] = -10.0
    atoms.arrays["forces"] = np.zeros((2, 3))
    atoms.info["stress"] = np.zeros(6)
    data = tmp_path / "si.xyz"
    ase.io.write(data, atoms)
    assert main(["predict", str(model), str(data)]) == 0, capsys.readouterr().err
    assert jax.config.jax_enable_x64 and capsys.readouterr().out.startswith("frame 0: 2 atoms")
    jax.config.update("jax_enable_x64", False)
    assert main(["evaluate", str(model), str(data), "-q"]) == 0, capsys.readouterr().err
    jax.config.update("jax_enable_x64", False)
    assert main(["relax", str(data), "--model", str(model), "--steps", "2", "--dtype", "float64", "-q",
                 "-o", str(tmp_path / "r.xyz")]) in (0, 2)
    assert "x64" not in capsys.readouterr().err
    assert main(["predict", str(model), str(data), "--dtype", "float32"]) == 0


def test_predict_batches_in_bounded_memory_and_streams(si32):
    frames = [frame_from_atoms(bulk("Si", "diamond", a=5.43 + 0.01 * k)) for k in range(7)]
    alone = [si32.predict([f])[0] for f in frames]
    consumed = []

    def stream():
        for frame in frames:
            consumed.append(frame)
            yield frame

    results = si32.predict_frames(stream(), max_nodes=4)  # two 2-atom frames per batch
    first_frame, first = next(results)
    assert first_frame is frames[0] and len(consumed) <= 3  # one batch read ahead, not the file
    rest = [p for _, p in results]
    for expected, got in zip(alone, [first] + rest, strict=True):
        np.testing.assert_allclose(got.forces, expected.forces, atol=1e-6)
        assert got.energy == pytest.approx(expected.energy, abs=1e-5)


@pytest.mark.parametrize("offset", [1e4, 1e6, 1e9])
def test_large_coordinates_lose_no_precision(si32, offset):
    crystal = bulk("Si", "diamond", a=5.43, cubic=True)
    crystal.rattle(0.05, seed=1)
    water = molecule("H2O")
    potential = tiny(("H", "O", "Si"), dtype="float32")
    for atoms in (crystal, water):
        ref = potential.predict([atoms])[0]
        far = atoms.copy()
        far.positions += offset
        got = potential.predict([far])[0]
        np.testing.assert_allclose(got.forces, ref.forces, atol=2e-5)
        assert got.energy == pytest.approx(ref.energy, abs=1e-4)


def test_non_finite_prediction_is_an_error_naming_the_frame(si32):
    params = jax.tree.map(lambda p: np.full(p.shape, np.nan, p.dtype), si32.params)
    broken = dataclasses.replace(si32, params=params)
    with jax.debug_nans(False), pytest.raises(DataError, match="frame 0: the potential gave a non-finite energy"):
        broken.predict([bulk("Si"), bulk("Si", "diamond", a=5.5)])


def _sheared_silicon():
    """Diamond Si in a very skewed (non-reduced) cell of the same lattice, rattled."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=3)
    shear = np.array([[1, 0, 0], [30, 1, 0], [20, -40, 1]])
    sheared = atoms.copy()
    sheared.set_cell(shear @ atoms.cell.array, scale_atoms=False)
    return atoms, sheared


def test_sim_reduces_skewed_cells_and_answers_in_the_users_cell():
    from mlip import sim

    atoms, sheared = _sheared_silicon()
    far = atoms.copy()
    far.positions += 1e6  # far from the origin, in a float32 simulation
    big = bulk("Si", "diamond", a=5.43, cubic=True).repeat((1, 1, 2))
    big.rattle(0.05, seed=4)
    results = sim.relax(tiny(dtype="float32"), [sheared, big, far, atoms], fmax=0.01, relax_cell=True, max_steps=20)
    skewed, _, far_result, plain = results
    assert skewed.steps == plain.steps == far_result.steps == 20
    assert skewed.energy == pytest.approx(plain.energy, abs=1e-4) == far_result.energy
    # The same lattice in the user's basis: the shear stays, applied to the relaxed cell.
    shear = np.array([[1, 0, 0], [30, 1, 0], [20, -40, 1]])
    np.testing.assert_allclose(skewed.atoms.cell.array, shear @ plain.atoms.cell.array, atol=1e-4)
    np.testing.assert_allclose(skewed.atoms.positions, plain.atoms.positions, atol=1e-4)
    np.testing.assert_allclose(far_result.forces, plain.forces, atol=1e-4)
    # The cell deforms about the origin, and the far atoms' common offset with it.
    relative = far_result.atoms.positions - far_result.atoms.positions[0]
    np.testing.assert_allclose(relative, plain.atoms.positions - plain.atoms.positions[0], atol=1e-4)


def test_sim_fails_invalid_structures_alone():
    from mlip import sim
    from mlip.sim.batcher import INVALID

    good = bulk("Si", "diamond", a=5.43)
    nan = good.copy()
    nan.positions[0, 0] = np.nan
    singular = good.copy()
    singular.set_cell([[5, 0, 0], [5, 0, 0], [0, 0, 5]], scale_atoms=False)
    empty = good[[]]
    results = sim.md(tiny(), [nan, good, singular, empty], steps=2)
    assert [r.status for r in results][::2] == [INVALID, INVALID] and results[3].status == INVALID
    assert "positions contain NaN" in results[0].message and "zero-volume cell" in results[2].message
    assert "no atoms" in results[3].message and results[1].converged


def test_bad_model_and_structure_files_are_one_line_errors(si32, tmp_path, capsys):
    structure = tmp_path / "si.xyz"
    ase.io.write(structure, bulk("Si", "diamond", a=5.43))
    nan_model = tmp_path / "nan.mlip"
    dataclasses.replace(si32, params=jax.tree.map(lambda p: np.full(p.shape, np.nan, p.dtype), si32.params)).save(nan_model)
    random_bytes = tmp_path / "random.mlip"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "empty.xyz").write_text("")
    model = tmp_path / "si.mlip"
    si32.save(model)
    cases = [
        ([str(nan_model), str(structure)], "contains nan or inf"),
        ([str(random_bytes), str(structure)], "random.mlip: not a readable mlip potential file"),
        ([str(tmp_path), str(structure)], "is a directory, not a potential file"),
        ([str(model), str(tmp_path / "empty.xyz")], "empty.xyz: no structure found"),
    ]
    for args, message in cases:
        assert main(["predict", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "allow_pickle" not in err and "Traceback" not in err
    with pytest.raises(MlipError, match="is a directory"):
        Potential.load(tmp_path)


def test_an_unwritable_compilation_cache_is_skipped_not_fatal(tmp_path, caplog):
    from mlip import runtime

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache folder should be")
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        runtime.enable_compilation_cache(blocker / "jax")
        assert "compilation cache off" in caplog.text and not jax.config.jax_compilation_cache_dir
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
