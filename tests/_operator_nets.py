"""The four tiny networks every compression operator is tested on, and how a test compresses one.

A CNN, an MLP, a residual + concat net with a depthwise convolution and squeeze-excite, and an
nn.TransformerEncoder classifier (tests/test_operators.py, tests/test_quantization.py).
"""

from __future__ import annotations

import torch
from torch import nn

from search.compress import Compressed, compress
from spaces import CompressionPlan


class TinyCNN(nn.Module):
    input_shape, num_classes = (1, 8, 8), 10

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyMLP(nn.Module):
    input_shape, num_classes = (20,), 5

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 5)
        )

    def forward(self, x):
        return self.net(x)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class ResConcatNet(nn.Module):
    """Residual add, channel concat, depthwise conv and squeeze-excite."""

    input_shape, num_classes = (3, 16, 16), 7

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.se = SqueezeExcite(32)
        self.branch_a = nn.Conv2d(32, 16, 1)
        self.branch_b = nn.Conv2d(32, 16, 3, padding=1)
        self.mix = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(48)
        self.head = nn.Linear(48, 7)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.se(self.pw(torch.relu(self.dw(x))))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        x = torch.relu(self.bn(self.mix(x)))
        return self.head(x.mean((2, 3)))


class TinyTransformer(nn.Module):
    input_shape, num_classes = (6, 8), 4

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(
            32, 4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


NETS = {"cnn": TinyCNN, "mlp": TinyMLP, "resconcat": ResConcatNet, "transformer": TinyTransformer}


def _setup(net: str, seed: int = 0):
    cls = NETS[net]
    torch.manual_seed(seed)
    base = cls().eval()
    x = torch.randn(24, *cls.input_shape)
    y = torch.randint(0, cls.num_classes, (24,))
    return base, x, y


def _compress(plan: CompressionPlan, base: nn.Module, x, y) -> Compressed:
    return compress(
        plan, base, input_shape=type(base).input_shape, num_classes=type(base).num_classes,
        calib_inputs=x, grad_batch=(x[:8], y[:8]),
    )  # fmt: skip


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
