"""A study's record: the attributes the search writes once (`StudyAttr`) and the review reads,
the start's enqueued plans, and the budget lines stored for the report and the knee."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..budgets import BUDGET_METRICS, LIMITED_BY
from ._keys import TrialAttr

__all__ = ["budget_lines", "enqueue_plan", "study_attr", "study_attrs", "write_study_attrs"]


def study_attrs(study: Any) -> dict[str, Any]:
    """Every stored study attribute, as a plain dict (keys: `StudyAttr`)."""
    return dict(study.user_attrs)


def study_attr(study: Any, key: str, default: Any = None) -> Any:
    """One stored study attribute (`StudyAttr`), or `default`."""
    return study.user_attrs.get(key, default)


def write_study_attrs(study: Any, attrs: Mapping[str, Any]) -> None:
    """Store study attributes; those already stored with the same value are not written again
    (a resumed study, or several workers, write the same record)."""
    stored = study.user_attrs
    for key, value in attrs.items():
        if stored.get(key) != value:
            study.set_user_attr(key, value)


def enqueue_plan(study: Any, params: Mapping[str, Any], recipe: str) -> None:
    """Queue a plan's parameters as the next trial, named `recipe` in its record."""
    study.enqueue_trial(dict(params), user_attrs={TrialAttr.RECIPE: recipe})


def budget_lines(
    metrics: Iterable[str],
    budgets: Mapping[str, float],
    base_costs: Mapping[str, float],
) -> dict[str, float]:
    """Each cost metric's budget in the metric's own units (the study attr `budget_lines`).

    `budgets` are those the plans were checked against (`HardwareProfile.checked_budgets`: the
    experiment's, cut to the board's own limits). A budget on the figure
    itself converts by its scale (`memory_kb` -> bytes). A figure a budget bounds from above
    (`LIMITED_BY`: the weights within the flash) gets that budget's line only where it is the
    same figure for the base model (the flash holds the weights and nothing else), so the line
    is exact rather than a loose bound.
    """
    out: dict[str, float] = {}
    for metric in metrics:
        for key, m in BUDGET_METRICS.items():
            if key not in budgets:
                continue
            direct = m.metric == metric
            bounds = LIMITED_BY.get(metric) == key and _same(base_costs, metric, m.metric)
            if direct or bounds:
                out[metric] = float(budgets[key]) * m.scale
    return out


def _same(base: Mapping[str, float], a: str, b: str) -> bool:
    return a in base and b in base and float(base[a]) == float(base[b])
