"""The built-in task: sklearn's real 8x8 handwritten digits and a small reference CNN."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SPLIT_SEED = 0  # the train/val/test split never changes, so figures stay comparable


class DigitsCNN(nn.Module):
    """Three 3x3 conv blocks and a linear classifier: ~94 k parameters, ~2.4 M MACs."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def digits_splits() -> tuple[tuple[Tensor, Tensor], ...]:
    """(train, val, test) as float tensors of shape (N, 1, 8, 8), standardised; 60/20/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    train_idx, rest = train_test_split(idx, test_size=0.4, random_state=SPLIT_SEED, stratify=y)
    val_idx, test_idx = train_test_split(
        rest, test_size=0.5, random_state=SPLIT_SEED, stratify=y[rest]
    )
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return tuple((x[i], y[i]) for i in (train_idx, val_idx, test_idx))
