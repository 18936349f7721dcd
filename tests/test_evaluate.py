"""Error metrics (mlip.evaluate, `mlip evaluate`) on labels built from a model's own predictions
plus known offsets, so every MAE and RMSE is known exactly."""

import json
import math

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip.cli import main
from mlip.data.frame import make_frame
from mlip.data.shards import write_shards
from mlip.errors import MlipError
from mlip.evaluate import evaluate, open_data
from mlip.potential import Potential
from mlip.units import EV_PER_A3_TO_GPA

# Per-atom energy offsets (eV/atom), None = no energy label; frames 0, 1 and 4 hold Si, 1 and 2 O.
ENERGY_OFFSETS = [0.001, -0.003, 0.002, None, 0.004]
# Force offsets per element (eV/Å, per component); frame 4 has no forces label.
FORCE_OFFSETS = {14: [0.01, -0.01, 0.01], 8: [-0.02, 0.02, -0.02]}
# Stress offsets (eV/Å^3, every component); frame 2 is a molecule, frame 4 has no stress label.
STRESS_OFFSETS = [0.001, -0.002, None, 0.003, None]
GPA = EV_PER_A3_TO_GPA
# All five frames in one batch padded as Potential.predict pads them, reusing its compiled program.
ONE_BATCH = dict(max_graphs=7)
# Batches of one or two frames, and the 8-atom frame alone over the budget.
SMALL_BATCHES = dict(max_nodes=4, max_edges=400)


@pytest.fixture(scope="module")
def potential():
    return Potential.create("small", species=["O", "Si"], r_cut=4.0, dtype="float64",
                            lmax=1, mmax=1, num_layers=1, channels=8, mixing_hidden=16, readout_hidden=8)


def _structures():
    si = bulk("Si", "diamond", a=5.43)
    si_o = bulk("Si", "diamond", a=5.43, cubic=True)
    si_o.numbers[[1, 5]] = 8
    o2 = make_frame([8, 8], [[0, 0, 0], [0, 0, 1.21]])
    rng = np.random.default_rng(0)
    frames = []
    for atoms in (si, si_o, None, si, si):
        if atoms is None:
            frames.append(o2)
            continue
        positions = atoms.positions + rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(make_frame(atoms.numbers, positions, atoms.cell[:], True))
    return frames


@pytest.fixture(scope="module")
def frames(potential):
    """Frames labelled with predictions minus the offsets above (error = prediction - label)."""
    structures = _structures()
    labelled = []
    for k, (frame, pred) in enumerate(zip(structures, potential.predict(structures))):
        n = frame.n_atoms
        energy = None if ENERGY_OFFSETS[k] is None else pred.energy - ENERGY_OFFSETS[k] * n
        forces = None if k == 4 else pred.forces - np.array([FORCE_OFFSETS[z] for z in frame.numbers])
        stress = None if STRESS_OFFSETS[k] is None else pred.stress - STRESS_OFFSETS[k]
        labelled.append(make_frame(frame.numbers, frame.positions, frame.cell, frame.pbc,
                                   energy, forces, stress, source="test", index=k))
    return labelled


def _check_metrics(data, rel=1e-9):
    """The exact values implied by the offsets, in meV/atom, meV/Å and GPa."""
    approx = lambda x: pytest.approx(x, rel=rel)  # noqa: E731
    assert (data["frames"], data["atoms"]) == (5, 16)
    # Energy errors 1, -3, 2, 4 meV/atom.
    assert data["energy"] == {"frames": 4, "mae": approx(2.5), "rmse": approx(math.sqrt(7.5)), "mean": approx(1.0)}
    # Forces: 10 Si atoms at (10, -10, 10) meV/Å, 4 O atoms at (-20, 20, -20): 42 components.
    assert data["forces"] == {"frames": 4, "mae": approx(180 / 14), "rmse": approx(math.sqrt(2600 / 14)),
                              "mean": approx((10 * 10 - 4 * 20) / 42)}
    # Stress errors 1, -2, 3 meV/Å^3 on every component, in GPa.
    assert data["stress"] == {"frames": 3, "mae": approx(2e-3 * GPA), "rmse": approx(math.sqrt(14 / 3) * 1e-3 * GPA),
                              "mean": approx(2e-3 / 3 * GPA)}
    si, o = data["elements"]["Si"], data["elements"]["O"]
    assert list(data["elements"]) == ["O", "Si"]
    assert (si["atoms"], o["atoms"]) == (12, 4)
    assert (si["forces_mae"], si["forces_rmse"]) == (approx(10), approx(10))
    assert (o["forces_mae"], o["forces_rmse"]) == (approx(20), approx(20))
    # Si: frames 0, 1, 4 (1, -3, 4 meV/atom); O: frames 1, 2 (-3, 2 meV/atom).
    assert (si["energy_frames"], si["energy_mae"], si["energy_rmse"]) == (3, approx(8 / 3), approx(math.sqrt(26 / 3)))
    assert (o["energy_frames"], o["energy_mae"], o["energy_rmse"]) == (2, approx(2.5), approx(math.sqrt(6.5)))


def test_metrics_match_hand_computed_values(potential, frames):
    _check_metrics(evaluate(potential, iter(frames), **ONE_BATCH).to_dict())


def test_batching_does_not_change_metrics(potential, frames):
    _check_metrics(evaluate(potential, frames, **SMALL_BATCHES).to_dict())


def test_metrics_from_any_predictions_equal_the_batched_ones(potential, frames):
    """Metrics.add_frame (predictions from another calculator, e.g. a teacher) counts the
    same errors as the batched path."""
    from mlip.evaluate import Metrics

    metrics = Metrics()
    for frame, pred in zip(frames, potential.predict(frames)):
        metrics.add_frame(frame, pred.energy, pred.forces, pred.stress)
    _check_metrics(metrics.to_dict())


def test_unlabelled_data_gives_empty_metrics(potential, frames):
    bare = [make_frame(f.numbers, f.positions, f.cell, f.pbc) for f in frames]
    data = evaluate(potential, bare, **ONE_BATCH).to_dict()
    assert data["frames"] == 5
    assert data["energy"] == data["forces"] == data["stress"] == {"frames": 0, "mae": None, "rmse": None, "mean": None}
    assert data["elements"]["Si"]["forces_mae"] is None and data["elements"]["Si"]["energy_frames"] == 0


def test_unknown_element_names_element_and_frame(potential, frames, tmp_path):
    copper = make_frame([29], [[0, 0, 0]], np.eye(3) * 3.6, True, source="cu.xyz", index=7)

    def stream():
        yield copper
        raise AssertionError("read past the bad frame")

    with pytest.raises(MlipError, match=r"cu.xyz, frame 7: element\(s\) Cu not in"):
        evaluate(potential, stream(), **ONE_BATCH)
    write_shards([*frames, copper], tmp_path / "shards", progress=False)
    with pytest.raises(MlipError, match=r"element\(s\) Cu not in"):
        open_data(tmp_path / "shards", potential)


def test_shard_directory(potential, frames, tmp_path):
    write_shards(frames, tmp_path / "shards", frames_per_shard=2, progress=False)
    dataset, total = open_data(tmp_path / "shards", potential)
    assert total == 5
    _check_metrics(evaluate(potential, dataset, total=total, **ONE_BATCH).to_dict())


def test_cli_end_to_end(potential, frames, tmp_path, capsys):
    model, data, out = tmp_path / "model.mlip", tmp_path / "data.xyz", tmp_path / "out" / "metrics.json"
    potential.save(model)
    ase.io.write(data, [frame.to_atoms() for frame in frames])
    budgets = ["--batch-nodes", "4", "--batch-edges", "400"]  # SMALL_BATCHES
    assert main(["evaluate", str(model), str(data), "-q", "--json", str(out), *budgets]) == 0
    printed = capsys.readouterr().out
    assert "5 frames, 16 atoms" in printed
    assert "energy    meV/atom        4      2.500      2.739" in printed
    assert "Si             12     10.000     10.000        3      2.667      2.944" in printed
    result = json.loads(out.read_text())
    assert result["model"] == str(model) and result["units"]["forces"] == "meV/Å"
    _check_metrics(result, rel=1e-6)  # extxyz keeps about 8 decimals

    ase.io.write(tmp_path / "cu.xyz", bulk("Cu", "fcc", a=3.6))
    assert main(["evaluate", str(model), str(tmp_path / "cu.xyz"), "-q"]) == 2
    assert "cu.xyz, frame 0: element(s) Cu not in" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["small batches", "add_frame"])
def test_metrics_by_group_equal_each_group_evaluated_alone(potential, frames, path):
    from mlip.evaluate import Metrics

    names = ["bulk", "oxide", "bulk", "oxide", None]  # frame 4 has no group
    grouped = []
    for frame, name in zip(frames, names):
        info = {} if name is None else {"config_type": name}
        grouped.append(make_frame(frame.numbers, frame.positions, frame.cell, frame.pbc, frame.energy,
                                  frame.forces, frame.stress, info=info))
    if path == "add_frame":
        metrics = Metrics(by="config_type")
        for frame, pred in zip(grouped, potential.predict(grouped)):
            metrics.add_frame(frame, pred.energy, pred.forces, pred.stress)
    else:
        metrics = evaluate(potential, grouped, by="config_type", **SMALL_BATCHES)  # batches mix the groups
    data = metrics.to_dict()
    _check_metrics(data)
    assert data["by"] == "config_type" and list(data["groups"]) == ["", "bulk", "oxide"]
    for name in ("", "bulk", "oxide"):
        alone = evaluate(potential, [f for f, n in zip(grouped, names) if (n or "") == name], **ONE_BATCH).to_dict()
        assert (data["groups"][name]["frames"], data["groups"][name]["atoms"]) == (alone["frames"], alone["atoms"])
        for key in ("energy", "forces", "stress"):
            for stat, value in alone[key].items():
                assert data["groups"][name][key][stat] == (None if value is None else pytest.approx(value, rel=1e-9)), (name, key, stat)
    # bulk: frames 0 and 2, energy errors 1 and 2 meV/atom.
    assert data["groups"]["bulk"]["energy"]["mae"] == pytest.approx(1.5)
    assert "(none)" in metrics.table() and "config_type" in metrics.table()
