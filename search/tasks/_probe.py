"""One real batch through the user's model before anything trains or is written.

The experiment says what the model takes (`task.input_shape`) and gives (`task.num_classes`
scores per input); the data splits are already checked against both. This checks the model:
a batch of the train split goes through it on the CPU, and a mismatch is one error naming the
field to fix, instead of a traceback from the middle of base training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, describe
from ._data import DataSplit

PROBE_ROWS = 4  # enough for BatchNorm-style layers, small enough for a large model on a CPU


def probe_model(
    model: nn.Module,
    train: DataSplit,
    *,
    source: str,
    spec: str,
    num_classes: int | None,
) -> None:
    """Raise ConfigError unless `model` takes a train batch and returns float
    [batch, num_classes] scores (`num_classes` None: the user's `evaluate` reads the outputs,
    so only the input side is checked)."""
    x, _y, _ = next(train.batches(PROBE_ROWS, workers=0))
    shape = list(train.input_shape)
    model = model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the user's model refused the input: say which field to fix
        raise ConfigError(
            source,
            "task.input_shape",
            f"{spec} cannot take a batch of {shape} inputs ({describe(exc)}); input_shape "
            "must be one input's shape as the model's first layer takes it, and the data's too",
        ) from None
    if num_classes is None:
        return
    if not isinstance(out, Tensor):
        raise ConfigError(
            source,
            "task.model",
            f"{spec} returns {type(out).__name__}; a classifier returns a tensor of scores "
            "[batch, num_classes] (or give task.evaluate for other outputs)",
        )
    if out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] != num_classes:
        got = list(out.shape)
        hint = (
            f"; set num_classes: {got[1]} or change the model's last layer"
            if out.dim() == 2 and out.shape[0] == x.shape[0]
            else ""
        )
        raise ConfigError(
            source,
            "task.num_classes",
            f"is {num_classes}, but {spec} returns scores of shape {got} for a batch of "
            f"{x.shape[0]} (expected [{x.shape[0]}, {num_classes}]){hint}",
        )
    if not out.is_floating_point():
        raise ConfigError(
            source, "task.model", f"{spec} returns {out.dtype} scores; they must be floating point"
        )
