"""The published reference networks, rebuilt in PyTorch, for calibrating and checking profiles.

The MLPerf Tiny networks follow the layer lists of `mlcommons/tiny` (2021 definitions: ResNet-8
at 16/32/64 filters); the ST model zoo rows use Keras MobileNetV1 / MobileNetV2 at the listed
width and resolution; phone and GPU rows use torchvision's builders (no weights are loaded).
Batch norm sits where the reference has it: the cost model folds it into the conv before it,
as every deployment runtime does.

Example::

    from search.hardware import REFERENCE_NETWORKS, reference_network

    net = reference_network("resnet8")
    shape = REFERENCE_NETWORKS["resnet8"].input_shape  # (3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn


@dataclass(frozen=True)
class ReferenceNetwork:
    """One published network: how to build it and what it takes.

    Attributes:
        name: the zoo key (what a measurements CSV names in its `network` column).
        input_shape: one sample's shape without the batch: (C, H, W), or (640,) for the AE.
        build: returns a fresh, randomly initialised `nn.Module` in eval mode.
        family: "dense-cnn", "depthwise" or "mlp" (what dominates the MACs).
        description: the reference it rebuilds and its published size.
        backbone: entries that share one are the same layers at another resolution, input
            channel count or class count: one network for leave-one-network-out (a fit that
            saw one of them knows the others). Empty: the entry is its own.
    """

    name: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module]
    family: str
    description: str
    backbone: str = ""


def _conv_bn(
    cin: int,
    cout: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] | None = None,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    if padding is None:
        padding = (kernel // 2) if isinstance(kernel, int) else (kernel[0] // 2, kernel[1] // 2)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# -- MLPerf Tiny IC: ResNet-8 --------------------------------------------------------------------


class _ResidualStack(nn.Module):
    """Two 3x3 convs with an identity add, or a strided 1x1 conv shortcut (no BN, as in Keras)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, act=None)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny image classification (CIFAR-10, 32x32x3): 16/32/64 filters."""

    def __init__(self, classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = _conv_bn(3, a, 3)
        self.stacks = nn.Sequential(
            _ResidualStack(a, a, 1), _ResidualStack(a, b, 2), _ResidualStack(b, c, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


# -- MLPerf Tiny KWS: DS-CNN ---------------------------------------------------------------------


class DSCNN(nn.Module):
    """MLPerf Tiny keyword spotting (49x10 MFCC, 12 classes): 64 channels, four DS blocks."""

    def __init__(self, classes: int = 12, width: int = 64, blocks: int = 4) -> None:
        super().__init__()
        # Keras 'same' with a 10x4 kernel at stride 2 gives 25x5; (5, 1) padding gives the same.
        self.stem = _conv_bn(1, width, (10, 4), 2, padding=(5, 1))
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(_conv_bn(width, width, 3, groups=width), _conv_bn(width, width, 1))
                for _ in range(blocks)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


# -- MobileNetV1 (MLPerf Tiny VWW and Keras MobileNet) --------------------------------------------

_MOBILENET_V1_BLOCKS = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    *((1, 512),) * 5,
    (2, 1024),
    (1, 1024),
)


class MobileNetV1(nn.Module):
    """MobileNetV1 at width `alpha`: a 3x3 stem and 13 depthwise-separable blocks.

    `head="fc"` is MLPerf Tiny VWW's (average pool, dense); `head="conv"` Keras's (global pool,
    1x1 conv classifier). `act` ReLU for VWW, ReLU6 for Keras.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        classes: int = 2,
        in_channels: int = 3,
        head: str = "fc",
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        cin = int(32 * alpha)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, 2, act=act)]
        for stride, width in _MOBILENET_V1_BLOCKS:
            cout = int(width * alpha)
            layers.append(_conv_bn(cin, cin, 3, stride, groups=cin, act=act))
            layers.append(_conv_bn(cin, cout, 1, act=act))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_kind = head
        self.classifier: nn.Module = (
            nn.Linear(cin, classes) if head == "fc" else nn.Conv2d(cin, classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        if self.head_kind == "fc":
            return self.classifier(torch.flatten(x, 1))
        return torch.flatten(self.classifier(x), 1)


# -- MLPerf Tiny AD: FC auto-encoder -------------------------------------------------------------


class FCAutoEncoder(nn.Module):
    """MLPerf Tiny anomaly detection: 640-128x4-8-128x4-640, BN + ReLU after all but the last."""

    def __init__(self, inputs: int = 640, hidden: int = 128, code: int = 8) -> None:
        super().__init__()
        widths = [inputs, hidden, hidden, hidden, hidden, code, hidden, hidden, hidden, hidden]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]
        layers.append(nn.Linear(hidden, inputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- MLPerf Inference detectors (GPU rows): the networks without box decoding and NMS ----------


class _SSDHeads(nn.Module):
    """Per feature map: a box and a class conv (what SSD adds after its backbone)."""

    def __init__(
        self, channels: tuple[int, ...], anchors: tuple[int, ...], classes: int, kernel: int
    ) -> None:
        super().__init__()
        pad, stride = (1, 3) if kernel == 3 else (0, 1)
        self.boxes = nn.ModuleList(
            nn.Conv2d(c, a * 4, kernel, stride, pad) for c, a in zip(channels, anchors)
        )
        self.scores = nn.ModuleList(
            nn.Conv2d(c, a * classes, kernel, stride, pad) for c, a in zip(channels, anchors)
        )

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for x, box, score in zip(maps, self.boxes, self.scores):
            outs.append(torch.flatten(box(x), 1))
            outs.append(torch.flatten(score(x), 1))
        return torch.cat(outs, 1)


def _extra(cin: int, mid: int, cout: int, stride: int = 2, pad: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1), nn.ReLU(), nn.Conv2d(mid, cout, 3, stride, pad), nn.ReLU()
    )


class SSDMobileNetV1(nn.Module):
    """MLPerf Inference SSD-MobileNet-v1 (300x300, COCO 91 classes; mlcommons/inference
    ssd_mobilenet_v1.py): MobileNetV1 taps at 19x19x512 and 10x10x1024, four extra blocks, 1x1
    box and class convs (3 anchors on the first map, 6 on the others)."""

    def __init__(self, classes: int = 91) -> None:
        super().__init__()
        self.features = MobileNetV1(1.0, classes, act=nn.ReLU6).features
        self.extras = nn.ModuleList(
            [_extra(1024, 256, 512), _extra(512, 128, 256), _extra(256, 128, 256)]
            + [_extra(256, 64, 128)]
        )
        self.heads = _SSDHeads((512, 1024, 512, 256, 256, 128), (3, 6, 6, 6, 6, 6), classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (22, 26):  # the pointwise outputs of blocks 11 and 13
                maps.append(x)
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return self.heads(maps)


class SSDResNet34(nn.Module):
    """MLPerf Inference SSD-ResNet34 (1200x1200, COCO 81 classes; mlcommons/inference
    ssd_r34.py): ResNet-34 through layer3 with layer3 at stride 1 (150x150x256), five extra
    blocks, 3x3 stride-3 box and class convs on maps of 50, 25, 13, 7, 3, 3."""

    def __init__(self, classes: int = 81) -> None:
        super().__init__()
        import torchvision

        r = torchvision.models.resnet34(weights=None)
        r.layer3[0].conv1.stride = (1, 1)
        r.layer3[0].downsample[0].stride = (1, 1)
        self.backbone = nn.Sequential(
            r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3
        )
        self.extras = nn.ModuleList(
            [
                _extra(256, 256, 512),
                _extra(512, 256, 512),
                _extra(512, 128, 256),
                _extra(256, 128, 256, pad=0),
                _extra(256, 128, 256, stride=1, pad=0),
            ]
        )
        self.heads = _SSDHeads((256, 512, 512, 256, 256, 256), (4, 6, 6, 6, 4, 4), classes, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        maps = [x]
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return self.heads(maps)


# -- Builders ------------------------------------------------------------------------------------


def _eval(module: nn.Module) -> nn.Module:
    return module.eval()


def _torchvision(name: str, **kwargs: object) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def _resnet50_v1() -> nn.Module:
    """ResNet-50 v1 (Caffe-style): the stride of a downsampling bottleneck on its first 1x1 conv,
    not on the 3x3 as in torchvision's v1.5 (3.9 vs 4.1 G MACs)."""
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        assert isinstance(block, torchvision.models.resnet.Bottleneck)
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return model


def _mobilenet_v2(alpha: float, classes: int) -> nn.Module:
    # torchvision's width rounding matches Keras's MobileNetV2 (_make_divisible by 8; the last
    # conv stays 1280 for alpha < 1).
    return _torchvision("mobilenet_v2", width_mult=alpha, num_classes=classes)


def _keras_mobilenet_v1(alpha: float, classes: int, in_channels: int = 3) -> nn.Module:
    return _eval(MobileNetV1(alpha, classes, in_channels=in_channels, head="conv", act=nn.ReLU6))


def _entry(
    name: str,
    shape: tuple[int, ...],
    build: Callable[[], nn.Module],
    family: str,
    description: str,
    backbone: str = "",
) -> tuple[str, ReferenceNetwork]:
    return name, ReferenceNetwork(name, shape, build, family, description, backbone)


REFERENCE_NETWORKS: dict[str, ReferenceNetwork] = dict(
    [
        # MLPerf Tiny (mlcommons/tiny, benchmark/training/<task>/, 2021 definitions)
        _entry(
            "resnet8",
            (3, 32, 32),
            lambda: _eval(ResNet8()),
            "dense-cnn",
            "MLPerf Tiny IC ResNet-8 (16/32/64), CIFAR-10: 12.50 M MACs, 77.7 k params",
        ),
        _entry(
            "ds_cnn",
            (1, 49, 10),
            lambda: _eval(DSCNN()),
            "depthwise",
            "MLPerf Tiny KWS DS-CNN (64 ch, 4 DS blocks), 49x10 MFCC: 2.66 M MACs, 22.6 k params",
        ),
        _entry(
            "mobilenet_v1_025",
            (3, 96, 96),
            lambda: _eval(MobileNetV1(0.25, 2)),
            "depthwise",
            "MLPerf Tiny VWW MobileNetV1 alpha 0.25, 96x96, 2 classes: 7.49 M MACs, 211 k params",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "fc_autoencoder",
            (640,),
            lambda: _eval(FCAutoEncoder()),
            "mlp",
            "MLPerf Tiny AD FC auto-encoder 640-128x4-8-128x4-640: 0.264 M MACs, 266 k params",
        ),
        # ST model zoo (Keras MobileNet / MobileNetV2, ReLU6, 1x1-conv classifier)
        _entry(
            "st_mobilenet_v1_025_96",
            (3, 96, 96),
            partial(_keras_mobilenet_v1, 0.25, 5),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 96x96x3, 5 classes (ST model zoo, flowers)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_025_96_gray",
            (1, 96, 96),
            partial(_keras_mobilenet_v1, 0.25, 5, 1),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 96x96x1, 5 classes (ST model zoo, flowers grayscale)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_025_224",
            (3, 224, 224),
            partial(_keras_mobilenet_v1, 0.25, 1000),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 224x224x3, 1000 classes (ST model zoo, ImageNet)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_025_224_c5",
            (3, 224, 224),
            partial(_keras_mobilenet_v1, 0.25, 5),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 224x224x3, 5 classes (ST model zoo, flowers)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_050_224",
            (3, 224, 224),
            partial(_keras_mobilenet_v1, 0.5, 1000),
            "depthwise",
            "Keras MobileNetV1 alpha 0.5, 224x224x3, 1000 classes (ST model zoo, ImageNet)",
        ),
        _entry(
            "st_mobilenet_v2_035_128",
            (3, 128, 128),
            partial(_mobilenet_v2, 0.35, 1000),
            "depthwise",
            "MobileNetV2 alpha 0.35, 128x128x3, 1000 classes (ST model zoo, ImageNet)",
            backbone="mobilenet_v2_035",
        ),
        _entry(
            "st_mobilenet_v2_035_128_c5",
            (3, 128, 128),
            partial(_mobilenet_v2, 0.35, 5),
            "depthwise",
            "MobileNetV2 alpha 0.35, 128x128x3, 5 classes (ST model zoo, flowers)",
            backbone="mobilenet_v2_035",
        ),
        _entry(
            "st_mobilenet_v2_035_224",
            (3, 224, 224),
            partial(_mobilenet_v2, 0.35, 1000),
            "depthwise",
            "MobileNetV2 alpha 0.35, 224x224x3, 1000 classes (ST model zoo, ImageNet)",
            backbone="mobilenet_v2_035",
        ),
        # Phone and GPU rows (ImageNet, 1000 classes)
        _entry(
            "mobilenet_v1",
            (3, 224, 224),
            lambda: _eval(MobileNetV1(1.0, 1000)),
            "depthwise",
            "MobileNetV1 1.0, 224x224x3, 1000 classes: 569 M MACs, 4.2 M params",
        ),
        _entry(
            "mobilenet_v2",
            (3, 224, 224),
            partial(_torchvision, "mobilenet_v2"),
            "depthwise",
            "torchvision MobileNetV2 1.0, 224x224x3: 300 M MACs, 3.5 M params",
        ),
        _entry(
            "mobilenet_v3_large",
            (3, 224, 224),
            partial(_torchvision, "mobilenet_v3_large"),
            "depthwise",
            "torchvision MobileNetV3-Large, 224x224x3: 217 M MACs, 5.5 M params",
        ),
        _entry(
            "mobilenet_v3_small",
            (3, 224, 224),
            partial(_torchvision, "mobilenet_v3_small"),
            "depthwise",
            "torchvision MobileNetV3-Small, 224x224x3: 57 M MACs, 2.5 M params",
        ),
        _entry(
            "squeezenet1_1",
            (3, 227, 227),
            partial(_torchvision, "squeezenet1_1"),
            "dense-cnn",
            "torchvision SqueezeNet 1.1, 227x227x3: 0.35 G MACs, 1.2 M params",
        ),
        _entry(
            "resnet18",
            (3, 224, 224),
            partial(_torchvision, "resnet18"),
            "dense-cnn",
            "torchvision ResNet-18, 224x224x3: 1.8 G MACs, 11.7 M params",
        ),
        _entry(
            "resnet50",
            (3, 224, 224),
            partial(_torchvision, "resnet50"),
            "dense-cnn",
            "torchvision ResNet-50 (v1.5), 224x224x3: 4.1 G MACs, 25.6 M params",
            backbone="resnet50",
        ),
        _entry(
            "resnet50_v1",
            (3, 224, 224),
            _resnet50_v1,
            "dense-cnn",
            "ResNet-50 v1 (Caffe-style, stride on the 1x1), 224x224x3: 3.9 G MACs, 25.6 M params",
            backbone="resnet50",
        ),
        _entry(
            "efficientnet_b0",
            (3, 224, 224),
            partial(_torchvision, "efficientnet_b0"),
            "depthwise",
            "torchvision EfficientNet-B0, 224x224x3: 0.39 G MACs, 5.3 M params",
        ),
        _entry(
            "ssd_mobilenet_v1",
            (3, 300, 300),
            lambda: _eval(SSDMobileNetV1()),
            "depthwise",
            "MLPerf Inference SSD-MobileNet-v1, 300x300, COCO: 1.2 G MACs (no box decoding/NMS)",
        ),
        _entry(
            "ssd_resnet34",
            (3, 1200, 1200),
            lambda: _eval(SSDResNet34()),
            "dense-cnn",
            "MLPerf Inference SSD-ResNet34, 1200x1200, COCO: 433 GFLOPs, 20 M params "
            "(no box decoding/NMS)",
        ),
        _entry(
            "inception_v3",
            (3, 299, 299),
            partial(_torchvision, "inception_v3", aux_logits=False, init_weights=False),
            "dense-cnn",
            "torchvision Inception-V3, 299x299x3: 5.7 G MACs, 23.8 M params",
        ),
    ]
)


def reference_network(name: str) -> nn.Module:
    """A fresh, randomly initialised reference network by zoo name (in eval mode).

    Raises:
        KeyError: `name` is not in REFERENCE_NETWORKS (the message lists the names).
    """
    try:
        entry = REFERENCE_NETWORKS[name]
    except KeyError:
        raise KeyError(
            f"unknown reference network {name!r}; known: {sorted(REFERENCE_NETWORKS)}"
        ) from None
    return entry.build()
