"""One study for several devices: every plan costed on every target, trained once.

A trained plan's accuracy does not depend on the device, so `targets: [mcu, phone]` (or
`run --targets mcu,phone`) runs one study whose trials record, per target T, the cost metrics
as `latency_ms@T`, `flash_bytes@T`, ..., the budget constraints as `constraints@T` and the
per-kernel rows as `layer_costs@T`. `search.review` turns each target's attributes into an
ordinary single-target view (its own feasible set, front, hypervolume, knee), which the report
and the export read unchanged.

What Optuna sees (well defined whatever the targets):

* **Objectives**: the experiment's, same count and directions as a single-target study. A
  metric that is not a cost (accuracy) is itself; a cost metric `m` is the geometric mean over
  the targets of `m@T / m of the base model on T`: scale-free (milliseconds on a board and
  microseconds on a GPU weigh alike), 1.0 for the uncompressed model, and lower on every
  target only where the plan is cheaper there.
* **Constraints**: `any_target` = the smallest, over targets, of that target's largest
  constraint value, so it is <= 0 exactly when the plan fits some target; plus `accuracy_drop`
  as usual. A plan that fits no target is recorded untrained (`over_budget`); a plan that fits
  one is trained once and is feasible there only.
* **Bits**: plans may use any width some target runs. On a target without a kernel for one of
  the plan's widths the constraint `bits@T` is 1.0 (infeasible there only), else 0.0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna

from spaces import SearchSpace

from .compress import Compressed
from .config import Experiment
from .hardware import CostReport, HardwareProfile, constraint_values, estimate_cost
from .objective import TrialObjective, latency_margin, layer_costs
from .pipeline import cost_of
from .record import (
    ACCURACY_DROP,
    ACCURACY_METRICS,
    StudyAttr,
    TrialAttr,
    at_target,
    budget_lines,
    within_limits,
    write_attrs,
)
from .tasks import Task

ANY_TARGET = "any_target"
BITS = "bits"


def runs_bits(profile: HardwareProfile, layer_bits: dict[str, int], activation_bits: int) -> bool:
    """Whether the device has kernels for every weight width of the plan and its activations."""
    return activation_bits in profile.activation_bits and all(
        b in profile.weight_bits for b in layer_bits.values()
    )


class MultiTargetObjective(TrialObjective):
    """A `TrialObjective` over several profiles (the first one is `self.profile`)."""

    def __init__(
        self,
        exp: Experiment,
        task: Task,
        space: SearchSpace,
        profiles: list[HardwareProfile],
        *,
        weights_dir: Path | None = None,
    ) -> None:
        super().__init__(exp, task, space, profiles[0], weights_dir=weights_dir)
        self.profiles = {p.name: p for p in profiles}
        self.target_budgets = {p.name: {**p.budgets, **exp.budgets} for p in profiles}
        self.margins = {p.name: latency_margin(exp, p) for p in profiles}
        self.base_costs = {
            p.name: estimate_cost(task.base_model, task.input_shape, p) for p in profiles
        }
        self.cost_metrics = tuple(self.baseline.cost.metrics())
        self.target_constraints = {
            name: [
                *constraint_values(self.base_costs[name], self.target_budgets[name], profile=p),
                BITS,
            ]
            for name, p in self.profiles.items()
        }
        self.constraint_names = [ANY_TARGET]
        if exp.max_accuracy_drop is not None:
            self.constraint_names.append(ACCURACY_DROP)

    @property
    def offered_bits(self) -> dict[str, tuple[int, ...]]:
        """Every width some target runs (a target without it finds the plan infeasible)."""
        weights = sorted({b for p in self.profiles.values() for b in p.weight_bits})
        acts = sorted({b for p in self.profiles.values() for b in p.activation_bits})
        return {"weight_bits": tuple(weights), "activation_bits": tuple(acts)}

    def target_views(self) -> dict[str, dict[str, Any]]:
        """The study attribute `target_views`: what a single-target study records, per target."""
        acc = dict(self.baseline.metrics)
        drop = [n for n in self.constraint_names if n != ANY_TARGET]
        views: dict[str, dict[str, Any]] = {}
        for name, p in self.profiles.items():
            base = self.base_costs[name].metrics()
            budgets = self.target_budgets[name]
            views[name] = {
                StudyAttr.PROFILE: p.to_dict(),
                StudyAttr.BUDGETS: budgets,
                StudyAttr.BUDGET_LINES: budget_lines(base, p.checked_budgets(budgets), base),
                StudyAttr.CONSTRAINTS: [*self.target_constraints[name], *drop],
                StudyAttr.BASE_METRICS: {**acc, **base},
                StudyAttr.BUDGET_MARGIN: {
                    "bound": self.exp.budget_margin,
                    "latency_error": self.margins[name],
                },
                StudyAttr.BASE_LAYER_COSTS: layer_costs(self.base_costs[name]),
            }
        return views

    def cost_figures(
        self, trial: optuna.Trial, compressed: Compressed, cost: CostReport
    ) -> tuple[dict[str, float], dict[str, Any]]:
        metrics: dict[str, Any] = {}
        worst: dict[str, float] = {}
        fits: list[str] = []
        for name, profile in self.profiles.items():
            if profile is not self.profile:
                cost = cost_of(compressed, self.task, profile)
            margin = self.margins[name]
            cons = constraint_values(
                cost, self.target_budgets[name], profile=profile, latency_margin=margin
            )
            runs = runs_bits(profile, compressed.layer_bits, compressed.activation_bits)
            cons[BITS] = 0.0 if runs else 1.0
            if margin:
                bound = cost.latency_ms * (1 + margin)
                write_attrs(trial, {at_target(TrialAttr.LATENCY_BOUND_MS, name): bound})
            write_attrs(
                trial,
                {
                    at_target(TrialAttr.LAYER_COSTS, name): layer_costs(cost),
                    at_target(TrialAttr.CONSTRAINTS, name): {k: float(v) for k, v in cons.items()},
                },
            )
            metrics.update({at_target(k, name): v for k, v in cost.metrics().items()})
            worst[name] = max(cons.values())
            if within_limits(cons):
                fits.append(name)
        write_attrs(trial, {TrialAttr.FITS: sorted(fits)})
        return {ANY_TARGET: min(worst.values())}, metrics

    def needed_accuracy(self, study: optuna.Study, cost: CostReport) -> float | None:
        """Only the accuracy floor: a plan dominated on one target may win on another."""
        return self.accuracy_floor() if self.primary in ACCURACY_METRICS else None

    def objective_values(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        out = []
        for o in self.exp.objectives:
            if o.metric in self.cost_metrics:
                out.append(self.relative_cost(o.metric, metrics))
            else:
                v = metrics.get(o.metric)
                out.append(float(v) if v is not None else 0.0)
        return tuple(out)

    def relative_cost(self, metric: str, metrics: dict[str, Any]) -> float:
        """Geometric mean over targets of the plan's `metric` / the base model's there."""
        logs = []
        for name, base in self.base_costs.items():
            b, v = float(base.metrics()[metric]), float(metrics[at_target(metric, name)])
            logs.append(math.log(max(v, 1e-12) / b) if b > 0 else 0.0)
        return math.exp(sum(logs) / len(logs))
