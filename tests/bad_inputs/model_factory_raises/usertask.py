"""A user task whose model factory fails (a typo in an argument, here)."""

import torch
from torch.utils.data import TensorDataset


def model():
    raise ValueError("unknown width multiplier 0.3; expected 0.35, 0.5, 0.75 or 1.0")


def data():
    x, y = torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    return TensorDataset(x, y), TensorDataset(x, y), TensorDataset(x, y)
