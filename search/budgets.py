"""The budget names: one list for experiments (`budgets:`) and hardware profiles (`budgets:`),
and the one map from a budget to the cost metric it limits.

A bottom-layer module, so that `search.hardware` need not import the experiment (`search.config`).
"""

from __future__ import annotations

from typing import NamedTuple


class BudgetMetric(NamedTuple):
    """What a budget limits: `metric` (a cost figure) divided by `scale` is in the budget's
    `unit`, so the constraint is `metric / scale / budget - 1`."""

    metric: str
    scale: float
    unit: str


BUDGET_METRICS: dict[str, BudgetMetric] = {
    "latency_ms": BudgetMetric("latency_ms", 1.0, "ms"),
    "memory_kb": BudgetMetric("memory_bytes", 1024.0, "kB"),
    "flash_kb": BudgetMetric("flash_bytes", 1024.0, "kB"),
}
BUDGET_KEYS = tuple(BUDGET_METRICS)
# Cost metrics a budget of another figure also limits (an MCU's flash holds the weights, its
# SRAM the peak activations): a line on those axes.
LIMITED_BY = {"weight_bytes": "flash_kb", "peak_activation_bytes": "memory_kb"}


def budget_for_metric(metric: str, *, aliases: bool = False) -> str | None:
    """The budget key that limits cost `metric` (None: no budget does); with `aliases`, also
    the budget that bounds it from above (`LIMITED_BY`)."""
    for key, m in BUDGET_METRICS.items():
        if m.metric == metric:
            return key
    return LIMITED_BY.get(metric) if aliases else None
