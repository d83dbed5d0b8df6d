"""How the zoo's entries are built: torchvision's builders without weights, in eval mode, and the
networks assembled from torchvision's pieces or rebuilt in `_models`."""

from __future__ import annotations

from torch import nn

from ._models import DeepStemFCN, DetectorHeads, MobileNetV1, SegmentationLogits


def eval_mode(module: nn.Module) -> nn.Module:
    return module.eval()


def torchvision_model(name: str, **kwargs: object) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def resnet_v1(name: str) -> nn.Module:
    """ResNet v1 (Caffe / Keras style) of torchvision's `name` ("resnet50", "resnet101"): the
    stride of a downsampling bottleneck on its first 1x1 conv, not on the 3x3 as in torchvision's
    v1.5 (3.9 vs 4.1 G MACs for ResNet-50, 7.6 vs 7.8 for ResNet-101). Same parameters."""
    import torchvision

    model = torchvision_model(name)
    assert isinstance(model, torchvision.models.ResNet)
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        assert isinstance(block, torchvision.models.resnet.Bottleneck)
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return model


def detector(name: str, **kwargs: object) -> nn.Module:
    """torchvision's one-stage detector `name` as its engine runs it (`DetectorHeads`); without
    weights its backbone has plain BatchNorm2d, which the cost model folds."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
    return eval_mode(DetectorHeads(model))


def mlperf_retinanet(classes: int = 264) -> nn.Module:
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
    return eval_mode(DetectorHeads(torchvision.models.detection.RetinaNet(backbone, classes)))


def segmentation(name: str, classes: int) -> nn.Module:
    """torchvision's segmentation network `name`, no auxiliary head (`SegmentationLogits`)."""
    import torchvision

    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=classes, aux_loss=False
    )
    return eval_mode(SegmentationLogits(model))


def mmseg_fcn_r50_d8(classes: int) -> nn.Module:
    """mmseg's fcn_r50-d8 (`DeepStemFCN`): torchvision's ResNet-50 dilated to output stride 8
    (strides (1, 2, 1, 1), dilations (1, 1, 2, 4)) under V1c's deep stem, and FCNHead."""
    import torchvision

    resnet = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, True, True]
    )
    return eval_mode(DeepStemFCN(resnet, classes))


def mobilenet_v2(alpha: float, classes: int) -> nn.Module:
    # torchvision's width rounding matches Keras's MobileNetV2 (_make_divisible by 8; the last
    # conv stays 1280 for alpha < 1).
    return torchvision_model("mobilenet_v2", width_mult=alpha, num_classes=classes)


def keras_mobilenet_v1(alpha: float, classes: int, in_channels: int = 3) -> nn.Module:
    return eval_mode(
        MobileNetV1(alpha, classes, in_channels=in_channels, head="conv", act=nn.ReLU6)
    )
