"""Sharded datasets: exact round trips, bounded memory, crash safety and clear errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data import shards
from mlip.data.loader import epoch_order
from mlip.data.readers import read_frames
from mlip.data.shards import ShardedDataset, convert, open_dataset, write_shards
from mlip.errors import DataError, MlipError
from mlip.testing import random_frame

MPTRJ_1K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mptrj" / "mptrj-random-1k.xyz"
PBCS = [(True, True, True), (False, False, False), (True, True, False), (True, False, True)]


def mixed_frames(n: int, seed: int = 0) -> list:
    """Frames with varying pbc and labels: every 3rd without stress, every 5th unlabelled,
    the first 10 with per-atom "magmoms" [n] and "velocities" [n, 3]."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        frame = random_frame(rng, int(rng.integers(1, 9)), pbc=PBCS[i % 4], labels=i % 5 != 4)
        if i % 3 == 2:
            frame.stress = None
        if i < 10:
            frame.atom_extras["magmoms"] = rng.normal(size=frame.n_atoms)
            frame.atom_extras["velocities"] = rng.normal(size=(frame.n_atoms, 3))
        frames.append(frame)
    return frames


def assert_same_frame(read, original) -> None:
    for name in ("numbers", "positions", "cell", "pbc", "forces", "stress"):
        expected, got = getattr(original, name), getattr(read, name)
        assert (got is None) == (expected is None), name
        if expected is not None:
            assert got.dtype == np.asarray(expected).dtype and np.array_equal(got, expected), name
    assert read.energy == original.energy
    assert read.atom_extras.keys() == original.atom_extras.keys()
    for name, values in original.atom_extras.items():
        assert np.array_equal(read.atom_extras[name], values), name


def test_round_trip_every_field_across_shards(tmp_path):
    frames = mixed_frames(23)
    report = write_shards(frames, tmp_path / "ds", frames_per_shard=5, progress=False)
    assert (report.n_frames, report.n_shards, report.skipped) == (23, 5, 0)
    assert report.n_atoms == sum(f.n_atoms for f in frames)

    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 23
    assert ds.shard_ranges == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert ds.n_atoms.tolist() == [f.n_atoms for f in frames]
    assert ds.elements == tuple(sorted(set(np.concatenate([f.numbers for f in frames]).tolist())))
    assert ds.labels == {
        "energy": sum(f.energy is not None for f in frames),
        "forces": sum(f.forces is not None for f in frames),
        "stress": sum(f.stress is not None for f in frames),
    }
    for i, frame in enumerate(frames):
        read = ds[i]
        assert_same_frame(read, frame)
        assert read.index == i
        assert Path(read.source).name == f"shard-{i // 5:05d}.npz"
    assert_same_frame(ds[-1], frames[-1])
    with pytest.raises(IndexError):
        ds[23]
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert (index["format"], index["version"], index["n_frames"]) == ("mlip-shards", 1, 23)
    assert [entry["atom_extras"] for entry in index["shards"]][:3] == [
        ["magmoms", "velocities"], ["magmoms", "velocities"], []
    ]


def test_info_scalars_round_trip_and_the_rest_is_left_out(tmp_path):
    frames = mixed_frames(6)
    for i, frame in enumerate(frames):
        frame.info.update(seed_id=f"s-{i}", step=i, temperature=300.0 + i, hot=i % 2 == 0,
                          vector=[1, 2, 3])
    frames[5].info["only_some"] = "x"
    write_shards(frames, tmp_path / "ds", frames_per_shard=3, progress=False)
    ds = open_dataset(tmp_path / "ds")
    for i, frame in enumerate(frames):
        info = ds[i].info
        assert info == {"seed_id": f"s-{i}", "step": i, "temperature": 300.0 + i, "hot": i % 2 == 0}
        assert type(info["step"]) is int and type(info["hot"]) is bool


def test_compact_shards_and_appending_keep_a_valid_dataset(tmp_path):
    """Compact shards hold float32 geometry and labels (float64 energies); a reopened writer
    appends shards, and the directory is a complete dataset after every index write."""
    frames = mixed_frames(9)
    writer = shards.ShardWriter(tmp_path / "ds", 100, compact=True)
    (tmp_path / "ds").mkdir()
    for frame in frames[:4]:
        writer.add(frame)
    writer.flush()
    writer.write_index([], {"note": 1})
    assert len(open_dataset(tmp_path / "ds")) == 4
    writer = shards.ShardWriter.reopen(tmp_path / "ds", 100, compact=True)
    for frame in frames[4:]:
        writer.add(frame)
    writer.flush()
    writer.write_index([], {"note": 2})
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 9 and ds.meta == {"note": 2} and len(ds.shard_ranges) == 2
    for i, frame in enumerate(frames):
        read = ds[i]
        assert read.positions.dtype == np.float64 and read.energy == frame.energy
        np.testing.assert_allclose(read.positions, frame.positions.astype(np.float32), rtol=0)
        if frame.forces is not None:
            np.testing.assert_allclose(read.forces, frame.forces.astype(np.float32), rtol=0)
    many = mixed_frames(300)
    sizes = []
    for name, compact in (("full", False), ("compact", True)):
        writer = shards.ShardWriter(tmp_path, 1000, compact=compact)
        for frame in many:
            writer.add(frame)
        writer.flush()
        sizes.append((tmp_path / writer.entries[-1]["file"]).stat().st_size)
        (tmp_path / writer.entries[-1]["file"]).unlink()
    assert sizes[1] < 0.6 * sizes[0]


def test_extras_missing_in_some_frames_are_dropped_with_one_warning(tmp_path, caplog):
    frames = mixed_frames(20)
    for frame in frames[10:]:
        frame.atom_extras["charges"] = np.zeros(frame.n_atoms)
    del frames[3].atom_extras["magmoms"]  # shard 0 (frames 0-4) now has magmoms only in part
    del frames[7].atom_extras["magmoms"]  # and so has shard 1: still one warning
    with caplog.at_level(logging.WARNING, logger="mlip.data.shards"):
        write_shards(frames, tmp_path, frames_per_shard=5, progress=False)
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and "'magmoms'" in warnings[0]
    ds = open_dataset(tmp_path)
    assert sorted(ds[0].atom_extras) == ["velocities"]
    assert sorted(ds[12].atom_extras) == ["charges"]


def test_memory_holds_a_bounded_number_of_shards(tmp_path, monkeypatch):
    write_shards(mixed_frames(40), tmp_path, frames_per_shard=4, progress=False)
    loads = []
    load = shards._Shard.load
    monkeypatch.setattr(shards._Shard, "load", lambda *a: loads.append(a[0].name) or load(*a))

    ds = ShardedDataset(tmp_path, cache_shards=1)
    for i in range(len(ds)):
        frame = ds[i]
        assert ds.loaded_shards == (i // 4,)
        # Frames hold copies: keeping one must not keep its shard alive.
        assert not np.shares_memory(frame.positions, ds._cache[i // 4].arrays["positions"])
    assert len(loads) == 10

    # The loader's shard-local shuffle touches a window of 4 shards at a time: with the
    # default cache every shard is still read from disk exactly once per epoch.
    loads.clear()
    ds = open_dataset(tmp_path)
    for i in epoch_order(len(ds), seed=1, epoch=0, shard_ranges=ds.shard_ranges, shuffle_shards=4):
        ds[int(i)]
        assert len(ds.loaded_shards) <= 4
    assert sorted(loads) == [f"shard-{k:05d}.npz" for k in range(10)]


def crashing(frames, after: int):
    yield from frames[:after]
    raise RuntimeError("reader died")


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    write_shards(mixed_frames(6), out, frames_per_shard=2, progress=False)
    with pytest.raises(RuntimeError, match="reader died"):
        write_shards(crashing(mixed_frames(30), 12), out, frames_per_shard=5, overwrite=True,
                     progress=False)
    # The old dataset was replaced (its index went first) and the new one never finished.
    assert list(out.iterdir()) == []

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_shards(mixed_frames(3), out, progress=False)
    assert list(out.iterdir()) == []  # no temporary file lingers


KILLED_CONVERSION = """
import os, sys, numpy as np
from mlip.data.shards import write_shards
from mlip.testing import random_frame
def frames():
    rng = np.random.default_rng(0)
    for i in range(12):
        yield random_frame(rng, 3)
    os._exit(1)  # no cleanup runs, as when the process is killed
write_shards(frames(), sys.argv[1], frames_per_shard=5, progress=False)
"""


def test_killed_conversion_leaves_no_index(tmp_path):
    out = tmp_path / "ds"
    subprocess.run([sys.executable, "-c", KILLED_CONVERSION, str(out)], check=False)
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.npz", "shard-00001.npz"]
    with pytest.raises(DataError, match="did not finish"):
        open_dataset(out)
    with pytest.raises(DataError, match="not empty"):
        write_shards(mixed_frames(2), out, progress=False)
    write_shards(mixed_frames(2), out, progress=False, overwrite=True)
    assert len(open_dataset(out)) == 2


def test_refuses_non_empty_out_dir_and_overwrite_keeps_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="overwrite") as error:
        write_shards(mixed_frames(2), tmp_path, progress=False)
    assert str(tmp_path) in str(error.value)
    write_shards(mixed_frames(9), tmp_path, frames_per_shard=2, progress=False, overwrite=True)
    write_shards(mixed_frames(3), tmp_path, frames_per_shard=2, progress=False, overwrite=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["index.json", "n_atoms.npy", "notes.txt", "shard-00000.npz", "shard-00001.npz"]
    with pytest.raises(MlipError):
        write_shards(mixed_frames(2), tmp_path / "x", frames_per_shard=0)
    with pytest.raises(DataError, match="no frames"):
        write_shards([], tmp_path / "empty", progress=False)


def edit_index(**changes):
    def edit(path: Path):
        index = json.loads((path / "index.json").read_text())
        index.update(changes)
        (path / "index.json").write_text(json.dumps(index))
    return edit


def truncate(path: Path):
    shard = path / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-100])


def flip_a_byte(path: Path):
    shard = path / "shard-00001.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


ESCAPING_SHARD = {"file": "../x.npz", "n_frames": 6, "n_atoms": 1, "bytes": 1, "sha256": "",
                  "atom_extras": []}
CORRUPTIONS = {  # name: (corrupt the dataset directory, file the error names, message)
    "garbage index": (
        lambda p: (p / "index.json").write_bytes(b"\x89\xff\x00garbage"), "index.json", "unreadable"
    ),
    "no index": (lambda p: (p / "index.json").unlink(), "ds", "no index.json"),
    "other format": (edit_index(format="something-else"), "index.json", "not an mlip-shards"),
    "newer version": (edit_index(version=2), "index.json", "version 2 is not supported"),
    "missing field": (edit_index(shards=[{"file": "shard-00000.npz"}]), "index.json", "malformed"),
    "escaping path": (edit_index(shards=[ESCAPING_SHARD]), "index.json", "plain file name"),
    "missing shard": (lambda p: (p / "shard-00001.npz").unlink(), "shard-00001.npz", "missing"),
    "truncated shard": (truncate, "shard-00001.npz", "truncated"),
    "missing counts": (lambda p: (p / "n_atoms.npy").unlink(), "n_atoms.npy", "missing"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_dataset_is_a_data_error_naming_the_file(tmp_path, name):
    corrupt, file, message = CORRUPTIONS[name]
    write_shards(mixed_frames(6), tmp_path / "ds", frames_per_shard=3, progress=False)
    corrupt(tmp_path / "ds")
    with pytest.raises(DataError, match=message) as error:
        open_dataset(tmp_path / "ds")
    assert file in str(error.value)


def test_corrupted_shard_is_caught_when_loaded(tmp_path):
    write_shards(mixed_frames(6), tmp_path, frames_per_shard=3, progress=False)
    flip_a_byte(tmp_path)
    ds = open_dataset(tmp_path)  # same size: only the checksum can tell
    ds[0]
    with pytest.raises(DataError, match="checksum") as error:
        ds[3]
    assert "shard-00001.npz" in str(error.value)


def test_convert_extxyz_end_to_end_reports_skipped_frames(tmp_path):
    rng = np.random.default_rng(3)
    atoms_list = []
    for i in range(7):
        frame = random_frame(rng, 4, min_distance=1.0, pbc=PBCS[i % 4])
        atoms = frame.to_atoms()
        if i == 5:
            atoms.positions[1] = atoms.positions[0] + 0.1  # too close: skipped
            atoms.calc = SinglePointCalculator(atoms, energy=frame.energy, forces=frame.forces)
        atoms_list.append(atoms)
    source = tmp_path / "train.extxyz"
    ase.io.write(source, atoms_list, format="extxyz")

    report = convert([source], tmp_path / "ds", frames_per_shard=4, progress=False, on_error="skip")
    assert (report.n_frames, report.n_shards, report.skipped) == (6, 2, 1)
    assert "skipped 1 frames" in report.summary() and "frame 5" in report.summary()
    ds = open_dataset(tmp_path / "ds")
    assert ds.sources == [str(source)]
    for read, expected in zip(ds, read_frames(source, on_error="skip")):
        assert_same_frame(read, expected)


@pytest.mark.skipif(not MPTRJ_1K.exists(), reason=f"{MPTRJ_1K} not present")
def test_convert_mptrj_1k(tmp_path):
    report = convert(MPTRJ_1K, tmp_path, frames_per_shard=300, progress=False)
    assert (report.n_frames, report.n_atoms, report.n_shards, report.skipped) == (1000, 31312, 4, 0)
    ds = open_dataset(tmp_path)
    assert (len(ds), int(ds.n_atoms.sum()), len(ds.elements)) == (1000, 31312, 85)
    assert ds[617].energy == ase.io.read(MPTRJ_1K, index=617).get_potential_energy()
