"""The reference networks that are not in torchvision, rebuilt from their published layer lists.

MLPerf Tiny (`mlcommons/tiny`, 2021 definitions), Keras MobileNetV1 as the ST model zoo uses it,
the MLPerf Inference SSD detectors without box decoding and NMS, and the wrappers that turn
torchvision's detection and segmentation networks into what a TensorRT engine runs (raw head
tensors out), and mmseg's FCN R50-D8 from torchvision's ResNet. `_registry` lists them.
"""

from __future__ import annotations

import torch
from torch import nn


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


# -- Dense prediction (GPU rows): torchvision's networks as a TensorRT engine runs them ---------


class DetectorHeads(nn.Module):
    """A torchvision one-stage detector (RetinaNet, FCOS) without its image transform, anchor
    generation, box decoding and NMS: the backbone with its FPN and the head, which return the
    raw per-anchor tensors (class logits, box regression, FCOS's centerness) in the head's order.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        backbone, head = detector.backbone, detector.head
        assert isinstance(backbone, nn.Module) and isinstance(head, nn.Module)
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.head(list(self.backbone(x).values())).values())


class SegmentationLogits(nn.Module):
    """A torchvision segmentation network (FCN, DeepLabV3) returning its per-pixel logits at the
    input's size (the final bilinear upsample included, as mmseg's deployed engines have it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class DeepStemFCN(nn.Module):
    """mmseg's FCN on a ResNetV1c (fcn_r50-d8: `ResNetV1c`, `FCNHead`) from a torchvision ResNet
    built dilated (`replace_stride_with_dilation=[False, True, True]`: output stride 8, the first
    block of a dilated stage at half its dilation, as mmseg's `contract_dilation`), returning the
    per-pixel logits at the input's size (the bilinear resize mmdeploy's engine includes).

    The 7x7 stem swapped for V1c's deep stem (3x3 convs 3->32 stride 2, 32->32, 32->64, BN and
    ReLU each, then the 3x3 stride-2 max pool); torchvision's bottlenecks (stride on the 3x3) are
    mmseg's `style='pytorch'`. FCNHead(channels=512, num_convs=2, concat_input=True): two 3x3
    conv-BN-ReLU, the stage-4 input concatenated in front, a 3x3 conv-BN-ReLU back to 512, dropout
    and a 1x1 classifier with bias. No auxiliary head (training only).
    """

    def __init__(self, resnet: nn.Module, classes: int = 19, channels: int = 512) -> None:
        super().__init__()
        stages = [getattr(resnet, f"layer{i}") for i in (1, 2, 3, 4)]
        assert all(isinstance(s, nn.Module) for s in stages)
        width = stages[-1][-1].conv3.out_channels
        self.stem = nn.Sequential(
            _conv_bn(3, 32, 3, 2), _conv_bn(32, 32, 3), _conv_bn(32, 64, 3), nn.MaxPool2d(3, 2, 1)
        )
        self.stages = nn.Sequential(*stages)
        self.convs = nn.Sequential(_conv_bn(width, channels, 3), _conv_bn(channels, channels, 3))
        self.conv_cat = _conv_bn(width + channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stages(self.stem(x))
        x = self.conv_cat(torch.cat([x, self.convs(x)], 1))
        x = self.conv_seg(self.dropout(x))
        return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SSDLiteMobileNetV2(nn.Module):
    """mmdet's SSDLite MobileNetV2 (ssdlite_mobilenetv2_scratch_600e_coco, 320x320, 80 classes
    plus background) from torchvision's pieces, without anchors, box decoding and NMS.

    torchvision's MobileNetV2 features tapped where mmdet's `out_indices=(4, 7)` taps them: the
    96-channel stage output at stride 16 (20x20) and the 1280-channel last conv at stride 32
    (10x10); four of torchvision's SSDLite extra blocks (1x1, depthwise 3x3 stride 2, 1x1; the
    same as mmdet's depthwise SSDNeck) to 512, 256, 256, 128 channels (5x5 ... 1x1); torchvision's
    SSDLiteHead (depthwise 3x3 and 1x1 per map, as mmdet's depthwise SSDHead) with 6 anchors per
    location on all six maps. BN eps 0.001 and ReLU6 throughout, as both have it. torchvision's own
    SSDLite extractor taps the expansion of the next block (576 channels) instead and only takes
    MobileNetV3, hence this assembly.
    """

    def __init__(self, classes: int = 81, anchors: int = 6) -> None:
        super().__init__()
        from functools import partial

        import torchvision
        from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block

        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        features = torchvision.models.mobilenet_v2(weights=None, norm_layer=norm).features
        self.c4 = features[:14]  # stem to the last 96-channel block
        self.c5 = features[14:]  # the 160 / 320 blocks and the 1280-channel 1x1 conv
        widths = (1280, 512, 256, 256, 128)
        self.extra = nn.ModuleList(
            _extra_block(cin, cout, norm) for cin, cout in zip(widths[:-1], widths[1:])
        )
        self.head = SSDLiteHead([96, *widths], [anchors] * 6, classes, norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.c4(x)
        maps = [x]
        x = self.c5(x)
        maps.append(x)
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return tuple(self.head(maps).values())
