"""Readers: MPtrj JSON, mlearn JSON, extxyz/ase.io, ASE db -> validated Frames in mlip units."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest

from mlip.data.readers import ReadReport, read_frames
from mlip.errors import DataError
from mlip.testing import random_frame

HERE = Path(__file__).parent
MPTRJ_SMALL = HERE / "data" / "mptrj_small.json"
SHARED = Path(__file__).parents[2] / "shared" / "data"
UNCORRECTED = "uncorrected_total_energy"

#: 1 kBar in eV/Å^3 with VASP's sign flipped: -0.1 GPa / 160.21766208 GPa per eV/Å^3.
KBAR = -6.2415091e-4


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path


# --- MPtrj ---------------------------------------------------------------------------------


def test_mptrj_fixture_fields():
    frames = list(read_frames(MPTRJ_SMALL, mptrj_energy=UNCORRECTED))
    assert [f.index for f in frames] == ["mp-1-0-0", "mp-1-0-1", "mp-2-1-3"]
    first, second, triclinic = frames
    assert first.source == str(MPTRJ_SMALL)
    assert first.numbers.tolist() == [11, 17]
    np.testing.assert_array_equal(first.positions, [[0, 0, 0], [2, 2, 2]])
    np.testing.assert_array_equal(first.cell, 4 * np.eye(3))
    assert first.pbc.tolist() == [True, True, True]
    assert first.energy == -10.0
    np.testing.assert_array_equal(first.forces, [[0.1, 0, 0], [-0.1, 0, 0]])
    # 10 kBar compressive (VASP) = 1 GPa = 6.2415e-3 eV/Å^3 tensile-negative (ASE).
    assert first.stress[0, 0] == pytest.approx(-6.2415091e-3, rel=1e-7)
    np.testing.assert_allclose(
        first.stress, KBAR * np.array([[10, 0, 0], [0, 20, 1], [0, 1, -5]]), rtol=1e-7
    )
    np.testing.assert_array_equal(first.atom_extras["magmoms"], [0.5, -0.5])
    assert first.info == {
        "uncorrected_total_energy": -10.0,
        "corrected_total_energy": -10.5,
        "energy_per_atom": -5.25,
        "ef_per_atom": -1.5,
        "e_per_atom_relaxed": -5.3,
        "ef_per_atom_relaxed": -1.6,
        "bandgap": 1.25,
        "mp_id": "mp-1",
        "frame_id": "mp-1-0-0",
    }
    assert "magmoms" not in second.atom_extras  # magmom: null
    assert second.pbc.tolist() == [True, True, True]  # no lattice.pbc: pymatgen default
    np.testing.assert_array_equal(second.positions[0], [0.1, 0, 0])
    np.testing.assert_array_equal(triclinic.cell, [[3, 0, 0], [1, 3, 0], [0.5, 0.5, 3]])
    np.testing.assert_array_equal(triclinic.positions[1], [2.25, 1.75, 1.5])  # = abc @ cell
    assert triclinic.numbers.tolist() == [26, 8]
    assert triclinic.stress[0, 1] == pytest.approx(2 * KBAR, rel=1e-7)
    assert triclinic.stress[1, 2] == pytest.approx(4 * KBAR, rel=1e-7)


def test_mptrj_energy_choice():
    corrected = [f.energy for f in read_frames(MPTRJ_SMALL, mptrj_energy="corrected_total_energy")]
    uncorrected = [f.energy for f in read_frames(MPTRJ_SMALL, mptrj_energy=UNCORRECTED)]
    assert corrected == [-10.5, -9.5, -14.0]
    assert uncorrected == [-10.0, -9.0, -12.0]
    with pytest.raises(DataError, match="uncorrected_total_energy.*corrected_total_energy"):
        next(read_frames(MPTRJ_SMALL))
    with pytest.raises(DataError, match="choose one explicitly"):
        next(read_frames(MPTRJ_SMALL, mptrj_energy="energy"))


def test_mptrj_index_selection():
    def ids(index):
        return [f.index for f in read_frames(MPTRJ_SMALL, mptrj_energy=UNCORRECTED, index=index)]

    assert ids(1) == ["mp-1-0-1"]
    assert ids("1:") == ["mp-1-0-1", "mp-2-1-3"]
    assert ids("::2") == ["mp-1-0-0", "mp-2-1-3"]
    assert ids(-1) == ["mp-2-1-3"]


def test_mptrj_is_streamed(tmp_path, monkeypatch):
    """Frames of the first material come out before the parser reaches the broken tail."""
    text = MPTRJ_SMALL.read_text()
    path = tmp_path / "tail.json"
    path.write_text(text[: text.index('"mp-2"')] + '"mp-2": {"mp-2-1-3": garbage')

    def no_json(*args, **kwargs):
        raise AssertionError("MPtrj must be streamed, not json.load-ed")

    monkeypatch.setattr(json, "load", no_json)
    monkeypatch.setattr(json, "loads", no_json)
    frames = read_frames(path, mptrj_energy=UNCORRECTED, on_error="skip")
    assert next(frames).index == "mp-1-0-0"
    assert next(frames).index == "mp-1-0-1"
    with pytest.raises(DataError, match=f"{path}: cannot read the file after frame mp-1-0-1"):
        next(frames)


def test_mptrj_truncated_file(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text(MPTRJ_SMALL.read_text()[:300])
    with pytest.raises(DataError, match=str(path)):
        list(read_frames(path, mptrj_energy=UNCORRECTED))


def _write_mptrj(tmp_path, edit) -> Path:
    data = json.loads(MPTRJ_SMALL.read_text())
    edit(data["mp-1"]["mp-1-0-1"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _species(frame: dict) -> dict:
    return frame["structure"]["sites"][0]["species"][0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: _species(f).update(element="Xx"), "unknown element 'Xx'"),
        (lambda f: f.pop("force"), "missing field 'force'"),
        (lambda f: f.pop("structure"), "missing field 'structure'"),
        (lambda f: f.update(force=[[0.0, 0.0]]), "forces has shape"),
        (lambda f: _species(f).update(occu=0.5), "disordered site"),
        (lambda f: f["structure"]["sites"][0].update(xyz=[1.9, 2.0, 2.0]), "apart"),
    ],
)
def test_mptrj_bad_frame(tmp_path, caplog, edit, message):
    path = _write_mptrj(tmp_path, edit)
    with pytest.raises(DataError, match=f"{path}, frame mp-1-0-1: .*{message}"):
        list(read_frames(path, mptrj_energy=UNCORRECTED))
    report = ReadReport()
    with caplog.at_level(logging.WARNING, logger="mlip.data"):
        frames = list(read_frames(path, mptrj_energy=UNCORRECTED, on_error="skip", report=report))
    assert [f.index for f in frames] == ["mp-1-0-0", "mp-2-1-3"]
    assert (report.read, report.skipped) == (2, 1)
    assert "mp-1-0-1" in report.reasons[0] and message in report.reasons[0]
    assert report.summary() == "read 2 frames, skipped 1 (see warnings)"
    assert "mp-1-0-1" in caplog.text


def test_mptrj_fractional_coordinates(tmp_path):
    path = _write_mptrj(tmp_path, lambda f: [site.pop("xyz") for site in f["structure"]["sites"]])
    frame = list(read_frames(path, mptrj_energy=UNCORRECTED))[1]
    np.testing.assert_allclose(frame.positions, [[0.1, 0, 0], [2, 2, 2]])


def test_mptrj_layout_built_from_extxyz(tmp_path):
    """Write the 8 real MPtrj frames in MPtrj's JSON layout (kBar, VASP sign, both energies)
    and check every field comes back as in the extxyz."""
    reference = ase.io.read(shared("mptrj/mptrj-8-frames-full-metadata.extxyz"), ":")
    layout = defaultdict(dict)
    for atoms in reference:
        info, results = atoms.info, atoms.calc.results
        frame_id = f"{info['task_id']}-{info['calc_id']}-{info['ionic_step']}"
        layout[info["mp_id"]][frame_id] = {
            "structure": {
                "lattice": {"matrix": atoms.cell.array.tolist()},
                "sites": [
                    {"species": [{"element": s, "occu": 1}], "xyz": p.tolist()}
                    for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)
                ],
            },
            "uncorrected_total_energy": atoms.get_potential_energy(),
            "corrected_total_energy": info["corrected_total_energy"],
            "energy_per_atom": info["energy_per_atom"],
            "ef_per_atom": info["ef_per_atom"],
            "force": atoms.get_forces().tolist(),
            "stress": (-1e1 * 160.21766208 * atoms.get_stress(voigt=False)).tolist(),
            "magmom": results["magmoms"].tolist() if "magmoms" in results else None,
            "bandgap": info.get("bandgap"),
            "mp_id": info["mp_id"],
        }
    path = tmp_path / "mptrj.json"
    path.write_text(json.dumps(layout))

    frames = list(read_frames(path, mptrj_energy=UNCORRECTED))
    assert len(frames) == len(reference) == 8
    assert [f.index for f in frames] == [i for material in layout.values() for i in material]
    for frame, atoms in zip(frames, reference):
        assert frame.energy == atoms.get_potential_energy()
        assert frame.info["corrected_total_energy"] == atoms.info["corrected_total_energy"]
        assert frame.info["mp_id"] == atoms.info["mp_id"]
        assert frame.numbers.tolist() == atoms.numbers.tolist()
        np.testing.assert_array_equal(frame.positions, atoms.positions)
        np.testing.assert_array_equal(frame.cell, atoms.cell.array)
        np.testing.assert_array_equal(frame.forces, atoms.get_forces())
        np.testing.assert_allclose(
            frame.stress, atoms.get_stress(voigt=False), rtol=1e-12, atol=1e-15
        )
        if "magmoms" in atoms.calc.results:
            magmoms = atoms.calc.results["magmoms"]
            np.testing.assert_array_equal(frame.atom_extras["magmoms"], magmoms)
        else:
            assert "magmoms" not in frame.atom_extras
    assert sum("magmoms" in f.atom_extras for f in frames) == 2


# --- mlearn --------------------------------------------------------------------------------


def test_mlearn_virial_conversion(tmp_path):
    record = {
        "structure": {
            "lattice": {"matrix": [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]},
            "sites": [
                {"species": [{"element": "Si", "occu": 1}], "xyz": [0, 0, 0]},
                {"species": [{"element": "Si", "occu": 1}], "xyz": [2, 2, 2]},
            ],
        },
        "outputs": {
            "energy": -10.0,
            "forces": [[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]],
            # VASP order xx yy zz xy yz zx, kBar, compressive positive.
            "virial_stress": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        },
        "group": "Elastic",
        "description": "hand-made",
    }
    path = tmp_path / "mlearn.json"
    path.write_text(json.dumps([record]))
    (frame,) = read_frames(path)
    assert frame.index == 0 and frame.energy == -10.0
    np.testing.assert_array_equal(frame.forces, record["outputs"]["forces"])
    np.testing.assert_allclose(
        frame.stress, KBAR * np.array([[1, 4, 6], [4, 2, 5], [6, 5, 3]]), rtol=1e-7
    )
    assert frame.info == {"group": "Elastic", "description": "hand-made"}


def test_mlearn_si_test():
    frames = list(read_frames(shared("mlearn/Si_test.json")))
    assert len(frames) == 25
    assert frames[0].energy == -297.62773938
    assert frames[0].info["group"] == "Vacancy"


def test_mlearn_si_shear_order():
    """In Si's Elastic set a cell sheared in one plane has stress in that plane only: pins
    mlearn's component order (VASP's xx yy zz xy yz zx)."""
    for frame in read_frames(shared("mlearn/Si_train.json")):
        off = frame.cell - np.diag(np.diag(frame.cell))
        if frame.info["group"] != "Elastic" or np.abs(off).max() < 1.0:
            continue
        i, j = np.unravel_index(np.abs(off).argmax(), (3, 3))
        shear = np.abs(frame.stress - np.diag(np.diag(frame.stress)))
        assert shear[i, j] == shear.max() > 5e-3


# --- extxyz / ase.io -----------------------------------------------------------------------


def assert_close_8(actual, expected):
    """extxyz writes per-atom arrays and the cell with 8 decimals."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-8)


def _random_frames(n=3, pbc=True):
    rng = np.random.default_rng(0)
    return [random_frame(rng, 4 + i, pbc=pbc, min_distance=1.0) for i in range(n)]


def test_extxyz_default_keys(tmp_path):
    frames = _random_frames()
    images = [f.to_atoms() for f in frames]
    images[0].arrays["magmoms"] = np.arange(4.0)
    images[0].info["note"] = "first"
    path = tmp_path / "train.xyz"
    ase.io.write(path, images, format="extxyz")
    read = list(read_frames(path))
    for frame, expected in zip(read, frames):
        assert_close_8(frame.positions, expected.positions)
        assert_close_8(frame.cell, expected.cell)
        assert frame.energy == pytest.approx(expected.energy)
        assert_close_8(frame.forces, expected.forces)
        assert_close_8(frame.stress, expected.stress)
    np.testing.assert_array_equal(read[0].atom_extras["magmoms"], np.arange(4.0))
    assert read[0].info == {"note": "first"}
    assert [f.index for f in read] == [0, 1, 2]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_extxyz_and_ase_files_read_as_the_plain_ones(tmp_path, suffix):
    from mlip.fileio import atomic_write_text, read_atoms

    frames = _random_frames(n=4)
    plain = tmp_path / "train.extxyz"
    ase.io.write(plain, [f.to_atoms() for f in frames], format="extxyz")
    packed = tmp_path / ("train.extxyz" + suffix)
    atomic_write_text(packed, lambda file: file.write(plain.read_text()))
    assert packed.stat().st_size < plain.stat().st_size
    expected = list(read_frames(plain, index="1:"))
    for got, want in zip(list(read_frames(packed, index="1:")), expected, strict=True):
        np.testing.assert_array_equal(got.positions, want.positions)
        assert got.energy == want.energy and got.index == want.index
    # Other formats go through ase.io by their uncompressed name (here: a POSCAR, .vasp).
    poscar = tmp_path / ("positions.vasp" + suffix)
    atomic_write_text(poscar, lambda file: ase.io.write(file, frames[0].to_atoms(), format="vasp"))
    np.testing.assert_allclose(read_atoms(poscar).positions, frames[0].positions, atol=1e-6)
    assert len(read_atoms(packed, ":")) == 4
    packed_json = tmp_path / ("mptrj.json" + suffix)
    packed_json.write_bytes(b"{}")
    with pytest.raises(DataError, match="compressed .json file is not read as it is; decompress it first"):
        list(read_frames(packed_json))


def test_extxyz_mace_keys_voigt_and_virials(tmp_path):
    frames = _random_frames()
    images = []
    for frame in frames:
        atoms = dataclasses.replace(frame, energy=None, forces=None, stress=None).to_atoms()
        atoms.info["REF_energy"] = frame.energy
        atoms.arrays["REF_forces"] = frame.forces
        s = frame.stress
        atoms.info["REF_stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        atoms.info["REF_virials"] = -s * abs(np.linalg.det(frame.cell))
        images.append(atoms)
    path = tmp_path / "mace.extxyz"
    ase.io.write(path, images, format="extxyz")
    keys = dict(energy_key="REF_energy", forces_key="REF_forces")
    from_virials = dict(stress_key=None, virials_key="REF_virials")
    for stress_keys in (dict(stress_key="REF_stress"), from_virials):
        for frame, expected in zip(read_frames(path, **keys, **stress_keys), frames):
            assert frame.energy == pytest.approx(expected.energy)
            assert_close_8(frame.forces, expected.forces)
            assert_close_8(frame.stress, expected.stress)
            assert "REF_forces" not in frame.atom_extras and "REF_energy" not in frame.info
    with pytest.raises(DataError, match=f"{path}, frame 0: missing label 'energy'"):
        next(read_frames(path))


def test_extxyz_stress_optional_off_periodic(tmp_path):
    molecules = [dataclasses.replace(f, stress=None) for f in _random_frames(pbc=False)]
    path = tmp_path / "molecules.xyz"
    ase.io.write(path, [f.to_atoms() for f in molecules], format="extxyz")
    assert all(f.stress is None for f in read_frames(path))

    crystal = dataclasses.replace(_random_frames(1)[0], stress=None)
    path = tmp_path / "no_stress.xyz"
    ase.io.write(path, crystal.to_atoms(), format="extxyz")
    with pytest.raises(DataError, match="missing label 'stress'"):
        next(read_frames(path))
    assert next(read_frames(path, stress_key=None)).stress is None
    unlabelled = next(read_frames(path, energy_key=None, forces_key=None, stress_key=None))
    assert unlabelled.energy is None and unlabelled.forces is None


def test_other_ase_format(tmp_path):
    frame = _random_frames(1)[0]
    path = tmp_path / "POSCAR"
    ase.io.write(path, frame.to_atoms(), format="vasp")
    (read,) = read_frames(path, format="vasp", energy_key=None, forces_key=None, stress_key=None)
    assert_close_8(read.cell, frame.cell)


def test_mptrj_random_1k_reads_cleanly():
    report = ReadReport()
    frames = list(read_frames(shared("mptrj/mptrj-random-1k.xyz"), report=report))
    assert len(frames) == 1000 and report.summary() == "read 1000 frames"
    assert sum(f.n_atoms for f in frames) == 31312
    assert all(f.stress is not None and f.forces is not None for f in frames)


# --- ASE database --------------------------------------------------------------------------


def test_ase_db_round_trip(tmp_path):
    frames = _random_frames()
    path = tmp_path / "train.db"
    with ase.db.connect(path) as db:
        db.write(frames[0].to_atoms(), tag="calc")
        bare = dataclasses.replace(frames[1], energy=None, forces=None, stress=None).to_atoms()
        db.write(bare, REF_energy=frames[1].energy,
                 data={"REF_forces": frames[1].forces, "REF_stress": frames[1].stress})
    first = next(read_frames(path))
    assert first.energy == pytest.approx(frames[0].energy)
    np.testing.assert_allclose(first.forces, frames[0].forces)
    np.testing.assert_allclose(first.stress, frames[0].stress)
    assert first.info == {"tag": "calc", "db_id": 1}
    second = next(read_frames(
        path, index=1, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress"
    ))
    assert second.index == 1 and second.energy == pytest.approx(frames[1].energy)
    np.testing.assert_allclose(second.forces, frames[1].forces)
    np.testing.assert_allclose(second.stress, frames[1].stress)


# --- bad input -----------------------------------------------------------------------------

GOOD = "Na 0 0 0 0.1 0 0\nCl 2 2 2 -0.1 0 0\n"


def _xyz(atoms=GOOD, lattice="4 0 0 0 4 0 0 0 4", labels='energy=-1.0 stress="0 0 0 0 0 0 0 0 0"'):
    """One extxyz frame (text) with the given atom lines, lattice and labels."""
    comment = f'Lattice="{lattice}" Properties=species:S:1:pos:R:3:forces:R:3 {labels} pbc="T T T"'
    return f"{atoms.count(chr(10))}\n{comment}\n{atoms}"


@pytest.mark.parametrize(
    "bad, message",
    [
        (_xyz(atoms="Na nan 0 0 0 0 0\nCl 2 2 2 0 0 0\n"), "positions contain NaN"),
        (_xyz(labels="energy=nan stress=\"0 0 0 0 0 0 0 0 0\""), "energy contain NaN"),
        (_xyz(lattice="4 0 0 4 0 0 0 0 4"), "zero-volume cell"),
        (_xyz(atoms="Xx 0 0 0 0 0 0\nCl 2 2 2 0 0 0\n"), "unknown element 'Xx'"),
        (_xyz(atoms="Na 0 0 0 0 0 0\nCl 0.2 0 0 0 0 0\n"), "atoms 0 and 1 are 0.2 Å apart"),
        (_xyz(labels="stress=\"0 0 0 0 0 0 0 0 0\""), "missing label 'energy'"),
        (_xyz(atoms="Na 0 0 0 0 0\nCl 2 2 2 0 0 0\n"), "cannot parse extxyz frame"),
    ],
)
def test_bad_extxyz_frame(tmp_path, caplog, bad, message):
    path = tmp_path / "bad.xyz"
    path.write_text(_xyz() + bad + _xyz())
    with pytest.raises(DataError, match=f"{path}, frame 1: .*{message}"):
        list(read_frames(path))
    report = ReadReport()
    with caplog.at_level(logging.WARNING, logger="mlip.data"):
        frames = list(read_frames(path, on_error="skip", report=report))
    assert [f.index for f in frames] == [0, 2]
    assert (report.read, report.skipped) == (2, 1) and message in report.reasons[0]
    assert f"{path}, frame 1" in caplog.text


def test_close_atoms_warn(tmp_path):
    path = tmp_path / "close.xyz"
    path.write_text(_xyz(atoms="Na 0 0 0 0 0 0\nCl 0.2 0 0 0 0 0\n"))
    with pytest.warns(UserWarning, match="0.2 Å apart"):
        (frame,) = read_frames(path, close_atoms="warn")
    assert frame.n_atoms == 2


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("garbage.xyz", "hello world\nthis is no xyz\n", "frame 0: expected an atom count"),
        ("short.xyz", _xyz() + "5\ncomment\nNa 0 0 0\n", "frame 1: file ends inside this frame"),
        ("broken.json", '[{"structure": {"lattice"', "cannot read the file: "),
        ("neither.json", '"just a string"', "neither MPtrj"),
        ("garbage.db", "not a database at all, " * 100, "cannot read the file"),
        ("garbage.cif", "data_x\n_cell_length_a abc\n_atom_site_label\n", "cannot read the file"),
    ],
)
def test_unreadable_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=f"{path}(, |: ).*{message}"):
        list(read_frames(path, on_error="skip"))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        next(read_frames(tmp_path / "absent.xyz"))
    assert not (tmp_path / "absent.xyz").exists()


def test_wrong_explicit_format(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(DataError, match="no materials found"):
        list(read_frames(path, format="mptrj", mptrj_energy=UNCORRECTED))
    assert list(read_frames(path)) == []  # an empty mlearn list is just empty


def test_an_atom_count_one_too_low_is_blamed_on_its_own_frame(tmp_path):
    from ase.build import bulk as _bulk

    path = tmp_path / "short.xyz"
    ase.io.write(path, [_bulk("Si", "diamond", a=5.43)] * 2)
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = "1\n"  # frame 0 lists 2 atoms but says 1
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"short.xyz, frame 0: more atom lines than its atom count says"):
        list(read_frames(path, require_labels=False))
