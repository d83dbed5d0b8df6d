"""One plan through the pipeline: build (no training), recover (fine-tune), evaluate.

`build` is deterministic for a given plan and task, so `apply` can rebuild a winner's structure
and load its fine-tuned weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from spaces import CompressionPlan

from .compress import Compressed, calibrate, compress, distillation_loss
from .tasks import Task, fit

CALIBRATION_ROWS = 256  # activation ranges after recovery
BUILD_ROWS = 64  # build: graph tracing, Taylor importance, first ranges (cheap first)


def build(plan: CompressionPlan, task: Task, *, calibrate: bool = True) -> Compressed:
    """Apply the plan's operators to a copy of the base model (architecture -> ... -> quantize).

    `calibrate=False` skips the activation ranges: the cheap half of a trial only needs the
    structure and bit widths to be costed (see `calibrate_build` for the rest).
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
    )


def calibrate_build(compressed: Compressed, task: Task) -> None:
    """The activation ranges `build(..., calibrate=False)` left unset, as `build` sets them."""
    if compressed.activation_bits < 32:
        calibrate(compressed.model, task.calibration_inputs(BUILD_ROWS))


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
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Fine-tune with the plan's distillation loss against the base model (the teacher).

    `steps` (optimizer steps) replaces `epochs` when given. `on_epoch(epochs_done, model)` /
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
