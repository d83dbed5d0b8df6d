"""Reading a model: the kernels a deployment runtime would run, and its memory timeline.

`summarize` (in `_summarize`, cached per model structure) traces a torch model once under
torch.fx (`_fx_trace`), prices each node by the rules of `_op_rules` (`_fx_summary`; `_hooks`
for models torch.fx cannot trace) and lays out its activation memory (`_liveness`, and
`_tflm_graph` for the buffers TFLite Micro plans). `onnx_kernels` (`_onnx`) reads the same
kernels off an exported ONNX file. `Kernel` and `GraphSummary` (`_kernels`) are what the cost
model and the fits read.
"""

from ._kernels import COMPUTE_KINDS, GraphSummary, Kernel
from ._onnx import OnnxKernels, onnx_kernels
from ._summarize import clear_cache, summarize

__all__ = [
    "COMPUTE_KINDS",
    "GraphSummary",
    "Kernel",
    "OnnxKernels",
    "clear_cache",
    "onnx_kernels",
    "summarize",
]
