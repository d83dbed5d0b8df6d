"""Training, recovery fine-tuning and evaluation, streaming a split batch by batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ._data import DataSplit

Split = tuple[Tensor, Tensor]
# teacher(x on the device, the batch's dataset rows or None) -> logits
Teacher = Callable[[Tensor, Tensor | None], Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial is recorded as failed with this reason."""


def as_split(data: DataSplit | Split, name: str = "train") -> DataSplit:
    """A (x, y) pair of tensors as an in-memory split; a split as it is."""
    if isinstance(data, DataSplit):
        return data
    x, y = data
    return DataSplit(name, TensorDataset(x, y), "<tensors>", tuple(x.shape[1:]), None)


def budget_steps(data: DataSplit, *, epochs: int, steps: int | None, batch_size: int) -> int:
    """Optimizer steps of a recovery or training run: `steps`, else epochs of the split."""
    if steps is not None:
        return steps
    if epochs <= 0:
        return 0
    if not data.sized:
        raise data.error("has no length, so it cannot be counted in epochs; give a step budget")
    return epochs * math.ceil(len(data) / batch_size)


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear warm-up over `warmup` steps, then a cosine
    decay to 0 at `total` (plain cosine annealing when `warmup` is 0)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return factor


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: it normalises with its running statistics, as
    the deployed (folded) network does, and stops updating them. `model.train()` undoes it."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, inputs: Tensor, *, batch_size: int = 64, device: str = "cpu"
) -> None:
    """Recompute every BatchNorm layer's running statistics on `inputs` ("adaptive BN",
    EagleEye, ECCV 2020): pruning or factorising a layer shifts what the next BatchNorm sees,
    and its trained statistics no longer fit. Everything else stays in eval mode; the model
    ends in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    model.to(device).eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch, not an EMA
        m.train()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size].to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def autocast_dtype(device: str) -> torch.dtype:
    """bfloat16 where the GPU has it (no loss scaling needed), else float16 with scaling."""
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def fit(
    model: nn.Module,
    data: DataSplit | Split,
    *,
    epochs: int = 0,
    lr: float,
    steps: int | None = None,
    warmup: float = 0.0,
    freeze_bn: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    amp: bool = False,
    teacher: Teacher | None = None,
    loss_fn: Callable[[Tensor, Tensor | None, Tensor], Tensor] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train `model` in place with Adam, a linear warm-up and a cosine decay, streaming `data`
    in batches.

    Args:
        data: the training split (or (x, y) tensors).
        epochs: passes over the data, unless `steps` is given.
        steps: optimizer steps (the data is read again from the start when it runs out).
        warmup: the fraction of the steps with a linear learning-rate warm-up (0: none).
        freeze_bn: the fraction of the steps after which BatchNorm statistics are frozen (0:
            from the start, None: never); see `freeze_batchnorm`.
        amp: mixed precision on a GPU (autocast; loss scaling for float16); off on the CPU.
        teacher: `teacher(x, rows) -> logits` for a batch on `device` (`rows`: the batch's
            dataset indices, or None for a stream), passed to `loss_fn`.
        loss_fn: `(student_logits, teacher_logits | None, targets) -> loss`; cross-entropy
            when not given.
        on_epoch: epoch budgets: `on_epoch(epochs_done, model)` after every epoch but the last
            (the model is back in train mode afterwards); it may raise to stop training.
        on_step: step budgets: `on_step(steps_done, model)` after every step but the last.
    """
    split = as_split(data)
    total = budget_steps(split, epochs=epochs, steps=steps, batch_size=batch_size)
    if total <= 0:
        return model
    done = epoch = 0
    freeze_bn_at = None if freeze_bn is None else round(freeze_bn * total)

    def train_mode() -> None:
        model.to(device).train()
        if freeze_bn_at is not None and done >= freeze_bn_at:
            freeze_batchnorm(model)

    train_mode()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, min(round(warmup * total), total - 1))
    )
    generator = torch.Generator().manual_seed(seed)
    loss_fn = loss_fn or (lambda s, _t, y: nn.functional.cross_entropy(s, y))
    device_type = torch.device(device).type
    use_amp = amp and device_type == "cuda"
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device_type, enabled=use_amp and dtype == torch.float16)
    while done < total:
        read = 0
        for x, y, rows in split.batches(batch_size, shuffle=True, generator=generator):
            read += 1
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type, dtype=dtype, enabled=use_amp):
                out = model(x)
                target = teacher(x, rows) if teacher is not None else None
            loss = loss_fn(out.float(), None if target is None else target.float(), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {done + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            done += 1
            if done >= total:
                break
            if on_step is not None:
                on_step(done, model)
                train_mode()
            elif done == freeze_bn_at:
                freeze_batchnorm(model)
        if read == 0:
            raise split.error("is empty")
        epoch += 1
        if steps is None and on_epoch is not None and done < total:
            on_epoch(epoch, model)
            train_mode()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 512, device: str = "cpu") -> Tensor:
    """Logits for every row of `x`, in eval mode, on the CPU (the model stays on `device`)."""
    model.to(device).eval()
    outs = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    data: DataSplit,
    num_classes: int,
    *,
    batch_size: int = 256,
    device: str = "cpu",
) -> dict[str, Any]:
    """Classification metrics over a split, streamed: only a confusion matrix is kept. The
    model is moved back to the CPU afterwards (costing and export run there)."""
    torch_model = isinstance(model, nn.Module)  # else a runtime's session, run on the CPU
    on = device if torch_model else "cpu"
    if torch_model:
        model.to(device).eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    try:
        for x, y, _ in data.batches(batch_size):
            pred = model(x.to(on, non_blocking=True)).float().argmax(dim=1).cpu()
            confusion += _confusion(pred, y, num_classes)
    finally:
        if torch_model:
            model.cpu()
    return metrics_from_confusion(confusion)


def _confusion(pred: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
    return confusion


def classification_metrics(logits: Tensor, targets: Tensor, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro recall and macro F1 (classes absent from `targets` are left out)."""
    return metrics_from_confusion(_confusion(logits.argmax(dim=1), targets, num_classes))


def metrics_from_confusion(confusion: Tensor) -> dict[str, Any]:
    """Accuracy, macro recall and macro F1 from a (true, predicted) confusion matrix."""
    true_pos = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    present = support > 0
    recall = true_pos / support.clamp(min=1)
    precision = true_pos / predicted.clamp(min=1)
    denom = precision + recall
    f1 = torch.where(
        denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(denom)
    )
    return {
        "accuracy": float(true_pos.sum() / support.sum().clamp(min=1)),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }
