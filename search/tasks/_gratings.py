"""The hard built-in task: noisy oriented gratings, generated in code, and a filter-bank CNN.

Ten classes: five orientations 36 degrees apart x two spatial frequencies, each drawn with
a random phase, contrast, orientation jitter and colour tint, a weaker distractor grating of
another class on top, Gaussian pixel noise, and 6 % of the labels replaced at random (every
split, so no model reaches 100 %). Telling neighbouring orientations apart under that noise
takes many oriented filters and averaging over the whole image: a network that loses
channels, rank or bits loses accuracy gradually, which is what a compression benchmark needs.
Every sample is a fresh random draw, so the data itself is the augmentation.

The network is a filter bank and a small CNN: 288 3x3 filters at full resolution, pooled at
once (as texture and orientation classifiers are built), then 1x1 and 3x3 conv blocks and a
wide two-layer head (the head holds most of the weights, as in VGG). Uncompressed it needs
6.3 M MACs, 1.7 MB of float32 weights (more than an STM32F746's 1 MB of flash) and 369 kB of
float32 activations at the pool (more than its 320 kB of SRAM).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SPLIT_SIZES = (4000, 1000, 1000)  # train, val, test
NUM_CLASSES = 10
SIZE = 16  # 3 x 16 x 16 images
LABEL_NOISE = 0.06
PIXEL_NOISE = 1.5
DATA_SEED = 0  # the splits never change, so figures stay comparable
BANK = 288  # front-end filters


class GratingsCNN(nn.Module):
    """A 288-filter 3x3 bank and 2x2 max-pool, a 1x1 conv, six 3x3 blocks, a 1024-256-10 head."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        # The bank has no norm (its full-size map costs the most to train) and a bias instead.
        # ReLU before the pool: int8 TFLite needs max-pool's input and output on one scale.
        layers = [nn.Conv2d(3, BANK, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        layers += block(BANK, 32, k=1)
        for cin, cout, stride in [(32, 32, 1), (32, 48, 1), (48, 48, 2)]:
            layers += block(cin, cout, stride=stride)
        for cin, cout in [(48, 64), (64, 64), (64, 64)]:
            layers += block(cin, cout)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _draw(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    distract = (labels + torch.randint(1, NUM_CLASSES, (n,), generator=g)) % NUM_CLASSES
    yy, xx = torch.meshgrid(torch.arange(float(SIZE)), torch.arange(float(SIZE)), indexing="ij")

    def grating(cls: Tensor, amplitude: Tensor) -> Tensor:
        theta = (cls % 5).float() * math.pi / 5 + (torch.rand(n, generator=g) - 0.5) * 0.35
        freq = torch.where(cls < 5, 0.9, 1.5)
        phase = torch.rand(n, generator=g) * 2 * math.pi
        proj = torch.cos(theta)[:, None, None] * xx + torch.sin(theta)[:, None, None] * yy
        wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
        tint = 0.6 + 0.4 * torch.rand(n, 3, generator=g)
        return amplitude[:, None, None, None] * tint[:, :, None, None] * wave[:, None]

    x = grating(labels, 0.6 + 0.6 * torch.rand(n, generator=g))
    x = x + grating(distract, 0.2 + 0.3 * torch.rand(n, generator=g))
    x = x + PIXEL_NOISE * torch.randn(n, 3, SIZE, SIZE, generator=g)
    flip = torch.rand(n, generator=g) < LABEL_NOISE
    noisy = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x.float(), torch.where(flip, noisy, labels)


def gratings_splits() -> tuple[tuple[Tensor, Tensor], ...]:
    """(train, val, test): float tensors of shape (N, 3, 16, 16), standardised on train."""
    g = torch.Generator().manual_seed(DATA_SEED)
    splits = [_draw(n, g) for n in SPLIT_SIZES]
    mean, std = splits[0][0].mean(), splits[0][0].std()
    return tuple(((x - mean) / std, y) for x, y in splits)
