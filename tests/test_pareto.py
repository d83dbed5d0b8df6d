"""The review data object, built from real Optuna studies in SQLite files (the storage schema)."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.errors import ConfigError
from search.review import (
    Objective,
    dominates,
    hypervolume,
    knee_index,
    layer_rows,
    load_run,
    load_run_dir,
    pareto_indices,
    run_dir_storage,
    trials_frame,
    write_outputs,
)
from spaces import CompressionPlan, LowRankConfig, PruneConfig, QuantizeConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = [["accuracy", "maximize"], ["latency_ms", "minimize"], ["weight_bytes", "minimize"]]
BUDGETS = {"latency_ms": 2.0, "memory_kb": 64.0, "flash_kb": 32.0}
BASE = {"accuracy": 0.9, "recall": 0.9, "f1": 0.9, "latency_ms": 4.0, "weight_bytes": 40000}
MAX_DROP = 0.35
# The refine stage's study attribute: trial 1 re-trained longer.
REFINED = {
    "1": {
        "accuracy": 0.83,
        "recall": 0.82,
        "f1": 0.82,
        "epochs": 8,
        "weights": "weights/trial-1-refined.pt",
        "accuracy_drop": 0.07,
    }
}

# (accuracy, latency_ms, weight_bytes, status); the numbers of the hand calculations below.
SPECS: list[tuple[Any, ...]] = [
    (0.88, 1.8, 30000, "trained"),  # 0 front (max accuracy)
    (0.80, 1.0, 20000, "trained"),  # 1 front (the knee)
    (0.70, 1.5, 25000, "trained"),  # 2 feasible, dominated by 1
    (0.60, 0.5, 10000, "trained"),  # 3 front (min latency, min size)
    (0.00, 3.0, 50000, "over_budget"),  # 4 not trained
    (None, None, None, "failed"),  # 5 FAIL with a reason
    (0.95, 2.5, 30000, "trained"),  # 6 trained but over the latency budget
    (None, None, None, "stopped_early"),  # 7 PRUNED
]


def plan_dict(ratio: float, bits: int) -> dict[str, Any]:
    return CompressionPlan(
        lowrank=LowRankConfig(ranks={"conv2": 0.5}),
        prune=PruneConfig(ratios={"conv1": ratio, "conv2": ratio}),
        quantize=QuantizeConfig(
            weight_bits={"conv1": bits, "conv2": bits, "fc": 8}, activation_bits=8
        ),
    ).to_dict()


def make_trial(
    i: int, acc: Any, lat: Any, size: Any, status: str, budgets: dict[str, float]
) -> optuna.trial.FrozenTrial:
    """One trial exactly as search/objective.py records it."""
    plan = plan_dict(round(0.1 * (i % 7), 1), (8, 4, 16, 32)[i % 4])
    attrs: dict[str, Any] = {
        "plan": plan,
        "plan_text": CompressionPlan.from_dict(plan).describe(),
        "status": status,
        "skipped_layers": {"fc": "logits layer"},
        "build_s": 0.01,
    }
    if i == 0:
        attrs["recipe"] = "int8"  # warm-start trials carry their recipe's name
    if status == "failed":
        attrs["fail_reason"] = "RuntimeError: loss became NaN"
        return create_trial(state=TrialState.FAIL, user_attrs=attrs)
    if status == "stopped_early":
        return create_trial(state=TrialState.PRUNED, user_attrs=attrs)
    mem = 20000
    cost = {
        "params": size // 4,
        "macs": size * 10,
        "weight_bytes": size,
        "peak_activation_bytes": mem // 2,
        "memory_bytes": mem,
        "flash_bytes": size,
        "latency_ms": lat,
    }
    constraints = {
        "latency_ms": lat / budgets["latency_ms"] - 1,
        "memory_kb": mem / 1024 / budgets["memory_kb"] - 1,
        "flash_kb": size / 1024 / budgets["flash_kb"] - 1,
    }
    trained = status == "trained"
    metrics = (
        {"accuracy": acc, "recall": acc, "f1": acc}
        if trained
        else dict.fromkeys(("accuracy", "recall", "f1"))
    )
    drop = BASE["accuracy"] - (acc if trained else 0.0)
    constraints["accuracy_drop"] = drop - MAX_DROP
    attrs.update(cost, **metrics, accuracy_drop=drop, constraints=constraints)
    if trained:
        attrs["train_s"] = 0.5
    values = [acc if trained else 0.0, lat, size]
    return create_trial(values=values, user_attrs=attrs, constraints=constraints)


def make_study(
    path: Path,
    specs: Sequence[tuple[Any, ...]] = SPECS,
    *,
    budgets: dict[str, float] | None = None,
    name: str = "demo",
    objectives: list[list[str]] | None = None,
) -> str:
    """A real SQLite study following the storage schema; returns its URL."""
    budgets = budgets or BUDGETS
    objectives = objectives or OBJECTIVES
    url = f"sqlite:///{path}"
    study = optuna.create_study(
        study_name=name, storage=url, directions=[d for _, d in objectives]
    )
    for key, value in {
        "experiment": {"name": name, "trials": len(specs)},
        "objectives": objectives,
        "constraints": [*budgets, "accuracy_drop"],
        "budgets": budgets,
        "max_accuracy_drop": MAX_DROP,
        "profile": {"name": "testboard", "weight_bits": [4, 8, 16, 32]},
        "base_metrics": BASE,
        "task": "digits",
        "base_hash": "0" * 64,
        "space": "joint",
        "primary_metric": "accuracy",
        "refined": REFINED,
    }.items():
        study.set_user_attr(key, value)
    for i, spec in enumerate(specs):
        t = make_trial(i, *spec, budgets=budgets)
        if len(objectives) < 3 and t.values is not None:
            t = create_trial(
                values=t.values[: len(objectives)],
                user_attrs=t.user_attrs,
                constraints=t.constraints,
            )
        study.add_trial(t)
    return url


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """RunData is frozen, so one study serves every test of the module."""
    return load_run(make_study(tmp_path_factory.mktemp("run") / "study.db"), "demo")


# --- geometry against hand-computed values --------------------------------------------------
def test_hypervolume_2d_staircase_by_hand() -> None:
    # Strips: [3,4) x 3 + [2,3) x 2 + [1,2) x 1 = 6
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    # A dominated point and a point outside the box change nothing.
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3), (5, 0)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(0.5,)], (1,)) == pytest.approx(0.5)


def test_hypervolume_3d_by_inclusion_exclusion() -> None:
    # Two boxes to (1,1,1): 1*1*0.5 + 0.5*0.5*1 - overlap 0.5*0.5*0.5 = 0.625
    assert hypervolume([(0, 0, 0.5), (0.5, 0.5, 0)], (1, 1, 1)) == pytest.approx(0.625)
    assert hypervolume([(0, 0, 0)], (2, 3, 4)) == pytest.approx(24.0)


def _inclusion_exclusion(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    total = 0.0
    for k in range(1, len(points) + 1):
        for sub in itertools.combinations(points, k):
            corner = [max(p[j] for p in sub) for j in range(len(ref))]
            vol = math.prod(max(0.0, r - c) for r, c in zip(ref, corner))
            total += (-1) ** (k + 1) * vol
    return total


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(dims: int) -> None:
    rng = random.Random(dims)
    for _ in range(20):
        pts = [[rng.random() for _ in range(dims)] for _ in range(rng.randint(1, 6))]
        assert hypervolume(pts, [1.0] * dims) == pytest.approx(
            _inclusion_exclusion(pts, [1.0] * dims), abs=1e-12
        )


def test_dominance_and_front() -> None:
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2))
    losses = [(0, 1), (0.4, 0.4), (1, 0), (0.5, 0.5), (0.4, 0.4)]
    assert pareto_indices(losses) == [0, 1, 2, 4]  # (0.5, 0.5) dominated; duplicates kept


def test_knee_is_the_smallest_worst_shortfall() -> None:
    # Worst shortfalls -0.2, -0.5, -0.3: the second plan has the most room on its tightest axis.
    assert knee_index([(-1.0, -0.2), (-0.5, -0.9), (-0.3, -2.0)]) == 1
    # Ties on the worst go to the smaller sum: (-0.5, -0.6) beats (-0.5, -0.5).
    assert knee_index([(-0.5, -0.5), (-0.5, -0.6)]) == 1
    # An ineligible plan is never the knee, however good its score; none eligible: no knee.
    assert knee_index([(-3.0, -3.0), (-0.5, -0.5)], eligible=[False, True]) == 1
    assert knee_index([(-3.0, -3.0)], eligible=[False]) is None
    assert knee_index([]) is None
    # Fixed scales: an extreme plan does not change the choice between the others (min-max
    # normalising over the front tied these two and took the first).
    pts = [(-0.9, -0.4), (-0.6, -0.7)]
    assert knee_index(pts) == 1
    assert knee_index([*pts, (10.0, -50.0)]) == 1


# --- the run data of a real study --------------------------------------------------------------
def test_trials_states_and_feasibility(run) -> None:
    assert [t.number for t in run.trials] == list(range(len(SPECS)))
    feas = {t.number for t in run.trials if t.feasible}
    assert feas == {0, 1, 2, 3}
    assert run.trial(4).status == "over_budget" and not run.trial(4).trained
    assert run.trial(5).state == "FAIL" and "NaN" in run.trial(5).fail_reason
    assert run.trial(6).trained and not run.trial(6).feasible
    assert run.trial(7).state == "PRUNED"
    assert run.trial(6).constraints["latency_ms"] == pytest.approx(0.25)
    c = run.counts()
    assert (c["trials"], c["feasible"], c["over_budget"], c["failed"], c["stopped_early"]) == (
        8,
        4,
        1,
        1,
        1,
    )


def test_front_knee_and_picks(run) -> None:
    assert set(run.front) == {0, 1, 3}
    assert run.front == (0, 1, 3)  # sorted by the first objective, best first
    assert run.knee == 1
    # The knee's limits: the base accuracy less the 35-point drop, the latency budget, and the
    # flash budget on the weight-bytes axis. Worst shortfalls: #1 -0.71, #3 -0.14, #0 -0.13.
    assert [(lim.reference, lim.basis) for lim in run.knee_limits] == [
        (0.9, "base"),
        (pytest.approx(2.0), "budget"),
        (pytest.approx(32 * 1024), "budget"),
    ]
    assert run.knee_limits[0].allowance == MAX_DROP
    assert run.knee_order == (1, 3, 0) and run.never_knee == ()
    assert run.pick("knee").number == 1
    assert run.pick("max-accuracy").number == 0
    assert run.pick("min-latency").number == 3
    assert run.pick("min-size").number == 3
    assert run.picks() == {"knee": 1, "max-accuracy": 0, "min-latency": 3, "min-size": 3}
    with pytest.raises(ConfigError, match="not one of"):
        run.pick("fastest")


def test_pick_by_trial_number(run) -> None:
    assert run.pick(trial=2).number == 2
    with pytest.raises(ConfigError, match="no trial 99"):
        run.pick(trial=99)
    with pytest.raises(ConfigError, match="fail"):
        run.pick(trial=5)
    with pytest.raises(ConfigError, match="allow-infeasible"):
        run.pick(trial=6)
    assert run.pick(trial=6, allow_infeasible=True).number == 6


def test_hypervolume_of_the_study_by_hand(run) -> None:
    # Normalised (S = base values 0.9, 4.0, 40000): 1 - acc/0.9, lat/4, size/40000.
    pts = {n: (1 - a / 0.9, lat / 4.0, s / 40000) for n, (a, lat, s, _) in enumerate(SPECS[:4])}
    assert run.hv_scales == (0.9, 4.0, 40000.0)
    expected = _inclusion_exclusion([pts[0], pts[1], pts[3]], (1, 1, 1))
    assert expected == pytest.approx(0.533056, abs=1e-6)  # worked out on paper too
    assert run.hypervolume == pytest.approx(expected)
    hist = dict(run.hypervolume_history)
    assert hist[0] == pytest.approx(_inclusion_exclusion([pts[0]], (1, 1, 1)))
    assert hist[1] == pytest.approx(_inclusion_exclusion([pts[0], pts[1]], (1, 1, 1)))
    assert hist[2] == hist[1]  # a dominated trial adds nothing
    assert hist[7] == pytest.approx(expected)  # infeasible/failed trials add nothing
    values = [hv for _, hv in run.hypervolume_history]
    assert values == sorted(values)


def test_budget_lines_in_the_objectives_units(run) -> None:
    # latency budget as is; the flash budget (kB) in weight bytes; accuracy = base - max drop.
    assert run.budget_lines["latency_ms"] == pytest.approx(2.0)
    assert run.budget_lines["weight_bytes"] == pytest.approx(32 * 1024)
    assert run.budget_lines["accuracy"] == pytest.approx(0.9 - MAX_DROP)


def test_layer_rows_from_a_plan(run) -> None:
    rows = {r["layer"]: r for r in layer_rows(run.trial(1).plan)}
    assert set(rows) == {"conv1", "conv2", "fc"}
    assert rows["conv2"]["rank"] == 0.5 and rows["conv1"]["rank"] == 1.0
    assert rows["fc"]["bits"] == 8 and rows["fc"]["prune_ratio"] == 0.0
    assert rows["conv1"]["prune_ratio"] == pytest.approx(0.1)
    glob = CompressionPlan(
        prune=PruneConfig(global_ratio=0.3), quantize=QuantizeConfig(weight_bits={"a": 4})
    ).to_dict()
    assert layer_rows(glob) == [
        {"layer": "a", "bits": 4, "prune_ratio": 0.3, "prune_global": True, "rank": 1.0}
    ]


# --- nothing feasible ----------------------------------------------------------------------------
def test_nothing_feasible_lists_least_violating(tmp_path: Path) -> None:
    tight = {"latency_ms": 0.1, "memory_kb": 64.0, "flash_kb": 1.0}
    run = load_run(make_study(tmp_path / "s.db", budgets=tight), "demo")
    assert run.front == () and run.knee is None and not run.any_feasible
    viol = [run.trial(n).violation for n in run.least_violating]
    assert viol == sorted(viol) and len(run.least_violating) == 5
    assert run.least_violating[0] == 3  # the smallest and fastest plan overshoots least
    assert all(run.trial(n).state == "COMPLETE" for n in run.least_violating)
    with pytest.raises(ConfigError, match="no trial meets the budgets.*allow-infeasible"):
        run.pick("knee")
    assert run.pick("knee", allow_infeasible=True).number == 3
    assert run.hypervolume == 0.0
    assert run.to_dict()["least_violating"][0]["trial"] == 3


# --- writers -------------------------------------------------------------------------------------
def test_trials_csv_and_pareto_json(run, tmp_path: Path) -> None:
    import pandas as pd

    paths = write_outputs(run, tmp_path / "out")
    assert set(paths) == {"trials.csv", "pareto.json", "report.html"}
    df = pd.read_csv(paths["trials.csv"])
    assert len(df) == len(SPECS)  # failed and pruned trials included
    failed = df[df.trial == 5].iloc[0]
    assert failed.state == "FAIL" and "NaN" in failed.fail_reason
    for col in (
        "objective.accuracy",
        "constraint.latency_ms",
        "constraint.accuracy_drop",
        "plan.prune.ratios.conv1",
        "plan.quantize.weight_bits.fc",
        "plan_text",
        "feasible",
        "on_front",
        "weight_bytes",
        "latency_ms",
    ):
        assert col in df.columns, col
    assert df.set_index("trial").loc[1, "on_front"]
    assert df.set_index("trial").loc[6, "constraint.latency_ms"] == pytest.approx(0.25)
    assert df.set_index("trial").loc[1, "refined.accuracy"] == pytest.approx(0.83)
    assert df.set_index("trial").loc[0, "recipe"] == "int8"

    data = json.loads(paths["pareto.json"].read_text())
    assert [f["trial"] for f in data["front"]] == [0, 1, 3]
    assert data["knee"] == 1 and data["picks"]["min-size"] == 3
    assert data["knee_scale"]["limits"]["weight_bytes"]["from"] == "budget"
    assert data["front"][1]["plan"] == run.trial(1).plan
    assert data["front"][1]["refined"]["accuracy"] == pytest.approx(0.83)
    assert data["hypervolume"] == pytest.approx(run.hypervolume)
    assert data["objectives"] == OBJECTIVES
    assert data["counts"]["feasible"] == 4
    assert CompressionPlan.from_dict(data["front"][0]["plan"])  # a plan that rebuilds


def test_summary_text(run) -> None:
    text = run.summary_text()
    c = run.counts()
    assert f"{c['trainings']} trainings from 8 proposals: 4 feasible" in text
    finished = [t for t in run.trials if t.state == "COMPLETE"]
    assert c["trainings"] == sum(t.status in ("trained", "stopped_early") for t in finished)
    assert "#1: accuracy 0.8" in text
    assert text.count("<- knee") == 1 and "<- knee" in text.splitlines()[2]


def test_trials_frame_without_trials(tmp_path: Path) -> None:
    run = load_run(make_study(tmp_path / "e.db", specs=[]), "demo")
    assert run.front == () and run.least_violating == () and run.hypervolume == 0.0
    assert len(trials_frame(run)) == 0
    write_outputs(run, tmp_path / "out")  # an empty study still writes its outputs


def test_two_objectives(tmp_path: Path) -> None:
    run = load_run(make_study(tmp_path / "t.db", objectives=OBJECTIVES[:2]), "demo")
    assert run.objectives == (
        Objective("accuracy", "maximize"),
        Objective("latency_ms", "minimize"),
    )
    assert set(run.front) == {0, 1, 3}
    # min-size is not an objective: it is still picked from the front's recorded weight bytes.
    assert run.pick("min-size").number == 3


# --- loading -------------------------------------------------------------------------------------
def test_load_errors_name_the_storage_and_do_not_create_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(ConfigError, match="no such SQLite file"):
        load_run(f"sqlite:///{missing}", "demo")
    assert not missing.exists()
    url = make_study(tmp_path / "s.db")
    with pytest.raises(ConfigError, match="no study 'other'.*demo"):
        load_run(url, "other")
    assert load_run(url).study_name == "demo"  # the only study


def test_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no study.db"):
        run_dir_storage(tmp_path)
    make_study(tmp_path / "study.db", name="a")
    make_study(tmp_path / "study.db", name="b")
    with pytest.raises(ConfigError, match="holds studies"):
        load_run_dir(tmp_path)
    named = tmp_path / "b"  # a folder named after one of its studies opens that one
    named.mkdir()
    make_study(named / "study.db", name="a")
    make_study(named / "study.db", name="b")
    assert load_run_dir(named).study_name == "b"
