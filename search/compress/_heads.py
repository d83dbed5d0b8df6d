"""Whole-head surgery shared by the attention modules: a head is `head_dim` consecutive rows
of each input projection and the same columns of the output projection."""

from __future__ import annotations

import torch
from torch import nn


def projection_chain(layer: nn.Module) -> list[nn.Linear]:
    """A projection as a chain of Linear layers (one, or a factorized pair)."""
    if isinstance(layer, nn.Linear):
        return [layer]
    return [m for m in layer.modules() if isinstance(m, nn.Linear)]


def head_rows(keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The rows (features) of the heads `keep`, in order."""
    return (keep[:, None] * head_dim + torch.arange(head_dim, device=keep.device)).flatten()


def keep_rows(layer: nn.Linear, rows: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight[rows].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[rows].clone())
    layer.out_features = len(rows)


def keep_columns(layer: nn.Linear, cols: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight[:, cols].clone())
    layer.in_features = len(cols)


def heads_removed(heads: int, ratio: float) -> int:
    """How many of `heads` a ratio removes: the whole heads in ratio * heads, always one kept."""
    return min(heads - 1, int(ratio * heads + 1e-9))
