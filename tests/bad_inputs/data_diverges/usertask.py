"""A user task whose inputs are finite but not normalised: around 1e37 (float32 tops at 3e38)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def model():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def bad_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 1, 8, 8, generator=g) * 1e37
    y = torch.randint(0, 4, (1200,), generator=g)
    return (
        TensorDataset(x[:1000], y[:1000]),
        TensorDataset(x[1000:1100], y[1000:1100]),
        TensorDataset(x[1100:], y[1100:]),
    )
