"""The search-quality benchmark's figures (pure functions) and a smoke run on tiny settings.

The benchmark itself (experiments/benchmarks/search_quality.py) takes over an hour; these tests
check what it computes: the budget-corner hypervolume against hand-computed volumes, the
bootstrap intervals, the paired statistics, trainings to reach an HV, the bisected baseline,
selection on validation (never test), dominance margins, and that a tiny run end to end
writes the results files with the keys the README quotes. No timing asserts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "experiments" / "benchmarks" / "search_quality.py"
if str(BENCH.parent) not in sys.path:  # it imports its siblings, as a script run from there does
    sys.path.append(str(BENCH.parent))
_spec = importlib.util.spec_from_file_location("search_quality_bench", BENCH)
assert _spec is not None and _spec.loader is not None
sq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sq)

BUDGETS = {"latency_ms": 10.0, "weight_bytes": 1024.0}
BASE_ACC = 0.9  # max drop 6 points: the reference point is (6, 0, 0)


def row(acc: float, lat: float, size: float, *, feasible: bool = True) -> dict:
    return {"accuracy": acc, "latency_ms": lat, "weight_bytes": size, "feasible": feasible}


def test_hv_point_is_drop_in_points_and_log2_of_cost_over_budget() -> None:
    assert sq.hv_point(row(0.87, 5.0, 256), BASE_ACC, BUDGETS) == pytest.approx([3, -1, -2])


def test_hypervolume_of_one_plan_is_its_box_to_the_budget_corner() -> None:
    # drop 3 of 6 points, half the latency budget, a quarter of the bytes: 3 x 1 x 2.
    hv = sq.budget_hypervolume([row(0.87, 5.0, 256)], BASE_ACC, BUDGETS, max_drop=0.06)
    assert hv == pytest.approx(6.0)


def test_a_plan_exactly_at_the_budgets_adds_nothing() -> None:
    at_budget = [row(0.84, 10.0, 1024), row(0.9, 10.0, 128), row(0.84, 1.0, 8)]
    assert sq.budget_hypervolume(at_budget, BASE_ACC, BUDGETS, max_drop=0.06) == 0.0


def test_hypervolume_of_two_plans_counts_their_overlap_once() -> None:
    a, b = row(0.87, 5.0, 256), row(0.85, 2.5, 512)  # boxes 3x1x2 and 1x2x1, overlap 1x1x1
    hv = sq.budget_hypervolume([a, b], BASE_ACC, BUDGETS, max_drop=0.06)
    assert hv == pytest.approx(6 + 2 - 1)


def test_infeasible_rows_do_not_count() -> None:
    rows = [row(0.87, 5.0, 256), row(0.9, 1.0, 1, feasible=False)]
    assert sq.budget_hypervolume(rows, BASE_ACC, BUDGETS, max_drop=0.06) == pytest.approx(6.0)


def test_ratio_edges() -> None:
    assert sq.ratio(3.0, 2.0) == 1.5
    assert sq.ratio(1.0, 0.0) == math.inf
    assert sq.ratio(0.0, 0.0) == 1.0


def test_bootstrap_interval_brackets_the_median_and_is_reproducible() -> None:
    values = [1.0, 1.4, 1.1, 2.0, 1.3]
    m = sq.median_ci(values)
    assert m["median"] == 1.3
    low, high = m["ci90"]
    assert min(values) <= low <= m["median"] <= high <= max(values)
    assert sq.median_ci(values) == m  # seeded
    assert sq.median_ci([2.0, 2.0, 2.0])["ci90"] == [2.0, 2.0]
    assert sq.median_ci([None, float("nan")])["median"] is None


def test_bootstrap_interval_widens_with_spread() -> None:
    tight = sq.median_ci([1.0, 1.01, 0.99, 1.0, 1.02])
    wide = sq.median_ci([0.5, 1.5, 1.0, 2.0, 0.2])
    assert wide["ci90"][1] - wide["ci90"][0] > tight["ci90"][1] - tight["ci90"][0]


def test_pick_selects_on_validation_never_on_test() -> None:
    rows = [
        # within a point on test but not on validation: must not be chosen, however fast
        {"val_accuracy": 0.85, "test_accuracy": 0.90, "latency_ms": 1.0},
        {"val_accuracy": 0.895, "test_accuracy": 0.86, "latency_ms": 4.0},
        {"val_accuracy": 0.90, "test_accuracy": 0.90, "latency_ms": 6.0},
    ]
    assert sq.pick_on_val(rows, base_val=0.90)["latency_ms"] == 4.0
    assert sq.pick_on_val(rows[:1], base_val=0.90) is None


def test_dominance_margin() -> None:
    front = [
        {"test_accuracy": 0.88, "latency_ms": 5.0, "weight_bytes": 100},
        {"test_accuracy": 0.80, "latency_ms": 1.0, "weight_bytes": 10},
    ]
    q = {"test_accuracy": 0.85, "latency_ms": 6.0, "weight_bytes": 200}
    assert sq.dominance_margin(front, q) == pytest.approx(0.03)
    cheap = {"test_accuracy": 0.85, "latency_ms": 2.0, "weight_bytes": 50}
    assert sq.dominance_margin(front, cheap) == pytest.approx(-0.05)
    assert sq.dominance_margin(front, {**q, "latency_ms": 0.5}) is None


def test_pareto_rows_keep_the_feasible_non_dominated() -> None:
    rows = [
        {**row(0.88, 5.0, 100), "n": 0},
        {**row(0.87, 6.0, 120), "n": 1},  # dominated by 0
        {**row(0.80, 1.0, 10), "n": 2},
        {**row(0.95, 0.5, 1, feasible=False), "n": 3},
    ]
    assert sorted(r["n"] for r in sq.pareto_rows(rows)) == [0, 2]


def test_paired_statistics_of_auto_against_another_arm() -> None:
    auto, other = [3.0, 5.0, 4.0, 1.0], [1.0, 5.0, 2.0, 2.0]  # differences 2, 0, 2, -1
    p = sq.paired(auto, other)
    assert p["hv_diff"]["mean"] == pytest.approx(0.75)
    low, high = p["hv_diff"]["ci90"]
    assert -1.0 <= low <= 0.75 <= high <= 2.0
    assert (p["seeds_won"], p["seeds_lost"]) == (2, 1)  # a tie is neither
    assert p["hv_ratio_of_means"] == pytest.approx(13 / 10)
    assert sq.paired([1.0, 2.0], [1.0, 2.0])["hv_diff"]["ci90"] == [0.0, 0.0]


def test_hv_curve_counts_trainings_in_order_and_skips_untrained_proposals() -> None:
    rows = [
        {**row(0.87, 5.0, 256), "number": 2, "counted": True},
        {**row(0.9, 20.0, 9e9, feasible=False), "number": 1, "counted": False},  # over budget
        {**row(0.85, 2.5, 512), "number": 0, "counted": True},
    ]
    curve = sq.hv_curve(rows, BASE_ACC, BUDGETS)
    assert curve == pytest.approx([2.0, 7.0])  # plan 0 first (box 1x2x1), then both
    assert sq.trainings_to_reach(curve, 2.0) == 1
    assert sq.trainings_to_reach(curve, 6.5) == 2
    assert sq.trainings_to_reach(curve, 8.0) == math.inf
    assert sq.trainings_to_reach(curve, 0.0) == 0  # the other arm found nothing


def test_bisected_prune_ratio_is_the_smallest_that_meets_the_budget() -> None:
    def latency(r: float) -> float:
        return 30.0 * (1 - r) ** 2

    r = sq.bisect_ratio(latency, 10.0)
    assert latency(r) <= 10.0 and latency(r - 0.01) > 10.0
    assert sq.bisect_ratio(latency, 40.0) == 0.0  # already fits
    assert sq.bisect_ratio(latency, 0.1) == 0.9  # no ratio fits: the most the knob allows


@pytest.mark.slow
def test_smoke_run_writes_the_quoted_keys(tmp_path: Path) -> None:
    """Every arm and both spaces end to end on the small digits task, tiny budgets."""
    results = tmp_path / "results"
    cmd = [sys.executable, str(BENCH), "--task", "digits", "--trainings", "4", "--seeds", "0"]
    # Two workers, as the benchmark runs: the units are independent, and CI has two cores.
    cmd += ["--jobs", "2", "--work", str(tmp_path / "work"), "--results", str(results)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((results / "search_quality.json").read_text())
    assert doc["selection_split"] == "val" and doc["seeds"] == [0]
    for space in ("full", "no_students"):
        s = doc[space]
        for other in ("random", "sequential"):
            assert set(s[f"hv_diff_vs_{other}"]) == {"mean", "ci90"}
            assert 0 <= s[f"seeds_won_vs_{other}"] <= 1
            assert s[f"hv_ratio_of_means_vs_{other}"] is not None
        assert set(s["best_speedup_vs_int8_at_1pt"]) >= {"median", "ci90"}
        assert s["trainings_to_random_hv"] is not None
        seed = s["per_seed"][0]
        assert set(seed["hv"]) == {"auto", "random", "sequential"}
        assert all(n <= 4 for n in seed["trainings"].values())  # trainings are the budget
        assert all(seed["proposals"][a] >= seed["trainings"][a] for a in seed["trainings"])
    assert set(doc["full"]["baselines_dominated"]) == {
        "int8_qat",
        "int8_prune_bisected",
        "student_w0.5_int8_kd",
    }
    assert set(doc["no_students"]["baselines_dominated"]) == {"int8_qat", "int8_prune_bisected"}
    assert len(doc["full"]["per_seed"][0]["sequential_picks"]) == 4  # one pick per stage
    assert len(doc["no_students"]["per_seed"][0]["sequential_picks"]) == 3  # no architecture
    stamp = doc["stamp"]
    assert stamp["commit"] and stamp["date"] and len(stamp["load_before"]) == 3
    assert "search_quality.py" in stamp["command"]
    md = (results / "search_quality.md").read_text()
    assert "HV ratio of means" in md and stamp["commit"] in md


def test_readme_quotes_the_results_file() -> None:
    """The README's figures are the committed results file's, rendered, never typed."""
    doc = json.loads((REPO / "experiments" / "results" / "search_quality.json").read_text())
    assert sq.readme_section(doc) in (REPO / "README.md").read_text()
