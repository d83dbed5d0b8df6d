"""The published reference networks, rebuilt in PyTorch, for calibrating and checking profiles.

The MLPerf Tiny networks follow the layer lists of `mlcommons/tiny` (2021 definitions: ResNet-8
at 16/32/64 filters); the ST model zoo rows use Keras MobileNetV1 / MobileNetV2 at the listed
width and resolution; phone and GPU rows use torchvision's builders (no weights are loaded).
The dense-prediction GPU rows (RetinaNet, FCOS, FCN, DeepLabV3, SSDLite) are torchvision's
networks as a TensorRT engine runs them: backbone, neck and heads to raw tensors, without the
image transform, anchors, box decoding or NMS (`_zoo_models.DetectorHeads` and friends);
mmseg's FCN R50-D8 (deep stem, FCNHead with the input concatenated) is assembled from
torchvision's ResNet-50 (`_zoo_models.DeepStemFCN`).
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
    DeepStemFCN,
    DetectorHeads,
    FCAutoEncoder,
    MobileNetV1,
    ResNet8,
    SegmentationLogits,
    SSDLiteMobileNetV2,
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


def _resnet_v1(name: str) -> nn.Module:
    """ResNet v1 (Caffe / Keras style) of torchvision's `name` ("resnet50", "resnet101"): the
    stride of a downsampling bottleneck on its first 1x1 conv, not on the 3x3 as in torchvision's
    v1.5 (3.9 vs 4.1 G MACs for ResNet-50, 7.6 vs 7.8 for ResNet-101). Same parameters."""
    import torchvision

    model = _torchvision(name)
    assert isinstance(model, torchvision.models.ResNet)
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        assert isinstance(block, torchvision.models.resnet.Bottleneck)
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return model


def _detector(name: str, **kwargs: object) -> nn.Module:
    """torchvision's one-stage detector `name` as its engine runs it (`DetectorHeads`); without
    weights its backbone has plain BatchNorm2d, which the cost model folds."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
    return _eval(DetectorHeads(model))


def _mlperf_retinanet(classes: int = 264) -> nn.Module:
    """MLPerf Inference's RetinaNet (mlcommons/inference, vision/classification_and_detection/
    python/models/retinanet.py `retinanet_resnext50_32x4d_fpn`): `resnet_fpn_backbone` on
    ResNeXt50-32x4d, returned layers [2, 3, 4], LastLevelP6P7(256, 256), torchvision's RetinaNet
    head (9 anchors) for OpenImages' 264 classes. BatchNorm2d for the reference's frozen BN: both
    fold into the convs."""
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = resnet_fpn_backbone(
        backbone_name="resnext50_32x4d",
        weights=None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return _eval(DetectorHeads(torchvision.models.detection.RetinaNet(backbone, classes)))


def _segmentation(name: str, classes: int) -> nn.Module:
    """torchvision's segmentation network `name`, no auxiliary head (`SegmentationLogits`)."""
    import torchvision

    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=classes, aux_loss=False
    )
    return _eval(SegmentationLogits(model))


def _mmseg_fcn_r50_d8(classes: int) -> nn.Module:
    """mmseg's fcn_r50-d8 (`DeepStemFCN`): torchvision's ResNet-50 dilated to output stride 8
    (strides (1, 2, 1, 1), dilations (1, 1, 2, 4)) under V1c's deep stem, and FCNHead."""
    import torchvision

    resnet = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, True, True]
    )
    return _eval(DeepStemFCN(resnet, classes))


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
            backbone="squeezenet1_1",
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
            partial(_resnet_v1, "resnet50"),
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
        # GPU rows (gpu_published.csv, TensorRT): torchvision classifiers, 224x224x3, 1000 classes;
        # MACs and params as torchvision's model docs (weights.meta) state them
        _entry(
            "alexnet",
            (3, 224, 224),
            partial(_torchvision, "alexnet"),
            "dense-cnn",
            "torchvision AlexNet, 224x224x3: 0.71 G MACs, 61.1 M params",
        ),
        _entry(
            "squeezenet1_0",
            (3, 224, 224),
            partial(_torchvision, "squeezenet1_0"),
            "dense-cnn",
            "torchvision SqueezeNet 1.0, 224x224x3: 0.82 G MACs, 1.25 M params",
        ),
        _entry(
            "squeezenet1_1_224",
            (3, 224, 224),
            partial(_torchvision, "squeezenet1_1"),
            "dense-cnn",
            "torchvision SqueezeNet 1.1, 224x224x3: 0.35 G MACs, 1.24 M params",
            backbone="squeezenet1_1",
        ),
        _entry(
            "resnet34",
            (3, 224, 224),
            partial(_torchvision, "resnet34"),
            "dense-cnn",
            "torchvision ResNet-34, 224x224x3: 3.66 G MACs, 21.8 M params",
        ),
        _entry(
            "resnet101",
            (3, 224, 224),
            partial(_torchvision, "resnet101"),
            "dense-cnn",
            "torchvision ResNet-101 (v1.5), 224x224x3: 7.80 G MACs, 44.5 M params",
            backbone="resnet101",
        ),
        _entry(
            "resnet101_v1",
            (3, 224, 224),
            partial(_resnet_v1, "resnet101"),
            "dense-cnn",
            "ResNet-101 v1 (Keras / Caffe style, stride on the 1x1), 224x224x3: 7.6 G MACs "
            "(He et al. 2016, Table 1), 44.5 M params",
            backbone="resnet101",
        ),
        _entry(
            "resnet152",
            (3, 224, 224),
            partial(_torchvision, "resnet152"),
            "dense-cnn",
            "torchvision ResNet-152 (v1.5), 224x224x3: 11.5 G MACs, 60.2 M params",
        ),
        _entry(
            "resnext50_32x4d",
            (3, 224, 224),
            partial(_torchvision, "resnext50_32x4d"),
            "dense-cnn",
            "torchvision ResNeXt-50 32x4d, 224x224x3: 4.23 G MACs, 25.0 M params",
        ),
        _entry(
            "densenet121",
            (3, 224, 224),
            partial(_torchvision, "densenet121"),
            "dense-cnn",
            "torchvision DenseNet-121, 224x224x3: 2.83 G MACs, 8.0 M params",
        ),
        _entry(
            "densenet169",
            (3, 224, 224),
            partial(_torchvision, "densenet169"),
            "dense-cnn",
            "torchvision DenseNet-169, 224x224x3: 3.36 G MACs, 14.1 M params",
        ),
        _entry(
            "densenet201",
            (3, 224, 224),
            partial(_torchvision, "densenet201"),
            "dense-cnn",
            "torchvision DenseNet-201, 224x224x3: 4.29 G MACs, 20.0 M params",
        ),
        # A VGG and its _bn variant are one network: TensorRT folds the batch norm
        _entry(
            "vgg11",
            (3, 224, 224),
            partial(_torchvision, "vgg11"),
            "dense-cnn",
            "torchvision VGG-11, 224x224x3: 7.61 G MACs, 132.9 M params",
            backbone="vgg11",
        ),
        _entry(
            "vgg11_bn",
            (3, 224, 224),
            partial(_torchvision, "vgg11_bn"),
            "dense-cnn",
            "torchvision VGG-11 with batch norm, 224x224x3: 7.61 G MACs, 132.9 M params",
            backbone="vgg11",
        ),
        _entry(
            "vgg13",
            (3, 224, 224),
            partial(_torchvision, "vgg13"),
            "dense-cnn",
            "torchvision VGG-13, 224x224x3: 11.3 G MACs, 133.0 M params",
            backbone="vgg13",
        ),
        _entry(
            "vgg13_bn",
            (3, 224, 224),
            partial(_torchvision, "vgg13_bn"),
            "dense-cnn",
            "torchvision VGG-13 with batch norm, 224x224x3: 11.3 G MACs, 133.0 M params",
            backbone="vgg13",
        ),
        _entry(
            "vgg16",
            (3, 224, 224),
            partial(_torchvision, "vgg16"),
            "dense-cnn",
            "torchvision VGG-16, 224x224x3: 15.5 G MACs, 138.4 M params",
            backbone="vgg16",
        ),
        _entry(
            "vgg16_bn",
            (3, 224, 224),
            partial(_torchvision, "vgg16_bn"),
            "dense-cnn",
            "torchvision VGG-16 with batch norm, 224x224x3: 15.5 G MACs, 138.4 M params",
            backbone="vgg16",
        ),
        _entry(
            "shufflenet_v2_x0_5",
            (3, 224, 224),
            partial(_torchvision, "shufflenet_v2_x0_5"),
            "depthwise",
            "torchvision ShuffleNetV2 x0.5, 224x224x3: 40 M MACs, 1.37 M params",
        ),
        _entry(
            "shufflenet_v2_x1_0",
            (3, 224, 224),
            partial(_torchvision, "shufflenet_v2_x1_0"),
            "depthwise",
            "torchvision ShuffleNetV2 x1.0, 224x224x3: 145 M MACs, 2.28 M params",
        ),
        _entry(
            "mnasnet0_5",
            (3, 224, 224),
            partial(_torchvision, "mnasnet0_5"),
            "depthwise",
            "torchvision MnasNet 0.5, 224x224x3: 104 M MACs, 2.22 M params",
        ),
        _entry(
            "mnasnet1_0",
            (3, 224, 224),
            partial(_torchvision, "mnasnet1_0"),
            "depthwise",
            "torchvision MnasNet 1.0, 224x224x3: 314 M MACs, 4.38 M params",
        ),
        _entry(
            "efficientnet_b3",
            (3, 300, 300),
            partial(_torchvision, "efficientnet_b3"),
            "depthwise",
            "torchvision EfficientNet-B3, 300x300x3: 1.83 G MACs, 12.2 M params",
        ),
        # GPU rows, dense prediction at the published input sizes: what the TensorRT engine runs
        # (backbone, neck and heads to raw tensors; no image transform, resizing, anchor
        # generation, box decoding or NMS). torchvision's detection figures are at 800x800, its
        # segmentation ones at 520x520 with the auxiliary head and 21 classes.
        _entry(
            "retinanet_resnet50_fpn",
            (3, 800, 1344),
            partial(_detector, "retinanet_resnet50_fpn"),
            "dense-cnn",
            "torchvision RetinaNet ResNet-50 FPN (COCO, 91 classes), 800x1344: 254 G MACs; "
            "torchvision: 151.5 G MACs at 800x800, 34.0 M params (BN frozen)",
        ),
        _entry(
            "fcos_resnet50_fpn",
            (3, 800, 1344),
            partial(_detector, "fcos_resnet50_fpn"),
            "dense-cnn",
            "torchvision FCOS ResNet-50 FPN (COCO, 91 classes), 800x1344: 215 G MACs; "
            "torchvision: 128.2 G MACs at 800x800, 32.3 M params (BN frozen)",
        ),
        _entry(
            "retinanet_resnext50_32x4d_fpn_800",
            (3, 800, 800),
            _mlperf_retinanet,
            "dense-cnn",
            "MLPerf Inference RetinaNet: torchvision RetinaNet on a ResNeXt50-32x4d FPN (P3-P7), "
            "OpenImages 264 classes, 800x800: 201 G MACs, 37.1 M params (none published)",
        ),
        _entry(
            "fcn_resnet50",
            (3, 512, 1024),
            partial(_segmentation, "fcn_resnet50", 19),
            "dense-cnn",
            "torchvision FCN ResNet-50 (dilated, output stride 8), 19 classes as mmseg's "
            "Cityscapes row, no aux head, 512x1024: 277 G MACs, 33.0 M params; torchvision "
            "(21 classes, aux head): 152.7 G MACs at 520x520, 35.3 M params",
        ),
        _entry(
            "fcn_r50_d8",
            (3, 512, 1024),
            partial(_mmseg_fcn_r50_d8, 19),
            "dense-cnn",
            "mmsegmentation FCN R50-D8, Cityscapes 512x1024, 19 classes "
            "(fcn_r50-d8_512x1024_40k_cityscapes; what mmdeploy's fcn_r50-d8 rows time): "
            "ResNetV1c-50 (deep stem, dilated, output stride 8) and FCNHead (512 channels, two "
            "3x3 convs, input concatenated), no aux head: 395 G MACs, 47.1 M params",
            backbone="fcn_r50_d8",
        ),
        _entry(
            "deeplabv3_resnet50",
            (3, 512, 1024),
            partial(_segmentation, "deeplabv3_resnet50", 19),
            "dense-cnn",
            "torchvision DeepLabV3 ResNet-50 (output stride 8), 19 classes (Cityscapes), no aux "
            "head, 512x1024: 327 G MACs, 39.6 M params; torchvision (21 classes, aux head): "
            "178.7 G MACs at 520x520, 42.0 M params",
        ),
        _entry(
            "ssdlite320_mobilenet_v2",
            (3, 320, 320),
            lambda: _eval(SSDLiteMobileNetV2()),
            "depthwise",
            "mmdet SSDLite MobileNetV2 (COCO, 80 classes + background, 6 anchors on 6 maps) from "
            "torchvision's pieces, 320x320: 0.75 G MACs, 4.2 M params (none published)",
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
