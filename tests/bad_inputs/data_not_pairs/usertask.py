"""A small user task for the bad-input cases: 8x8 single-channel inputs, 4 classes."""

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


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


class Records(Dataset):
    """Returns {"image": x, "label": y}: not the (x, y) pair the search reads."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.y[i])}


def bad_data():
    train, val, test = data()
    return Records(*train.tensors), val, test
