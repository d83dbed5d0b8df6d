"""One plan through the pipeline: build (no training), cost, prepare, train (recover), evaluate.

`build` is deterministic for a given plan and task, so `apply` can rebuild a winner's structure
and load its fine-tuned weights. `cost_of`, `prepare` and `train` are the one way to cost, to
ready and to train a compressed model: the objective, the refine stage, the export and the
benchmarks call them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from spaces import CompressionPlan

from .compress import Compressed, Structures, calibrate, compress, distillation_loss
from .config import Recovery, Schedule
from .hardware import CostReport, HardwareProfile, estimate_cost
from .tasks import Task, fit, reestimate_batchnorm

# Activation ranges after recovery, and the calibration rows of an exported int8 model.
CALIBRATION_ROWS = 256
BUILD_ROWS = 64  # build: graph tracing, Taylor importance, first ranges (cheap first)
BATCHNORM_ROWS = 512  # training rows that re-estimate a pruned network's BatchNorm statistics


def build(
    plan: CompressionPlan,
    task: Task,
    *,
    calibrate: bool = True,
    structures: Structures | None = None,
) -> Compressed:
    """Apply the plan's operators to a copy of the base model (architecture -> ... -> quantize).

    `calibrate=False` skips the activation ranges: the cheap half of a trial only needs the
    structure and bit widths to be costed (see `calibrate_build` for the rest). `structures`
    (one per task) keeps each structure built, for plans that differ only in bit widths.
    """
    x, y = task.rows(BUILD_ROWS)
    return compress(
        plan,
        task.base_model,
        input_shape=task.input_shape,
        num_classes=task.num_classes,
        calib_inputs=x,
        grad_batch=(x, y),
        calibrate=calibrate,
        structures=structures,
    )


def calibrate_build(compressed: Compressed, task: Task) -> None:
    """The activation ranges `build(..., calibrate=False)` left unset, as `build` sets them."""
    if compressed.activation_bits < 32:
        calibrate(compressed.model, task.calibration_inputs(BUILD_ROWS))


def cost_of(compressed: Compressed, task: Task, profile: HardwareProfile) -> CostReport:
    """The compressed model's predicted figures on `profile`, at its bits and densities."""
    return estimate_cost(
        compressed.model,
        task.input_shape,
        profile,
        layer_bits=compressed.layer_bits,
        activation_bits=compressed.activation_bits,
        layer_density=compressed.layer_density,
    )


def recovery_kind(plan: CompressionPlan) -> str:
    """What the plan asks of recovery (`config.RECOVERY_KINDS`): `student` (a compact network
    from scratch), `structure` (the trained network pruned, sparsified or factorised) or
    `quantize` (the trained network's own structure, at its bit widths)."""
    if plan.architecture.is_student:
        return "student"
    p, ranks = plan.prune, plan.lowrank.ranks
    if (
        p.global_ratio
        or p.sparsity
        or any(r > 0 for _, r in p.ratios)
        or any(r < 1 for _, r in ranks)
    ):
        return "structure"
    return "quantize"


def prepare(compressed: Compressed, plan: CompressionPlan, task: Task) -> None:
    """Ready a built model to run before any training: a pruned or factorised network's
    BatchNorm statistics re-estimated on training rows, then the activation ranges set on
    the calibration rows (post-training quantization). Its accuracy now is the plan's
    accuracy before recovery, and recovery starts from here."""
    if recovery_kind(plan) == "structure":
        rows = task.calibration_inputs(BATCHNORM_ROWS)
        reestimate_batchnorm(compressed.model, rows, device=task.device)
        compressed.model.cpu()
    if compressed.activation_bits < 32:
        calibrate(compressed.model, task.calibration_inputs(CALIBRATION_ROWS))


def checkpoint_at(length: int) -> int | None:
    """The recovery epoch or step after which early stop is judged, of `length` of them: half
    (None: a recovery of one has no point before its end to judge at).

    Students (from scratch) are still noisy after a third: one sat at 0.73 and ended at 0.99.
    """
    return length // 2 if length >= 2 else None


def recovery_schedule(
    recovery: Recovery, plan: CompressionPlan, *, refine: bool = False
) -> Schedule:
    """One recovery of `plan`: its budget, learning rate, warm-up and BatchNorm freeze by its
    kind (`recovery_kind`); `refine` the refine stage's."""
    return recovery.schedule(recovery_kind(plan), refine=refine)


def train(
    compressed: Compressed,
    plan: CompressionPlan,
    task: Task,
    recovery: Recovery,
    *,
    seed: int,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    refine: bool = False,
    on_progress: Callable[[int, nn.Module], None] | None = None,
    checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Recovery: `steps` or `epochs`, at `lr` (each defaults to `recovery_schedule`'s, as do
    the warm-up and the BatchNorm freeze). Starts from the model as it is: `prepare` it first.
    `on_progress(done, model)` runs after every epoch (or step) but the last;
    `checkpoint(done, model)` once, after `checkpoint_at(budget)` of them (never for a
    budget of one), and may raise to stop."""
    schedule = recovery_schedule(recovery, plan, refine=refine)
    if epochs is None and steps is None:
        epochs, steps = schedule.epochs, schedule.steps
    at = checkpoint_at(steps if steps is not None else (epochs or 0))

    def progress(done: int, model: nn.Module) -> None:
        if on_progress is not None:
            on_progress(done, model)
        if checkpoint is not None and done == at:
            checkpoint(done, model)

    hook = progress if (on_progress or checkpoint) is not None else None
    return recover(
        compressed,
        plan,
        task,
        epochs=epochs or 0,
        steps=steps,
        lr=schedule.lr if lr is None else lr,
        warmup=schedule.warmup,
        freeze_bn=schedule.freeze_bn,
        batch_size=recovery.batch_size,
        seed=seed,
        on_epoch=hook if steps is None else None,
        on_step=hook if steps is not None else None,
    )


def recover(
    compressed: Compressed,
    plan: CompressionPlan,
    task: Task,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    steps: int | None = None,
    warmup: float = 0.0,
    freeze_bn: float | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Fine-tune with the plan's distillation loss against the base model (the teacher).

    `steps` (optimizer steps) replaces `epochs` when given; `warmup` and `freeze_bn` are
    fractions of the steps (see `fit`). `on_epoch(epochs_done, model)` /
    `on_step(steps_done, model)` run after each epoch / step but the last (see `fit`). Runs
    on the task's device, mixed precision there when it is a GPU; returns the model on the
    CPU."""
    model = compressed.model
    fit(
        model,
        task.train,
        epochs=epochs,
        steps=steps,
        lr=lr,
        warmup=warmup,
        freeze_bn=freeze_bn,
        batch_size=batch_size,
        seed=seed,
        device=task.device,
        amp=task.amp,
        teacher=task.teacher() if plan.distill.enabled else None,
        loss_fn=partial(_loss, cfg=plan),
        on_epoch=on_epoch,
        on_step=on_step,
    )
    model.eval()
    if compressed.activation_bits < 32:
        # Ranges drift while weights move: re-measure them on the final weights (on the
        # device the model trained on).
        inputs = task.calibration_inputs(CALIBRATION_ROWS).to(task.device)
        calibrate(model.to(task.device), inputs)
    return model.cpu()


def _loss(student, teacher, targets, *, cfg: CompressionPlan):
    return distillation_loss(student, teacher, targets, cfg.distill)
