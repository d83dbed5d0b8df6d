"""The published reference networks, rebuilt in PyTorch, for calibrating and checking profiles.

The MLPerf Tiny networks follow the layer lists of `mlcommons/tiny` (2021 definitions: ResNet-8
at 16/32/64 filters); the ST model zoo rows use Keras MobileNetV1 / MobileNetV2 at the listed
width and resolution; phone and GPU rows use torchvision's builders (no weights are loaded).
The dense-prediction GPU rows (RetinaNet, FCOS, FCN, DeepLabV3, SSDLite) are torchvision's
networks as a TensorRT engine runs them: backbone, neck and heads to raw tensors, without the
image transform, anchors, box decoding or NMS (`_models.DetectorHeads` and friends);
mmseg's FCN R50-D8 (deep stem, FCNHead with the input concatenated) is assembled from
torchvision's ResNet-50 (`_models.DeepStemFCN`).
Batch norm sits where the reference has it: the cost model folds it into the conv before it,
as every deployment runtime does.

Example::

    from search.hardware import REFERENCE_NETWORKS, reference_network

    net = reference_network("resnet8")
    shape = REFERENCE_NETWORKS["resnet8"].input_shape  # (3, 32, 32)
"""

from ._models import DeepStemFCN, SSDLiteMobileNetV2
from ._network import ReferenceNetwork
from ._registry import REFERENCE_NETWORKS, reference_network

__all__ = [
    "REFERENCE_NETWORKS",
    "DeepStemFCN",
    "ReferenceNetwork",
    "SSDLiteMobileNetV2",
    "reference_network",
]
