"""Review of one search: every trial, the feasible Pareto front, hypervolume, knee, picks, report.

Compute first, draw second: `RunData` is a plain, frozen object built from an Optuna study in any
RDB storage (`_load`, on the geometry of `_geometry`). The report (`_figures*`, `_page`) and the
export (`search.export`) only read it; `_outputs` writes trials.csv, pareto.json and report.html.
The tests check each directly.

Definitions (the README quotes these):

* **Feasible** (`search.record.is_feasible`): the trial is COMPLETE, was trained (no untrained
  status such as `over_budget`/`failed`), its objective values are finite and every constraint
  value is <= 0 (Optuna's convention: `value / budget - 1` for budgets).
* **Pareto front**: the feasible trials that no other feasible trial dominates on the study's
  objectives (no worse on all, better on one). Trials with identical values all stay.
* **Hypervolume**: each objective is turned into a normalised loss, lower is better, with a fixed
  scale `S` per objective: the base model's value of that metric (study attr `base_metrics`) when
  it is a positive number, else the largest value among the trained trials. A minimised metric
  becomes `v / S`, a maximised one `1 - v / S`. The reference point is 1.0 on every axis: "as
  costly as the uncompressed model and zero accuracy". A front point that is worse than the
  reference on any axis adds nothing. So 1.0 would be a model with the base accuracy at no cost.
* **Knee**: each objective of a front plan is a *shortfall* on a fixed scale, 0 at its limit
  and -1 one unit inside it. Accuracy (a maximised objective): drop from the base model /
  allowed drop - 1 (`max_accuracy_drop`, else 1 point), so -1 is no drop. A cost:
  log2(cost / budget), so -1 is half the budget; a cost with no budget (or a study without
  budgets) uses the base model's cost instead. The knee is the front plan whose largest
  shortfall is smallest: the most room on its tightest limit. Ties go to the smaller sum, then
  to the lower trial number. A plan that costs more than the base model, or than a feasible
  uniform-int8 plan of it, on every cost objective is never the knee (no plan left: no knee).
  Why: the limits are the user's, fixed before the search, so a plan's score is its own and no
  outlier on the front rescales the axes (min-max normalising over the front chose an fp32
  student over a plan 1.4 points better on the quickstart); the max (not a sum or a distance)
  lets no margin on one axis hide a shortfall on another; and the shift of the accuracy axis
  by -1 puts both kinds of axis at 0 on their limit (without it a drop >= 0 always outweighs a
  cost under budget, and the knee is the most accurate plan). One unit, the whole allowed drop,
  weighs as much as a factor 2 in cost. Fallbacks: no base metrics, the largest trained value
  of each objective (as for the hypervolume); a multi-target study's own cost values are
  already relative to the base model, so their limit is 1.0.
* **Picks**: `knee`, `max-accuracy`, `min-latency`, `min-size`, each chosen on the feasible front
  (ties broken by the knee order, plans that are never the knee last). `min-size` uses the first
  objective in `SIZE_METRICS`.
* **Least violating**: when nothing is feasible, the COMPLETE trials ranked by the sum of their
  positive constraint values (total relative overshoot), lowest first.
"""

from spaces import flatten_plan, layer_rows

from ..config import Objective
from ..record import TrialRecord
from ._figures import figures
from ._geometry import (
    Limit,
    dominates,
    hypervolume,
    knee_index,
    pareto_indices,
    shortfall,
)
from ._load import assemble, build_run, load_run, load_run_dir, run_dir_storage
from ._outputs import trials_frame, write_outputs, write_pareto_json, write_trials_csv
from ._page import render_report, render_target_index, report_html, target_index_html
from ._plan_facts import (
    FEATURES,
    SHARE_FIGURES,
    LayerShare,
    PlanShares,
    latency_band,
    latency_error,
    latency_note,
    latency_text,
    layer_shares,
    summary_features,
)
from ._run import LATENCY_METRICS, PICKS, SIZE_METRICS, RunData, why_infeasible

__all__ = [
    "FEATURES",
    "LATENCY_METRICS",
    "PICKS",
    "SHARE_FIGURES",
    "SIZE_METRICS",
    "LayerShare",
    "Limit",
    "Objective",
    "PlanShares",
    "RunData",
    "TrialRecord",
    "assemble",
    "build_run",
    "dominates",
    "figures",
    "flatten_plan",
    "hypervolume",
    "knee_index",
    "latency_band",
    "latency_error",
    "latency_note",
    "latency_text",
    "layer_rows",
    "layer_shares",
    "load_run",
    "load_run_dir",
    "pareto_indices",
    "render_report",
    "render_target_index",
    "report_html",
    "run_dir_storage",
    "shortfall",
    "summary_features",
    "target_index_html",
    "trials_frame",
    "why_infeasible",
    "write_outputs",
    "write_pareto_json",
    "write_trials_csv",
]
