"""Reading a study into `RunData`: storage URLs and run folders, one record per trial, and
the study-level figures (front, hypervolume, knee, least violating, budget lines)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from spaces import is_student

from ..config import Objective
from ..errors import ConfigError
from ..record import (
    UNTRAINED,
    StudyAttr,
    TrialRecord,
    TrialStatus,
    budget_for_metric,
    cost_rows,
    study_attrs,
)
from ..record import primary_metric as primary_of
from ..storage import public_url
from ._geometry import (
    Limit,
    costlier_everywhere,
    dominates,
    hypervolume,
    knee_ranking,
    loss,
    normalised,
    pareto_indices,
    shortfall,
)
from ._run import RunData
from ._style import LATENCY

__all__ = [
    "assemble",
    "build_run",
    "load_run",
    "load_run_dir",
    "run_dir_storage",
]

LEAST_VIOLATING_N = 5
# The knee's allowed accuracy drop when the experiment sets none (`max_accuracy_drop: null`):
# one point of an accuracy in [0, 1], a usual tolerance for compression.
DEFAULT_ALLOWED_DROP = 0.01


def run_dir_storage(run_dir: str | Path) -> tuple[str, str]:
    """(storage URL, study name) of a run folder: its `study.db` and the study inside it.

    A folder with several studies picks the one named after the folder; otherwise ConfigError.
    """
    run_dir = Path(run_dir)
    db = run_dir / "study.db"
    if not db.is_file():
        raise ConfigError(
            str(run_dir),
            "run",
            "no study.db in this folder; give the run folder a search wrote (`run --out`, "
            "default experiments/runs/NAME), or --storage URL --study NAME for a shared study",
        )
    url = f"sqlite:///{db.resolve()}"
    names = _study_names(url)
    if len(names) == 1:
        return url, names[0]
    if run_dir.name in names:
        return url, run_dir.name
    raise ConfigError(str(db), "study", f"holds studies {names}; name one with --study")


def _study_names(url: str) -> list[str]:
    import optuna

    return sorted(optuna.study.get_all_study_names(storage=url))


def _check_sqlite_exists(url: str) -> None:
    # Opening a missing SQLite file would silently create an empty study database.
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not Path(path).is_file():
            raise ConfigError(url, "storage", "no such SQLite file")


def load_run(storage_url: str, study_name: str | None = None) -> RunData:
    """Read a study from any Optuna RDB storage URL into `RunData`.

    Args:
        storage_url: e.g. `sqlite:///experiments/runs/quickstart/study.db` or a PostgreSQL URL.
        study_name: the study; None when the storage holds exactly one.
    """
    import optuna

    _check_sqlite_exists(storage_url)
    shown = public_url(storage_url)
    try:
        names = _study_names(storage_url)
    except Exception as exc:  # bad URL, unreachable server, not an Optuna database
        raise ConfigError(shown, "storage", f"cannot open: {exc}") from None
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(shown, "study", f"name one of {names} with --study")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(shown, "study", f"no study {study_name!r}; the storage holds {names}")
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    return build_run(study, storage=shown)


def load_run_dir(run_dir: str | Path) -> RunData:
    """`load_run` for a run folder holding `study.db`."""
    url, name = run_dir_storage(run_dir)
    return load_run(url, name)


def build_run(study: Any, *, storage: str = "", target: str | None = None) -> RunData:
    """Build `RunData` from a live `optuna.Study` (what `load_run` does after opening it).

    A study over several targets gets one view per target in `views`; `target` builds that
    target's view alone: its profile, budgets, constraints and cost metrics (`latency_ms@T`...).
    """
    attrs = study_attrs(study)
    targets = [str(n) for n in attrs.get(StudyAttr.TARGETS) or ()]
    if target is not None:
        if target not in targets:
            raise ConfigError(
                study.study_name, "--target", f"{target!r} is not one of the study's {targets}"
            )
        attrs.update((attrs.get(StudyAttr.TARGET_VIEWS) or {}).get(target) or {})
    directions = [d.name.lower() for d in study.directions]
    raw = attrs.get(StudyAttr.OBJECTIVES)
    if raw:
        objectives = tuple(Objective(str(m), str(d)) for m, d in raw)
    else:
        objectives = tuple(Objective(f"objective_{i}", d) for i, d in enumerate(directions))
    if [o.direction for o in objectives] != directions:
        raise ConfigError(
            study.study_name,
            "objectives",
            f"user attr {raw} does not match the study's directions {directions}",
        )
    constraint_names = tuple(attrs.get(StudyAttr.CONSTRAINTS) or ())
    refined = attrs.get(StudyAttr.REFINED) or {}
    trials = tuple(
        TrialRecord.from_trial(t, objectives, refined.get(str(t.number)), target=target)
        for t in study.get_trials(deepcopy=False)
    )
    if not constraint_names:
        seen: dict[str, None] = {}
        for t in trials:
            seen.update(dict.fromkeys(t.constraints))
        constraint_names = tuple(seen)
    run = assemble(
        study_name=study.study_name,
        storage=storage,
        objectives=objectives,
        constraint_names=constraint_names,
        budgets=attrs.get(StudyAttr.BUDGETS) or {},
        profile=attrs.get(StudyAttr.PROFILE) or {},
        base_metrics=attrs.get(StudyAttr.BASE_METRICS) or {},
        task=str(attrs.get(StudyAttr.TASK) or ""),
        space=str(attrs.get(StudyAttr.SPACE) or ""),
        experiment=attrs.get(StudyAttr.EXPERIMENT) or {},
        trials=trials,
        accuracy_floor=_accuracy_floor(attrs, objectives),
        max_accuracy_drop=_number(attrs.get(StudyAttr.MAX_ACCURACY_DROP)),
        stored_budget_lines=attrs.get(StudyAttr.BUDGET_LINES),
        latency_margin=_latency_margin(attrs.get(StudyAttr.BUDGET_MARGIN)),
        # A multi-target study's own cost values are already relative to the base model (1.0 =
        # the base model, `search.multi_target`); its target views hold each target's costs.
        relative_costs=bool(targets) and target is None,
        base_hash=str(attrs.get(StudyAttr.BASE_HASH) or ""),
        primary_metric=str(attrs.get(StudyAttr.PRIMARY_METRIC) or ""),
        base_layer_costs=cost_rows(attrs.get(StudyAttr.BASE_LAYER_COSTS)),
    )
    sens = attrs.get(StudyAttr.SENSITIVITIES) if not target else None
    if isinstance(sens, list):
        run = replace(run, sensitivities=tuple(r for r in sens if isinstance(r, dict)))
    views = {n: build_run(study, storage=storage, target=n) for n in targets} if not target else {}
    return replace(run, views=views, target=target)


def _accuracy_floor(attrs: Mapping[str, Any], objectives: Sequence[Objective]) -> dict[str, float]:
    """`max_accuracy_drop` as a line on the primary metric's axis: base value minus the drop."""
    drop, base = attrs.get(StudyAttr.MAX_ACCURACY_DROP), attrs.get(StudyAttr.BASE_METRICS) or {}
    primary = primary_of(objectives, attrs.get(StudyAttr.PRIMARY_METRIC))
    if not isinstance(drop, (int, float)) or primary not in [o.metric for o in objectives]:
        return {}
    b = base.get(primary)
    return {primary: float(b) - float(drop)} if isinstance(b, (int, float)) else {}


def _latency_margin(stored: Any) -> float:
    """The p90 margin the latency budget was checked with (`budget_margin: p90`), else 0."""
    if isinstance(stored, Mapping) and stored.get("bound") == "p90":
        return float(stored.get("latency_error") or 0.0)
    return 0.0


def assemble(
    *,
    study_name: str,
    storage: str,
    objectives: Sequence[Objective],
    constraint_names: Sequence[str],
    budgets: Mapping[str, float],
    profile: Mapping[str, Any],
    base_metrics: Mapping[str, Any],
    task: str,
    space: str,
    experiment: Mapping[str, Any],
    trials: Sequence[TrialRecord],
    accuracy_floor: Mapping[str, float] | None = None,
    max_accuracy_drop: float | None = None,
    relative_costs: bool = False,
    base_hash: str = "",
    primary_metric: str = "",
    base_layer_costs: Sequence[Sequence[Any]] = (),
    stored_budget_lines: Mapping[str, float] | None = None,
    latency_margin: float = 0.0,
) -> RunData:
    """Compute the front, hypervolume, knee and least-violating list from trial records.

    `accuracy_floor` adds budget lines for maximised metrics (base value - max drop).
    `max_accuracy_drop` is the knee's unit of accuracy (None: `DEFAULT_ALLOWED_DROP`);
    `relative_costs` says the cost values are already relative to the base model.
    `stored_budget_lines` are the study's budget lines (`record.budget_lines`); studies recorded
    before they were stored derive them from the constraint values. `latency_margin` is the p90
    margin the latency budget was checked with: the knee's latency limit is where the bound
    meets the budget.
    """
    objectives = tuple(objectives)
    trials = tuple(sorted(trials, key=lambda t: t.number))
    feasible = [t for t in trials if t.feasible]
    losses = [loss(t.values or (), objectives) for t in feasible]
    front_ix = pareto_indices(losses)
    front = sorted(
        (feasible[i] for i in front_ix),
        key=lambda t: (loss(t.values or (), objectives)[0], t.number),
    )

    scales = tuple(_scale(o, j, base_metrics, trials) for j, o in enumerate(objectives))
    if stored_budget_lines is not None:
        metrics = {o.metric for o in objectives}
        budget_lines = {m: float(v) for m, v in stored_budget_lines.items() if m in metrics}
    else:
        budget_lines = _derived_budget_lines(
            objectives, constraint_names, budgets, trials, latency_margin
        )
    checked = dict(budget_lines)
    if LATENCY in checked:
        checked[LATENCY] /= 1.0 + latency_margin
    base = _base_values(objectives, base_metrics, relative_costs)
    limits = tuple(
        _knee_limit(o, j, base, {} if relative_costs else checked, max_accuracy_drop, trials)
        for j, o in enumerate(objectives)
    )
    bars = _cost_bars(objectives, base, trials)
    knee_order, never_knee = _rank_knee(objectives, front, limits, bars)
    ref = [1.0] * len(objectives)
    hv_history: list[tuple[int, float]] = []
    pts: list[list[float]] = []
    hv = 0.0
    for t in trials:
        if t.feasible:
            p = normalised(t.values or (), objectives, scales)
            if not any(dominates(q, p) or q == p for q in pts):
                pts = [q for q in pts if not dominates(p, q)] + [p]
                hv = hypervolume(pts, ref)
        if t.state in ("COMPLETE", "FAIL", "PRUNED"):
            hv_history.append((t.number, hv))

    least: tuple[int, ...] = ()
    if not front:
        complete = [t for t in trials if t.state == "COMPLETE" and t.plan is not None]
        # Trained ones first among equals: they have a real accuracy.
        least = tuple(
            t.number
            for t in sorted(complete, key=lambda t: (t.violation, not t.trained, t.number))[
                :LEAST_VIOLATING_N
            ]
        )

    return RunData(
        study_name=study_name,
        storage=storage,
        objectives=objectives,
        constraint_names=tuple(constraint_names),
        budgets=dict(budgets),
        profile=dict(profile),
        base_metrics=dict(base_metrics),
        task=task,
        space=space,
        experiment=dict(experiment),
        trials=trials,
        front=tuple(t.number for t in front),
        hv_scales=scales,
        hypervolume=hv,
        hypervolume_history=tuple(hv_history),
        knee=(knee_order[0] if knee_order and knee_order[0] not in never_knee else None),
        least_violating=least,
        budget_lines={**budget_lines, **(accuracy_floor or {})},
        base_hash=base_hash,
        primary_metric=primary_of(objectives, primary_metric),
        base_layer_costs=tuple(tuple(r) for r in base_layer_costs),
        knee_limits=limits,
        knee_order=knee_order,
        never_knee=never_knee,
    )


# --- the knee on fixed, budget-relative scales (definitions: `search.review`) --------------------
def _number(v: Any) -> float | None:
    """A finite positive number, else None (a missing, null or nonsensical attribute)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return float(v) if ok else None


def _base_values(
    objectives: Sequence[Objective], base_metrics: Mapping[str, Any], relative_costs: bool
) -> dict[str, float]:
    """The base model's value of each objective that has one (relative costs: 1.0)."""
    out = {}
    for o in objectives:
        b = (
            1.0
            if relative_costs and o.direction == "minimize"
            else _number(base_metrics.get(o.metric))
        )
        if b is not None:
            out[o.metric] = b
    return out


def _knee_limit(
    o: Objective,
    j: int,
    base: Mapping[str, float],
    budget_lines: Mapping[str, float],
    max_drop: float | None,
    trials: Sequence[TrialRecord],
) -> Limit:
    """Where objective `o` reaches its limit on the knee's scale.

    Accuracy: the base model's value, less the allowed drop. A cost: its budget; a cost without
    one (an older study, or a metric no budget limits) falls back to the base model's cost, so
    its room counts halvings from the uncompressed model. With no base value either (studies
    written before `base_metrics`), the largest trained value stands in, as for the hypervolume.
    """
    if o.direction == "maximize":
        allowance = max_drop or DEFAULT_ALLOWED_DROP
        if o.metric in base:
            return Limit(base[o.metric], allowance, "base")
        return Limit(_scale(o, j, {}, trials), allowance, "trials")
    budget = _number(budget_lines.get(o.metric))
    if budget is not None:
        return Limit(budget, basis="budget")
    if o.metric in base:
        return Limit(base[o.metric], basis="base")
    return Limit(_scale(o, j, {}, trials), basis="trials")


def _cost_bars(
    objectives: Sequence[Objective], base: Mapping[str, float], trials: Sequence[TrialRecord]
) -> list[dict[str, float]]:
    """What a knee must beat on at least one cost: the uncompressed base model, and every
    feasible uniform-int8 plan of it (the first thing an engineer would try)."""
    bars = [dict(base)]
    for t in trials:
        if t.feasible and t.values is not None and _uniform_int8(t.plan):
            bars.append({o.metric: float(v) for o, v in zip(objectives, t.values)})
    return bars


def _uniform_int8(plan: Mapping[str, Any] | None) -> bool:
    """The base network at 8-bit weights and activations everywhere, nothing else changed."""
    if not plan:
        return False
    arch = plan.get("architecture") or {}
    prune = plan.get("prune") or {}
    quant = plan.get("quantize") or {}
    ranks = (plan.get("lowrank") or {}).get("ranks") or {}
    # Sampled plans name every layer's bits; the default covers a plan that names none.
    bits = set((quant.get("weight_bits") or {}).values()) or {quant.get("default_weight_bits")}
    return (
        not is_student(plan)
        and float(arch.get("width", 1.0)) == 1.0
        and all(float(r) >= 1.0 for r in ranks.values())
        and not prune.get("global_ratio")
        and all(float(r) == 0.0 for r in (prune.get("ratios") or {}).values())
        and not prune.get("sparsity")
        and bits == {8}
        and quant.get("activation_bits") == 8
    )


def _rank_knee(
    objectives: Sequence[Objective],
    front: Sequence[TrialRecord],
    limits: Sequence[Limit],
    bars: Sequence[Mapping[str, float]],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(front trial numbers in knee order, those that are never the knee)."""
    costs = [o.metric for o in objectives if o.direction == "minimize"]
    scores, eligible = [], []
    for t in front:
        values = dict(zip((o.metric for o in objectives), t.values or ()))
        scores.append([shortfall(values[o.metric], o, lim) for o, lim in zip(objectives, limits)])
        # A bar missing a cost (no base metrics) cannot show the plan costlier everywhere.
        eligible.append(
            not any(
                set(costs) <= set(bar)
                and costlier_everywhere([values[m] for m in costs], [bar[m] for m in costs])
                for bar in bars
            )
        )
    order = knee_ranking(scores, eligible)
    never = tuple(t.number for t, ok in zip(front, eligible) if not ok)
    return tuple(front[i].number for i in order), never


def _scale(o: Objective, j: int, base: Mapping[str, Any], trials: Sequence[TrialRecord]) -> float:
    b = base.get(o.metric)
    if isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0:
        return float(b)
    seen = [
        abs(t.values[j])
        for t in trials
        if t.trained and t.values is not None and math.isfinite(t.values[j])
    ]
    m = max(seen, default=0.0)
    return m if m > 0 else 1.0


def _derived_budget_lines(
    objectives: Sequence[Objective],
    constraint_names: Sequence[str],
    budgets: Mapping[str, float],
    trials: Sequence[TrialRecord],
    latency_margin: float,
) -> dict[str, float]:
    """A study recorded before its budget lines were stored: each objective's budget in its
    own units, derived from the recorded constraint values of the budget that limits it.

    A constraint is `value / budget - 1`, so `budget = value / (1 + c)`: this converts kB budgets
    to a bytes axis without assuming 1000 or 1024. A line is drawn only when every trial gives
    the same budget (so a wrongly matched constraint draws nothing). A latency checked at its
    p90 bound gives `budget / (1 + p90)`, so the margin is taken back out.
    """
    out: dict[str, float] = {}
    for o in objectives:
        line = None
        c = budget_for_metric(o.metric, aliases=True)
        if c is not None and c in constraint_names:
            est = [
                v / (1.0 + t.constraints[c])
                for t in trials
                if c in t.constraints
                and (v := t.value(o.metric)) is not None
                and t.status != TrialStatus.FAILED
                and abs(1.0 + t.constraints[c]) > 1e-12
                and not (o.direction == "maximize" and t.status in UNTRAINED)
            ]
            if est and max(est) - min(est) <= 1e-6 * max(abs(x) for x in est) + 1e-12:
                line = float(sum(est) / len(est))
                if o.metric == LATENCY:
                    line *= 1.0 + latency_margin
        if line is None:
            b = budgets.get(o.metric)
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                line = float(b)
        if line is not None:
            out[o.metric] = line
    return out
