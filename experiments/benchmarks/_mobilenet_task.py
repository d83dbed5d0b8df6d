"""A user task as a user would bring it: torchvision's MobileNetV2 (width 0.35) on 96x96 RGB.

The images are sklearn's 8x8 digits (the same 60/20/20 split as the built-in task) upscaled to
the input size of a visual-wake-words model; nothing is downloaded. An experiment names these
factories as `task: {model: _mobilenet_task:make_model, data: _mobilenet_task:load_data}`.
"""

from __future__ import annotations

import torch
import torchvision
from torch.nn import functional
from torch.utils.data import TensorDataset

from search.tasks import digits_splits

SIZE = 96
TASK = {
    "model": "_mobilenet_task:make_model",
    "data": "_mobilenet_task:load_data",
    "input_shape": [3, SIZE, SIZE],
    "num_classes": 10,
    "train_epochs": 15,
}


def make_model() -> torch.nn.Module:
    return torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10)


def load_data() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train, val, test): digits upscaled (bilinear) to 3 x 96 x 96, in memory."""

    def upscale(x: torch.Tensor) -> torch.Tensor:
        big = functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return big.expand(-1, 3, -1, -1).contiguous()

    return tuple(TensorDataset(upscale(x), y) for x, y in digits_splits())  # type: ignore[return-value]
