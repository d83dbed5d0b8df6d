"""The trial: suggest -> build -> cost -> (over budget? stop) -> prepare -> evaluate ->
(recover -> evaluate) -> report.

Cheap first, expensive last: a plan that breaks a hardware budget is recorded with its real
cost and constraint values and is never trained; a plan the study already evaluated is
answered from that trial; a plan already as good as the base model before recovery is not
trained; a plan that is hopeless at its recovery checkpoint stops there.
"""

from __future__ import annotations

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

from spaces import (
    BASE_FAMILY,
    ArchitectureConfig,
    CompressionPlan,
    DistillConfig,
    LayerInfo,
    SearchSpace,
)

from .compress import (
    Compressed,
    Structures,
    build_student,
    compressible_layers,
    export_onnx,
)
from .config import Experiment, Objective
from .errors import ConfigError
from .files import atomic_write
from .hardware import (
    CostReport,
    HardwareProfile,
    constraint_values,
    estimate_cost,
    with_measured_latency,
)
from .pipeline import (
    CALIBRATION_ROWS,
    build,
    calibrate_build,
    cost_of,
    prepare,
    recovery_kind,
    recovery_schedule,
    train,
)
from .record import (
    ACCURACY_DROP,
    ACCURACY_METRICS,
    TrialAttr,
    TrialStatus,
    metric_of,
    plan_key,
    plan_key_of,
    primary_metric,
    status_of,
    trial_feasible,
    within_limits,
    write_attrs,
    write_duplicate,
    write_failure,
    write_outcome,
    write_plan,
)
from .tasks import Task

# Early stop: at the recovery checkpoint (half the epochs) a plan must be within this much of
# the accuracy it needs (see `TrialObjective.needed_accuracy`). Chosen from recovery curves on
# the built-in task (experiments/results/early_stop.md): no plan that ended within the floor
# was ever this far below it at the checkpoint.
EARLY_STOP_MARGIN = 0.2


class StoppedEarly(Exception):
    """Raised by the recovery checkpoint: the plan cannot reach the accuracy it needs."""

    def __init__(self, accuracy: float, epoch: int, needed: float, unit: str = "epoch") -> None:
        super().__init__(f"val accuracy {accuracy:.3f} after {unit} {epoch}, needs {needed:.3f}")
        self.accuracy, self.epoch, self.needed, self.unit = accuracy, epoch, needed, unit


def _as_good(theirs: Any, mine: float, objective: Objective) -> bool:
    """Whether a recorded value is at least as good as `mine` for `objective`."""
    if theirs is None:
        return False
    if objective.direction == "minimize":
        return float(theirs) <= mine
    return float(theirs) >= mine


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
        self.exp, self.task, self.profile = exp, task, profile
        self.space = space if exp.larger_students else self.smaller_students(space)
        self.budgets = {**profile.budgets, **exp.budgets}
        self.latency_margin = latency_margin(exp, profile)
        self.weights_dir = weights_dir
        # Bad user input met inside a trial (a NaN deep in a streamed split): the search stops
        # and run_search raises it, instead of failing every later trial the same way.
        self.config_error: ConfigError | None = None
        self.primary = primary_metric(exp.objectives)
        self._layers: dict[ArchitectureConfig, list[LayerInfo]] = {}
        self._structures = Structures()  # builds before quantization, shared by the trials
        base_cost = estimate_cost(task.base_model, task.input_shape, profile)
        # The search evaluates on the task's fixed validation subset (all of it by default).
        self.baseline = Baseline(task.evaluate(task.base_model, "val", subset=True), base_cost)
        self._full_val_baseline: dict[str, float] | None = None
        self.constraint_names = [*constraint_values(base_cost, self.budgets, profile=profile)]
        if exp.max_accuracy_drop is not None:
            self.constraint_names.append(ACCURACY_DROP)

    def smaller_students(self, space: SearchSpace) -> SearchSpace:
        """`space` offering each student family only the sizes (width, depth) with fewer
        weights than the user's network; a family with none left is not offered. A compressor
        that proposes a larger network than the one it was given is of no use unless asked
        (`larger_students: true`)."""
        offered = space.dim("architecture", "family", BASE_FAMILY).values()
        families = [f for f in offered if f != BASE_FAMILY]
        if not families:
            return space
        limit = sum(p.numel() for p in self.task.base_model.parameters())

        def weights(family: str, width: float, depth: int) -> int:
            net = build_student(
                ArchitectureConfig(family, width, depth),
                input_shape=self.task.input_shape,
                num_classes=self.task.num_classes,
            )
            return sum(p.numel() for p in net.parameters())

        sizes = {f: [wd for wd in space.sizes(f) if weights(f, *wd) <= limit] for f in families}
        if not any(sizes.values()) and BASE_FAMILY not in offered:
            raise ConfigError(
                self.exp.source,
                "space",
                f"every student of space {space.name!r} has more weights than your network "
                f"({limit:,}); set `larger_students: true` to search them anyway",
            )
        return space.with_student_sizes(sizes)

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
            if not arch.is_student:
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
            write_failure(trial, str(exc))
            trial.study.stop()
            raise
        except Exception as exc:  # recorded as FAILED with its reason; the search goes on
            write_failure(trial, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=4))
            raise

    def build_and_cost(self, plan: CompressionPlan) -> tuple[Compressed, CostReport]:
        """The cheap half of a trial: operators applied, figures predicted, nothing trained.

        Activation ranges are left unset (costing needs none); training sets them, and
        `calibrate_build` does when the untrained model must run quantized.
        """
        compressed = build(plan, self.task, calibrate=False, structures=self._structures)
        return compressed, cost_of(compressed, self.task, self.profile)

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
                calib_inputs=self.task.calibration_inputs(CALIBRATION_ROWS) if int8 else None,
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
        """Recovery with the experiment's budget (`pipeline.train`); `checkpoint` may raise
        `StoppedEarly`."""
        return train(
            compressed,
            plan,
            self.task,
            self.exp.recovery,
            seed=seed,
            epochs=epochs,
            steps=steps,
            refine=refine,
            checkpoint=checkpoint,
        )

    def recovery_needless(self, plan: CompressionPlan, before: dict[str, float]) -> bool:
        """Whether a plan of the trained network is, before recovery, already within
        `recovery.skip_within` of the base model's primary metric (never a student, which
        starts from scratch): recovery could win back no more than that."""
        within = self.exp.recovery.skip_within
        if within is None or recovery_kind(plan) == "student":
            return False
        return before[self.primary] >= self.baseline.metrics[self.primary] - within

    def accuracy_floor(self) -> float | None:
        """The base model's primary metric minus `max_accuracy_drop` (None: no floor)."""
        if self.exp.max_accuracy_drop is None:
            return None
        return self.baseline.metrics[self.primary] - self.exp.max_accuracy_drop

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
        floor = self.accuracy_floor()
        needs = [] if floor is None else [floor]
        known = cost.metrics()
        others = [o for o in self.exp.objectives if o.metric != self.primary]
        ranked = any(o.metric == self.primary for o in self.exp.objectives)
        if ranked and all(o.metric in known for o in others):
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                mine = metric_of(t, self.primary)
                if (
                    status_of(t) is TrialStatus.TRAINED
                    and trial_feasible(t)
                    and mine is not None
                    and all(_as_good(metric_of(t, o.metric), known[o.metric], o) for o in others)
                ):
                    needs.append(mine)
        return max(needs) if needs else None

    def duplicate_of(self, study: optuna.Study, key: str) -> optuna.trial.FrozenTrial | None:
        """An earlier finished trial of the same plan (its result answers this one)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if plan_key_of(t) == key and status_of(t) is not TrialStatus.DUPLICATE:
                return t
        return None

    def _answer_duplicate(
        self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial
    ) -> tuple[float, ...]:
        """Record an already-evaluated plan with the earlier trial's figures, without work."""
        write_duplicate(trial, earlier, self.constraint_names)
        assert earlier.values is not None
        return tuple(float(v) for v in earlier.values)

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        t0 = time.perf_counter()
        plan = self.suggest(trial)
        sample_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pkey = plan_key(plan.to_dict())
        write_plan(trial, plan.to_dict(), plan.describe(), pkey)
        earlier = self.duplicate_of(trial.study, pkey)
        if earlier is not None:
            return self._answer_duplicate(trial, earlier)
        compressed, cost = self.build_and_cost(plan)
        constraints, metrics = self.cost_figures(trial, compressed, cost)
        if compressed.skipped:
            write_attrs(trial, {TrialAttr.SKIPPED_LAYERS: dict(compressed.skipped)})
        # Written now, so a trial that fails in training still records them.
        build_s = time.perf_counter() - t0
        write_attrs(
            trial, {TrialAttr.SAMPLE_S: round(sample_s, 4), TrialAttr.BUILD_S: round(build_s, 4)}
        )

        if not within_limits(constraints):
            # Over budget: record the real cost, never train. Accuracy is not measured.
            status = TrialStatus.OVER_BUDGET
            measured: dict[str, float] = {}
            metrics.update({k: None for k in ("accuracy", "recall", "f1")})
        else:
            t1 = time.perf_counter()
            # Students are never stopped early: from scratch, halfway through a short recovery
            # says little (experiments/results/early_stop_gratings.md).
            judged = self.exp.recovery.early_stop and recovery_kind(plan) != "student"
            needed = self.needed_accuracy(trial.study, cost) if judged else None

            unit = recovery_schedule(self.exp.recovery, plan).unit

            def checkpoint(done: int, model: torch.nn.Module) -> None:
                acc = self.task.evaluate(model, "val", subset=True)[self.primary]
                # report() is single-objective
                write_attrs(trial, {TrialAttr.CHECKPOINT_ACCURACY: acc})
                if needed is not None and acc < needed - EARLY_STOP_MARGIN:
                    raise StoppedEarly(acc, done, needed, unit)

            try:
                prepare(compressed, plan, self.task)
                model = compressed.model
                measured = self.task.evaluate(model, "val", subset=True)
                metrics["accuracy_before_recovery"] = measured[self.primary]
                metrics["recovery_skipped"] = self.recovery_needless(plan, measured)
                if not metrics["recovery_skipped"]:
                    model = self.train(
                        compressed,
                        plan,
                        seed=self.exp.seed + trial.number,
                        checkpoint=None if needed is None else checkpoint,
                    )
                    measured = self.task.evaluate(model, "val", subset=True)
                status = TrialStatus.TRAINED
            except StoppedEarly as stop:
                # Completed with what the checkpoint saw (not trained to the end): the sampler
                # learns from it, and it is never feasible nor on the front.
                measured = {self.primary: stop.accuracy}
                steps = stop.unit == "step"
                at = TrialAttr.STOPPED_AT_STEP if steps else TrialAttr.STOPPED_AT_EPOCH
                write_attrs(trial, {at: stop.epoch, TrialAttr.EARLY_STOP_REASON: str(stop)})
                status = TrialStatus.STOPPED_EARLY
            metrics.update(measured)
            metrics[TrialAttr.TRAIN_S] = round(time.perf_counter() - t1, 3)
            if status is TrialStatus.TRAINED and self.weights_dir is not None:
                path = self.save_weights(model, trial.number)
                write_attrs(trial, {TrialAttr.WEIGHTS: str(path)})

        if self.primary in measured:
            drop = self.baseline.metrics[self.primary] - measured[self.primary]
            metrics[ACCURACY_DROP] = drop
            if self.exp.max_accuracy_drop is not None:
                constraints[ACCURACY_DROP] = drop - self.exp.max_accuracy_drop
        else:
            # Unmeasured, so no violation is invented: the sampler ranks an over-budget plan by
            # its budget violations alone. (Constraint-aware samplers rank infeasible trials by
            # their summed violation and never read their objective values, so the accuracy
            # Optuna must be given for it, 0.0, steers nothing.)
            metrics[ACCURACY_DROP] = None
            if self.exp.max_accuracy_drop is not None:
                constraints[ACCURACY_DROP] = 0.0
        write_outcome(
            trial,
            status,
            metrics=metrics,
            constraints=constraints,
            constraint_names=self.constraint_names,
        )
        return self.objective_values(metrics)

    def cost_figures(
        self, trial: optuna.Trial, compressed: Compressed, cost: CostReport
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The plan's budget constraints (`value / budget - 1`) and cost metrics; records the
        per-kernel rows (and the measured or bounded latency) on the trial."""
        if self.exp.latency == "measured":
            write_attrs(trial, {TrialAttr.PREDICTED_LATENCY_MS: cost.latency_ms})
            cost = self.measured(compressed, cost)
        constraints = constraint_values(
            cost, self.budgets, profile=self.profile, latency_margin=self.latency_margin
        )
        if self.latency_margin:  # the bound the budget was checked against
            bound = cost.latency_ms * (1 + self.latency_margin)
            write_attrs(trial, {TrialAttr.LATENCY_BOUND_MS: bound})
        write_attrs(trial, {TrialAttr.LAYER_COSTS: layer_costs(cost)})
        return constraints, dict(cost.metrics())

    def objective_values(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        """What Optuna optimises, in the experiment's objective order (0.0 when unmeasured)."""
        return tuple(
            float(metrics[o.metric] if metrics.get(o.metric) is not None else 0.0)
            for o in self.exp.objectives
        )

    def save_weights(self, model: torch.nn.Module, number: int, suffix: str = "") -> Path:
        assert self.weights_dir is not None
        path = self.weights_dir / f"trial-{number}{suffix}.pt"
        return atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
