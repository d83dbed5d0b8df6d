"""RunData: the frozen review data of one study, its look-ups, picks and serialisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._format import number
from ..config import Objective
from ..errors import ConfigError
from ..files import jsonable
from ..record import ACCURACY_DROP, ACCURACY_METRICS, COUNTED, TrialRecord, TrialStatus
from ._geometry import Limit

__all__ = [
    "LATENCY_METRICS",
    "PICKS",
    "SIZE_METRICS",
    "RunData",
    "measured",
    "overshoots",
    "why_infeasible",
]

PICKS = ("knee", "max-accuracy", "min-latency", "min-size")
# Which metric a pick optimises when the study has several candidates: first match wins.
SIZE_METRICS = ("flash_bytes", "weight_bytes", "memory_bytes", "params", "size_bytes", "size_kb")
LATENCY_METRICS = ("latency_ms",)
KNEE_DEFINITION = (
    "the front plan whose largest shortfall is smallest: accuracy drop / allowed drop - 1, "
    "and log2(cost / limit) per cost, limit = the budget, else the base model's cost; plans "
    "costlier than the base model (or its uniform-int8 trial) on every cost are never the knee"
)
NO_KNEE = (
    "no knee: every front plan costs more than the base model (or its uniform-int8 trial) "
    "on every cost objective"
)


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
    # The knee's fixed scale per objective (`_geometry.shortfall`), the front in knee order
    # (the picks' tie-break), and the front plans that cost more than the base model, or its
    # uniform-int8 trial, on every cost objective: never the knee.
    knee_limits: tuple[Limit, ...] = ()
    knee_order: tuple[int, ...] = ()
    never_knee: tuple[int, ...] = ()
    # The budget-aware start's layer sensitivities (study attr `sensitivities`, search.allocate):
    # rows of floor_bits, layer, op, value, sensitivity.
    sensitivities: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        numbers = [t.number for t in self.trials]
        if len(set(numbers)) != len(numbers):
            raise ValueError("trial numbers must be unique")
        known = set(numbers)
        for n in (
            *self.front,
            *self.knee_order,
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
            "stopped_early": 0,
            "duplicate": 0,
            "running": 0,
            "front": len(self.front),
            "trainings": 0,  # what `trials` counts: trained to the end or stopped early
        }
        for t in self.trials:
            c["complete"] += t.state == "COMPLETE"
            c["trained"] += t.trained
            c["feasible"] += t.feasible
            c["over_budget"] += t.status == TrialStatus.OVER_BUDGET
            c["failed"] += t.state == "FAIL" or t.status == TrialStatus.FAILED
            c["stopped_early"] += t.state == "PRUNED" or t.status == TrialStatus.STOPPED_EARLY
            c["duplicate"] += t.status == TrialStatus.DUPLICATE
            c["running"] += t.state in ("RUNNING", "WAITING")
            c["trainings"] += t.state == "COMPLETE" and t.status in COUNTED
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
                    f"trial {trial} is infeasible ({why_infeasible(t)}); "
                    "pass --allow-infeasible to export it anyway",
                )
            return t
        if pick not in PICKS:
            raise ConfigError(src, "--pick", f"{pick!r} is not one of {list(PICKS)}")
        if not self.front:
            if not allow_infeasible or not self.least_violating:
                lv = ", ".join(
                    f"#{n} ({why_infeasible(self.trial(n))})" for n in self.least_violating[:3]
                )
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
            if self.knee is None:
                raise ConfigError(src, "--pick", NO_KNEE + "; export one with --trial N")
            return self.trial(self.knee)
        obj = self.pick_metric(pick)
        assert obj is not None
        order = {n: r for r, n in enumerate(self.knee_order)}
        cands = [t for t in self.front_trials if t.value(obj.metric) is not None]
        if not cands:
            raise ConfigError(src, "--pick", f"no front trial has {obj.metric}")
        best = min(
            cands,
            key=lambda t: (
                obj.sign * (t.value(obj.metric) or 0.0),
                order.get(t.number, len(order)),
            ),
        )
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
            "knee_scale": {
                "limits": {
                    o.metric: _limit_json(o, lim)
                    for o, lim in zip(self.objectives, self.knee_limits)
                },
                "never_knee": list(self.never_knee),
                "definition": KNEE_DEFINITION,
            },
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
            f"{c['trainings']} trainings from {c['trials']} proposals: {c['feasible']} feasible, "
            f"{c['over_budget']} over budget (not trained), {c['failed']} failed, "
            f"{c['stopped_early']} stopped early, repeats {c['duplicate']}; "
            f"{c['front']} on the front, hypervolume {self.hypervolume:.4f}"
        ]
        if not self.front:
            lines.append("nothing feasible; least violating:")
            for n in self.least_violating:
                t = self.trial(n)
                lines.append(f"  #{n} {why_infeasible(t)}: {t.plan_text}")
            return "\n".join(lines)
        for t in self.front_trials:
            vals = ", ".join(
                f"{o.metric} {number(v)}" for o, v in zip(self.objectives, t.values or ())
            )
            mark = "  <- knee" if t.number == self.knee else ""
            lines.append(f"  #{t.number}: {vals} | {t.plan_text}{mark}")
        if self.knee is None:
            lines.append(NO_KNEE)
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


def _over_amount(v: float) -> str:
    """100 * v with two significant figures below 10: never rounded to a misleading 0."""
    x = v * 100
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def measured(t: TrialRecord, constraint: str) -> bool:
    """Whether a constraint was measured: the accuracy drop of a never-trained plan was not
    (its stored value stands for an accuracy of 0)."""
    return t.trained or constraint != ACCURACY_DROP


def overshoots(t: TrialRecord) -> list[str]:
    """`latency_ms +57%`, `accuracy_drop +0.06 points`: the measured constraints a trial breaks
    (costs relative to their budget, the accuracy drop in points beyond the allowed drop)."""
    return [
        f"{k} +{_over_amount(v)}{' points' if k == ACCURACY_DROP else '%'}"
        for k, v in t.constraints.items()
        if v > 0 and measured(t, k)
    ]


def why_infeasible(t: TrialRecord) -> str:
    """Why a trial is off the front, in a few words: the budgets it overshoots, else its status."""
    over = overshoots(t)
    if over:
        return "over " + ", ".join(over)
    return t.status or t.state.lower()


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


def _limit_json(o: Objective, lim: Limit) -> dict[str, Any]:
    out: dict[str, Any] = {"reference": lim.reference, "from": lim.basis}
    if o.direction == "maximize":  # the limit is the reference less this drop
        out["allowed_drop"] = lim.allowance
    return out
