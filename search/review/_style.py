"""The report's look: colours, the label of a metric, the names and limits its figures share."""

from __future__ import annotations

__all__ = ["axis_label"]

FEASIBLE = "#1f77b4"
FRONT = "#d62728"
KNEE = "#2ca02c"
INFEASIBLE = "#b0b0b0"
UNTRAINED_C = "#9a9a9a"
BUDGET = "#9467bd"
UNTRAINED = "over budget / not trained"
RUG_Y = 0.03  # height (fraction of the plot) of the rug of untrained plans
MAX_LAYER_PLANS = 40  # plans offered in the per-layer view's menu
LATENCY = "latency_ms"  # the predicted latency: the metric the profile's error band is for
BEFORE_C, AFTER_C = "#9ecae1", "#d62728"  # the why-this-plan bars: base model, the plan

_UNITS = {"ms": "ms", "bytes": "bytes", "kb": "kB", "s": "s"}


def axis_label(metric: str) -> str:
    """`latency_ms` -> `latency (ms)`."""
    head, _, tail = metric.rpartition("_")
    if head and tail in _UNITS:
        return f"{head.replace('_', ' ')} ({_UNITS[tail]})"
    return metric.replace("_", " ")
