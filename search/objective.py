"""The trial: suggest -> build -> cost -> (over budget? stop) -> recover -> evaluate -> report.

Cheap first, expensive last: a plan that breaks a hardware budget is recorded with its real
cost and constraint values and is never trained.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from spaces import ArchitectureConfig, CompressionPlan, DistillConfig, LayerInfo, SearchSpace

from .compress import Compressed, build_student, compressible_layers, export_onnx
from .config import Experiment
from .hardware import (
    CostReport,
    HardwareProfile,
    constraint_values,
    estimate_cost,
    with_measured_latency,
)
from .pipeline import build, recover
from .tasks import Task

ACCURACY_DROP = "accuracy_drop"
EARLY_STOP_MIN_TRIALS = 5
EARLY_STOP_MARGIN = 0.25


@dataclass
class Baseline:
    """The uncompressed model's figures: what drops and speed-ups are measured against."""

    metrics: dict[str, float]
    cost: CostReport


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
        self.weights_dir = weights_dir
        self.primary = next(
            (o.metric for o in exp.objectives if o.direction == "maximize"), "accuracy"
        )
        self._layers: dict[ArchitectureConfig, list[LayerInfo]] = {}
        base_cost = estimate_cost(task.base_model, task.input_shape, profile)
        self.baseline = Baseline(task.evaluate(task.base_model, "val"), base_cost)
        self.constraint_names = [*constraint_values(base_cost, self.budgets, profile=profile)]
        if exp.max_accuracy_drop is not None:
            self.constraint_names.append(ACCURACY_DROP)

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

    def suggest(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        plan = self.space.suggest(
            trial,
            self.layers_for,
            weight_bits=self.profile.weight_bits,
            activation_bits=self.profile.activation_bits,
        )
        if not self.exp.recovery.distillation:
            plan = plan.replace(distill=DistillConfig(enabled=False))
        return plan

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # recorded as FAILED with its reason; the search goes on
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            trial.set_user_attr("fail_trace", traceback.format_exc(limit=4)[-2000:])
            raise

    def build_and_cost(self, plan: CompressionPlan) -> tuple[Compressed, CostReport]:
        """The cheap half of a trial: operators applied, figures predicted, nothing trained."""
        compressed = build(plan, self.task)
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
    ) -> torch.nn.Module:
        """Recovery: `epochs` (default: the experiment's; students, from scratch, get their own
        epochs and learning rate)."""
        rec = self.exp.recovery
        student = plan.architecture.family != "base"
        if epochs is None:
            epochs = rec.student_epochs if student else rec.epochs
        return recover(
            compressed,
            plan,
            self.task,
            epochs=epochs,
            lr=rec.student_lr if student else rec.lr,
            batch_size=rec.batch_size,
            seed=seed,
        )

    def hopeless(self, study: optuna.Study, before: float) -> bool:
        """Early-stop rule for plans that inherit the base weights (students start at chance).

        Once 5 such plans were trained and came out feasible, a new plan whose accuracy right
        after compression is more than `EARLY_STOP_MARGIN` below the lowest pre-recovery
        accuracy any of those feasible plans started from is stopped before recovery.
        """
        starts = [
            t.user_attrs["accuracy_before_recovery"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "accuracy_before_recovery" in t.user_attrs
            and all(v <= 0 for v in t.user_attrs.get("constraints", {}).values())
        ]
        return len(starts) >= EARLY_STOP_MIN_TRIALS and before < min(starts) - EARLY_STOP_MARGIN

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        t0 = time.perf_counter()
        plan = self.suggest(trial)
        trial.set_user_attr("sample_s", round(time.perf_counter() - t0, 4))
        t0 = time.perf_counter()
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_text", plan.describe())
        compressed, cost = self.build_and_cost(plan)
        if self.exp.latency == "measured":
            trial.set_user_attr("predicted_latency_ms", cost.latency_ms)
            cost = self.measured(compressed, cost)
        constraints = constraint_values(cost, self.budgets, profile=self.profile)
        metrics: dict[str, Any] = dict(cost.metrics())
        trial.set_user_attr("skipped_layers", dict(compressed.skipped))
        trial.set_user_attr("build_s", round(time.perf_counter() - t0, 4))

        if any(v > 0 for v in constraints.values()):
            # Over budget: record the real cost, never train. Accuracy is reported as 0.0.
            status = "over_budget"
            measured = {self.primary: 0.0}
            metrics.update({k: None for k in ("accuracy", "recall", "f1")})
        else:
            t1 = time.perf_counter()
            if plan.architecture.family == "base":
                before = self.task.evaluate(compressed.model, "val")[self.primary]
                trial.set_user_attr("accuracy_before_recovery", before)
                if self.hopeless(trial.study, before):
                    for key, value in metrics.items():
                        trial.set_user_attr(key, value)
                    trial.set_user_attr("status", "stopped_early")
                    raise optuna.TrialPruned(
                        f"{self.primary} {before:.3f} right after compression"
                    )
            model = self.train(compressed, plan, seed=self.exp.seed + trial.number)
            measured = self.task.evaluate(model, "val")
            metrics.update(measured)
            trial.set_user_attr("train_s", round(time.perf_counter() - t1, 3))
            status = "trained"
            if self.weights_dir is not None:
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
