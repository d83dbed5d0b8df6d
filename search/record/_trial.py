"""One trial's record: its status, how it is read back (`TrialRecord`) and written (`write_*`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from ..budgets import BUDGET_METRICS, LIMITED_BY, BudgetMetric, budget_for_metric
from ..config import Objective
from ._keys import TrialAttr, target_suffix

__all__ = [
    "ACCURACY_DROP",
    "ACCURACY_METRICS",
    "COST_KEYS",
    "BUDGET_METRICS",
    "LIMITED_BY",
    "METRIC_KEYS",
    "UNTRAINED",
    "COUNTED",
    "BudgetMetric",
    "TrialRecord",
    "TrialStatus",
    "budget_for_metric",
    "constraints_of",
    "cost_rows",
    "is_feasible",
    "is_trained",
    "primary_metric",
    "status_of",
    "trial_feasible",
    "write_attrs",
    "write_duplicate",
    "write_failure",
    "write_outcome",
    "write_plan",
    "failed_origin",
    "metric_of",
    "plan_key",
    "plan_key_of",
    "trial_attr",
    "within_limits",
]


class TrialStatus(str, Enum):
    """How a trial ended, as stored in its user attr `status` (the plain string value)."""

    TRAINED = "trained"
    OVER_BUDGET = "over_budget"
    STOPPED_EARLY = "stopped_early"
    DUPLICATE = "duplicate"
    FAILED = "failed"

    def __str__(self) -> str:  # the stored text, in CSV cells and f-strings alike
        return self.value

    @classmethod
    def parse(cls, value: Any) -> TrialStatus | None:
        """A stored status (None for none, or for a text no version ever wrote)."""
        try:
            return cls(value)
        except ValueError:
            return None


# A trial with one of these statuses has cost figures but no trained accuracy.
# `duplicate` repeats an earlier trial's figures: that trial stands for the plan.
UNTRAINED = (
    TrialStatus.OVER_BUDGET,
    TrialStatus.FAILED,
    TrialStatus.STOPPED_EARLY,
    TrialStatus.DUPLICATE,
)
# The statuses that count toward the experiment's `trials`: plans trained (or evaluated after
# build and found lossless), including those stopped early. Over-budget proposals and repeats
# cost well under a second, so they do not use up the budget of trainings.
COUNTED = (TrialStatus.TRAINED, TrialStatus.STOPPED_EARLY)
# Metrics that are an accuracy in [0, 1]: drops, floors and early-stop margins are in their units.
ACCURACY_METRICS = ("accuracy", "f1", "recall")
ACCURACY_DROP = "accuracy_drop"
# The cost model's figures of a plan, in the order tables show them.
COST_KEYS = (
    "params",
    "macs",
    "weight_bytes",
    "peak_activation_bytes",
    "memory_bytes",
    "flash_bytes",
    "latency_ms",
)
# Metrics the schema stores per trial; trials.csv always has these columns, in this order.
# accuracy_before_recovery: the primary metric right after build (`pipeline.prepare`);
# recovery_skipped: it was already within `recovery.skip_within` of the base, so not trained.
METRIC_KEYS = (
    "accuracy",
    "recall",
    "f1",
    ACCURACY_DROP,
    "accuracy_before_recovery",
    "recovery_skipped",
    *COST_KEYS,
    "build_s",
    "train_s",
)


class _Writable(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


# --- reading ------------------------------------------------------------------------------------
def primary_metric(objectives: Iterable[Objective] = (), stored: str | None = None) -> str:
    """The metric accuracy drops are measured on: `stored` (the study's `primary_metric`), else
    the first maximised objective, else `accuracy`."""
    if stored:
        return str(stored)
    return next((o.metric for o in objectives if o.direction == "maximize"), "accuracy")


def status_of(trial: Any) -> TrialStatus | None:
    """A frozen trial's status; a FAILED trial that recorded none is `failed`."""
    status = TrialStatus.parse(trial.user_attrs.get(TrialAttr.STATUS))
    if status is None and trial.state.name == "FAIL":
        return TrialStatus.FAILED
    return status


def is_trained(state: str, status: TrialStatus | str | None) -> bool:
    """COMPLETE and trained to the end (not over budget, stopped, a repeat or failed)."""
    return state == "COMPLETE" and status not in UNTRAINED


def is_feasible(
    state: str,
    status: TrialStatus | str | None,
    constraints: Mapping[str, float],
    values: Sequence[float] | None = None,
) -> bool:
    """Trained, finite objective values (when given) and every constraint value <= 0."""
    return (
        is_trained(state, status)
        and (values is None or all(math.isfinite(v) for v in values))
        and within_limits(constraints)
    )


def within_limits(constraints: Mapping[str, float]) -> bool:
    """Every constraint value <= 0: each budget met, the accuracy drop within its limit."""
    return all(float(v) <= 0.0 for v in constraints.values())


def constraints_of(trial: Any) -> dict[str, float]:
    """A frozen trial's constraint values: Optuna's own, else the user attr `constraints`."""
    constraints = {str(k): float(v) for k, v in (trial.constraints or {}).items()}
    stored = trial.user_attrs.get(TrialAttr.CONSTRAINTS)
    if not constraints and isinstance(stored, Mapping):
        constraints = {str(k): float(v) for k, v in stored.items() if v is not None}
    return constraints


def trial_feasible(trial: Any) -> bool:
    """`is_feasible` of a frozen trial."""
    return is_feasible(trial.state.name, status_of(trial), constraints_of(trial), trial.values)


def cost_rows(value: Any) -> tuple[tuple[Any, ...], ...]:
    """Stored per-kernel cost rows (`layer_costs`, `base_layer_costs`) as tuples (anything
    else: none)."""
    if not isinstance(value, list):
        return ()
    return tuple(tuple(r) for r in value if isinstance(r, list))


@dataclass(frozen=True)
class TrialRecord:
    """Everything the review needs about one trial, as plain values."""

    number: int
    state: str  # Optuna TrialState name: COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    status: TrialStatus | str | None  # str: a text this version does not know
    values: tuple[float, ...] | None  # objective values, in the study's objective order
    metrics: Mapping[str, Any]  # the schema's per-trial metrics (None when not measured)
    constraints: Mapping[str, float]
    feasible: bool
    plan: Mapping[str, Any] | None
    plan_text: str
    fail_reason: str | None = None
    skipped_layers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    datetime_start: str | None = None
    duration_s: float | None = None
    recipe: str | None = None  # a warm-start recipe's name ("int8", ...) when it was enqueued
    weights: str | None = None  # the trained state_dict file, as the search recorded it
    refined: Mapping[str, Any] | None = None  # study attr `refined`: longer recovery, re-scored
    duplicate_of: int | None = None  # a repeated plan: the trial that evaluated it
    # The cost model's per-kernel rows (objective.layer_costs): name, kind, latency_ms,
    # weight_bytes, activation bytes. Empty for runs recorded before they were stored.
    layer_costs: tuple[tuple[Any, ...], ...] = ()

    @property
    def violation(self) -> float:
        """Sum of the positive constraint values (0 when every budget is met)."""
        return sum(max(0.0, float(v)) for v in self.constraints.values())

    @property
    def trained(self) -> bool:
        return is_trained(self.state, self.status)

    def value(self, metric: str) -> float | None:
        """A metric by name: the trial's user attribute (objectives are also there)."""
        v = self.metrics.get(metric)
        return None if v is None else float(v)

    @classmethod
    def from_trial(
        cls,
        t: Any,
        objectives: Sequence[Objective] = (),
        refined: Mapping[str, Any] | None = None,
        *,
        target: str | None = None,
    ) -> TrialRecord:
        """Read a frozen Optuna trial; `target` reads one target's view of a multi-target one."""
        ua = dict(t.user_attrs)
        state = t.state.name
        status = status_of(t)
        constraints = constraints_of(t)
        values = tuple(float(v) for v in t.values) if t.values is not None else None
        if target is not None:
            ua, constraints, values = _target_view(ua, constraints, values, objectives, target)
        metrics = {k: ua.get(k) for k in METRIC_KEYS}
        # Objectives whose metric is not one of the schema's names are read from the values.
        for o, v in zip(objectives, values or ()):
            if metrics.get(o.metric) is None:
                metrics[o.metric] = ua.get(o.metric, v)
        feasible = values is not None and is_feasible(state, status, constraints, values)
        plan = ua.get(TrialAttr.PLAN)
        fail_reason = ua.get(TrialAttr.FAIL_REASON)
        if state == "FAIL" and not fail_reason:
            recorded = (t.system_attrs or {}).get(TrialAttr.FAIL_REASON)
            fail_reason = recorded or "failed (no reason recorded)"
        duration = t.duration.total_seconds() if t.duration is not None else None
        start = t.datetime_start
        return cls(
            number=int(t.number),
            state=state,
            # A status text this version does not know is kept as written, for display.
            status=status if status is not None else ua.get(TrialAttr.STATUS),
            values=values,
            metrics=metrics,
            constraints=constraints,
            feasible=bool(feasible),
            plan=plan if isinstance(plan, Mapping) else None,
            plan_text=str(ua.get(TrialAttr.PLAN_TEXT) or ""),
            fail_reason=fail_reason,
            skipped_layers=dict(ua.get(TrialAttr.SKIPPED_LAYERS) or {}),
            params=dict(t.params),
            datetime_start=start.isoformat(timespec="seconds") if start else None,
            duration_s=duration,
            recipe=ua.get(TrialAttr.RECIPE),
            duplicate_of=ua.get(TrialAttr.DUPLICATE_OF),
            weights=ua.get(TrialAttr.WEIGHTS),
            refined=refined if isinstance(refined, Mapping) else None,
            layer_costs=cost_rows(ua.get(TrialAttr.LAYER_COSTS)),
        )


def _target_view(
    ua: dict[str, Any],
    constraints: Mapping[str, float],
    values: tuple[float, ...] | None,
    objectives: Sequence[Objective],
    target: str,
) -> tuple[dict[str, Any], dict[str, float], tuple[float, ...] | None]:
    """One target's reading of a multi-target trial: `m@T` attributes become `m`, the
    constraints are `constraints@T` (and the target-free accuracy drop), and the objective
    values are the metrics on T (the study's own values aggregate the targets)."""
    suffix = target_suffix(target)
    view = {k: v for k, v in ua.items() if "@" not in k}
    view.update({k[: -len(suffix)]: v for k, v in ua.items() if k.endswith(suffix)})
    mine = {str(k): float(v) for k, v in (ua.get(TrialAttr.CONSTRAINTS + suffix) or {}).items()}
    if ACCURACY_DROP in constraints:
        mine[ACCURACY_DROP] = float(constraints[ACCURACY_DROP])
    if values is not None:
        values = tuple(
            float(view[o.metric]) if view.get(o.metric) is not None else float(v)
            for o, v in zip(objectives, values)
        )
    return view, mine, values


# --- writing ------------------------------------------------------------------------------------
def write_attrs(trial: _Writable, attrs: Mapping[str, Any]) -> None:
    """Store figures on the trial as they become known (timings, checkpoint, weights file)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def write_plan(trial: _Writable, plan: Mapping[str, Any], text: str, key: str) -> None:
    """The plan, first: a trial that fails later still says what it tried."""
    attrs = {TrialAttr.PLAN: dict(plan), TrialAttr.PLAN_TEXT: text, TrialAttr.PLAN_KEY: key}
    write_attrs(trial, attrs)


def write_failure(trial: _Writable, reason: str, trace: str | None = None) -> None:
    """A trial that raised: status `failed` with its reason (and a short traceback)."""
    trial.set_user_attr(TrialAttr.STATUS, TrialStatus.FAILED.value)
    trial.set_user_attr(TrialAttr.FAIL_REASON, reason[:500])
    if trace is not None:
        trial.set_user_attr(TrialAttr.FAIL_TRACE, trace[-2000:])


def write_outcome(
    trial: Any,
    status: TrialStatus,
    *,
    metrics: Mapping[str, Any],
    constraints: Mapping[str, float],
    constraint_names: Sequence[str],
) -> None:
    """A finished trial: Optuna's constraints (`constraint_names`), the constraint values and
    metrics as user attrs, then the status (written last: a status means the record is whole)."""
    for name in constraint_names:
        trial.set_constraint(name, float(constraints[name]))
    trial.set_user_attr(TrialAttr.CONSTRAINTS, {k: float(v) for k, v in constraints.items()})
    write_attrs(trial, metrics)
    trial.set_user_attr(TrialAttr.STATUS, status.value)


# A repeat copies the earlier trial's figures, never what identifies or timed that trial.
_NOT_COPIED = frozenset(
    {TrialAttr.PLAN, TrialAttr.PLAN_TEXT, TrialAttr.PLAN_KEY, TrialAttr.RECIPE}
    | {TrialAttr.WEIGHTS, TrialAttr.STATUS, TrialAttr.SAMPLE_S, TrialAttr.BUILD_S}
    | {TrialAttr.TRAIN_S, TrialAttr.DUPLICATE_OF}
)


def write_duplicate(trial: Any, earlier: Any, constraint_names: Sequence[str]) -> None:
    """Record an already-evaluated plan with the earlier trial's figures."""
    trial.set_user_attr(TrialAttr.DUPLICATE_OF, earlier.number)
    write_attrs(trial, {k: v for k, v in earlier.user_attrs.items() if k not in _NOT_COPIED})
    for name, value in (earlier.user_attrs.get(TrialAttr.CONSTRAINTS) or {}).items():
        if name in constraint_names:
            trial.set_constraint(name, float(value))
    trial.set_user_attr(TrialAttr.STATUS, TrialStatus.DUPLICATE.value)


def plan_key(plan: Mapping[str, Any]) -> str:
    """A stable text key of a plan (`CompressionPlan.to_dict`): equal plans give equal keys."""
    return json.dumps(dict(plan), sort_keys=True, separators=(",", ":"))


def plan_key_of(trial: Any) -> str | None:
    """The stored duplicate-detection key of a trial's plan."""
    return trial.user_attrs.get(TrialAttr.PLAN_KEY)


def trial_attr(trial: Any, key: str, default: Any = None) -> Any:
    """One stored attribute of a trial (`TrialAttr`), or `default`."""
    return trial.user_attrs.get(key, default)


def metric_of(trial: Any, metric: str) -> float | None:
    """A trial's stored metric (`accuracy`, `latency_ms`, `m@T`, ...); None when not measured."""
    v = trial.user_attrs.get(metric)
    return None if v is None else float(v)


def failed_origin(trial: Any) -> int | None:
    """The trial a worker died in, when this trial is Optuna's re-run of it (else None)."""
    origin = trial.system_attrs.get(TrialAttr.FAILED_TRIAL)
    return None if origin is None else int(origin)
