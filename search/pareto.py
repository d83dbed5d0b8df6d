"""The review data of one search: every trial, the feasible Pareto front, hypervolume, knee, picks.

Compute first, draw second: `RunData` is a plain, frozen object built from an Optuna study in any
RDB storage. The report (`search.report`) and the export (`search.export`) only read it, and the
tests check it directly.

Definitions (the README quotes these):

* **Feasible**: the trial is COMPLETE, was trained (status not `over_budget`/`failed`) and every
  constraint value is <= 0 (Optuna's convention: `value / budget - 1` for budgets).
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

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._io import atomic_write, jsonable
from .errors import ConfigError

__all__ = [
    "LATENCY_METRICS",
    "PICKS",
    "SIZE_METRICS",
    "Objective",
    "RunData",
    "TrialRecord",
    "assemble",
    "build_run",
    "dominates",
    "flatten_plan",
    "hypervolume",
    "knee_index",
    "layer_rows",
    "load_run",
    "load_run_dir",
    "pareto_indices",
    "redact_url",
    "run_dir_storage",
    "trials_frame",
    "write_outputs",
    "write_pareto_json",
    "write_trials_csv",
]

PICKS = ("knee", "max-accuracy", "min-latency", "min-size")
# Which metric a pick optimises when the study has several candidates: first match wins.
SIZE_METRICS = ("flash_bytes", "weight_bytes", "memory_bytes", "params", "size_bytes", "size_kb")
LATENCY_METRICS = ("latency_ms",)
ACCURACY_METRICS = ("accuracy", "f1", "recall")
# Metrics the schema stores per trial; trials.csv always has these columns, in this order.
METRIC_KEYS = (
    "accuracy",
    "recall",
    "f1",
    "accuracy_drop",
    "params",
    "macs",
    "weight_bytes",
    "peak_activation_bytes",
    "memory_bytes",
    "flash_bytes",
    "latency_ms",
    "build_s",
    "train_s",
)
# A trial with one of these statuses has cost figures but no trained accuracy.
# `duplicate` repeats an earlier trial's figures: that trial stands for the plan.
UNTRAINED = ("over_budget", "failed", "stopped_early", "duplicate")
LEAST_VIOLATING_N = 5


@dataclass(frozen=True)
class Objective:
    """One objective of the study: a metric name and its direction."""

    metric: str
    direction: str  # "maximize" | "minimize"

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {self.metric}: direction {self.direction!r}")

    @property
    def sign(self) -> float:
        """+1 for minimise, -1 for maximise: `sign * value` is a loss."""
        return 1.0 if self.direction == "minimize" else -1.0


@dataclass(frozen=True)
class TrialRecord:
    """Everything the review needs about one trial, as plain values."""

    number: int
    state: str  # Optuna TrialState name: COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    status: str | None  # trained | over_budget | stopped_early | duplicate | failed
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
        return self.state == "COMPLETE" and self.status not in UNTRAINED

    def value(self, metric: str) -> float | None:
        """A metric by name: the trial's user attribute (objectives are also there)."""
        v = self.metrics.get(metric)
        return None if v is None else float(v)


@dataclass(frozen=True)
class RunData:
    """The review data of one study. Build it with `load_run` or `build_run`."""

    study_name: str
    storage: str  # the storage URL with any password hidden
    objectives: tuple[Objective, ...]
    constraint_names: tuple[str, ...]
    budgets: Mapping[str, float]
    profile: Mapping[str, Any]
    base_metrics: Mapping[str, Any]
    task: str
    space: str
    experiment: Mapping[str, Any]
    trials: tuple[TrialRecord, ...]
    front: tuple[int, ...]  # trial numbers on the feasible front, sorted by the first objective
    hv_scales: tuple[float, ...]  # the normalising scale S of each objective
    hypervolume: float
    hypervolume_history: tuple[tuple[int, float], ...]  # (trial number, HV of trials <= it)
    knee: int | None
    least_violating: tuple[int, ...]
    budget_lines: Mapping[str, float]  # metric -> budget expressed in that metric's units
    base_hash: str = ""  # sha256 of the base model's state_dict file (study attr `base_hash`)
    primary_metric: str = ""  # the metric accuracy drops are measured on
    base_layer_costs: tuple[tuple[Any, ...], ...] = ()  # the base model's per-kernel rows
    # A study over several targets (search.multi_target): target name -> that target's view,
    # an ordinary single-target RunData. Empty for a single-target study.
    views: Mapping[str, RunData] = field(default_factory=dict)
    target: str | None = None  # which target this view is (None: a single-target study)

    def __post_init__(self) -> None:
        numbers = [t.number for t in self.trials]
        if len(set(numbers)) != len(numbers):
            raise ValueError("trial numbers must be unique")
        known = set(numbers)
        for n in (
            *self.front,
            *self.least_violating,
            *([self.knee] if self.knee is not None else []),
        ):
            if n not in known:
                raise ValueError(f"trial {n} is referenced but not in the run")

    # --- look-ups -------------------------------------------------------------------------------
    def trial(self, number: int) -> TrialRecord:
        for t in self.trials:
            if t.number == number:
                return t
        raise KeyError(number)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(o.metric for o in self.objectives)

    @property
    def feasible_trials(self) -> tuple[TrialRecord, ...]:
        return tuple(t for t in self.trials if t.feasible)

    @property
    def front_trials(self) -> tuple[TrialRecord, ...]:
        return tuple(self.trial(n) for n in self.front)

    @property
    def any_feasible(self) -> bool:
        return bool(self.front)

    def counts(self) -> dict[str, int]:
        """How many trials ended which way (for the summary line and the report header)."""
        c = {
            "trials": len(self.trials),
            "complete": 0,
            "trained": 0,
            "feasible": 0,
            "over_budget": 0,
            "failed": 0,
            "pruned": 0,
            "duplicate": 0,
            "running": 0,
            "front": len(self.front),
        }
        for t in self.trials:
            c["complete"] += t.state == "COMPLETE"
            c["trained"] += t.trained
            c["feasible"] += t.feasible
            c["over_budget"] += t.status == "over_budget"
            c["failed"] += t.state == "FAIL" or t.status == "failed"
            c["pruned"] += t.state == "PRUNED" or t.status == "stopped_early"
            c["duplicate"] += t.status == "duplicate"
            c["running"] += t.state in ("RUNNING", "WAITING")
        return c

    def pick_metric(self, pick: str) -> Objective | None:
        """The objective a pick optimises (None for `knee`); ConfigError if the study lacks it."""
        if pick == "knee":
            return None
        wanted = {
            "max-accuracy": ("maximize", ACCURACY_METRICS),
            "min-latency": ("minimize", LATENCY_METRICS),
            "min-size": ("minimize", SIZE_METRICS),
        }.get(pick)
        if wanted is None:
            raise ConfigError("--pick", "pick", f"{pick!r} is not one of {list(PICKS)}")
        direction, names = wanted
        by_name = {o.metric: o for o in self.objectives}
        for name in names:
            if name in by_name and by_name[name].direction == direction:
                return by_name[name]
        # Not an objective: still pickable from the per-trial metrics (the schema stores them).
        for name in names:
            if any(t.value(name) is not None for t in self.front_trials):
                return Objective(name, direction)
        raise ConfigError(
            "--pick", "pick", f"{pick!r} needs one of {list(names)} among the study's metrics"
        )

    def picks(self) -> dict[str, int | None]:
        """The trial number each pick selects on the feasible front (None if it cannot)."""
        out: dict[str, int | None] = {}
        for p in PICKS:
            try:
                out[p] = self.pick(p).number
            except ConfigError:
                out[p] = None
        return out

    def pick(
        self, pick: str = "knee", *, trial: int | None = None, allow_infeasible: bool = False
    ) -> TrialRecord:
        """The trial to export: `trial` by number, or a pick on the feasible front.

        Raises ConfigError when the trial does not exist or was not trained, or when it (or the
        whole study) is infeasible and `allow_infeasible` is False.
        """
        src = f"study {self.study_name}"
        if trial is not None:
            try:
                t = self.trial(trial)
            except KeyError:
                raise ConfigError(
                    src, "--trial", f"no trial {trial}; the study has {len(self.trials)} trials"
                ) from None
            if t.duplicate_of is not None:
                raise ConfigError(
                    src,
                    "--trial",
                    f"trial {trial} repeats the plan of trial {t.duplicate_of}, which holds its "
                    f"weights; export --trial {t.duplicate_of}",
                )
            if t.state != "COMPLETE" or t.plan is None:
                raise ConfigError(
                    src,
                    "--trial",
                    f"trial {trial} is {t.state.lower()}"
                    f"{' (' + t.fail_reason + ')' if t.fail_reason else ''}; "
                    "pick a COMPLETE trial",
                )
            if not t.feasible and not allow_infeasible:
                raise ConfigError(
                    src,
                    "--trial",
                    f"trial {trial} is infeasible ({_why(t)}); "
                    "pass --allow-infeasible to export it anyway",
                )
            return t
        if pick not in PICKS:
            raise ConfigError(src, "--pick", f"{pick!r} is not one of {list(PICKS)}")
        if not self.front:
            if not allow_infeasible or not self.least_violating:
                lv = ", ".join(f"#{n} ({_why(self.trial(n))})" for n in self.least_violating[:3])
                raise ConfigError(
                    src,
                    "--pick",
                    "no trial meets the budgets"
                    + (f"; least violating: {lv}" if lv else "")
                    + (
                        "; pass --allow-infeasible to export the least violating one"
                        if self.least_violating
                        else ""
                    ),
                )
            return self.trial(self.least_violating[0])
        if pick == "knee":
            assert self.knee is not None
            return self.trial(self.knee)
        obj = self.pick_metric(pick)
        assert obj is not None
        order = _knee_order(self)
        cands = [t for t in self.front_trials if t.value(obj.metric) is not None]
        if not cands:
            raise ConfigError(src, "--pick", f"no front trial has {obj.metric}")
        best = min(cands, key=lambda t: (obj.sign * (t.value(obj.metric) or 0.0), order[t.number]))
        return best

    # --- serialisation --------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The study-level facts as plain JSON values."""
        return {
            "study": self.study_name,
            "storage": self.storage,
            "task": self.task,
            "space": self.space,
            "profile": self.profile.get("name") if self.profile else None,
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "constraints": list(self.constraint_names),
            "budgets": dict(self.budgets),
            "base_metrics": dict(self.base_metrics),
            "counts": self.counts(),
            "hypervolume": self.hypervolume,
            "hypervolume_reference": {
                "scales": dict(zip(self.metric_names, self.hv_scales)),
                "point": [1.0] * len(self.objectives),
                "definition": "minimise: v/S, maximise: 1 - v/S; reference 1.0 per axis; "
                "S = base model value, else the largest trained value",
            },
            "knee": self.knee,
            "picks": self.picks(),
        }

    def summary_text(self) -> str:
        """A few lines for the terminal: counts, the front, the knee (per target if several)."""
        if self.views:
            trained = self.counts()["trained"]
            head = (
                f"{len(self.trials)} trials, {trained} trained once for {len(self.views)} targets"
            )
            return "\n".join(
                [head, *(f"== {name} ==\n{v.summary_text()}" for name, v in self.views.items())]
            )
        c = self.counts()
        lines = [
            f"{c['trials']} trials: {c['feasible']} feasible, {c['over_budget']} over budget "
            f"(not trained), {c['failed']} failed, {c['pruned']} stopped early, "
            f"repeats {c['duplicate']}; "
            f"{c['front']} on the front, hypervolume {self.hypervolume:.4f}"
        ]
        if not self.front:
            lines.append("nothing feasible; least violating:")
            for n in self.least_violating:
                t = self.trial(n)
                lines.append(f"  #{n} {_why(t)}: {t.plan_text}")
            return "\n".join(lines)
        for t in self.front_trials:
            vals = ", ".join(
                f"{o.metric} {_short(v)}" for o, v in zip(self.objectives, t.values or ())
            )
            mark = "  <- knee" if t.number == self.knee else ""
            lines.append(f"  #{t.number}: {vals} | {t.plan_text}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """pareto.json: the summary, the feasible front (metrics and plans), least violating."""
        out = self.summary()
        out["front"] = [_trial_json(t, self.objectives) for t in self.front_trials]
        out["least_violating"] = [
            _trial_json(self.trial(n), self.objectives) for n in self.least_violating
        ]
        out["hypervolume_history"] = [[n, hv] for n, hv in self.hypervolume_history]
        return jsonable(out)


def _why(t: TrialRecord) -> str:
    over = [f"{k} +{v:.0%}" for k, v in t.constraints.items() if v > 0]
    if over:
        return "over " + ", ".join(over)
    return t.status or t.state.lower()


def _short(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _trial_json(t: TrialRecord, objectives: Sequence[Objective]) -> dict[str, Any]:
    return {
        "trial": t.number,
        "status": t.status,
        "feasible": t.feasible,
        "values": dict(zip((o.metric for o in objectives), t.values or ())),
        "metrics": dict(t.metrics),
        "constraints": dict(t.constraints),
        "violation": t.violation,
        "plan_text": t.plan_text,
        "plan": t.plan,
        "skipped_layers": dict(t.skipped_layers),
        "recipe": t.recipe,
        "refined": dict(t.refined) if t.refined else None,
    }


# --- geometry ----------------------------------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Loss vector `a` dominates `b`: no worse anywhere, strictly better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_indices(losses: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated loss vectors (duplicates all kept)."""
    return [
        i
        for i, a in enumerate(losses)
        if not any(dominates(b, a) for j, b in enumerate(losses) if j != i)
    ]


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by loss vectors (minimisation) and bounded by `reference`.

    Exact sweeps for 1-3 objectives; more objectives go to Optuna's WFG (its one use here).

    Example:
        >>> hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4))
        6.0
    """
    ref = [float(r) for r in reference]
    pts = [[float(x) for x in p] for p in points]
    if any(len(p) != len(ref) for p in pts):
        raise ValueError("every point needs one value per reference axis")
    # Points not strictly inside the reference box dominate nothing within it.
    pts = [p for p in pts if all(math.isfinite(x) and x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    k = len(ref)
    if k == 1:
        return ref[0] - min(p[0] for p in pts)
    if k == 2:
        return _hv2(pts, ref)
    if k == 3:
        return _hv3(pts, ref)
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(pts), np.asarray(ref)))


def _hv2(pts: list[list[float]], ref: list[float]) -> float:
    hv, best_y = 0.0, ref[1]
    for x, y in sorted((p[0], p[1]) for p in pts):
        if y < best_y:
            # A new horizontal strip [y, best_y) covered from x to the reference.
            hv += (ref[0] - x) * (best_y - y)
            best_y = y
    return hv


def _hv3(pts: list[list[float]], ref: list[float]) -> float:
    pts = sorted(pts, key=lambda p: p[2])
    hv = 0.0
    for i, p in enumerate(pts):
        z_next = pts[i + 1][2] if i + 1 < len(pts) else ref[2]
        if z_next > p[2]:
            # Slab [z_i, z_next): dominated area of every point at or below this height.
            hv += _hv2(pts[: i + 1], ref[:2]) * (z_next - p[2])
    return hv


def knee_index(losses: Sequence[Sequence[float]]) -> int | None:
    """Index of the knee among front loss vectors (see the module docstring); None if empty."""
    order = _knee_ranking(losses)
    return order[0] if order else None


def _knee_ranking(losses: Sequence[Sequence[float]]) -> list[int]:
    if not losses:
        return []
    k = len(losses[0])
    lo = [min(p[j] for p in losses) for j in range(k)]
    hi = [max(p[j] for p in losses) for j in range(k)]
    norm = [
        [(p[j] - lo[j]) / (hi[j] - lo[j]) if hi[j] > lo[j] else 0.0 for j in range(k)]
        for p in losses
    ]
    # max of min(1 - n_j)  ==  min of max(n_j); then the smaller sum; then the earlier index.
    return sorted(range(len(losses)), key=lambda i: (max(norm[i]), sum(norm[i]), i))


def _knee_order(run: RunData) -> dict[int, int]:
    """Front trial number -> its rank in the knee ordering (used to break pick ties)."""
    trials = run.front_trials
    ranking = _knee_ranking([_loss(t.values or (), run.objectives) for t in trials])
    return {trials[i].number: r for r, i in enumerate(ranking)}


def _loss(values: Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    return [o.sign * float(v) for v, o in zip(values, objectives)]


def _normalised(
    values: Sequence[float], objectives: Sequence[Objective], scales: Sequence[float]
) -> list[float]:
    return [
        float(v) / s if o.direction == "minimize" else 1.0 - float(v) / s
        for v, o, s in zip(values, objectives, scales)
    ]


# --- plans -------------------------------------------------------------------------------------
def flatten_plan(plan: Mapping[str, Any] | None) -> dict[str, Any]:
    """`{"prune": {"ratios": {"conv1": .5}}}` -> `{"prune.ratios.conv1": .5}` (flat columns)."""
    out: dict[str, Any] = {}
    for section, body in (plan or {}).items():
        if not isinstance(body, Mapping):
            out[str(section)] = body
            continue
        for key, value in body.items():
            if isinstance(value, Mapping):
                for layer, v in value.items():
                    out[f"{section}.{key}.{layer}"] = v
            else:
                out[f"{section}.{key}"] = value
    return out


def _natural(name: str) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def layer_rows(plan: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per-layer decisions of a plan: layer, weight bits, prune ratio, kept-rank fraction.

    A global prune ratio is ranked across layers at build time, so each row shows it with
    `prune_global=True` rather than a per-layer figure the plan does not hold.
    """
    plan = plan or {}
    lowrank = plan.get("lowrank") or {}
    prune = plan.get("prune") or {}
    quant = plan.get("quantize") or {}
    ranks = lowrank.get("ranks") or {}
    ratios = prune.get("ratios") or {}
    bits = quant.get("weight_bits") or {}
    glob = prune.get("global_ratio")
    layers = sorted(set(ranks) | set(ratios) | set(bits), key=_natural)
    return [
        {
            "layer": layer,
            "bits": int(bits.get(layer, quant.get("default_weight_bits", 32))),
            "prune_ratio": float(glob if glob is not None else ratios.get(layer, 0.0)),
            "prune_global": glob is not None,
            "rank": float(ranks.get(layer, 1.0)),
        }
        for layer in layers
    ]


# --- loading -----------------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """The storage URL with any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


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
            "no study.db in this folder; for a shared storage "
            "use `report --storage URL --study NAME`",
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
    shown = redact_url(storage_url)
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
    attrs = dict(study.user_attrs)
    targets = [str(n) for n in attrs.get("targets") or ()]
    if target is not None:
        if target not in targets:
            raise ConfigError(
                study.study_name, "--target", f"{target!r} is not one of the study's {targets}"
            )
        attrs.update((attrs.get("target_views") or {}).get(target) or {})
    directions = [d.name.lower() for d in study.directions]
    raw = attrs.get("objectives")
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
    constraint_names = tuple(attrs.get("constraints") or ())
    refined = attrs.get("refined") or {}
    trials = tuple(
        _record(t, objectives, refined.get(str(t.number)), target=target)
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
        budgets=attrs.get("budgets") or {},
        profile=attrs.get("profile") or {},
        base_metrics=attrs.get("base_metrics") or {},
        task=str(attrs.get("task") or ""),
        space=str(attrs.get("space") or ""),
        experiment=attrs.get("experiment") or {},
        trials=trials,
        accuracy_floor=_accuracy_floor(attrs, objectives),
        base_hash=str(attrs.get("base_hash") or ""),
        primary_metric=str(attrs.get("primary_metric") or ""),
        base_layer_costs=_rows(attrs.get("base_layer_costs")),
    )
    views = {n: build_run(study, storage=storage, target=n) for n in targets} if not target else {}
    return replace(run, views=views, target=target)


def _rows(value: Any) -> tuple[tuple[Any, ...], ...]:
    """Stored per-kernel cost rows as tuples (anything else: none)."""
    if not isinstance(value, list):
        return ()
    return tuple(tuple(r) for r in value if isinstance(r, list))


def _accuracy_floor(attrs: Mapping[str, Any], objectives: Sequence[Objective]) -> dict[str, float]:
    """`max_accuracy_drop` as a line on the primary metric's axis: base value minus the drop."""
    drop, base = attrs.get("max_accuracy_drop"), attrs.get("base_metrics") or {}
    primary = attrs.get("primary_metric") or next(
        (o.metric for o in objectives if o.direction == "maximize"), None
    )
    if not isinstance(drop, (int, float)) or primary not in [o.metric for o in objectives]:
        return {}
    b = base.get(primary)
    return {primary: float(b) - float(drop)} if isinstance(b, (int, float)) else {}


def _record(
    t: Any,
    objectives: Sequence[Objective],
    refined: Mapping[str, Any] | None = None,
    *,
    target: str | None = None,
) -> TrialRecord:
    ua = dict(t.user_attrs)
    state = t.state.name
    status = ua.get("status")
    if state == "FAIL" and status is None:
        status = "failed"
    constraints = {str(k): float(v) for k, v in (t.constraints or {}).items()}
    if not constraints and isinstance(ua.get("constraints"), Mapping):
        constraints = {str(k): float(v) for k, v in ua["constraints"].items() if v is not None}
    values = tuple(float(v) for v in t.values) if t.values is not None else None
    if target is not None:
        ua, constraints, values = _target_view(ua, constraints, values, objectives, target)
    metrics = {k: ua.get(k) for k in METRIC_KEYS}
    # Objectives whose metric is not one of the schema's names are read from the values.
    for o, v in zip(objectives, values or ()):
        if metrics.get(o.metric) is None:
            metrics[o.metric] = ua.get(o.metric, v)
    trained = state == "COMPLETE" and status not in UNTRAINED
    feasible = (
        trained
        and values is not None
        and all(math.isfinite(v) for v in values)
        and all(v <= 0.0 for v in constraints.values())
    )
    plan = ua.get("plan")
    fail_reason = ua.get("fail_reason")
    if state == "FAIL" and not fail_reason:
        fail_reason = (t.system_attrs or {}).get("fail_reason") or "failed (no reason recorded)"
    duration = t.duration.total_seconds() if t.duration is not None else None
    return TrialRecord(
        number=int(t.number),
        state=state,
        status=status,
        values=values,
        metrics=metrics,
        constraints=constraints,
        feasible=bool(feasible),
        plan=plan if isinstance(plan, Mapping) else None,
        plan_text=str(ua.get("plan_text") or ""),
        fail_reason=fail_reason,
        skipped_layers=dict(ua.get("skipped_layers") or {}),
        params=dict(t.params),
        datetime_start=t.datetime_start.isoformat(timespec="seconds")
        if t.datetime_start
        else None,
        duration_s=duration,
        recipe=ua.get("recipe"),
        duplicate_of=ua.get("duplicate_of"),
        weights=ua.get("weights"),
        refined=refined if isinstance(refined, Mapping) else None,
        layer_costs=_rows(ua.get("layer_costs")),
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
    suffix = f"@{target}"
    view = {k: v for k, v in ua.items() if "@" not in k}
    view.update({k[: -len(suffix)]: v for k, v in ua.items() if k.endswith(suffix)})
    mine = {str(k): float(v) for k, v in (ua.get(f"constraints{suffix}") or {}).items()}
    if "accuracy_drop" in constraints:
        mine["accuracy_drop"] = float(constraints["accuracy_drop"])
    if values is not None:
        values = tuple(
            float(view[o.metric]) if view.get(o.metric) is not None else float(v)
            for o, v in zip(objectives, values)
        )
    return view, mine, values


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
    base_hash: str = "",
    primary_metric: str = "",
    base_layer_costs: Sequence[Sequence[Any]] = (),
) -> RunData:
    """Compute the front, hypervolume, knee and least-violating list from trial records.

    `accuracy_floor` adds budget lines for maximised metrics (base value - max drop).
    """
    objectives = tuple(objectives)
    trials = tuple(sorted(trials, key=lambda t: t.number))
    feasible = [t for t in trials if t.feasible]
    losses = [_loss(t.values or (), objectives) for t in feasible]
    front_ix = pareto_indices(losses)
    knee = knee_index([losses[i] for i in front_ix])
    front = sorted(
        (feasible[i] for i in front_ix),
        key=lambda t: (_loss(t.values or (), objectives)[0], t.number),
    )

    scales = tuple(_scale(o, j, base_metrics, trials) for j, o in enumerate(objectives))
    ref = [1.0] * len(objectives)
    hv_history: list[tuple[int, float]] = []
    pts: list[list[float]] = []
    hv = 0.0
    for t in trials:
        if t.feasible:
            p = _normalised(t.values or (), objectives, scales)
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
        knee=(feasible[front_ix[knee]].number if knee is not None else None),
        least_violating=least,
        budget_lines={
            **_budget_lines(objectives, constraint_names, budgets, trials),
            **(accuracy_floor or {}),
        },
        base_hash=base_hash,
        primary_metric=primary_metric
        or next((o.metric for o in objectives if o.direction == "maximize"), "accuracy"),
        base_layer_costs=tuple(tuple(r) for r in base_layer_costs),
    )


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


def _stem(name: str) -> str:
    return re.sub(r"_(ms|s|kb|mb|bytes|b)$", "", name.lower())


# Objective metrics that a budget of another name limits (MCU flash holds the weights).
_BUDGET_ALIASES = {"weight_bytes": ("flash",), "peak_activation_bytes": ("memory",)}


def _budget_lines(
    objectives: Sequence[Objective],
    constraint_names: Sequence[str],
    budgets: Mapping[str, float],
    trials: Sequence[TrialRecord],
) -> dict[str, float]:
    """Each objective's budget in its own units, derived from the recorded constraint values.

    A constraint is `value / budget - 1`, so `budget = value / (1 + c)`: this converts kB budgets
    to a bytes axis without assuming 1000 or 1024. A line is drawn only when every trial gives
    the same budget (so a wrongly matched constraint draws nothing).
    """
    out: dict[str, float] = {}
    for o in objectives:
        stems = (_stem(o.metric), *_BUDGET_ALIASES.get(o.metric, ()))
        for c in constraint_names:
            if _stem(c) not in stems:
                continue
            est = [
                v / (1.0 + t.constraints[c])
                for t in trials
                if c in t.constraints
                and (v := t.value(o.metric)) is not None
                and t.status not in ("failed",)
                and abs(1.0 + t.constraints[c]) > 1e-12
                and not (o.direction == "maximize" and t.status in UNTRAINED)
            ]
            if est and max(est) - min(est) <= 1e-6 * max(abs(x) for x in est) + 1e-12:
                out[o.metric] = float(sum(est) / len(est))
                break
        else:
            b = budgets.get(o.metric)
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                out[o.metric] = float(b)
    return out


# --- writers -----------------------------------------------------------------------------------
def trials_frame(run: RunData) -> Any:
    """A pandas DataFrame with one row per trial (failed ones included, with their reason)."""
    import pandas as pd

    front = set(run.front)
    rows = []
    for t in run.trials:
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state,
            "status": t.status,
            "feasible": t.feasible,
            "on_front": t.number in front,
            "violation": t.violation,
        }
        for j, o in enumerate(run.objectives):
            row[f"objective.{o.metric}"] = t.values[j] if t.values is not None else None
        for k, v in t.metrics.items():
            row[k] = v
        for c in run.constraint_names:
            row[f"constraint.{c}"] = t.constraints.get(c)
        for k, v in (t.refined or {}).items():
            if k != "weights":
                row[f"refined.{k}"] = v
        row["recipe"] = t.recipe
        row["duplicate_of"] = t.duplicate_of
        row["plan_text"] = t.plan_text
        row["fail_reason"] = t.fail_reason
        row["skipped_layers"] = json.dumps(dict(t.skipped_layers)) if t.skipped_layers else ""
        row["datetime_start"] = t.datetime_start
        row["duration_s"] = t.duration_s
        row.update({f"plan.{k}": v for k, v in flatten_plan(t.plan).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def write_trials_csv(run: RunData, path: str | Path) -> Path:
    return atomic_write(path, lambda p: trials_frame(run).to_csv(p, index=False))


def write_pareto_json(run: RunData, path: str | Path) -> Path:
    text = json.dumps(run.to_dict(), indent=2, allow_nan=False)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def write_outputs(run: RunData, run_dir: str | Path) -> dict[str, Path]:
    """Write `trials.csv`, `pareto.json` and `report.html` into `run_dir`; returns their paths.

    A study over several targets writes `trials.T.csv`, `pareto.T.json` and `report.T.html`
    per target T, and `report.html` as the index that switches between them.
    """
    from .report import render_report, render_target_index

    run_dir = Path(run_dir)
    if run.views:
        out: dict[str, Path] = {}
        for name, view in run.views.items():
            out[f"trials.{name}.csv"] = write_trials_csv(view, run_dir / f"trials.{name}.csv")
            out[f"pareto.{name}.json"] = write_pareto_json(view, run_dir / f"pareto.{name}.json")
            out[f"report.{name}.html"] = render_report(view, run_dir / f"report.{name}.html")
        out["report.html"] = render_target_index(run, run_dir / "report.html")
        return out
    return {
        "trials.csv": write_trials_csv(run, run_dir / "trials.csv"),
        "pareto.json": write_pareto_json(run, run_dir / "pareto.json"),
        "report.html": render_report(run, run_dir / "report.html"),
    }
