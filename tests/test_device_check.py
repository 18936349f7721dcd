"""benchmarks/device_check.py --tiny: every step of the GPU device check runs on the CPU at toy
sizes and reports, so the script cannot rot while no GPU is lent (DESIGN.md, second-wave rules).
Slow (a few minutes on one core): each step is its own process and compiles its programs, so
the test runs the steps as two groups side by side (CI has two cores; a step's compilation uses
one): 230 s one after another on one core, about half that so."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import device_check  # noqa: E402


def test_tiny_device_check_runs_every_step_and_reports(tmp_path):
    # Two orchestrators, each a group of steps of about equal one-core time (s): kernel 39,
    # largest 16, precision 50 | potential 35, relax 38, md 23, train 29. A budget far above
    # the tiny run's needs: a loaded CI machine must not cut a step.
    groups = {"a": "kernel,largest,precision", "b": "potential,relax,md,train"}
    with ThreadPoolExecutor(len(groups)) as pool:
        codes = list(pool.map(lambda g: device_check.main(
            ["--tiny", "--out", str(tmp_path / g), "--budget", "1500", "--steps", groups[g]]), groups))
    assert codes == [0, 0]
    reports = [json.loads((tmp_path / g / "results.json").read_text()) for g in groups]
    assert all(report["header"]["device"]["platform"] == "cpu" for report in reports)
    steps = {name: step for report in reports for name, step in report["steps"].items()}
    assert sorted(steps) == sorted(device_check.STEPS)
    for name, step in steps.items():
        assert step["status"] == "done", (name, step["status"])
        assert step["rows"], name
        for row in step["rows"]:
            assert "raised" not in str(row.get("result", "")), (name, row)
    rows = {name: step["rows"] for name, step in steps.items()}
    assert rows["kernel"][0]["result"] == "pallas"  # the interpreted kernel passes its first-use check
    in_model = next(r for r in rows["kernel"] if r["part"] == "in model")
    assert in_model["forces_max_rel_error"] < 1e-4
    assert {r["kernel"] for r in rows["potential"]} == {"reference", "pallas"}
    assert any(r.get("fits") for r in rows["largest"])
    assert rows["md"][0]["status"] == "completed"
    assert next(r for r in rows["train"] if r["part"] == "steady steps")["frames_per_s"] > 0
    assert [r["precision"] for r in rows["precision"] if r["part"] == "NVE drift"] == ["default", "highest"]
    markdown = "".join((tmp_path / g / "results.md").read_text() for g in groups)
    assert all(f"## {name}: done" in markdown for name in device_check.STEPS)
