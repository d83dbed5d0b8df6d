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

from torch import nn

from ._zoo_models import (
    DSCNN,
    FCAutoEncoder,
    MobileNetV1,
    ResNet8,
    SSDMobileNetV1,
    SSDResNet34,
)


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
