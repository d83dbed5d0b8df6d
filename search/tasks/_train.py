"""Training, recovery fine-tuning and evaluation on in-memory tensors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Split = tuple[Tensor, Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial is recorded as failed with this reason."""


def fit(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    teacher_logits: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor | None, Tensor], Tensor] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train `model` in place with Adam and a cosine schedule.

    Args:
        data: (x, y) training tensors.
        teacher_logits: the teacher's logits for every row of `data`, in the same order
            (computed once per run), passed to `loss_fn` batch by batch.
        loss_fn: `(student_logits, teacher_logits | None, targets) -> loss`; cross-entropy
            when not given.
        on_epoch: called as `on_epoch(epochs_done, model)` after every epoch but the last (the
            model is back in train mode afterwards); it may raise to stop training early.
    """
    x_all, y_all = data
    if epochs <= 0:
        return model
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(x_all) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    loss_fn = loss_fn or (lambda s, _t, y: nn.functional.cross_entropy(s, y))
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            teacher = teacher_logits[idx].to(device) if teacher_logits is not None else None
            loss = loss_fn(model(x), teacher, y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None and epoch + 1 < epochs:
            on_epoch(epoch + 1, model)
            model.to(device).train()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 512, device: str = "cpu") -> Tensor:
    """Logits for every row of `x`, in eval mode, on the CPU."""
    model.to(device).eval()
    outs = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs)


def classification_metrics(logits: Tensor, targets: Tensor, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro recall and macro F1 (classes absent from `targets` are left out)."""
    pred = logits.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
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
        "accuracy": float((pred == targets).double().mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }
