"""What the cost model reads off a model: its runtime kernels and its memory timeline."""

from __future__ import annotations

from dataclasses import dataclass, field

COMPUTE_KINDS = ("conv", "dwconv", "linear")


@dataclass(frozen=True)
class Kernel:
    """One runtime kernel with everything the cost model needs (counts at the traced batch)."""

    name: str  # module name (conv/linear) or graph node name
    kind: str  # conv | dwconv | linear | elementwise
    macs: int
    in_elems: int  # activation elements read
    out_elems: int  # activation elements written
    weight_numel: int = 0
    bias_numel: int = 0
    out_channels: int = 0  # per-channel quantization scales
    layer: str | None = None  # key into layer_bits / layer_density
    # An add that takes a conv's output (or the activation right after such an add): runtimes
    # whose profile says `fused_add` fold it into that conv (ONNX Runtime's NCHWc Conv+Sum).
    residual: bool = False
    # An activation ONNX Runtime and TFLite run as a pass of their own (SiLU, hardswish, GELU,
    # the sigmoid and mul of x * sigmoid(x)) on the output of a conv/linear that nothing else
    # reads: runtimes whose profile says `fused_activation` (an NPU graph compiler such as
    # Qualcomm QNN on the Hexagon HTP) run it in that conv's output stage. A squeeze-excite
    # channel scale is not one: its scale exists only once the whole conv output is pooled.
    fused_activation: bool = False
    # A concatenation: a `concat_in_place` runtime (TensorRT) has its producers write into the
    # output buffer, so it moves no bytes of its own.
    concat: bool = False
    # An activation whose only input is an element-wise kernel's output that nothing else
    # reads (a batch norm no conv absorbs, then ReLU): a `fused_pointwise` runtime runs both
    # in one pass.
    follows_pointwise: bool = False
    in_channels: int = 0  # convs: for the channel-alignment rule
    groups: int = 1


@dataclass(frozen=True)
class GraphSummary:
    """The structure-dependent part of a cost estimate, cached per model structure."""

    kernels: tuple[Kernel, ...]
    params: int
    other_param_numel: int  # parameters outside conv/linear weights and biases (fp32)
    folded_bias_numel: int  # bias a folded batch norm adds to a conv that had none
    peak_elems: int  # peak live activation elements
    peak_elems_dw_in_place: int  # the same with in-place depthwise convolution
    input_elems: int
    traced: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The graph as TFLite Micro runs the converted .tflite (`tflm_graph`): activation buffers
    # as (elements, first op, last op), and the operators as (kind, output channels).
    tflm_buffers: tuple[tuple[int, int, int], ...] = ()
    tflm_ops: tuple[tuple[str, int], ...] = ()
