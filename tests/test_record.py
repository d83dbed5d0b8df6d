"""The trial record (search.record): statuses, feasibility, the primary metric, the budget map."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from search.budgets import BUDGET_KEYS, BUDGET_METRICS, budget_for_metric
from search.hardware import CostReport, constraint_values
from search.record import (
    UNTRAINED,
    TrialRecord,
    TrialStatus,
    is_feasible,
    primary_metric,
    status_of,
    trial_feasible,
    write_duplicate,
    write_failure,
    write_outcome,
    write_plan,
)


@dataclass(frozen=True)
class Obj:
    metric: str
    direction: str


def _study(tmp_path: Path) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="s", storage=url, directions=["maximize"]), url


def test_every_status_round_trips_through_sqlite(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    for status in TrialStatus:
        trial = study.ask()
        write_plan(trial, {"x": 1}, "plan x", f"key-{status.value}")
        write_outcome(
            trial,
            status,
            metrics={"accuracy": 0.9},
            constraints={"latency_ms": -0.5},
            constraint_names=["latency_ms"],
        )
        study.tell(trial, 0.9)
    loaded = optuna.load_study(study_name="s", storage=url)
    for t, status in zip(loaded.get_trials(), TrialStatus):
        # Stored as the plain string every older study holds, read back as the enum.
        assert t.user_attrs["status"] == status.value
        assert type(t.user_attrs["status"]) is str
        assert status_of(t) is status
        record = TrialRecord.from_trial(t, [Obj("accuracy", "maximize")])
        assert record.status is status
        assert record.trained == (status is TrialStatus.TRAINED)
        assert record.feasible == (status is TrialStatus.TRAINED) == trial_feasible(t)
        assert record.plan_text == "plan x" and record.constraints == {"latency_ms": -0.5}


def test_status_text_is_the_stored_value() -> None:
    assert str(TrialStatus.OVER_BUDGET) == f"{TrialStatus.OVER_BUDGET}" == "over_budget"
    assert TrialStatus.DUPLICATE == "duplicate" and "duplicate" in UNTRAINED
    assert TrialStatus.parse("nonsense") is None and TrialStatus.parse(None) is None


def test_failure_and_duplicate_writers(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    first = study.ask()
    write_outcome(
        first,
        TrialStatus.TRAINED,
        metrics={"accuracy": 0.8, "build_s": 1.0},
        constraints={"latency_ms": 0.25},
        constraint_names=["latency_ms"],
    )
    study.tell(first, 0.8)
    again = study.ask()
    write_duplicate(again, study.trials[0], ["latency_ms"])
    study.tell(again, 0.8)
    failed = study.ask()
    write_failure(failed, "ValueError: " + "x" * 600, "trace")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)

    dup, fail = study.get_trials()[1:]
    assert status_of(dup) is TrialStatus.DUPLICATE and dup.user_attrs["duplicate_of"] == 0
    assert dup.user_attrs["accuracy"] == 0.8 and "build_s" not in dup.user_attrs
    assert dup.constraints == {"latency_ms": 0.25}
    assert status_of(fail) is TrialStatus.FAILED and len(fail.user_attrs["fail_reason"]) == 500
    # Over budget, so not feasible though trained.
    assert not trial_feasible(study.get_trials()[0])


def test_feasibility() -> None:
    ok = {"latency_ms": -0.1, "accuracy_drop": 0.0}
    assert is_feasible("COMPLETE", TrialStatus.TRAINED, ok, (0.9, 1.0))
    assert is_feasible("COMPLETE", "trained", ok)
    assert is_feasible("COMPLETE", None, ok)  # a study recorded before statuses
    assert not is_feasible("COMPLETE", TrialStatus.TRAINED, {"latency_ms": 0.01})
    assert not is_feasible("COMPLETE", TrialStatus.TRAINED, ok, (math.nan,))
    assert not is_feasible("RUNNING", TrialStatus.TRAINED, ok)
    for status in UNTRAINED:
        assert not is_feasible("COMPLETE", status, ok)
        assert not is_feasible("COMPLETE", status.value, ok)


def test_primary_metric_fallbacks() -> None:
    objs = [Obj("latency_ms", "minimize"), Obj("f1", "maximize"), Obj("accuracy", "maximize")]
    assert primary_metric(objs, "recall") == "recall"  # what the study stored wins
    assert primary_metric(objs, "") == "f1"  # else the first maximised objective
    assert primary_metric(objs) == "f1"
    assert primary_metric([Obj("latency_ms", "minimize")]) == "accuracy"
    assert primary_metric() == "accuracy"


def test_budget_map_matches_the_constraints() -> None:
    assert tuple(BUDGET_METRICS) == BUDGET_KEYS
    assert budget_for_metric("memory_bytes") == "memory_kb"
    assert budget_for_metric("weight_bytes") is None
    assert budget_for_metric("weight_bytes", aliases=True) == "flash_kb"
    assert budget_for_metric("peak_activation_bytes", aliases=True) == "memory_kb"
    cost = CostReport(
        params=0,
        macs=0,
        weight_bytes=0,
        peak_activation_bytes=0,
        memory_bytes=3 * 1024,
        flash_bytes=10 * 1024,
        latency_ms=4.0,
    )
    budgets = {"latency_ms": 2.0, "memory_kb": 6.0, "flash_kb": 5.0}
    cons = constraint_values(cost, budgets)
    for key, (metric, scale, _unit) in BUDGET_METRICS.items():
        assert cons[key] == pytest.approx(getattr(cost, metric) / scale / budgets[key] - 1)


# --- the record owns the schema -------------------------------------------------------------
_RAW = {"user_attrs", "system_attrs", "set_user_attr", "set_system_attr"}


def _raw_uses(path: Path) -> list[str]:
    """`file:line name` for each raw Optuna attribute access (`t.user_attrs`, `user_attrs=`)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _RAW:
            found.append(f"{path}:{node.lineno} {node.attr}")
        elif isinstance(node, ast.keyword) and node.arg in _RAW:
            found.append(f"{path}:{node.value.lineno} {node.arg}=")
    return found


def test_only_the_record_reads_and_writes_optuna_attributes() -> None:
    repo = Path(__file__).resolve().parents[1]
    record = repo / "search" / "record"
    files = [
        *(p for p in (repo / "search").rglob("*.py") if record not in p.parents),
        *(repo / "experiments" / "benchmarks").rglob("*.py"),
    ]
    assert len(files) > 50
    assert _raw_uses(record / "_trial.py"), "the check finds nothing: it cannot fail"
    raw = [use for p in files for use in _raw_uses(p)]
    assert raw == [], "read and write trial and study attributes through search.record"


def test_budget_lines_are_in_the_metrics_units() -> None:
    from search.record import budget_lines

    base = {"latency_ms": 9.0, "weight_bytes": 1000.0, "flash_bytes": 1400.0}
    budgets = {"latency_ms": 10.0, "flash_kb": 64.0, "memory_kb": 512.0}
    checked = {**budgets, "memory_kb": 320.0}  # the board's SRAM cuts the memory budget
    lines = budget_lines(
        ["latency_ms", "flash_bytes", "weight_bytes", "memory_bytes"], checked, base
    )
    # Flash holds more than the weights here: no line on the weights' axis.
    assert lines == {"latency_ms": 10.0, "flash_bytes": 64 * 1024, "memory_bytes": 320 * 1024}
    same = {**base, "flash_bytes": 1000.0}  # a flash holding the weights alone
    assert budget_lines(["weight_bytes"], budgets, same) == {"weight_bytes": 64 * 1024}
