"""The trained models committed under benchmarks/models/ still give the test errors recorded
for them (benchmarks/models/mlearn.json, written by benchmarks/mlearn_table.py)."""

import json
from pathlib import Path

import pytest

from conftest import shared_file
from mlip.data.readers import read_frames
from mlip.evaluate import evaluate
from mlip.potential import Potential

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
RECORDED = json.loads((MODELS / "mlearn.json").read_text()) if (MODELS / "mlearn.json").exists() else {}


@pytest.mark.parametrize("element", sorted(RECORDED))
def test_committed_mlearn_model_reproduces_its_test_errors(element):
    data = shared_file(f"mlearn/{element}_test.json")
    metrics = evaluate(Potential.load(MODELS / f"mlearn-{element}.mlip"), read_frames(data)).to_dict()
    assert metrics["energy"]["frames"] == RECORDED[element]["test_frames"]
    assert metrics["energy"]["mae"] == pytest.approx(RECORDED[element]["energy_mae"], rel=1e-3)
    assert metrics["forces"]["mae"] == pytest.approx(RECORDED[element]["forces_mae"], rel=1e-3)
