"""A real 4-training search on digits, then export and apply: the newcomer's path, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from search.cli import main

pytestmark = pytest.mark.slow


def write_experiment(folder: Path, **overrides) -> Path:
    exp = {
        "name": "e2e",
        "task": "digits",
        "target": "mcu",
        "space": "joint",
        "budgets": {"latency_ms": 30},
        "trials": 4,
        "seed": 3,
        "recovery": {"epochs": 1},
        **overrides,
    }
    path = folder / "e2e.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_search_export_apply(in_tmp: Path, capsys: pytest.CaptureFixture[str]):
    exp = write_experiment(in_tmp)
    assert main(["run", str(exp), "--no-progress"]) == 0
    out = capsys.readouterr().out
    run_dir = in_tmp / "experiments" / "runs" / "e2e"
    assert "report.html" in out

    # The run folder is complete.
    for name in ("study.db", "trials.csv", "pareto.json", "report.html"):
        assert (run_dir / name).is_file(), name
    trials = pd.read_csv(run_dir / "trials.csv")
    # `trials` counts trainings; over-budget proposals and repeats are rows beside them.
    assert trials["status"].isin(["trained", "stopped_early"]).sum() == 4
    first_run = set(trials["trial"])
    front = json.loads((run_dir / "pareto.json").read_text())
    assert front["front"], "the feasible front is empty"
    assert "plotly" in (run_dir / "report.html").read_text()[:2_000_000].lower()

    # Running it again resumes: nothing re-runs, two more trainings are added with --trials 6.
    assert main(["run", str(exp), "--no-progress", "--trials", "6"]) == 0
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    statuses = [t.user_attrs["status"] for t in complete]
    assert sum(s in ("trained", "stopped_early") for s in statuses) == 6
    assert first_run <= {t.number for t in complete}

    # The same study cannot silently change target.
    assert main(["run", str(exp), "--no-progress", "--target", "phone"]) == 2
    assert "searched for 'mcu'" in capsys.readouterr().err

    # Export the knee and rebuild it from the base model.
    assert main(["export", str(run_dir), "--pick", "knee"]) == 0
    winner = yaml.safe_load((run_dir / "winner" / "winner.yaml").read_text())
    assert (run_dir / "winner" / "model.onnx").is_file()
    assert (run_dir / "winner" / "card.md").is_file()
    capsys.readouterr()
    assert main(["apply", str(run_dir / "winner" / "winner.yaml")]) == 0
    applied = capsys.readouterr().out
    assert str(winner["metrics"]["weight_bytes"]) in applied


def test_measured_latency_mode_on_the_host(in_tmp: Path):
    """`latency: measured` replaces the prediction by an ONNX Runtime measurement per plan."""
    space = in_tmp / "small.yaml"
    space.write_text(
        yaml.safe_dump({"prune": {"ratio": [0.0, 0.5]}, "quantize": {"weight_bits": [8, 32]}})
    )
    exp = write_experiment(
        in_tmp,
        target="host",
        space=str(space),
        latency="measured",
        budgets={"latency_ms": 1000},
        trials=2,
        max_accuracy_drop=None,
    )
    assert main(["run", str(exp), "--no-progress"]) == 0
    db = in_tmp / "experiments" / "runs" / "e2e" / "study.db"
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{db}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    # A 4-plan space: a plan drawn twice is answered from its first trial.
    evaluated = [t for t in trials if t.user_attrs["status"] != "duplicate"]
    assert len(evaluated) == 2
    for trial in evaluated:
        assert trial.user_attrs["status"] == "trained"
        measured = trial.user_attrs["latency_ms"]
        assert 0 < measured < 1000
        assert measured != trial.user_attrs["predicted_latency_ms"]  # the prediction is replaced


@pytest.mark.parametrize("target", ["jetson_xavier", "jetson_nano", "a100"])
def test_gpu_profiles_search_report_and_export_fp16(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """`run --target <GPU profile>` on the quickstart's task: search, report, fp16 export."""
    exp = write_experiment(in_tmp, target=target, trials=2, budgets={"latency_ms": 5})
    assert main(["run", str(exp), "--no-progress"]) == 0
    run_dir = in_tmp / "experiments" / "runs" / "e2e"
    assert (run_dir / "report.html").is_file()
    front = json.loads((run_dir / "pareto.json").read_text())
    assert front["front"], "the feasible front is empty"
    assert main(["export", str(run_dir), "--format", "onnx-fp16"]) == 0
    winner = yaml.safe_load((run_dir / "winner" / "winner.yaml").read_text())
    assert winner["profile"]["name"] == target and winner["onnx"]["float16"] is True
    assert " as onnx-fp16 to " in capsys.readouterr().out
    if target == "jetson_nano":  # no int8 on its Maxwell GPU: the space offers no 8-bit layer
        trials = pd.read_csv(run_dir / "trials.csv")
        assert not trials["plan_text"].astype(str).str.contains(r"\bw[48]\b").any()
