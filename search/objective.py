"""The trial: suggest -> build -> cost -> (over budget? stop) -> recover -> evaluate -> report.

Cheap first, expensive last: a plan that breaks a hardware budget is recorded with its real
cost and constraint values and is never trained; a plan the study already evaluated is
answered from that trial; a plan that is hopeless at its recovery checkpoint stops there.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from spaces import ArchitectureConfig, CompressionPlan, DistillConfig, LayerInfo, SearchSpace

from .compress import Compressed, build_student, compressible_layers, export_onnx
from .config import Experiment, Objective
from .errors import ConfigError
from .hardware import (
    CostReport,
    HardwareProfile,
    constraint_values,
    estimate_cost,
    with_measured_latency,
)
from .pipeline import build, calibrate_build, recover
from .record import ACCURACY_METRICS
from .tasks import Task

ACCURACY_DROP = "accuracy_drop"
# Early stop: at the recovery checkpoint (half the epochs) a plan must be within this much of
# the accuracy it needs (see `TrialObjective.needed_accuracy`). Chosen from recovery curves on
# the built-in task (experiments/results/early_stop.md): no plan that ended within the floor
# was ever this far below it at the checkpoint.
EARLY_STOP_MARGIN = 0.2
TRAINED = "trained"


class StoppedEarly(Exception):
    """Raised by the recovery checkpoint: the plan cannot reach the accuracy it needs."""

    def __init__(self, accuracy: float, epoch: int, needed: float, unit: str = "epoch") -> None:
        super().__init__(f"val accuracy {accuracy:.3f} after {unit} {epoch}, needs {needed:.3f}")
        self.accuracy, self.epoch, self.needed, self.unit = accuracy, epoch, needed, unit


def checkpoint_epoch(epochs: int) -> int | None:
    """The recovery epoch after which early stop is judged: half of them (None: a recovery of
    one epoch has no point before its end to judge at).

    Students (from scratch) are still noisy after a third: one sat at 0.73 and ended at 0.99.
    """
    return epochs // 2 if epochs >= 2 else None


def _as_good(theirs: Any, mine: float, objective: Objective) -> bool:
    """Whether a recorded value is at least as good as `mine` for `objective`."""
    if theirs is None:
        return False
    if objective.direction == "minimize":
        return float(theirs) <= mine
    return float(theirs) >= mine


def plan_key(plan: CompressionPlan) -> str:
    """A stable text key of a plan: equal plans give equal keys (duplicate detection)."""
    return json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclass
class Baseline:
    """The uncompressed model's figures: what drops and speed-ups are measured against."""

    metrics: dict[str, float]
    cost: CostReport


def latency_margin(exp: Experiment, profile: HardwareProfile) -> float:
    """The relative margin the latency budget is checked with (`budget_margin`): 0, or the
    profile's measured p90 error. ConfigError when `p90` is asked of a profile without one."""
    if exp.budget_margin == "none":
        return 0.0
    p90 = getattr(profile, "latency_error_p90", None)
    if p90 is None:
        raise ConfigError(
            exp.source,
            "budget_margin",
            f"p90 needs a measured latency error, and profile {profile.name!r} has none "
            "(latency_error.p90); use `none` or a calibrated profile",
        )
    return float(p90)


def layer_costs(cost: CostReport) -> list[list[Any]]:
    """The cost model's per-kernel rows, compact for storage (the report's "why this plan"):
    [name, kind, latency_ms, weight_bytes, activation bytes read and written]."""
    return [
        [r.name, r.kind, round(r.latency_ms, 6), r.weight_bytes, r.bytes_moved - r.weight_bytes]
        for r in cost.layers
    ]


class TrialObjective:
    """Callable for `study.optimize`. Holds what every trial shares (task, space, profile)."""

    def __init__(
        self,
        exp: Experiment,
        task: Task,
        space: SearchSpace,
        profile: HardwareProfile,
        *,
        weights_dir: Path | None = None,
    ) -> None:
        self.exp, self.task, self.space, self.profile = exp, task, space, profile
        self.budgets = {**profile.budgets, **exp.budgets}
        self.latency_margin = latency_margin(exp, profile)
        self.weights_dir = weights_dir
        # Bad user input met inside a trial (a NaN deep in a streamed split): the search stops
        # and run_search raises it, instead of failing every later trial the same way.
        self.config_error: ConfigError | None = None
        self.primary = next(
            (o.metric for o in exp.objectives if o.direction == "maximize"), "accuracy"
        )
        self._layers: dict[ArchitectureConfig, list[LayerInfo]] = {}
        base_cost = estimate_cost(task.base_model, task.input_shape, profile)
        # The search evaluates on the task's fixed validation subset (all of it by default).
        self.baseline = Baseline(task.evaluate(task.base_model, "val", subset=True), base_cost)
        self._full_val_baseline: dict[str, float] | None = None
        self.constraint_names = [*constraint_values(base_cost, self.budgets, profile=profile)]
        if exp.max_accuracy_drop is not None:
            self.constraint_names.append(ACCURACY_DROP)

    def full_val_baseline(self) -> dict[str, float]:
        """The base model on the whole validation split (refine compares against this)."""
        if self._full_val_baseline is None:
            full = self.task.val_subset is None
            self._full_val_baseline = (
                self.baseline.metrics if full else self.task.evaluate(self.task.base_model, "val")
            )
        return self._full_val_baseline

    def layers_for(self, arch: ArchitectureConfig) -> Sequence[LayerInfo]:
        if arch not in self._layers:
            if arch.family == "base":
                model = self.task.base_model
            else:
                model = build_student(
                    arch, input_shape=self.task.input_shape, num_classes=self.task.num_classes
                )
            self._layers[arch] = compressible_layers(model)
        return self._layers[arch]

    @property
    def offered_bits(self) -> dict[str, tuple[int, ...]]:
        """The bit widths plans may use: the ones the target runs."""
        return {
            "weight_bits": self.profile.weight_bits,
            "activation_bits": self.profile.activation_bits,
        }

    def suggest(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        plan = self.space.suggest(trial, self.layers_for, **self.offered_bits)
        if not self.exp.recovery.distillation:
            plan = plan.replace(distill=DistillConfig(enabled=False))
        return plan

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except ConfigError as exc:
            self.config_error = exc
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", str(exc)[:500])
            trial.study.stop()
            raise
        except Exception as exc:  # recorded as FAILED with its reason; the search goes on
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            trial.set_user_attr("fail_trace", traceback.format_exc(limit=4)[-2000:])
            raise

    def build_and_cost(self, plan: CompressionPlan) -> tuple[Compressed, CostReport]:
        """The cheap half of a trial: operators applied, figures predicted, nothing trained.

        Activation ranges are left unset (costing needs none); training sets them, and
        `calibrate_build` does when the untrained model must run quantized.
        """
        compressed = build(plan, self.task, calibrate=False)
        cost = estimate_cost(
            compressed.model,
            self.task.input_shape,
            self.profile,
            layer_bits=compressed.layer_bits,
            activation_bits=compressed.activation_bits,
            layer_density=compressed.layer_density,
        )
        return compressed, cost

    def measured(self, compressed: Compressed, cost: CostReport) -> CostReport:
        """The cost with its latency measured in ONNX Runtime on this machine: the deployed
        file (int8 QDQ where the plan has 8-bit layers), same hygiene as calibration."""
        int8 = 8 in compressed.layer_bits.values()
        calibrate_build(compressed, self.task)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(
                compressed.model,
                Path(tmp) / "trial.onnx",
                input_shape=self.task.input_shape,
                int8=int8,
                calib_inputs=self.task.calibration_inputs() if int8 else None,
            )
            return with_measured_latency(
                cost, path, self.task.input_shape, threads=self.profile.threads
            )

    def train(
        self,
        compressed: Compressed,
        plan: CompressionPlan,
        *,
        seed: int,
        epochs: int | None = None,
        steps: int | None = None,
        refine: bool = False,
        checkpoint: Callable[[int, torch.nn.Module], None] | None = None,
    ) -> torch.nn.Module:
        """Recovery: `steps` or `epochs` (default: the experiment's budget, in steps when
        `recovery.steps` is set; students, from scratch, get their own budget and learning
        rate; `refine` for the refine stage's). `checkpoint(done, model)` runs once, after
        `checkpoint_epoch(budget)` epochs or steps (never for a budget of one), and may raise
        `StoppedEarly`."""
        rec = self.exp.recovery
        student = plan.architecture.family != "base"
        default_epochs, lr = rec.schedule(student, refine=refine)
        if epochs is None and steps is None:
            epochs, steps = default_epochs, rec.steps_for(student, refine=refine)
        at = checkpoint_epoch(steps if steps is not None else (epochs or 0))

        def on_progress(done: int, model: torch.nn.Module) -> None:
            if checkpoint is not None and done == at:
                checkpoint(done, model)

        return recover(
            compressed,
            plan,
            self.task,
            epochs=epochs or 0,
            steps=steps,
            lr=lr,
            batch_size=rec.batch_size,
            seed=seed,
            on_epoch=on_progress if steps is None else None,
            on_step=on_progress if steps is not None else None,
        )

    def needed_accuracy(self, study: optuna.Study, cost: CostReport) -> float | None:
        """The accuracy a plan of this cost must reach to matter (None: anything may).

        The larger of the accuracy floor (base minus `max_accuracy_drop`) and the accuracy of
        the best trained feasible plan that is at least as good on every other objective
        (a plan below it would be dominated); the second only when the primary metric is an
        objective and every other one is a cost known before training. Early stop fires at
        the checkpoint when the plan is more than `EARLY_STOP_MARGIN` below this. None, too,
        when the primary metric is not accuracy, recall or F1: the margin is in those units.
        """
        if self.primary not in ACCURACY_METRICS:
            return None
        needs = []
        if self.exp.max_accuracy_drop is not None:
            needs.append(self.baseline.metrics[self.primary] - self.exp.max_accuracy_drop)
        known = cost.metrics()
        others = [o for o in self.exp.objectives if o.metric != self.primary]
        ranked = any(o.metric == self.primary for o in self.exp.objectives)
        if ranked and all(o.metric in known for o in others):
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                ua = t.user_attrs
                if (
                    ua.get("status") == TRAINED
                    and ua.get(self.primary) is not None
                    and all(v <= 0 for v in ua.get("constraints", {}).values())
                    and all(_as_good(ua.get(o.metric), known[o.metric], o) for o in others)
                ):
                    needs.append(float(ua[self.primary]))
        return max(needs) if needs else None

    def duplicate_of(self, study: optuna.Study, key: str) -> optuna.trial.FrozenTrial | None:
        """An earlier finished trial of the same plan (its result answers this one)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("plan_key") == key and t.user_attrs.get("status") != "duplicate":
                return t
        return None

    def _answer_duplicate(
        self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial
    ) -> tuple[float, ...]:
        """Record an already-evaluated plan with the earlier trial's figures, without work."""
        trial.set_user_attr("duplicate_of", earlier.number)
        skip = {"plan", "plan_text", "plan_key", "recipe", "weights", "status"}
        skip |= {"sample_s", "build_s", "train_s", "duplicate_of"}
        for key, value in earlier.user_attrs.items():
            if key not in skip:
                trial.set_user_attr(key, value)
        for name, value in (earlier.user_attrs.get("constraints") or {}).items():
            if name in self.constraint_names:
                trial.set_constraint(name, float(value))
        trial.set_user_attr("status", "duplicate")
        assert earlier.values is not None
        return tuple(float(v) for v in earlier.values)

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        t0 = time.perf_counter()
        plan = self.suggest(trial)
        sample_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pkey = plan_key(plan)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_text", plan.describe())
        trial.set_user_attr("plan_key", pkey)
        earlier = self.duplicate_of(trial.study, pkey)
        if earlier is not None:
            return self._answer_duplicate(trial, earlier)
        compressed, cost = self.build_and_cost(plan)
        constraints, metrics = self.cost_figures(trial, compressed, cost)
        if compressed.skipped:
            trial.set_user_attr("skipped_layers", dict(compressed.skipped))
        # Written now, so a trial that fails in training still records them.
        trial.set_user_attr("sample_s", round(sample_s, 4))
        trial.set_user_attr("build_s", round(time.perf_counter() - t0, 4))

        if any(v > 0 for v in constraints.values()):
            # Over budget: record the real cost, never train. Accuracy is reported as 0.0.
            status = "over_budget"
            measured = {self.primary: 0.0}
            metrics.update({k: None for k in ("accuracy", "recall", "f1")})
        else:
            t1 = time.perf_counter()
            needed = (
                self.needed_accuracy(trial.study, cost) if self.exp.recovery.early_stop else None
            )

            student = plan.architecture.family != "base"
            unit = "epoch" if self.exp.recovery.steps_for(student) is None else "step"

            def checkpoint(done: int, model: torch.nn.Module) -> None:
                acc = self.task.evaluate(model, "val", subset=True)[self.primary]
                trial.set_user_attr("checkpoint_accuracy", acc)  # report() is single-objective
                if needed is not None and acc < needed - EARLY_STOP_MARGIN:
                    raise StoppedEarly(acc, done, needed, unit)

            try:
                model = self.train(
                    compressed,
                    plan,
                    seed=self.exp.seed + trial.number,
                    checkpoint=None if needed is None else checkpoint,
                )
                measured = self.task.evaluate(model, "val", subset=True)
                status = TRAINED
            except StoppedEarly as stop:
                # Completed with what the checkpoint saw (not trained to the end): the sampler
                # learns from it, and it is never feasible nor on the front.
                measured = {self.primary: stop.accuracy}
                trial.set_user_attr(f"stopped_at_{stop.unit}", stop.epoch)
                trial.set_user_attr("early_stop_reason", str(stop))
                status = "stopped_early"
            metrics.update(measured)
            metrics["train_s"] = round(time.perf_counter() - t1, 3)
            if status == TRAINED and self.weights_dir is not None:
                trial.set_user_attr("weights", str(self.save_weights(model, trial.number)))

        drop = self.baseline.metrics[self.primary] - measured[self.primary]
        metrics[ACCURACY_DROP] = drop
        if self.exp.max_accuracy_drop is not None:
            constraints[ACCURACY_DROP] = drop - self.exp.max_accuracy_drop
        for name in self.constraint_names:
            trial.set_constraint(name, float(constraints[name]))
        trial.set_user_attr("constraints", {k: float(v) for k, v in constraints.items()})
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("status", status)
        return self.objective_values(metrics)

    def cost_figures(
        self, trial: optuna.Trial, compressed: Compressed, cost: CostReport
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The plan's budget constraints (`value / budget - 1`) and cost metrics; records the
        per-kernel rows (and the measured or bounded latency) on the trial."""
        if self.exp.latency == "measured":
            trial.set_user_attr("predicted_latency_ms", cost.latency_ms)
            cost = self.measured(compressed, cost)
        constraints = constraint_values(
            cost, self.budgets, profile=self.profile, latency_margin=self.latency_margin
        )
        if self.latency_margin:  # the bound the budget was checked against
            trial.set_user_attr("latency_bound_ms", cost.latency_ms * (1 + self.latency_margin))
        trial.set_user_attr("layer_costs", layer_costs(cost))
        return constraints, dict(cost.metrics())

    def objective_values(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        """What Optuna optimises, in the experiment's objective order (0.0 when unmeasured)."""
        return tuple(
            float(metrics[o.metric] if metrics.get(o.metric) is not None else 0.0)
            for o in self.exp.objectives
        )

    def save_weights(self, model: torch.nn.Module, number: int, suffix: str = "") -> Path:
        assert self.weights_dir is not None
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        path = self.weights_dir / f"trial-{number}{suffix}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
        return path
