"""Operators that apply a CompressionPlan to a network.

architecture (compact students) -> low-rank (truncated SVD) -> structured pruning
(torch-pruning dependency graph) and unstructured sparsity -> fake quantization; distillation
is the recovery loss. Each operator is one private module with one config type, registered in
`_registry`; `compress` applies a whole plan.
"""

from ._architecture import build_student
from ._attention import explicit_attention
from ._compress import Compressed, Structures, compress
from ._distillation import distillation_loss
from ._export import export_onnx, folded, int8_weight_bits
from ._layers import compressible_layers, full_rank
from ._lowrank import clear_svd_cache
from ._quantization import calibrate, fake_quant_weight
from ._registry import register_handler

__all__ = [
    "Compressed",
    "Structures",
    "build_student",
    "calibrate",
    "clear_svd_cache",
    "compress",
    "compressible_layers",
    "distillation_loss",
    "explicit_attention",
    "export_onnx",
    "fake_quant_weight",
    "folded",
    "full_rank",
    "int8_weight_bits",
    "register_handler",
]
