"""The names under which a trial and a study are stored in Optuna, and per-target naming.

Every key the project writes is named here once; the values are those of every stored study so
far, so old studies load unchanged. Metrics (accuracy, latency_ms, ...) are stored under their
own names (`METRIC_KEYS`); a multi-target study stores a cost metric per target as `m@T`.
"""

from __future__ import annotations

__all__ = ["StudyAttr", "TrialAttr", "at_target", "target_suffix"]


class TrialAttr:
    """A trial's user attributes other than its metrics."""

    STATUS = "status"  # a `TrialStatus` value; written last, so a status means the record is whole
    PLAN = "plan"  # the plan as a dict (`CompressionPlan.to_dict`)
    PLAN_TEXT = "plan_text"
    PLAN_KEY = "plan_key"  # duplicate detection: equal plans give equal keys
    RECIPE = "recipe"  # the name of the start plan or recipe it was enqueued as
    CONSTRAINTS = "constraints"  # {budget or accuracy_drop: value}, <= 0 is met
    SKIPPED_LAYERS = "skipped_layers"  # {layer: why the plan could not change it}
    LAYER_COSTS = "layer_costs"  # the cost model's per-kernel rows
    PREDICTED_LATENCY_MS = "predicted_latency_ms"  # before a measured latency replaced it
    LATENCY_BOUND_MS = "latency_bound_ms"  # the p90 bound the budget was checked against
    CHECKPOINT_ACCURACY = "checkpoint_accuracy"  # at the early-stop checkpoint
    STOPPED_AT_EPOCH = "stopped_at_epoch"  # stopped early after this many epochs
    STOPPED_AT_STEP = "stopped_at_step"  # ... or steps, when recovery counts steps
    EARLY_STOP_REASON = "early_stop_reason"
    WEIGHTS = "weights"  # the trained state_dict file
    SAMPLE_S = "sample_s"
    BUILD_S = "build_s"
    TRAIN_S = "train_s"
    DUPLICATE_OF = "duplicate_of"  # a repeated plan: the trial that evaluated it
    FAIL_REASON = "fail_reason"
    FAIL_TRACE = "fail_trace"
    FITS = "fits"  # multi-target: the targets whose budgets the plan meets
    # Optuna's own system attribute on a trial re-run for a worker that died mid-trial.
    FAILED_TRIAL = "failed_trial"


class StudyAttr:
    """A study's user attributes: what the search records once and the review reads."""

    EXPERIMENT = "experiment"  # the experiment as a dict
    OBJECTIVES = "objectives"  # [[metric, direction], ...]
    CONSTRAINTS = "constraints"  # constraint names, in Optuna's order
    BUDGETS = "budgets"  # {budget key: value} in the budgets' own units
    BUDGET_LINES = "budget_lines"  # {cost metric: its budget in the metric's units}
    MAX_ACCURACY_DROP = "max_accuracy_drop"
    PROFILE = "profile"  # the hardware profile as a dict
    BASE_METRICS = "base_metrics"  # the uncompressed model's accuracy and costs
    BASE_LAYER_COSTS = "base_layer_costs"
    TASK = "task"
    BASE_HASH = "base_hash"
    SPACE = "space"
    PRIMARY_METRIC = "primary_metric"
    BUDGET_MARGIN = "budget_margin"  # {"bound": "none" | "p90", "latency_error": p90}
    TARGETS = "targets"  # multi-target: the profile names
    TARGET_VIEWS = "target_views"  # multi-target: per target, the attributes above it overrides
    SENSITIVITIES = "sensitivities"  # the budget-aware start's per-layer table
    SENSITIVITY_S = "sensitivity_s"
    REFINED = "refined"  # {trial number: metrics after the longer recovery}


def at_target(key: str, target: str) -> str:
    """The attribute name of `key` on one target of a multi-target study: `latency_ms@mcu`."""
    return f"{key}@{target}"


def target_suffix(target: str) -> str:
    """What `at_target` appends for `target`."""
    return at_target("", target)
