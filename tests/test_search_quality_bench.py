"""The search-quality benchmark's own helpers, on small real Optuna studies (storage schema).

The benchmark itself (experiments/benchmarks/search_quality.py) takes ~40 minutes; these tests
check the figures it computes: hypervolume ratios, the sequential run's re-scoring against the
final budgets, baseline dominance, speed-up and size at <= 1 point, trial timings, the stage-2
plan merge and the SVG plot. No timing asserts.
"""

from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import create_trial

from search.pareto import hypervolume, load_run
from spaces import ArchitectureConfig, CompressionPlan, LayerInfo, PruneConfig, SearchSpace

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "search_quality_bench", REPO / "experiments" / "benchmarks" / "search_quality.py"
)
assert _spec is not None and _spec.loader is not None
sq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sq)

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = [["accuracy", "maximize"], ["latency_ms", "minimize"], ["weight_bytes", "minimize"]]
BASE = {"accuracy": 0.9, "latency_ms": 10.0, "weight_bytes": 1000}
MAX_DROP = 0.1
T0 = datetime(2026, 1, 1, 12, 0, 0)


def trial(
    acc: float | None,
    lat: float,
    size: int,
    budgets: dict[str, float],
    *,
    recipe: str | None = None,
    seconds: float = 2.0,
    train_s: float | None = 1.5,
    plan: CompressionPlan | None = None,
    weights: str | None = None,
) -> optuna.trial.FrozenTrial:
    """One COMPLETE trial as search/objective.py records it (acc None: over budget)."""
    trained = acc is not None
    cost = {
        "params": size // 4,
        "macs": size * 10,
        "weight_bytes": size,
        "peak_activation_bytes": 512,
        "memory_bytes": 512,
        "flash_bytes": size,
        "latency_ms": lat,
    }
    constraints = {"latency_ms": lat / budgets["latency_ms"] - 1}
    drop = BASE["accuracy"] - (acc or 0.0)
    constraints["accuracy_drop"] = drop - MAX_DROP
    plan = plan or CompressionPlan(prune=PruneConfig(ratios={"conv1": 0.5}))
    attrs: dict[str, Any] = {
        **cost,
        "plan": plan.to_dict(),
        "plan_text": plan.describe(),
        "status": "trained" if trained else "over_budget",
        "accuracy": acc,
        "recall": acc,
        "f1": acc,
        "accuracy_drop": drop,
        "constraints": constraints,
        "skipped_layers": {},
        "build_s": 0.05,
    }
    if trained:
        attrs["train_s"] = train_s
    if recipe:
        attrs["recipe"] = recipe
    if weights:
        attrs["weights"] = weights
    t = create_trial(values=[acc or 0.0, lat, size], user_attrs=attrs, constraints=constraints)
    t.datetime_start = T0
    t.datetime_complete = T0 + timedelta(seconds=seconds)
    return t


def study(
    path: Path,
    name: str,
    budgets: dict[str, float],
    rows: list[dict[str, Any]],
    refined: dict[str, Any] | None = None,
) -> str:
    url = f"sqlite:///{path}"
    s = optuna.create_study(study_name=name, storage=url, directions=[d for _, d in OBJECTIVES])
    for key, value in {
        "objectives": OBJECTIVES,
        "constraints": [*budgets, "accuracy_drop"],
        "budgets": budgets,
        "max_accuracy_drop": MAX_DROP,
        "base_metrics": BASE,
        "primary_metric": "accuracy",
        "task": "digits",
        "space": name,
        "refined": refined or {},
    }.items():
        s.set_user_attr(key, value)
    for r in rows:
        s.add_trial(trial(budgets=budgets, **r))
    return url


FINAL = {"latency_ms": 5.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("sq")
    joint = study(
        d / "joint.db",
        "joint",
        FINAL,
        [
            {"acc": 0.88, "lat": 4.0, "size": 500, "recipe": "int8", "weights": "w0.pt"},
            {"acc": 0.85, "lat": 2.0, "size": 200, "weights": "w1.pt"},
            {"acc": None, "lat": 9.0, "size": 900, "seconds": 0.08},  # over budget
        ],
        refined={"1": {"accuracy": 0.87, "epochs": 8, "weights": "w1-refined.pt"}},
    )
    # Stage 1 runs under a loose latency budget: its 6 ms plan is feasible there, not finally.
    stage1 = study(
        d / "s1.db",
        "s1",
        {"latency_ms": 100.0},
        [
            {"acc": 0.89, "lat": 6.0, "size": 800},
            {"acc": 0.86, "lat": 4.5, "size": 700},
        ],
    )
    stage2 = study(
        d / "s2.db",
        "s2",
        FINAL,
        [
            {"acc": 0.86, "lat": 3.0, "size": 300},
        ],
    )
    return {
        "joint": load_run(joint, "joint"),
        "s1": load_run(stage1, "s1"),
        "s2": load_run(stage2, "s2"),
    }


def norm(acc: float, lat: float, size: float) -> tuple[float, float, float]:
    """search.pareto's documented normalisation, written out by hand."""
    return (1 - acc / BASE["accuracy"], lat / BASE["latency_ms"], size / BASE["weight_bytes"])


def test_ratio_and_median() -> None:
    assert sq.ratio(0.6, 0.4) == pytest.approx(1.5)
    assert sq.ratio(0.5, 0.0) == math.inf
    assert sq.ratio(0.0, 0.0) == 1.0
    assert sq.median([3.0, None, 1.0, 2.0]) == 2.0
    assert sq.median([]) is None


def test_joint_hypervolume_is_the_projects_definition(runs: dict[str, Any]) -> None:
    expected = hypervolume([norm(0.88, 4.0, 500), norm(0.85, 2.0, 200)], (1, 1, 1))
    assert runs["joint"].hypervolume == pytest.approx(expected)
    # Leaving out the warm-start recipe trial keeps only what the sampler found.
    assert sq.without_recipes(runs["joint"]).hypervolume == pytest.approx(
        hypervolume([norm(0.85, 2.0, 200)], (1, 1, 1))
    )
    # The recipes alone: the hypervolume every warm-started run starts from.
    assert sq.without_recipes(runs["joint"], only=True).hypervolume == pytest.approx(
        hypervolume([norm(0.88, 4.0, 500)], (1, 1, 1))
    )


def test_sequential_trials_are_rescored_against_the_final_budget(runs: dict[str, Any]) -> None:
    seq = sq.merged_run([runs["s1"], runs["s2"]], FINAL, max_drop=MAX_DROP)
    assert [t.number for t in seq.trials] == [0, 1, 2]
    feasible = {t.number: t.feasible for t in seq.trials}
    assert feasible == {0: False, 1: True, 2: True}  # 6 ms > 5 ms once judged finally
    assert seq.trial(0).constraints["latency_ms"] == pytest.approx(6.0 / 5.0 - 1)
    expected = hypervolume([norm(0.86, 4.5, 700), norm(0.86, 3.0, 300)], (1, 1, 1))
    assert seq.hypervolume == pytest.approx(expected)
    ratio = sq.ratio(runs["joint"].hypervolume, seq.hypervolume)
    assert ratio > 1.0  # the joint front dominates the sequential one here


def test_stage_one_pick_is_the_most_compressed_feasible_plan(runs: dict[str, Any]) -> None:
    pick = sq.stage_one_pick(runs["s1"])
    assert pick == CompressionPlan(prune=PruneConfig(ratios={"conv1": 0.5}))
    # Nothing feasible: stage 2 starts from the uncompressed plan.
    empty = sq.merged_run([runs["s1"]], {"latency_ms": 1.0}, max_drop=MAX_DROP)
    assert sq.stage_one_pick(empty) == CompressionPlan()


def test_dominance_speedup_and_size_within_one_point() -> None:
    front = [
        {"test_accuracy": 0.985, "latency_ms": 4.0, "weight_bytes": 30000},
        {"test_accuracy": 0.975, "latency_ms": 2.0, "weight_bytes": 9000},
    ]
    int8 = {"test_accuracy": 0.985, "latency_ms": 8.0, "weight_bytes": 95000}
    student = {"test_accuracy": 0.99, "latency_ms": 3.0, "weight_bytes": 50000}
    assert sq.weakly_dominates(front[0], int8)  # equal accuracy still counts (weakly)
    assert not any(sq.weakly_dominates(p, student) for p in front)
    # Base 0.99: only the first point is within 1 point, so the speed-up is 8 / 4.
    assert sq.best_speedup(8.0, front, 0.99) == pytest.approx(2.0)
    assert sq.best_speedup(8.0, front, 0.999) is None
    assert sq.smallest_within(front, 0.98)["weight_bytes"] == 9000
    assert sq.smallest_within(front, 0.99)["weight_bytes"] == 30000


def test_mcu_board_fit_uses_kib() -> None:
    ok = {"weight_bytes": 1000, "memory_bytes": 320 * 1024, "flash_bytes": 1024 * 1024}
    assert sq.fits_board(ok) == {"fits_sram_320kB": True, "fits_flash_1MB": True}
    big = {**ok, "memory_bytes": 320 * 1024 + 1}
    assert sq.fits_board(big)["fits_sram_320kB"] is False


def test_trial_times_split_overhead_from_recovery(runs: dict[str, Any]) -> None:
    tt = sq.trial_times(runs["joint"])
    assert tt["trained_s"] == [2.0, 2.0]
    assert tt["overhead_frac"] == pytest.approx([0.25, 0.25])  # (2.0 - 1.5) / 2.0
    assert tt["rejected_ms"] == pytest.approx([80.0])
    assert tt["rejected_build_ms"] == pytest.approx([50.0])


def test_stage_two_objective_keeps_stage_one_prune_and_searches_bits() -> None:
    space = SearchSpace.from_dict(sq.QUANT_SPACE)
    layers = [
        LayerInfo("conv1", "conv", 1, 8, (3, 3)),
        LayerInfo("fc", "linear", 8, 10, prunable=False),
    ]
    fixed = CompressionPlan(prune=PruneConfig(ratios={"conv1": 0.4}, importance="taylor"))
    obj = sq.StageTwoObjective.__new__(sq.StageTwoObjective)  # no task: suggest needs none
    obj.space, obj.fixed, obj._layers = space, fixed, {ArchitectureConfig(): layers}
    obj.profile = SimpleNamespace(weight_bits=(8, 16, 32), activation_bits=(8, 32))
    obj.exp = SimpleNamespace(recovery=SimpleNamespace(distillation=True))
    plan = obj.suggest(optuna.trial.FixedTrial({"bits.conv1": 8, "bits.fc": 16, "act_bits": 8}))
    assert plan.prune == fixed.prune
    assert plan.quantize.bits("conv1") == 8 and plan.quantize.bits("fc") == 16
    assert plan.quantize.activation_bits == 8


def test_pareto_svg_is_well_formed_and_draws_every_point() -> None:
    point = {"val_accuracy": 0.97, "latency_ms": 3.0, "weight_bytes": 20000.0}
    svg = sq.pareto_svg(
        "mcu",
        {"joint (auto)": [point, {**point, "latency_ms": 6.0}], "random": [point]},
        {"int8_ptq": {**point, "latency_ms": 30.0}},
        latency_budget=15.0,
        accuracy_floor=0.96,
    )
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    # Two panels: 2 joint circles + 1 legend circle; 1 random triangle per panel + 1 legend.
    assert len(root.findall(f"{ns}circle")) == 2 * 2 + 1
    assert len(root.findall(f"{ns}polygon")) == 2 + 1
    assert "uniform int8 PTQ" in svg


def test_front_points_report_the_refined_figures_beside_the_search_ones(
    runs: dict[str, Any],
) -> None:
    held_out = {"w0.pt": 0.86, "w1.pt": 0.83, "w1-refined.pt": 0.86}
    rows = {r["trial"]: r for r in sq.front_points(runs["joint"], lambda plan, w: held_out.get(w))}
    assert rows[1]["test_accuracy"] == 0.83 and rows[1]["test_accuracy_refined"] == 0.86
    assert rows[1]["val_accuracy_reported"] == 0.87
    assert rows[1]["test_accuracy_reported"] == 0.86
    # Not refined: the reported figures are the search-time ones.
    assert rows[0]["test_accuracy_refined"] is None
    assert rows[0]["test_accuracy_reported"] == 0.86 and rows[0]["recipe"] == "int8"


def test_dominance_margin_in_accuracy_among_cheaper_points() -> None:
    front = [
        {"test_accuracy": 0.97, "latency_ms": 2.0, "weight_bytes": 100},
        {"test_accuracy": 0.99, "latency_ms": 9.0, "weight_bytes": 100},
    ]
    q = {"test_accuracy": 0.98, "latency_ms": 5.0, "weight_bytes": 200}
    assert sq.dominance_margin(front, q) == pytest.approx(-0.01)  # only the 2 ms point counts
    assert not sq.weakly_dominates_any(front, q)
    assert sq.dominance_margin(front, {**q, "latency_ms": 1.0}) is None
    assert sq.weakly_dominates_any(front, {**q, "latency_ms": 10.0})


def test_search_wall_spans_first_start_to_last_end(runs: dict[str, Any]) -> None:
    assert sq.search_wall_s(runs["joint"]) == pytest.approx(2.0)  # all start at T0 here
