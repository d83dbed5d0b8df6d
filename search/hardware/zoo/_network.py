"""`ReferenceNetwork`: one entry of the zoo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ReferenceNetwork:
    """One published network: how to build it and what it takes.

    Attributes:
        name: the zoo key (what a measurements CSV names in its `network` column).
        input_shape: one sample's shape without the batch: (C, H, W), or (640,) for the AE.
        build: returns a fresh, randomly initialised `nn.Module` in eval mode.
        family: "dense-cnn", "depthwise" or "mlp" (what dominates the MACs).
        description: the reference it rebuilds and its published size.
        backbone: entries that share one are the same layers at another resolution, input
            channel count or class count: one network for leave-one-network-out (a fit that
            saw one of them knows the others). Empty: the entry is its own.
    """

    name: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module]
    family: str
    description: str
    backbone: str = ""
