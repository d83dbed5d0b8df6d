"""The search-quality benchmark's figures, pure functions of the trial rows (the tests drive
these): the budget-corner hypervolume and its curve, trainings to reach an HV, bootstrap
intervals and paired statistics over seeds, selection on validation, dominance margins, the
feasible front, and the bisected prune ratio of the hand baseline."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from _search_quality_settings import MAX_DROP, POINT


# --- pure figures (the tests drive these) ------------------------------------------------------
def hv_point(row: Mapping[str, Any], base_acc: float, budgets: Mapping[str, float]) -> list[float]:
    """(accuracy drop in points, log2 latency / budget, log2 weight bytes / budget)."""
    return [
        100 * (base_acc - row["accuracy"]),
        math.log2(row["latency_ms"] / budgets["latency_ms"]),
        math.log2(row["weight_bytes"] / budgets["weight_bytes"]),
    ]


def budget_hypervolume(
    rows: Sequence[Mapping[str, Any]],
    base_acc: float,
    budgets: Mapping[str, float],
    max_drop: float = MAX_DROP,
) -> float:
    """Hypervolume of the feasible rows with the reference at the budget corner."""
    from search.review import hypervolume

    points = [hv_point(r, base_acc, budgets) for r in rows if r["feasible"]]
    return hypervolume(points, [100 * max_drop, 0.0, 0.0])


def hv_curve(
    rows: Sequence[Mapping[str, Any]], base_acc: float, budgets: Mapping[str, float]
) -> list[float]:
    """HV after each training, in the order the search trained them."""
    trained = sorted((r for r in rows if r["counted"]), key=lambda r: r["number"])
    return [budget_hypervolume(trained[: k + 1], base_acc, budgets) for k in range(len(trained))]


def trainings_to_reach(curve: Sequence[float], goal: float) -> float:
    """Trainings until `curve` reaches `goal` (0 when the goal is 0, inf when never)."""
    if goal <= 0:
        return 0
    return next((k + 1 for k, hv in enumerate(curve) if hv >= goal - 1e-9), math.inf)


def ratio(a: float, b: float) -> float:
    """a / b: inf when only `b` is 0, 1.0 when both are (nothing to tell apart)."""
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def _bootstrap(values: Sequence[float], stat: Any, n: int, level: float, seed: int) -> list:
    rng = random.Random(seed)
    stats = sorted(stat(rng.choices(values, k=len(values))) for _ in range(n))
    return [
        stats[int(math.floor((1 - level) / 2 * (n - 1)))],
        stats[int(math.ceil((1 + level) / 2 * (n - 1)))],
    ]


def median_ci(
    values: Sequence[float | None], *, n: int = 4000, level: float = 0.9, seed: int = 0
) -> dict[str, Any]:
    """Median and a percentile-bootstrap interval of the median (values resampled)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": None, "ci90": [None, None], "n": 0}
    return {
        "median": statistics.median(vals),
        "ci90": _bootstrap(vals, statistics.median, n, level, seed),
        "n": len(vals),
    }


def paired(
    auto: Sequence[float], other: Sequence[float], *, n: int = 4000, level: float = 0.9
) -> dict[str, Any]:
    """Auto against another arm over the same seeds: the mean paired difference with a
    percentile-bootstrap interval (seeds resampled), seeds won, and the ratio of means."""
    diffs = [a - b for a, b in zip(auto, other)]
    return {
        "hv_diff": {
            "mean": statistics.fmean(diffs),
            "ci90": _bootstrap(diffs, statistics.fmean, n, level, 0),
        },
        "seeds_won": sum(d > 1e-9 for d in diffs),
        "seeds_lost": sum(d < -1e-9 for d in diffs),
        "hv_ratio_of_means": ratio(statistics.fmean(auto), statistics.fmean(other)),
    }


def pick_on_val(
    rows: Sequence[Mapping[str, Any]], base_val: float, tol: float = POINT
) -> Mapping[str, Any] | None:
    """The fastest row whose VALIDATION accuracy is within `tol` of the base model's."""
    ok = [r for r in rows if base_val - r["val_accuracy"] <= tol + 1e-12]
    return min(ok, key=lambda r: (r["latency_ms"], -r["val_accuracy"])) if ok else None


def dominance_margin(
    front: Sequence[Mapping[str, Any]], q: Mapping[str, Any], key: str = "test_accuracy"
) -> float | None:
    """Best `key` lead over `q` among front points no slower and no bigger than it.

    >= 0: `q` is weakly dominated; < 0: short by that much; None: no point is as cheap.
    """
    leads = [
        p[key] - q[key]
        for p in front
        if p["latency_ms"] <= q["latency_ms"] and p["weight_bytes"] <= q["weight_bytes"]
    ]
    return max(leads) if leads else None


def pareto_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The feasible rows no other feasible row dominates (val accuracy, latency, bytes)."""
    from search.review import pareto_indices

    ok = [r for r in rows if r["feasible"]]
    losses = [[-r["accuracy"], r["latency_ms"], r["weight_bytes"]] for r in ok]
    return [ok[i] for i in pareto_indices(losses)]


def bisect_ratio(latency_at: Any, budget: float, *, high: float = 0.9, steps: int = 12) -> float:
    """The smallest uniform prune ratio in [0, high] whose latency meets `budget` (`high`
    when none does): what an engineer does with a cost model and one knob."""
    if latency_at(0.0) <= budget:
        return 0.0
    if latency_at(high) > budget:
        return high
    lo, hi = 0.0, high
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if latency_at(mid) <= budget else (mid, hi)
    return hi
