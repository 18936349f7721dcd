"""benchmarks/device_check.py --tiny: every step of the GPU device check runs on the CPU at toy
sizes and reports, so the script cannot rot while no GPU is lent (DESIGN.md, second-wave rules).
Slow (a few minutes on one core): each step is its own process and compiles its programs."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import device_check  # noqa: E402


def test_tiny_device_check_runs_every_step_and_reports(tmp_path):
    # A budget far above the tiny run's needs: a loaded CI machine must not cut a step.
    assert device_check.main(["--tiny", "--out", str(tmp_path), "--budget", "1500"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["header"]["device"]["platform"] == "cpu"
    assert list(report["steps"]) == list(device_check.STEPS)
    for name, step in report["steps"].items():
        assert step["status"] == "done", (name, step["status"])
        assert step["rows"], name
        for row in step["rows"]:
            assert "raised" not in str(row.get("result", "")), (name, row)
    rows = {name: step["rows"] for name, step in report["steps"].items()}
    assert rows["kernel"][0]["result"] == "pallas"  # the interpreted kernel passes its first-use check
    in_model = next(r for r in rows["kernel"] if r["part"] == "in model")
    assert in_model["forces_max_rel_error"] < 1e-4
    assert {r["kernel"] for r in rows["potential"]} == {"reference", "pallas"}
    assert any(r.get("fits") for r in rows["largest"])
    assert rows["md"][0]["status"] == "completed"
    assert next(r for r in rows["train"] if r["part"] == "steady steps")["frames_per_s"] > 0
    assert [r["precision"] for r in rows["precision"] if r["part"] == "NVE drift"] == ["default", "highest"]
    markdown = (tmp_path / "results.md").read_text()
    assert all(f"## {name}: done" in markdown for name in device_check.STEPS)
