"""Pareto geometry on loss vectors (lower is better): dominance, the front, hypervolume, and
the knee's fixed, budget-relative scale.

Pure functions of numbers; `search.review` states the definitions they implement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import Objective

__all__ = [
    "Limit",
    "costlier_everywhere",
    "dominates",
    "hypervolume",
    "knee_index",
    "knee_ranking",
    "loss",
    "normalised",
    "pareto_indices",
    "shortfall",
]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Loss vector `a` dominates `b`: no worse anywhere, strictly better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_indices(losses: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated loss vectors (duplicates all kept)."""
    return [
        i
        for i, a in enumerate(losses)
        if not any(dominates(b, a) for j, b in enumerate(losses) if j != i)
    ]


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by loss vectors (minimisation) and bounded by `reference`.

    Exact sweeps for 1-3 objectives; more objectives go to Optuna's WFG (its one use here).

    Example:
        >>> hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4))
        6.0
    """
    ref = [float(r) for r in reference]
    pts = [[float(x) for x in p] for p in points]
    if any(len(p) != len(ref) for p in pts):
        raise ValueError("every point needs one value per reference axis")
    # Points not strictly inside the reference box dominate nothing within it.
    pts = [p for p in pts if all(math.isfinite(x) and x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    k = len(ref)
    if k == 1:
        return ref[0] - min(p[0] for p in pts)
    if k == 2:
        return _hv2(pts, ref)
    if k == 3:
        return _hv3(pts, ref)
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(pts), np.asarray(ref)))


def _hv2(pts: list[list[float]], ref: list[float]) -> float:
    hv, best_y = 0.0, ref[1]
    for x, y in sorted((p[0], p[1]) for p in pts):
        if y < best_y:
            # A new horizontal strip [y, best_y) covered from x to the reference.
            hv += (ref[0] - x) * (best_y - y)
            best_y = y
    return hv


def _hv3(pts: list[list[float]], ref: list[float]) -> float:
    pts = sorted(pts, key=lambda p: p[2])
    hv = 0.0
    for i, p in enumerate(pts):
        z_next = pts[i + 1][2] if i + 1 < len(pts) else ref[2]
        if z_next > p[2]:
            # Slab [z_i, z_next): dominated area of every point at or below this height.
            hv += _hv2(pts[: i + 1], ref[:2]) * (z_next - p[2])
    return hv


def knee_index(
    scores: Sequence[Sequence[float]], eligible: Sequence[bool] | None = None
) -> int | None:
    """Index of the knee among front shortfall vectors (see `search.review`): the first of
    `knee_ranking` when it is eligible; None for an empty front or when none is eligible."""
    order = knee_ranking(scores, eligible)
    ok = eligible if eligible is not None else [True] * len(scores)
    return order[0] if order and ok[order[0]] else None


def knee_ranking(
    scores: Sequence[Sequence[float]], eligible: Sequence[bool] | None = None
) -> list[int]:
    """Indices of shortfall vectors (`shortfall`, lower is better) in knee order.

    Eligible ones first; then the smaller worst shortfall (the tightest limit has the most
    room); then the smaller sum (more room overall); then the lower index. Each score depends
    on its own plan alone, so adding or removing a plan never reorders the others.
    """
    ok = eligible if eligible is not None else [True] * len(scores)
    return sorted(
        range(len(scores)),
        key=lambda i: (not ok[i], max(scores[i], default=0.0), sum(scores[i]), i),
    )


@dataclass(frozen=True)
class Limit:
    """One objective's limit on the knee's fixed scale, and where it came from.

    Maximised (an accuracy): `reference` is the base model's value and `allowance` the drop
    the experiment allows, both in the metric's units. Minimised (a cost): `reference` is the
    budget, else the base model's cost. `basis`: "budget", "base", or "trials" (a fallback).
    """

    reference: float
    allowance: float = 1.0
    basis: str = "base"

    def __post_init__(self) -> None:
        if not (self.reference > 0 and self.allowance > 0):
            raise ValueError(f"knee limit {self}: reference and allowance must be > 0")


def shortfall(value: float, objective: Objective, limit: Limit) -> float:
    """A value on the knee's scale: 0 at its limit, -1 one unit of room inside it.

    Accuracy: drop / allowed drop - 1 (-1 = no drop at all). Cost: log2(cost / limit)
    (-1 = half the budget).

    Example:
        >>> shortfall(5.0, Objective("latency_ms", "minimize"), Limit(10.0))
        -1.0
    """
    v = float(value)
    if objective.direction == "maximize":
        return (limit.reference - v) / limit.allowance - 1.0
    # A zero cost has unbounded room; the floor keeps the logarithm finite.
    return math.log2(max(v, 1e-300) / limit.reference)


def costlier_everywhere(costs: Sequence[float], reference: Sequence[float]) -> bool:
    """Whether `costs` exceed `reference` on every axis (False when there are no axes)."""
    return bool(costs) and all(float(c) > float(r) for c, r in zip(costs, reference, strict=True))


def loss(values: Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    return [o.sign * float(v) for v, o in zip(values, objectives)]


def normalised(
    values: Sequence[float], objectives: Sequence[Objective], scales: Sequence[float]
) -> list[float]:
    return [
        float(v) / s if o.direction == "minimize" else 1.0 - float(v) / s
        for v, o, s in zip(values, objectives, scales)
    ]
