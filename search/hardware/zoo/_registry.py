"""The zoo's table: one `ReferenceNetwork` per published network, and `reference_network`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ._builders import (
    detector,
    eval_mode,
    keras_mobilenet_v1,
    mlperf_retinanet,
    mmseg_fcn_r50_d8,
    mobilenet_v2,
    resnet_v1,
    segmentation,
    torchvision_model,
)
from ._models import (
    DSCNN,
    FCAutoEncoder,
    MobileNetV1,
    ResNet8,
    SSDLiteMobileNetV2,
    SSDMobileNetV1,
    SSDResNet34,
)
from ._network import ReferenceNetwork


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
            lambda: eval_mode(ResNet8()),
            "dense-cnn",
            "MLPerf Tiny IC ResNet-8 (16/32/64), CIFAR-10: 12.50 M MACs, 77.7 k params",
        ),
        _entry(
            "ds_cnn",
            (1, 49, 10),
            lambda: eval_mode(DSCNN()),
            "depthwise",
            "MLPerf Tiny KWS DS-CNN (64 ch, 4 DS blocks), 49x10 MFCC: 2.66 M MACs, 22.6 k params",
        ),
        _entry(
            "mobilenet_v1_025",
            (3, 96, 96),
            lambda: eval_mode(MobileNetV1(0.25, 2)),
            "depthwise",
            "MLPerf Tiny VWW MobileNetV1 alpha 0.25, 96x96, 2 classes: 7.49 M MACs, 211 k params",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "fc_autoencoder",
            (640,),
            lambda: eval_mode(FCAutoEncoder()),
            "mlp",
            "MLPerf Tiny AD FC auto-encoder 640-128x4-8-128x4-640: 0.264 M MACs, 266 k params",
        ),
        # ST model zoo (Keras MobileNet / MobileNetV2, ReLU6, 1x1-conv classifier)
        _entry(
            "st_mobilenet_v1_025_96",
            (3, 96, 96),
            partial(keras_mobilenet_v1, 0.25, 5),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 96x96x3, 5 classes (ST model zoo, flowers)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_025_96_gray",
            (1, 96, 96),
            partial(keras_mobilenet_v1, 0.25, 5, 1),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 96x96x1, 5 classes (ST model zoo, flowers grayscale)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_025_224",
            (3, 224, 224),
            partial(keras_mobilenet_v1, 0.25, 1000),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 224x224x3, 1000 classes (ST model zoo, ImageNet)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_025_224_c5",
            (3, 224, 224),
            partial(keras_mobilenet_v1, 0.25, 5),
            "depthwise",
            "Keras MobileNetV1 alpha 0.25, 224x224x3, 5 classes (ST model zoo, flowers)",
            backbone="mobilenet_v1_025",
        ),
        _entry(
            "st_mobilenet_v1_050_224",
            (3, 224, 224),
            partial(keras_mobilenet_v1, 0.5, 1000),
            "depthwise",
            "Keras MobileNetV1 alpha 0.5, 224x224x3, 1000 classes (ST model zoo, ImageNet)",
        ),
        _entry(
            "st_mobilenet_v2_035_128",
            (3, 128, 128),
            partial(mobilenet_v2, 0.35, 1000),
            "depthwise",
            "MobileNetV2 alpha 0.35, 128x128x3, 1000 classes (ST model zoo, ImageNet)",
            backbone="mobilenet_v2_035",
        ),
        _entry(
            "st_mobilenet_v2_035_128_c5",
            (3, 128, 128),
            partial(mobilenet_v2, 0.35, 5),
            "depthwise",
            "MobileNetV2 alpha 0.35, 128x128x3, 5 classes (ST model zoo, flowers)",
            backbone="mobilenet_v2_035",
        ),
        _entry(
            "st_mobilenet_v2_035_224",
            (3, 224, 224),
            partial(mobilenet_v2, 0.35, 1000),
            "depthwise",
            "MobileNetV2 alpha 0.35, 224x224x3, 1000 classes (ST model zoo, ImageNet)",
            backbone="mobilenet_v2_035",
        ),
        # Phone and GPU rows (ImageNet, 1000 classes)
        _entry(
            "mobilenet_v1",
            (3, 224, 224),
            lambda: eval_mode(MobileNetV1(1.0, 1000)),
            "depthwise",
            "MobileNetV1 1.0, 224x224x3, 1000 classes: 569 M MACs, 4.2 M params",
        ),
        _entry(
            "mobilenet_v2",
            (3, 224, 224),
            partial(torchvision_model, "mobilenet_v2"),
            "depthwise",
            "torchvision MobileNetV2 1.0, 224x224x3: 300 M MACs, 3.5 M params",
        ),
        _entry(
            "mobilenet_v3_large",
            (3, 224, 224),
            partial(torchvision_model, "mobilenet_v3_large"),
            "depthwise",
            "torchvision MobileNetV3-Large, 224x224x3: 217 M MACs, 5.5 M params",
        ),
        _entry(
            "mobilenet_v3_small",
            (3, 224, 224),
            partial(torchvision_model, "mobilenet_v3_small"),
            "depthwise",
            "torchvision MobileNetV3-Small, 224x224x3: 57 M MACs, 2.5 M params",
        ),
        _entry(
            "squeezenet1_1",
            (3, 227, 227),
            partial(torchvision_model, "squeezenet1_1"),
            "dense-cnn",
            "torchvision SqueezeNet 1.1, 227x227x3: 0.35 G MACs, 1.2 M params",
            backbone="squeezenet1_1",
        ),
        _entry(
            "resnet18",
            (3, 224, 224),
            partial(torchvision_model, "resnet18"),
            "dense-cnn",
            "torchvision ResNet-18, 224x224x3: 1.8 G MACs, 11.7 M params",
        ),
        _entry(
            "resnet50",
            (3, 224, 224),
            partial(torchvision_model, "resnet50"),
            "dense-cnn",
            "torchvision ResNet-50 (v1.5), 224x224x3: 4.1 G MACs, 25.6 M params",
            backbone="resnet50",
        ),
        _entry(
            "resnet50_v1",
            (3, 224, 224),
            partial(resnet_v1, "resnet50"),
            "dense-cnn",
            "ResNet-50 v1 (Caffe-style, stride on the 1x1), 224x224x3: 3.9 G MACs, 25.6 M params",
            backbone="resnet50",
        ),
        _entry(
            "efficientnet_b0",
            (3, 224, 224),
            partial(torchvision_model, "efficientnet_b0"),
            "depthwise",
            "torchvision EfficientNet-B0, 224x224x3: 0.39 G MACs, 5.3 M params",
        ),
        _entry(
            "ssd_mobilenet_v1",
            (3, 300, 300),
            lambda: eval_mode(SSDMobileNetV1()),
            "depthwise",
            "MLPerf Inference SSD-MobileNet-v1, 300x300, COCO: 1.2 G MACs (no box decoding/NMS)",
        ),
        _entry(
            "ssd_resnet34",
            (3, 1200, 1200),
            lambda: eval_mode(SSDResNet34()),
            "dense-cnn",
            "MLPerf Inference SSD-ResNet34, 1200x1200, COCO: 433 GFLOPs, 20 M params "
            "(no box decoding/NMS)",
        ),
        _entry(
            "inception_v3",
            (3, 299, 299),
            partial(torchvision_model, "inception_v3", aux_logits=False, init_weights=False),
            "dense-cnn",
            "torchvision Inception-V3, 299x299x3: 5.7 G MACs, 23.8 M params",
        ),
        # GPU rows (gpu_published.csv, TensorRT): torchvision classifiers, 224x224x3, 1000 classes;
        # MACs and params as torchvision's model docs (weights.meta) state them
        _entry(
            "alexnet",
            (3, 224, 224),
            partial(torchvision_model, "alexnet"),
            "dense-cnn",
            "torchvision AlexNet, 224x224x3: 0.71 G MACs, 61.1 M params",
        ),
        _entry(
            "squeezenet1_0",
            (3, 224, 224),
            partial(torchvision_model, "squeezenet1_0"),
            "dense-cnn",
            "torchvision SqueezeNet 1.0, 224x224x3: 0.82 G MACs, 1.25 M params",
        ),
        _entry(
            "squeezenet1_1_224",
            (3, 224, 224),
            partial(torchvision_model, "squeezenet1_1"),
            "dense-cnn",
            "torchvision SqueezeNet 1.1, 224x224x3: 0.35 G MACs, 1.24 M params",
            backbone="squeezenet1_1",
        ),
        _entry(
            "resnet34",
            (3, 224, 224),
            partial(torchvision_model, "resnet34"),
            "dense-cnn",
            "torchvision ResNet-34, 224x224x3: 3.66 G MACs, 21.8 M params",
        ),
        _entry(
            "resnet101",
            (3, 224, 224),
            partial(torchvision_model, "resnet101"),
            "dense-cnn",
            "torchvision ResNet-101 (v1.5), 224x224x3: 7.80 G MACs, 44.5 M params",
            backbone="resnet101",
        ),
        _entry(
            "resnet101_v1",
            (3, 224, 224),
            partial(resnet_v1, "resnet101"),
            "dense-cnn",
            "ResNet-101 v1 (Keras / Caffe style, stride on the 1x1), 224x224x3: 7.6 G MACs "
            "(He et al. 2016, Table 1), 44.5 M params",
            backbone="resnet101",
        ),
        _entry(
            "resnet152",
            (3, 224, 224),
            partial(torchvision_model, "resnet152"),
            "dense-cnn",
            "torchvision ResNet-152 (v1.5), 224x224x3: 11.5 G MACs, 60.2 M params",
        ),
        _entry(
            "resnext50_32x4d",
            (3, 224, 224),
            partial(torchvision_model, "resnext50_32x4d"),
            "dense-cnn",
            "torchvision ResNeXt-50 32x4d, 224x224x3: 4.23 G MACs, 25.0 M params",
        ),
        _entry(
            "densenet121",
            (3, 224, 224),
            partial(torchvision_model, "densenet121"),
            "dense-cnn",
            "torchvision DenseNet-121, 224x224x3: 2.83 G MACs, 8.0 M params",
        ),
        _entry(
            "densenet169",
            (3, 224, 224),
            partial(torchvision_model, "densenet169"),
            "dense-cnn",
            "torchvision DenseNet-169, 224x224x3: 3.36 G MACs, 14.1 M params",
        ),
        _entry(
            "densenet201",
            (3, 224, 224),
            partial(torchvision_model, "densenet201"),
            "dense-cnn",
            "torchvision DenseNet-201, 224x224x3: 4.29 G MACs, 20.0 M params",
        ),
        # A VGG and its _bn variant are one network: TensorRT folds the batch norm
        _entry(
            "vgg11",
            (3, 224, 224),
            partial(torchvision_model, "vgg11"),
            "dense-cnn",
            "torchvision VGG-11, 224x224x3: 7.61 G MACs, 132.9 M params",
            backbone="vgg11",
        ),
        _entry(
            "vgg11_bn",
            (3, 224, 224),
            partial(torchvision_model, "vgg11_bn"),
            "dense-cnn",
            "torchvision VGG-11 with batch norm, 224x224x3: 7.61 G MACs, 132.9 M params",
            backbone="vgg11",
        ),
        _entry(
            "vgg13",
            (3, 224, 224),
            partial(torchvision_model, "vgg13"),
            "dense-cnn",
            "torchvision VGG-13, 224x224x3: 11.3 G MACs, 133.0 M params",
            backbone="vgg13",
        ),
        _entry(
            "vgg13_bn",
            (3, 224, 224),
            partial(torchvision_model, "vgg13_bn"),
            "dense-cnn",
            "torchvision VGG-13 with batch norm, 224x224x3: 11.3 G MACs, 133.0 M params",
            backbone="vgg13",
        ),
        _entry(
            "vgg16",
            (3, 224, 224),
            partial(torchvision_model, "vgg16"),
            "dense-cnn",
            "torchvision VGG-16, 224x224x3: 15.5 G MACs, 138.4 M params",
            backbone="vgg16",
        ),
        _entry(
            "vgg16_bn",
            (3, 224, 224),
            partial(torchvision_model, "vgg16_bn"),
            "dense-cnn",
            "torchvision VGG-16 with batch norm, 224x224x3: 15.5 G MACs, 138.4 M params",
            backbone="vgg16",
        ),
        _entry(
            "shufflenet_v2_x0_5",
            (3, 224, 224),
            partial(torchvision_model, "shufflenet_v2_x0_5"),
            "depthwise",
            "torchvision ShuffleNetV2 x0.5, 224x224x3: 40 M MACs, 1.37 M params",
        ),
        _entry(
            "shufflenet_v2_x1_0",
            (3, 224, 224),
            partial(torchvision_model, "shufflenet_v2_x1_0"),
            "depthwise",
            "torchvision ShuffleNetV2 x1.0, 224x224x3: 145 M MACs, 2.28 M params",
        ),
        _entry(
            "mnasnet0_5",
            (3, 224, 224),
            partial(torchvision_model, "mnasnet0_5"),
            "depthwise",
            "torchvision MnasNet 0.5, 224x224x3: 104 M MACs, 2.22 M params",
        ),
        _entry(
            "mnasnet1_0",
            (3, 224, 224),
            partial(torchvision_model, "mnasnet1_0"),
            "depthwise",
            "torchvision MnasNet 1.0, 224x224x3: 314 M MACs, 4.38 M params",
        ),
        _entry(
            "efficientnet_b3",
            (3, 300, 300),
            partial(torchvision_model, "efficientnet_b3"),
            "depthwise",
            "torchvision EfficientNet-B3, 300x300x3: 1.83 G MACs, 12.2 M params",
        ),
        # Phone NPU rows (Qualcomm AI Hub, ai-hub-models perf.yaml): torchvision's classifiers as
        # AI Hub profiles them, at 224x224 (its ImagenetClassifier input spec) whatever the
        # network's native size; GoogLeNet and Inception without auxiliary heads.
        _entry(
            "googlenet",
            (3, 224, 224),
            partial(
                torchvision_model,
                "googlenet",
                aux_logits=False,
                transform_input=False,
                init_weights=False,
            ),
            "dense-cnn",
            "torchvision GoogLeNet, 224x224x3: 1.50 G MACs, 6.62 M params",
        ),
        _entry(
            "inception_v3_224",
            (3, 224, 224),
            partial(torchvision_model, "inception_v3", aux_logits=False, init_weights=False),
            "dense-cnn",
            "torchvision Inception-V3 at 224x224x3 (AI Hub's input), 23.8 M params",
            backbone="inception_v3",
        ),
        _entry(
            "regnet_x_3_2gf",
            (3, 224, 224),
            partial(torchvision_model, "regnet_x_3_2gf"),
            "dense-cnn",
            "torchvision RegNetX-3.2GF (grouped 3x3 convs), 224x224x3: 3.18 G MACs, 15.3 M params",
        ),
        _entry(
            "regnet_y_800mf",
            (3, 224, 224),
            partial(torchvision_model, "regnet_y_800mf"),
            "dense-cnn",
            "torchvision RegNetY-800MF (grouped convs, squeeze-excite), 224x224x3: 0.83 G MACs, "
            "6.43 M params",
        ),
        _entry(
            "resnext101_32x8d",
            (3, 224, 224),
            partial(torchvision_model, "resnext101_32x8d"),
            "dense-cnn",
            "torchvision ResNeXt-101 32x8d, 224x224x3: 16.4 G MACs, 88.8 M params",
        ),
        _entry(
            "wide_resnet50_2",
            (3, 224, 224),
            partial(torchvision_model, "wide_resnet50_2"),
            "dense-cnn",
            "torchvision Wide ResNet-50-2, 224x224x3: 11.4 G MACs, 68.9 M params",
        ),
        _entry(
            "convnext_tiny",
            (3, 224, 224),
            partial(torchvision_model, "convnext_tiny"),
            "depthwise",
            "torchvision ConvNeXt-Tiny (7x7 depthwise, LayerNorm, GELU), 224x224x3: 4.46 G MACs, "
            "28.6 M params",
        ),
        _entry(
            "efficientnet_b4_224",
            (3, 224, 224),
            partial(torchvision_model, "efficientnet_b4"),
            "depthwise",
            "torchvision EfficientNet-B4 at 224x224x3 (AI Hub's input; native 380), 19.3 M params",
        ),
        _entry(
            "efficientnet_v2_s_224",
            (3, 224, 224),
            partial(torchvision_model, "efficientnet_v2_s"),
            "depthwise",
            "torchvision EfficientNetV2-S at 224x224x3 (AI Hub's input; native 384), "
            "21.5 M params",
        ),
        _entry(
            "fcn_resnet50_voc",
            (3, 520, 520),
            partial(segmentation, "fcn_resnet50", 21),
            "dense-cnn",
            "torchvision FCN ResNet-50 (dilated, output stride 8), 21 VOC classes, 520x520x3 as "
            "AI Hub profiles it, no auxiliary head: 143 G conv MACs, 33.0 M params",
        ),
        # GPU rows, dense prediction at the published input sizes: what the TensorRT engine runs
        # (backbone, neck and heads to raw tensors; no image transform, resizing, anchor
        # generation, box decoding or NMS). torchvision's detection figures are at 800x800, its
        # segmentation ones at 520x520 with the auxiliary head and 21 classes.
        _entry(
            "retinanet_resnet50_fpn",
            (3, 800, 1344),
            partial(detector, "retinanet_resnet50_fpn"),
            "dense-cnn",
            "torchvision RetinaNet ResNet-50 FPN (COCO, 91 classes), 800x1344: 254 G MACs; "
            "torchvision: 151.5 G MACs at 800x800, 34.0 M params (BN frozen)",
        ),
        _entry(
            "fcos_resnet50_fpn",
            (3, 800, 1344),
            partial(detector, "fcos_resnet50_fpn"),
            "dense-cnn",
            "torchvision FCOS ResNet-50 FPN (COCO, 91 classes), 800x1344: 215 G MACs; "
            "torchvision: 128.2 G MACs at 800x800, 32.3 M params (BN frozen)",
        ),
        _entry(
            "retinanet_resnext50_32x4d_fpn_800",
            (3, 800, 800),
            mlperf_retinanet,
            "dense-cnn",
            "MLPerf Inference RetinaNet: torchvision RetinaNet on a ResNeXt50-32x4d FPN (P3-P7), "
            "OpenImages 264 classes, 800x800: 201 G MACs, 37.1 M params (none published)",
        ),
        _entry(
            "fcn_resnet50",
            (3, 512, 1024),
            partial(segmentation, "fcn_resnet50", 19),
            "dense-cnn",
            "torchvision FCN ResNet-50 (dilated, output stride 8), 19 classes as mmseg's "
            "Cityscapes row, no aux head, 512x1024: 277 G MACs, 33.0 M params; torchvision "
            "(21 classes, aux head): 152.7 G MACs at 520x520, 35.3 M params",
        ),
        _entry(
            "fcn_r50_d8",
            (3, 512, 1024),
            partial(mmseg_fcn_r50_d8, 19),
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
            partial(segmentation, "deeplabv3_resnet50", 19),
            "dense-cnn",
            "torchvision DeepLabV3 ResNet-50 (output stride 8), 19 classes (Cityscapes), no aux "
            "head, 512x1024: 327 G MACs, 39.6 M params; torchvision (21 classes, aux head): "
            "178.7 G MACs at 520x520, 42.0 M params",
        ),
        _entry(
            "ssdlite320_mobilenet_v2",
            (3, 320, 320),
            lambda: eval_mode(SSDLiteMobileNetV2()),
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
