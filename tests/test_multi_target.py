"""One study for several devices, run for real on the tiny task (tests/_tiny.py): two targets,
a plan trained once, a front per target, bits one target lacks, export and resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from tests._tiny import SPACE, experiment_dict, write_tiny_experiment

pytestmark = pytest.mark.slow

# cloud_gpu runs 4-bit weights, mcu does not: a 4-bit plan is feasible on one only.
TARGETS = ["mcu", "cloud_gpu"]
TASK = experiment_dict()["task"]


def _experiment(folder: Path, **changes) -> Path:
    path = write_tiny_experiment(
        folder,
        "multi",
        trials=10,
        targets=TARGETS,
        recovery={"epochs": 2, "batch_size": 64, "lr": 0.01},
        **changes,
    )
    space = {**SPACE, "quantize": {**SPACE["quantize"], "weight_bits": [4, 8, 32]}}
    (folder / "tiny_space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _one_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("multi")
    old = Path.cwd()
    os.chdir(folder)
    try:
        exp = _experiment(folder, task={**TASK, "train_epochs": 30})  # a base that learns
        assert main(["run", str(exp), "--no-progress"]) == 0
    finally:
        os.chdir(old)
    return folder


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="multi", storage=f"sqlite:///{run_dir / 'study.db'}")
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def _front(run_dir: Path, target: str) -> dict:
    return json.loads((run_dir / f"pareto.{target}.json").read_text())


def test_each_plan_trained_once_and_costed_on_every_target(run: Path):
    run_dir = run / "experiments" / "runs" / "multi"
    for name in (
        "report.html",
        *(
            f"{k}.{t}.{e}"
            for t in TARGETS
            for k, e in (("pareto", "json"), ("report", "html"), ("trials", "csv"))
        ),
    ):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "pareto.json").exists()  # single-target runs only
    trials = _trials(run_dir)
    trained = [t for t in trials if t.user_attrs["status"] == "trained"]
    assert trained
    # One training per plan: distinct plans, one weights file each, and nothing else trained.
    assert len({t.user_attrs["plan_key"] for t in trained}) == len(trained)
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == sorted(
        f"trial-{t.number}.pt" for t in trained
    )
    for t in trials:
        for target in TARGETS:
            assert t.user_attrs[f"latency_ms@{target}"] > 0
            assert "bits" in t.user_attrs[f"constraints@{target}"]
    # The same plan costs differently on the two devices.
    assert all(
        t.user_attrs["latency_ms@mcu"] > t.user_attrs["latency_ms@cloud_gpu"] for t in trials
    )
    index = (run_dir / "report.html").read_text()
    assert all(f"report.{t}.html" in index for t in TARGETS)


def test_fronts_differ_and_bits_are_infeasible_on_that_target_only(run: Path):
    run_dir = run / "experiments" / "runs" / "multi"
    mcu, gpu = _front(run_dir, "mcu"), _front(run_dir, "cloud_gpu")
    assert mcu["profile"] == "mcu" and gpu["profile"] == "cloud_gpu"
    # Each target's objective values are its own costs, and the accuracy is the one training's.
    for f, target in ((mcu, "mcu"), (gpu, "cloud_gpu")):
        for point in f["front"]:
            t = next(t for t in _trials(run_dir) if t.number == point["trial"])
            assert point["values"]["latency_ms"] == t.user_attrs[f"latency_ms@{target}"]
            assert point["values"]["accuracy"] == t.user_attrs["accuracy"]
    assert {p["trial"] for p in mcu["front"]} != {p["trial"] for p in gpu["front"]}

    four_bit = [
        t
        for t in _trials(run_dir)
        if t.user_attrs["status"] == "trained"
        and 4 in t.user_attrs["plan"]["quantize"]["weight_bits"].values()
    ]
    assert four_bit, "the seeded search drew no 4-bit plan"
    for t in four_bit:
        assert t.user_attrs["constraints@mcu"]["bits"] == 1.0
        assert t.user_attrs["constraints@cloud_gpu"]["bits"] == 0.0
        assert t.user_attrs["fits"] == ["cloud_gpu"]
    gpu_feasible = {p["trial"] for p in gpu["front"]}
    assert any(t.number in gpu_feasible for t in four_bit)  # the smallest plans are 4-bit
    assert not any(p["trial"] in {t.number for t in four_bit} for p in mcu["front"])


def test_export_needs_the_target(run: Path, capsys: pytest.CaptureFixture[str], monkeypatch):
    monkeypatch.chdir(run)
    run_dir = run / "experiments" / "runs" / "multi"
    assert main(["export", str(run_dir)]) == 2
    _one_error(capsys.readouterr().err, "--target", "'mcu'", "'cloud_gpu'")
    assert main(["export", str(run_dir), "--target", "phone"]) == 2
    _one_error(capsys.readouterr().err, "--target", "'phone'")
    assert not any(p.name.startswith("winner") for p in run_dir.iterdir())  # nothing written

    assert main(["export", str(run_dir), "--target", "cloud_gpu"]) == 0
    winner = yaml.safe_load((run_dir / "winner-cloud_gpu" / "winner.yaml").read_text())
    assert winner["profile"]["name"] == "cloud_gpu"
    assert winner["trial"] == _front(run_dir, "cloud_gpu")["knee"]


def test_resume_refuses_another_target_set(
    run: Path, capsys: pytest.CaptureFixture[str], monkeypatch
):
    monkeypatch.chdir(run)
    exp = run / "multi.yaml"
    before = len(_trials(run / "experiments" / "runs" / "multi"))
    assert main(["run", str(exp), "--no-progress", "--targets", "mcu,phone"]) == 2
    _one_error(capsys.readouterr().err, "targets ['mcu', 'cloud_gpu']", "--out")
    assert main(["run", str(exp), "--no-progress", "--target", "mcu"]) == 2
    _one_error(capsys.readouterr().err, "not 'mcu'")
    assert (
        main(["run", str(exp), "--no-progress", "--target", "mcu", "--targets", "mcu,phone"]) == 2
    )
    _one_error(capsys.readouterr().err, "--targets")
    assert len(_trials(run / "experiments" / "runs" / "multi")) == before


@pytest.mark.parametrize(
    ("targets", "field", "needle"),
    [
        (["mcu", "mcu"], "targets", "twice"),
        ("mcu", "targets", "list"),
        (["mcu", "no_such_board"], "targets[1]", "no_such_board"),
    ],
)
def test_bad_targets_name_the_field(targets, field: str, needle: str):
    from search.config import parse_experiment
    from search.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_experiment({"name": "x", "targets": targets}, "x.yaml")
    assert (info.value.file, info.value.field) == ("x.yaml", field)
    assert needle in info.value.message
