"""The reference-network zoo: each network matches its published MAC and parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from search.hardware import REFERENCE_NETWORKS, ReferenceNetwork, reference_network
from search.hardware.graph import summarize
from search.hardware.zoo import DeepStemFCN, SSDLiteMobileNetV2

# MLPerf Tiny's int8 reference models (mlcommons/tiny, benchmark/training/<task>/, the 2021
# definitions; ResNet-8 at 16/32/64 filters), BN folded: MACs and parameters.
PUBLISHED = {
    "resnet8": (12.50e6, 77.7e3),
    "ds_cnn": (2.66e6, 22.6e3),
    "mobilenet_v1_025": (7.49e6, 211e3),
    "fc_autoencoder": (0.264e6, 266e3),
}


def _folded_params(model: nn.Module) -> int:
    """Parameters of the deployed (BN-folded) network: weights plus one bias per out channel."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            total += m.weight.numel()
            total += m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    return total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_mlperf_tiny_networks_match_published_counts(name: str) -> None:
    entry = REFERENCE_NETWORKS[name]
    model = reference_network(name)
    macs = sum(k.macs for k in summarize(model, (1, *entry.input_shape)).kernels)
    want_macs, want_params = PUBLISHED[name]
    assert macs == pytest.approx(want_macs, rel=0.005)
    assert _folded_params(model) == pytest.approx(want_params, rel=0.01)


def test_every_entry_builds_and_runs_at_its_input_shape() -> None:
    for name, entry in REFERENCE_NETWORKS.items():
        assert isinstance(entry, ReferenceNetwork) and entry.name == name
        assert entry.family in ("dense-cnn", "depthwise", "mlp")
        if entry.input_shape[-1] > 128:
            # 224 px and up: seconds each to build and run here; the GPU-row tests below build
            # and trace them, the device benchmark runs them.
            continue
        model = entry.build()
        assert not model.training
        with torch.no_grad():
            out = model(torch.zeros(2, *entry.input_shape))
        assert out.shape[0] == 2


def test_zoo_is_frozen_and_names_unknown_networks() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFERENCE_NETWORKS["resnet8"].name = "x"  # type: ignore[misc]
    with pytest.raises(KeyError, match="resnet8"):
        reference_network("resnet9")


def test_depthwise_share_tells_the_families_apart() -> None:
    """DS-CNN is depthwise-separable, ResNet-8 dense: the cost model sees the kinds."""
    kinds = {
        name: {k.kind for k in summarize(reference_network(name), (1, *e.input_shape)).kernels}
        for name, e in REFERENCE_NETWORKS.items()
        if name in PUBLISHED
    }
    assert "dwconv" in kinds["ds_cnn"] and "dwconv" in kinds["mobilenet_v1_025"]
    assert "dwconv" not in kinds["resnet8"]
    assert kinds["fc_autoencoder"] <= {"linear", "elementwise"}


def test_mlperf_detectors_match_published_size() -> None:
    """SSD-ResNet34 at 1200x1200: 433.4 GFLOPs (2 per MAC) and 20.1 M parameters."""
    entry = REFERENCE_NETWORKS["ssd_resnet34"]
    model = reference_network("ssd_resnet34")
    macs = sum(k.macs for k in summarize(model, (1, *entry.input_shape)).kernels)
    assert 2 * macs == pytest.approx(433.4e9, rel=0.01)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(20.06e6, rel=0.01)


# -- GPU rows (gpu_published.csv): torchvision's networks ----------------------------------------

# torchvision's model docs (torchvision 0.29: `get_model_weights(name).meta`, offline): `_ops`,
# GFLOPS that count multiply-adds, three decimals, at 224x224 (EfficientNet-B3: 300x300), and
# `num_params` (batch norm included).
TORCHVISION_CLASSIFIERS = {
    "alexnet": (0.714e9, 61_100_840),
    "squeezenet1_0": (0.819e9, 1_248_424),
    "squeezenet1_1_224": (0.349e9, 1_235_496),
    "resnet34": (3.664e9, 21_797_672),
    "resnet101": (7.801e9, 44_549_160),
    "resnet152": (11.514e9, 60_192_808),
    "resnext50_32x4d": (4.230e9, 25_028_904),
    "densenet121": (2.834e9, 7_978_856),
    "densenet169": (3.360e9, 14_149_480),
    "densenet201": (4.291e9, 20_013_928),
    "vgg11": (7.609e9, 132_863_336),
    "vgg11_bn": (7.609e9, 132_868_840),
    "vgg13": (11.308e9, 133_047_848),
    "vgg13_bn": (11.308e9, 133_053_736),
    "vgg16": (15.470e9, 138_357_544),
    "vgg16_bn": (15.470e9, 138_365_992),
    "shufflenet_v2_x0_5": (0.040e9, 1_366_792),
    "shufflenet_v2_x1_0": (0.145e9, 2_278_604),
    "mnasnet0_5": (0.104e9, 2_218_512),
    "mnasnet1_0": (0.314e9, 4_383_312),
    "efficientnet_b3": (1.827e9, 12_233_232),
    # Phone NPU rows (Qualcomm AI Hub): GoogLeNet without its auxiliary heads
    "googlenet": (1.498e9, 6_624_904),
    "regnet_x_3_2gf": (3.177e9, 15_296_552),
    "regnet_y_800mf": (0.834e9, 6_432_512),
    "resnext101_32x8d": (16.414e9, 88_791_336),
    "wide_resnet50_2": (11.398e9, 68_883_240),
    "convnext_tiny": (4.456e9, 28_589_128),
}
# AI Hub runs every classifier at 224x224, where torchvision publishes no count for these: their
# parameters (Inception-V3 less its auxiliary head: 1x1 768->128 and 5x5 128->768 convs with
# BN, 98,304 + 256 + 2,457,600 + 1,536, and fc 768->1000, 769,000: 3,326,696).
AT_224 = {
    "inception_v3_224": 27_161_264 - 3_326_696,
    "efficientnet_b4_224": 19_341_616,
    "efficientnet_v2_s_224": 21_458_488,
}
# The fast suite takes those under a second each here; the VGGs (seconds to initialise 133 M
# random parameters), DenseNets and ResNet-101/152 are slow.
QUICK_CLASSIFIERS = {
    "alexnet",
    "squeezenet1_0",
    "squeezenet1_1_224",
    "resnet34",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "mnasnet0_5",
    "mnasnet1_0",
    "efficientnet_b3",
    "regnet_y_800mf",
}


def _macs(name: str, shape: tuple[int, ...] | None = None, model: nn.Module | None = None) -> int:
    model = reference_network(name) if model is None else model
    shape = REFERENCE_NETWORKS[name].input_shape if shape is None else shape
    return sum(k.macs for k in summarize(model, (1, *shape)).kernels)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if n in QUICK_CLASSIFIERS else pytest.mark.slow)
        for n in sorted(TORCHVISION_CLASSIFIERS)
    ],
)
def test_torchvision_classifiers_match_published_counts(name: str) -> None:
    model = reference_network(name)
    summary = summarize(model, (1, *REFERENCE_NETWORKS[name].input_shape))
    assert summary.traced
    want_macs, want_params = TORCHVISION_CLASSIFIERS[name]
    # Within the published figure's rounding (half its last digit, 0.5 M MACs).
    assert sum(k.macs for k in summary.kernels) == pytest.approx(want_macs, rel=0, abs=0.5e6)
    assert sum(p.numel() for p in model.parameters()) == want_params


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AT_224))
def test_classifiers_at_ai_hubs_input_size(name: str) -> None:
    """The published parameters, and every conv traced: the summary's conv multiply-adds are those
    the meta-device count gives at 224x224."""
    model = reference_network(name)
    assert REFERENCE_NETWORKS[name].input_shape == (3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) == AT_224[name]
    summary = summarize(model, (1, 3, 224, 224))
    assert summary.traced
    conv_macs = sum(k.macs for k in summary.kernels if k.kind in ("conv", "dwconv"))
    assert conv_macs == _conv_count_on_meta(model, (3, 224, 224))[0]


def test_resnet101_v1_moves_the_stride_to_the_1x1() -> None:
    """He et al. 2016, Table 1: ResNet-101 (v1) 7.6e9 FLOPs, i.e. multiply-adds; the parameters
    are torchvision's v1.5 ones (moving a stride adds none)."""
    model = reference_network("resnet101_v1")
    macs = _macs("resnet101_v1", model=model)
    assert macs == pytest.approx(7.6e9, rel=0, abs=0.05e9)
    assert macs < TORCHVISION_CLASSIFIERS["resnet101"][0] - 0.2e9
    assert sum(p.numel() for p in model.parameters()) == 44_549_160


def test_gpu_variants_share_a_backbone() -> None:
    """TensorRT folds a VGG's batch norm; SqueezeNet 1.1 at 224 and 227 and ResNet-101 v1 / v1.5
    are the same layers: one network each for leave-one-network-out."""
    backbone = {name: entry.backbone for name, entry in REFERENCE_NETWORKS.items()}
    for vgg in ("vgg11", "vgg13", "vgg16"):
        assert backbone[vgg] == backbone[f"{vgg}_bn"] == vgg
    assert backbone["squeezenet1_1"] == backbone["squeezenet1_1_224"] == "squeezenet1_1"
    assert backbone["resnet101"] == backbone["resnet101_v1"] == "resnet101"
    assert backbone["resnet152"] == backbone["densenet121"] == ""


def _conv_count_on_meta(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(conv MACs, conv calls) of one forward on the meta device: shapes only, so it is instant
    at any size, and independent of `summarize`. Leaves `model` on the meta device."""
    macs, calls = 0, 0

    def hook(m: nn.Module, args: object, out: torch.Tensor) -> None:
        nonlocal macs, calls
        assert isinstance(m, nn.Conv2d)
        macs += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        calls += 1

    model.to("meta")
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return macs, calls


def _params_without_bn(model: nn.Module) -> int:
    """torchvision's detection count: its trained detectors freeze BN, whose affine are buffers."""
    bn = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    )
    return sum(p.numel() for p in model.parameters()) - bn


# The dense-prediction entries against torchvision's model docs (meta `_ops`, `num_params`),
# at the size torchvision measured them: (shape, multiply-adds, params, params counted without
# BN?). Detection: 800x800 (what its transform makes of the measuring image), frozen BN.
# Segmentation: 520x520, measured with the auxiliary FCNHead(1024) and 21 classes; the entries
# have neither (19 classes), so the aux head's 3x3 1024->256 and 1x1 256->21 convs at 65x65 and
# two classes of the last 1x1 conv come off: 2,365,205 params, and 512 (FCN) or 256 (DeepLabV3)
# input channels per class. The MLPerf RetinaNet (no published count): torchvision's RetinaNet
# with the ResNet-50 trunk's 25,503,912 non-BN params (resnet50's num_params less 53,120 BN)
# swapped for ResNeXt50-32x4d's 24,960,680 (less 68,224 BN) and 173 more classes, each
# 9 anchors x (3x3x256 + 1) = 20,745 params of the class conv.
_AUX_MACS = (1024 * 256 * 9 + 256 * 21) * 65 * 65

# mmseg's fcn_r50-d8 (fcn_r50-d8_512x1024_40k_cityscapes, no aux head): no published count, so
# counted here from its config. Conv weights (BN folded into the convs, biases not multiplied):
# - V1c deep stem, three 3x3 convs 3->32 (stride 2), 32->32, 32->64: 9 * (96 + 1024 + 2048)
#   = 28,512 weights at 256x512 (131,072 positions).
# - layer1 at 128x256 (32,768): block 0 64*64 + 9*64*64 + 64*256 + 64*256 (downsample) = 73,728,
#   blocks 1-2 256*64 + 9*64*64 + 64*256 = 69,632 each: 212,992.
# - layer2, stride on the 3x3 (style 'pytorch'): block 0's 1x1 256*128 = 32,768 at 128x256; at
#   64x128 (8,192) its 9*128*128 + 128*512 + 256*512 (downsample) = 344,064 and blocks 1-3
#   512*128 + 9*128*128 + 128*512 = 278,528 each: 1,179,648.
# - layer3 and layer4 dilated (stride 1, still 64x128): layer3 block 0 512*256 + 9*256*256 +
#   256*1024 + 512*1024 = 1,507,328, blocks 1-5 1,114,112 each: 7,077,888; layer4 block 0
#   1024*512 + 9*512*512 + 512*2048 + 1024*2048 = 6,029,312, blocks 1-2 4,456,448 each:
#   14,942,208.
# - FCNHead at 64x128: 3x3 2048->512, 512->512, (2048 + 512)->512 = 9*512*5120 = 23,592,960,
#   1x1 512->19 = 9,728: 23,602,688.
# MACs: 28,512*131,072 + (212,992 + 32,768)*32,768 + (1,179,648 + 7,077,888 + 14,942,208
# + 23,602,688)*8,192 = 3,737,124,864 + 8,053,063,680 + 383,405,522,944 = 395,195,711,488.
# Params (BN affine included, as torchvision counts): resnet50's 25,557,032 less its fc
# (2,049,000) and 7x7 stem conv and BN (9,408 + 128), plus the deep stem's 28,512 and BN
# 2*(32 + 32 + 64) = 256: 23,527,264; head 23,592,960 + three BN 3*1024 + classifier
# 9,728 + 19 bias = 23,605,779; in all 47,133,043.
_FCN_R50_D8_MACS = 395_195_711_488
_FCN_R50_D8_PARAMS = 47_133_043
DENSE_PUBLISHED = {
    "retinanet_resnet50_fpn": ((3, 800, 800), 151.54e9, 34_014_999, True),
    "fcos_resnet50_fpn": ((3, 800, 800), 128.207e9, 32_269_600, True),
    "retinanet_resnext50_32x4d_fpn_800": (
        None,
        None,
        34_014_999 - 25_503_912 + 24_960_680 + 173 * 20_745,
        True,
    ),
    "fcn_resnet50": (
        (3, 520, 520),
        152.717e9 - _AUX_MACS - 2 * 512 * 65 * 65,
        35_322_218 - 2_365_205 - 2 * (512 + 1),
        False,
    ),
    "fcn_r50_d8": ((3, 512, 1024), _FCN_R50_D8_MACS, _FCN_R50_D8_PARAMS, False),
    "deeplabv3_resnet50": (
        (3, 520, 520),
        178.722e9 - _AUX_MACS - 2 * 256 * 65 * 65,
        42_004_074 - 2_365_205 - 2 * (256 + 1),
        False,
    ),
    # AI Hub's FCN: torchvision's 21 VOC classes at 520x520, the auxiliary head unused.
    "fcn_resnet50_voc": ((3, 520, 520), 152.717e9 - _AUX_MACS, 35_322_218 - 2_365_205, False),
}


# What each entry's description states at its own input size (the rows' sizes): conv
# multiply-adds, three significant digits.
DENSE_AT_ENTRY_SIZE = {
    "retinanet_resnet50_fpn": 254e9,
    "fcos_resnet50_fpn": 215e9,
    "retinanet_resnext50_32x4d_fpn_800": 201e9,
    "fcn_resnet50": 277e9,
    "fcn_resnet50_voc": 143e9,
    "fcn_r50_d8": 395e9,
    "deeplabv3_resnet50": 327e9,
    "ssdlite320_mobilenet_v2": 0.746e9,
}


@pytest.mark.parametrize("name", sorted(DENSE_AT_ENTRY_SIZE))
def test_dense_prediction_networks_trace_and_match_published_size(name: str) -> None:
    """summarize traces each network to a kernel list that counts every conv call (a head shared
    across FPN levels once per level) at a small input; the same layers at torchvision's
    measuring size give its published multiply-adds (counted on the meta device: summarize at
    800x800 takes tens of seconds here), and the parameters match."""
    entry = REFERENCE_NETWORKS[name]
    model = reference_network(name)
    small = (3, 128, 128)
    summary = summarize(model, (1, *small))
    assert summary.traced, summary.notes
    convs = [k for k in summary.kernels if k.kind in ("conv", "dwconv")]
    shape, want_macs, want_params, frozen_bn = DENSE_PUBLISHED.get(name, (None, 0.0, 0, False))
    if want_params:
        all_params = sum(p.numel() for p in model.parameters())
        assert (_params_without_bn(model) if frozen_bn else all_params) == want_params
    macs, calls = _conv_count_on_meta(model, small)
    assert len(convs) == calls
    assert sum(k.macs for k in summary.kernels) == macs
    if shape is not None:
        assert _conv_count_on_meta(model, shape)[0] == pytest.approx(want_macs, rel=0, abs=0.5e6)
    at_entry = _conv_count_on_meta(model, entry.input_shape)[0]
    assert at_entry == pytest.approx(DENSE_AT_ENTRY_SIZE[name], rel=0.005)


def test_fcn_r50_d8_is_mmsegs_resnet_v1c_and_fcn_head() -> None:
    """mmseg's fcn_r50-d8 at 512x1024, conv by conv on the meta device: V1c's deep stem, a
    torchvision bottleneck stack at output stride 8 (stages 3 and 4 dilated 2 and 4, their first
    blocks at half that), FCNHead's 3x3 convs with the 2048-channel input concatenated in front
    of the 512-channel branch, the 1x1 classifier and the resize back to the input; its own
    backbone group (not torchvision's FCN, whose stem and head are smaller)."""
    with torch.device("meta"):
        model = reference_network("fcn_r50_d8")
    assert isinstance(model, DeepStemFCN)
    convs: list[tuple[int, int, int, int, int, tuple[int, ...]]] = []

    def hook(m: nn.Module, args: object, out: torch.Tensor) -> None:
        assert isinstance(m, nn.Conv2d)
        k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
        convs.append((m.in_channels, m.out_channels, k, s, d, tuple(out.shape[2:])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    cat_inputs: list[torch.Tensor] = []
    handles.append(model.conv_cat.register_forward_pre_hook(lambda _m, a: cat_inputs.append(a[0])))
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 512, 1024, device="meta"))
    finally:
        for h in handles:
            h.remove()
    assert tuple(out.shape) == (1, 19, 512, 1024)
    assert convs[:3] == [
        (3, 32, 3, 2, 1, (256, 512)),
        (32, 32, 3, 1, 1, (256, 512)),
        (32, 64, 3, 1, 1, (256, 512)),
    ]
    assert convs[-4:] == [
        (2048, 512, 3, 1, 1, (64, 128)),
        (512, 512, 3, 1, 1, (64, 128)),
        (2560, 512, 3, 1, 1, (64, 128)),
        (512, 19, 1, 1, 1, (64, 128)),
    ]
    bottleneck_3x3 = [c for c in convs[3:-4] if c[2] == 3]
    assert [c[3] for c in bottleneck_3x3] == [1] * 3 + [2] + [1] * 12  # stride on the 3x3
    assert [c[4] for c in bottleneck_3x3] == [1] * 7 + [1] + [2] * 5 + [2] + [4] * 2
    assert {c[5] for c in bottleneck_3x3[4:]} == {(64, 128)}  # output stride 8 from layer2 on
    assert len(convs) == 3 + 16 * 3 + 4 + 4  # stem, bottlenecks, downsamples, head
    assert len(cat_inputs) == 1 and tuple(cat_inputs[0].shape) == (1, 2560, 64, 128)
    backbone = {name: entry.backbone for name, entry in REFERENCE_NETWORKS.items()}
    assert backbone["fcn_r50_d8"] == "fcn_r50_d8"
    assert backbone["fcn_resnet50"] == "" and backbone["resnet50"] == "resnet50"
    assert DENSE_AT_ENTRY_SIZE["fcn_r50_d8"] > DENSE_AT_ENTRY_SIZE["fcn_resnet50"] + 100e9


def test_ssdlite_mobilenet_v2_has_mmdets_maps_and_anchors() -> None:
    """mmdet's SSDLite at 320x320: maps of 20, 10, 5, 3, 2, 1 with 96, 1280, 512, 256, 256, 128
    channels, 6 anchors each: 3,234 boxes of 81 scores (80 classes and background)."""
    model = reference_network("ssdlite320_mobilenet_v2").to("meta")
    assert isinstance(model, SSDLiteMobileNetV2)
    maps: list[tuple[int, ...]] = []
    handles = [
        m.register_forward_hook(lambda _m, args, _out: maps.append(tuple(args[0].shape[1:])))
        for m in model.head.regression_head.module_list
    ]
    try:
        with torch.no_grad():
            boxes, scores = model(torch.zeros(1, 3, 320, 320, device="meta"))
    finally:
        for h in handles:
            h.remove()
    assert maps == [
        (96, 20, 20),
        (1280, 10, 10),
        (512, 5, 5),
        (256, 3, 3),
        (256, 2, 2),
        (128, 1, 1),
    ]
    anchors = 6 * (20 * 20 + 10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1)
    assert tuple(boxes.shape) == (1, anchors, 4) and tuple(scores.shape) == (1, anchors, 81)


@pytest.mark.slow
def test_retinanet_summary_matches_torchvision_at_its_measuring_size() -> None:
    """summarize itself at torchvision's 800x800: 151.54 G multiply-adds (tens of seconds)."""
    assert _macs("retinanet_resnet50_fpn", (3, 800, 800)) == pytest.approx(
        151.54e9, rel=0, abs=5e6
    )
