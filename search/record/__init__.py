"""The record: what the search stores in Optuna, written and read in this package only.

The objective writes a trial's outcome through `write_*`; the review, the export, the CLI and
the benchmarks read it back through `TrialRecord.from_trial`, `status_of`, `is_feasible`,
`trial_attr` and `primary_metric`. The study's own record (`StudyAttr`) is written by
`write_study_attrs` and read by `study_attrs`. Attribute names (`_keys`) and values are those of
every stored study so far, so old studies load unchanged. A test (tests/test_record.py) keeps
`user_attrs` and `system_attrs` out of every other module.

* **Status** (`TrialStatus`): `trained`, `over_budget` (costed, never trained), `stopped_early`
  (hopeless at the recovery checkpoint), `duplicate` (answered from an earlier trial of the same
  plan), `failed` (raised; recorded with its reason).
* **Feasible**: COMPLETE, trained (no untrained status), finite objective values, and every
  constraint value <= 0 (Optuna's convention: `value / budget - 1` for budgets).
* **Primary metric**: the one accuracy drops are measured on: the study's stored
  `primary_metric`, else the first maximised objective, else `accuracy`.
"""

from ._keys import StudyAttr, TrialAttr, at_target, target_suffix
from ._study import budget_lines, enqueue_plan, study_attr, study_attrs, write_study_attrs
from ._trial import (
    ACCURACY_DROP,
    ACCURACY_METRICS,
    BUDGET_METRICS,
    COST_KEYS,
    COUNTED,
    LIMITED_BY,
    METRIC_KEYS,
    UNTRAINED,
    BudgetMetric,
    TrialRecord,
    TrialStatus,
    budget_for_metric,
    constraints_of,
    cost_rows,
    failed_origin,
    is_feasible,
    is_trained,
    metric_of,
    plan_key,
    plan_key_of,
    primary_metric,
    status_of,
    trial_attr,
    trial_feasible,
    within_limits,
    write_attrs,
    write_duplicate,
    write_failure,
    write_outcome,
    write_plan,
)

__all__ = [
    "ACCURACY_DROP",
    "ACCURACY_METRICS",
    "BUDGET_METRICS",
    "COST_KEYS",
    "COUNTED",
    "LIMITED_BY",
    "METRIC_KEYS",
    "UNTRAINED",
    "BudgetMetric",
    "StudyAttr",
    "TrialAttr",
    "TrialRecord",
    "TrialStatus",
    "at_target",
    "budget_for_metric",
    "budget_lines",
    "constraints_of",
    "cost_rows",
    "enqueue_plan",
    "failed_origin",
    "is_feasible",
    "is_trained",
    "metric_of",
    "plan_key",
    "plan_key_of",
    "primary_metric",
    "status_of",
    "study_attr",
    "study_attrs",
    "target_suffix",
    "trial_attr",
    "trial_feasible",
    "write_attrs",
    "write_duplicate",
    "write_failure",
    "write_outcome",
    "write_plan",
    "write_study_attrs",
    "within_limits",
]
