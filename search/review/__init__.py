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
* **Knee**: normalise the front min-max per objective (0 = best on the front, 1 = worst); the
  knee is the front point whose *worst* normalised objective is best, i.e. the largest minimum
  distance from the worst corner along every axis (a max-min compromise). Ties go to the smaller
  sum of normalised objectives (closer to the ideal corner), then to the lower trial number.
* **Picks**: `knee`, `max-accuracy`, `min-latency`, `min-size`, each chosen on the feasible front
  (ties broken by the knee order). `min-size` uses the first objective in `SIZE_METRICS`.
* **Least violating**: when nothing is feasible, the COMPLETE trials ranked by the sum of their
  positive constraint values (total relative overshoot), lowest first.
"""

from spaces import flatten_plan, layer_rows

from ..record import TrialRecord
from ._figures import figures
from ._geometry import Objective, dominates, hypervolume, knee_index, pareto_indices
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
    "summary_features",
    "target_index_html",
    "trials_frame",
    "why_infeasible",
    "write_outputs",
    "write_pareto_json",
    "write_trials_csv",
]
