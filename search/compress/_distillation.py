"""Hinton knowledge distillation: the loss that recovery training minimises."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spaces import DistillConfig


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    cfg: DistillConfig,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    Plain cross-entropy when distillation is off or no teacher logits are given. The T^2 factor
    keeps the soft term's gradient scale independent of the temperature (Hinton et al. 2015).

    Example:
        >>> s, y = torch.zeros(2, 3), torch.tensor([0, 1])
        >>> float(distillation_loss(s, s, y, DistillConfig(alpha=1.0)))
        0.0
    """
    ce = F.cross_entropy(student_logits, targets)
    if teacher_logits is None or not cfg.enabled or cfg.alpha == 0:
        return ce
    t = float(cfg.temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.detach() / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return cfg.alpha * t * t * kl + (1.0 - cfg.alpha) * ce
