"""Compact students: MobileNetV2-style inverted residuals and ShuffleNetV2-style units.

Both take a width multiplier (channels) and a depth (blocks per stage), and adapt to the
task: the stem only strides on large inputs, a stage only halves a spatial side that is at least
4 wide (so 8x8 and 16x16 inputs keep a useful map), and the head has the task's class count.
Non-image inputs are viewed as images: (L, D) sequences as D channels x L x 1, (F,) vectors as
F channels x 1 x 1. Students are initialised from a fixed seed, so the same plan always yields
the same network (and the same importance ranking if it is then pruned).
"""

from __future__ import annotations

import torch
from torch import nn

from spaces import ArchitectureConfig

from ._registry import Context, register_handler

_SEED = 0
# (expansion, channels, stride) per MobileNetV2 stage; the first stage always has one block.
_MBV2_STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 2), (6, 64, 2), (6, 96, 1))
_MBV2_STEM, _MBV2_LAST = 32, 256
_SHUFFLE_STAGES = (116, 232, 464)
_SHUFFLE_STEM, _SHUFFLE_LAST = 24, 512


def _channels(c: float, width: float, divisor: int = 4) -> int:
    return max(divisor, int(round(c * width / divisor)) * divisor)


class ToImage(nn.Module):
    """View a (batch, *input_shape) tensor as an NCHW image."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(input_shape) not in (1, 2, 3):
            raise ValueError(f"input shape {input_shape} is not (C, H, W), (L, D) or (F,)")
        self.rank = len(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 3:
            return x
        if self.rank == 2:
            return x.transpose(1, 2).unsqueeze(-1)
        return x.unsqueeze(-1).unsqueeze(-1)


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    if len(input_shape) == 2:
        return (input_shape[1], input_shape[0], 1)
    return (input_shape[0], 1, 1)


def _conv_bn(cin: int, cout: int, k: int = 1, stride=1, groups: int = 1, act: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True) if groups == 1 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Strider:
    """Tracks the feature-map size and halves a side only while it is at least 4."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w

    def __call__(self, stride: int) -> tuple[int, int]:
        sh = 2 if stride == 2 and self.h >= 4 else 1
        sw = 2 if stride == 2 and self.w >= 4 else 1
        self.h, self.w = (self.h + sh - 1) // sh, (self.w + sw - 1) // sw
        return sh, sw


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: tuple[int, int], expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == (1, 1) and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Student(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float, depth: int):
        super().__init__()
        cin, h, w = image_shape(input_shape)
        strider = _Strider(h, w)
        stem_stride = 2 if min(h, w) >= 64 else 1
        c = _channels(_MBV2_STEM, width)
        layers: list[nn.Module] = [ToImage(input_shape), _conv_bn(cin, c, 3, strider(stem_stride))]
        for i, (t, cout, s) in enumerate(_MBV2_STAGES):
            cout = _channels(cout, width)
            for j in range(1 if i == 0 else depth):
                layers.append(InvertedResidual(c, cout, strider(s) if j == 0 else (1, 1), t))
                c = cout
        last = _channels(_MBV2_LAST, width)
        layers += [_conv_bn(c, last), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split + branch + concat + shuffle, or the two-branch downsampler."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.down = stride != (1, 1) or cin != cout
        half = cout // 2
        bin_ = cin if self.down else cin // 2
        self.branch = nn.Sequential(
            _conv_bn(bin_, half),
            _conv_bn(half, half, 3, stride, groups=half, act=False),
            _conv_bn(half, half),
        )
        if self.down:
            self.shortcut = nn.Sequential(
                _conv_bn(cin, cin, 3, stride, groups=cin, act=False), _conv_bn(cin, half)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            out = torch.cat([self.shortcut(x), self.branch(x)], 1)
        else:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch(b)], 1)
        return channel_shuffle(out)


class ShuffleNetV2Student(nn.Module):
    # The channel shuffle interleaves the two halves of every unit's output; the dependency
    # graph cannot map pruned indices through it, so those layers keep their width.
    fixed_width_reason = "the channel shuffle fixes its width"

    def fixed_width_layers(self) -> list[str]:
        """Layers whose output channels feed a channel shuffle."""
        return [
            n
            for n, m in self.named_modules()
            if isinstance(m, ShuffleUnit)
            for n in ([f"{n}.branch.2.0"] + ([f"{n}.shortcut.1.0"] if m.down else []))
        ]

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float, depth: int):
        super().__init__()
        cin, h, w = image_shape(input_shape)
        strider = _Strider(h, w)
        stem_stride = 2 if min(h, w) >= 64 else 1
        c = _channels(_SHUFFLE_STEM, width)
        layers: list[nn.Module] = [ToImage(input_shape), _conv_bn(cin, c, 3, strider(stem_stride))]
        for cout in _SHUFFLE_STAGES:
            cout = _channels(cout, width)
            for j in range(depth):
                layers.append(ShuffleUnit(c, cout, strider(2) if j == 0 else (1, 1)))
                c = cout
        last = _channels(_SHUFFLE_LAST, width)
        layers += [_conv_bn(c, last), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_FAMILIES = {"mobilenetv2": MobileNetV2Student, "shufflenetv2": ShuffleNetV2Student}


def build_student(
    arch: ArchitectureConfig, *, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """A freshly initialised student of `arch.family` for this input shape and class count.

    Example:
        >>> net = build_student(ArchitectureConfig("mobilenetv2", 0.25, 1),
        ...                     input_shape=(1, 8, 8), num_classes=10)
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if arch.family not in _FAMILIES:
        raise ValueError(f"no student for family {arch.family!r}; base keeps the user's network")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return _FAMILIES[arch.family](tuple(input_shape), int(num_classes), arch.width, arch.depth)


@register_handler(ArchitectureConfig)
def architecture(model: nn.Module, cfg: ArchitectureConfig, ctx: Context) -> nn.Module:
    """`base` keeps the network; a student family replaces it (trained later by distillation)."""
    if not cfg.is_student:
        return model
    return build_student(cfg, input_shape=ctx.input_shape, num_classes=ctx.num_classes)
