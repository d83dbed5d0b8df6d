"""How each torch op maps to runtime work: fused, alias (free), compute, or element-wise.

The tables name the ops a runtime fuses or treats as views; the helpers count a layer's
weights and multiply-accumulates as the deployed kernels do.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx, nn

# Activations a runtime fuses into the conv/linear before them (ONNX Runtime's conv-activation
# fusion, TFLite's fused activation): they cost no extra pass over memory.
FUSABLE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardsigmoid,
)
FUSABLE_FUNCS = {
    torch.relu,
    torch.relu_,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.hardtanh,
    torch.nn.functional.leaky_relu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.hardsigmoid,
    torch.clamp,
    torch.clip,
}
FUSABLE_METHODS = {"relu", "relu_", "clamp", "clamp_", "clip", "sigmoid", "tanh"}
# Activations ONNX Runtime and TFLite run as a pass of their own, but an NPU graph compiler
# (Qualcomm QNN on the Hexagon HTP) folds into the conv/linear before them as it does a ReLU:
# element-wise work, unless the profile says `fused_activation`.
EPILOGUE_MODULES = (
    nn.SiLU,
    nn.Hardswish,
    nn.GELU,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.CELU,
)
EPILOGUE_FUNCS = {
    torch.nn.functional.silu,
    torch.nn.functional.hardswish,
    torch.nn.functional.gelu,
    torch.nn.functional.mish,
    torch.nn.functional.elu,
    torch.nn.functional.selu,
    torch.nn.functional.celu,
}
# The gate of x * gate(x) (SiLU or hardswish written out).
GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
GATE_FUNCS = {torch.sigmoid, torch.nn.functional.hardsigmoid}
GATE_METHODS = {"sigmoid"}
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Shape-only or no-op: the output is the input's buffer.
ALIAS_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Flatten,
    nn.Unflatten,
)
ALIAS_FUNCS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.nn.functional.dropout,
    operator.getitem,
}
ALIAS_METHODS = {
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "view_as",
    "reshape_as",
    "expand",
    "expand_as",
    "size",
    "dim",
    "type_as",
    "to",
    "float",
    "detach",
}
KNOWN_FUNCS = (
    FUSABLE_FUNCS
    | EPILOGUE_FUNCS
    | ALIAS_FUNCS
    | {
        torch.nn.functional.conv1d,
        torch.nn.functional.conv2d,
        torch.nn.functional.conv3d,
        torch.nn.functional.linear,
        torch.matmul,
        torch.bmm,
        torch.mm,
        torch.add,
        torch.mul,
        torch.cat,
        torch.nn.functional.adaptive_avg_pool2d,
        torch.nn.functional.avg_pool2d,
        torch.nn.functional.max_pool2d,
    }
)
# Childless custom modules with these in their class name are quantization bookkeeping
# (fake quant, observers): a runtime folds them into the int kernels.
_FOLDED_NAME_PARTS = ("fakequant", "fake_quant", "observer", "quantstub", "dequantstub")


def numel(shape: Any) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def conv_macs(m: Any, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> int:
    k = math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return numel(in_shape) * (m.out_channels // m.groups) * k
    return numel(out_shape) * (m.in_channels // m.groups) * k


def conv_kind(groups: int, in_channels: int) -> str:
    return "dwconv" if groups > 1 and groups == in_channels else "conv"


def is_add(n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in (operator.add, operator.iadd, torch.add)
    return n.op == "call_method" and n.target in ("add", "add_")


def is_mul(n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in (operator.mul, operator.imul, torch.mul)
    return n.op == "call_method" and n.target in ("mul", "mul_")


def is_epilogue_activation(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """SiLU, hardswish, GELU ...: fused into the conv before them on a `fused_activation` NPU."""
    if n.op == "call_module":
        return isinstance(modules.get(str(n.target)), EPILOGUE_MODULES)
    return n.op == "call_function" and n.target in EPILOGUE_FUNCS


def is_gate(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A sigmoid or hard sigmoid: the gate of x * sigmoid(x) or of a squeeze-excite scale."""
    if n.op == "call_module":
        return isinstance(modules.get(str(n.target)), GATE_MODULES)
    if n.op == "call_function":
        return n.target in GATE_FUNCS
    return n.op == "call_method" and n.target in GATE_METHODS


def is_activation(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_module":
        return isinstance(modules.get(str(n.target)), FUSABLE_MODULES)
    if n.op == "call_function":
        return n.target in FUSABLE_FUNCS
    return n.op == "call_method" and n.target in FUSABLE_METHODS


def is_cat(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target in (torch.cat, torch.concat, torch.concatenate)


def is_split(n: fx.Node) -> bool:
    if n.op == "call_method":
        return n.target in ("chunk", "split", "unbind", "tensor_split", "split_with_sizes")
    return n.op == "call_function" and n.target in (
        torch.chunk,
        torch.split,
        torch.unbind,
        torch.tensor_split,
    )


def is_folded_module(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return any(part in name for part in _FOLDED_NAME_PARTS)


def tensor_shapes(value: Any) -> list[tuple[int, ...]]:
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in tensor_shapes(v)]
    return []


def param_numels(model: nn.Module) -> tuple[int, int, int]:
    """(all parameters, conv/linear weight+bias, the rest) counted on the deployed tensors.

    A conv/linear counts its deployed weight and bias once, whatever parametrization (fake
    quant, pruning mask) holds the original tensor underneath it.
    """
    conv_lin = other = 0
    layer_prefixes: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in layer_prefixes):
            continue
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            conv_lin += layer_weight_numel(m) + bias_numel(m)
            layer_prefixes.append(name + "." if name else "")
            continue
        other += sum(p.numel() for p in m.parameters(recurse=False))
    return conv_lin + other, conv_lin, other


def layer_weight_numel(m: Any) -> int:
    if isinstance(m, nn.Linear):
        return int(m.in_features * m.out_features)
    k = math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return int(m.in_channels * (m.out_channels // m.groups) * k)
    return int(m.out_channels * (m.in_channels // m.groups) * k)


def bias_numel(m: Any) -> int:
    if isinstance(m, nn.Linear):
        return int(m.out_features) if m.bias is not None else 0
    if "bias" in getattr(m, "_parameters", {}) or hasattr(m, "parametrizations"):
        return int(m.out_channels) if getattr(m, "bias", None) is not None else 0
    return 0


def mha_macs(m: nn.MultiheadAttention, q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> int:
    e = m.embed_dim
    if m.batch_first:
        b, lq = q_shape[0], q_shape[1]
        lk = k_shape[1]
    else:
        lq, b = q_shape[0], q_shape[1]
        lk = k_shape[0]
    proj = b * (
        lq * e * e + 2 * lk * e * m.kdim
        if m.kdim == e
        else lq * e * e + lk * e * (m.kdim + m.vdim)
    )
    attn = 2 * b * lq * lk * e
    return int(proj + attn + b * lq * e * e)
