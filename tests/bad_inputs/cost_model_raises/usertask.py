"""A small user task for the bad-input cases: 8x8 single-channel inputs, 4 classes."""

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


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (120,), generator=g)
    return (
        TensorDataset(x[:80], y[:80]),
        TensorDataset(x[80:100], y[80:100]),
        TensorDataset(x[100:], y[100:]),
    )


def small_data():
    train, val, test = data()
    # 6x6 crops: the experiment says input_shape [1, 8, 8]
    return tuple(
        TensorDataset(d.tensors[0][:, :, :6, :6], d.tensors[1]) for d in (train, val, test)
    )


def broken():
    return 1 / 0
