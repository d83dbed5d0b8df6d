"""Kernels of an ONNX model, with the same fusion rules as the torch.fx path.

Used to fit a profile from measured ONNX files (a user's own device, or this host), where only the
exported graph is at hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._kernels import Kernel

_FUSABLE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"}
_FREE = {
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Shape",
    "Constant",
    "ConstantOfShape",
    "Cast",
    "QuantizeLinear",
    "DequantizeLinear",
    "Range",
    "Expand",
}
_POINTWISE = {
    "Sigmoid",
    "Mul",
    "Add",
    "Div",
    "Sub",
    "Erf",
    "Tanh",
    "Relu",
    "Pow",
    "Sqrt",
    "Exp",
    "Neg",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Reciprocal",
    "Abs",
    "LeakyRelu",
    "Elu",
}
_SHAPE_OPS = {"Gather", "Slice", "Concat", "Mul", "Div", "Add", "Sub", "Equal", "Where"}
# What a `fused_activation` runtime runs in the epilogue of the conv/linear before it (the torch
# side's _op_rules.EPILOGUE_MODULES), and the gates of a written-out x * gate(x).
_EPILOGUE = {"HardSwish", "Gelu", "Mish", "Elu", "Selu", "Celu"}
_GATES = {"Sigmoid", "HardSigmoid"}


@dataclass(frozen=True)
class OnnxKernels:
    kernels: tuple[Kernel, ...]
    layer_bits: dict[str, int]
    activation_bits: int
    batch: int
    input_elems: int = 0  # elements of the graph's inputs (initializers aside)


def _dims(vi: Any) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            return None
    return tuple(out)


def _run_shapes(model: Any, names: list[str], batch: int) -> dict[str, tuple[int, ...]]:
    """Shapes static inference left open (reshapes computed from Shape ops): run the model once."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception:  # noqa: BLE001 - shapes stay unknown; those nodes are skipped
        return {}
    types = {
        "tensor(float)": np.float32,
        "tensor(uint8)": np.uint8,
        "tensor(int8)": np.int8,
        "tensor(int64)": np.int64,
    }
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in inp.shape]
        feeds[inp.name] = np.zeros(shape, dtype=types.get(inp.type, np.float32))
    outs = [o.name for o in sess.get_outputs()]
    values = sess.run(outs, feeds)
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(outs, values) if n in names}


def onnx_kernels(path: str | Path, *, batch: int = 1) -> OnnxKernels:
    """The runtime kernels of the ONNX file at `path` (dynamic batch dims set to `batch`)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    graph = model.graph
    # Fix symbolic batch dimensions so shape inference yields numbers.
    init_names = {t.name for t in graph.initializer}
    for inp in graph.input:
        if inp.name in init_names:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    model = shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    missing = [o for n in graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_run_shapes(model, missing, batch))
    inits = {t.name: t for t in graph.initializer}
    for name, t in inits.items():
        shapes[name] = tuple(int(d) for d in t.dims)
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producers = {o: n for n in graph.node for o in n.output}

    # Constants: initializers and everything computed from them alone (shape arithmetic).
    const = set(inits)
    for n in graph.node:
        if n.op_type == "Constant" or (n.input and all(i in const or i == "" for i in n.input)):
            const.update(n.output)
    for n in graph.node:
        if n.op_type == "Shape":
            const.update(n.output)
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if n.op_type in _SHAPE_OPS | {"Unsqueeze", "Squeeze", "Cast", "Reshape"} and all(
                i in const or i == "" for i in n.input
            ):
                for o in n.output:
                    if o not in const:
                        const.add(o)
                        changed = True

    def weight_source(name: str) -> tuple[str | None, int]:
        """(initializer name, bits) behind a weight input, looking through DequantizeLinear."""
        if name in inits:
            return name, 32
        p = producers.get(name)
        if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
            t = inits[p.input[0]]
            bits = {2: 8, 3: 8, 22: 4, 21: 4, 5: 16, 4: 16}.get(t.data_type, 8)
            return p.input[0], bits
        if p is not None and p.op_type == "Identity" and p.input[0] in inits:
            return p.input[0], 32
        return None, 32

    activation_bits = 32
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in const:
            activation_bits = 8

    def numel(name: str) -> int:
        s = shapes.get(name)
        return int(math.prod(s)) if s is not None else 0

    def act_inputs(n: Any) -> list[str]:
        return [i for i in n.input if i and i not in const]

    kernels: list[Kernel] = []
    layer_bits: dict[str, int] = {}
    compute_out: set[str] = set()  # tensors a following activation/bn may fuse into
    conv_out: set[str] = set()  # outputs of convs (and what fused into them)
    residual_out: set[str] = set()  # outputs of adds/activations a runtime may fold into a conv
    group_root: dict[str, tuple[str, int]] = {}  # element-wise output -> (its one input, kernel)
    elementwise_out: set[str] = set()  # outputs of element-wise kernels

    def sole_consumer(tensor: str) -> bool:
        return len(consumers.get(tensor, [])) == 1 and tensor not in {o.name for o in graph.output}

    for idx, n in enumerate(graph.node):
        name = n.name or f"{n.op_type}_{idx}"
        op = n.op_type
        out = n.output[0] if n.output else ""
        if out in const:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            x = n.input[0] if op != "QLinearConv" else n.input[0]
            w_in = n.input[1] if op != "QLinearConv" else n.input[3]
            w_name, bits = weight_source(w_in)
            w_shape = shapes.get(w_name or w_in)
            out_shape = shapes.get(out)
            if w_shape is None or out_shape is None:
                continue
            groups = int(attrs.get("group", 1))
            cin = int(w_shape[1]) * groups
            kind = "dwconv" if groups > 1 and groups == cin else "conv"
            bias_in = n.input[2] if op == "Conv" and len(n.input) > 2 else ""
            kernels.append(
                Kernel(
                    name=name,
                    kind=kind,
                    macs=int(math.prod(out_shape) * math.prod(w_shape[1:])),
                    in_elems=numel(x),
                    out_elems=int(math.prod(out_shape)),
                    weight_numel=int(math.prod(w_shape)),
                    bias_numel=int(w_shape[0]) if bias_in else 0,
                    out_channels=int(w_shape[0]),
                    layer=name,
                    in_channels=cin,
                    groups=groups,
                )
            )
            layer_bits[name] = bits
            compute_out.add(out)
            conv_out.add(out)
            continue
        if op in ("Gemm", "MatMul"):
            a, b = n.input[0], n.input[1]
            out_shape = shapes.get(out)
            a_shape = shapes.get(a)
            if out_shape is None or a_shape is None:
                continue
            w_name, bits = weight_source(b)
            k_dim = a_shape[-1] if not (op == "Gemm" and attrs.get("transA", 0)) else a_shape[0]
            if w_name is not None:
                w_shape = shapes[w_name]
                bias_in = n.input[2] if op == "Gemm" and len(n.input) > 2 else ""
                kernels.append(
                    Kernel(
                        name=name,
                        kind="linear",
                        macs=int(math.prod(out_shape) * k_dim),
                        in_elems=numel(a),
                        out_elems=int(math.prod(out_shape)),
                        weight_numel=int(math.prod(w_shape)),
                        bias_numel=int(out_shape[-1]) if bias_in else 0,
                        out_channels=int(out_shape[-1]),
                        layer=name,
                    )
                )
                layer_bits[name] = bits
            else:
                kernels.append(
                    Kernel(
                        name=name,
                        kind="linear",
                        macs=int(math.prod(out_shape) * k_dim),
                        in_elems=sum(numel(i) for i in act_inputs(n)),
                        out_elems=int(math.prod(out_shape)),
                    )
                )
            compute_out.add(out)
            continue
        ins = act_inputs(n)
        folds = bool(ins) and ins[0] in compute_out and sole_consumer(ins[0])
        if folds and (
            op == "BatchNormalization"
            or op in _FUSABLE
            or op in _FREE  # a DequantizeLinear between a conv and its activation
            or (op == "Add" and len(ins) == 1)  # the bias of a MatMul on a >2-D input
        ):
            compute_out.add(out)
            if ins[0] in conv_out:
                conv_out.add(out)
            continue
        if op in _FREE or not ins:
            continue
        residual = False
        if op == "Add" and len(ins) == 2:
            residual = any(i in conv_out and sole_consumer(i) for i in ins)
        elif op in _FUSABLE and len(ins) == 1 and sole_consumer(ins[0]):
            residual = ins[0] in residual_out
        if residual:
            residual_out.update(o for o in n.output if o)
        # An element-wise subgraph fed by one tensor (SiLU = Sigmoid + Mul, erf GELU, a
        # decomposed norm) is one pass over memory, as the torch side counts nn.SiLU / nn.GELU.
        roots = {group_root[i][0] if i in group_root else i for i in ins}
        continuing = [i for i in ins if i in group_root]
        pointwise = op in _POINTWISE and all(
            numel(o) == numel(next(iter(roots))) for o in n.output if o
        )
        if len(roots) == 1 and continuing and pointwise:
            root, at = group_root[continuing[0]]
            kernels[at] = replace(
                kernels[at],
                out_elems=sum(numel(o) for o in n.output if o),
                # x * sigmoid(x) on a conv output that nothing else reads: a SiLU
                fused_activation=op == "Mul"
                and root in compute_out
                and {c.op_type for c in consumers.get(root, [])} <= _GATES | {"Mul"}
                and len(consumers.get(root, [])) == 2
                and set(ins) == {root, *continuing},
            )
            for o in n.output:
                group_root[o] = (root, at)
            continue
        if op in ("Slice", "Gather", "Split"):
            # A slice reads only what it copies.
            moved = sum(numel(o) for o in n.output if o)
            kernels.append(Kernel(name, "elementwise", 0, moved, moved))
            continue
        fused = op in _EPILOGUE and folds
        kernels.append(
            Kernel(
                name=name,
                kind="elementwise",
                macs=0,
                in_elems=sum(numel(i) for i in ins),
                out_elems=sum(numel(o) for o in n.output if o),
                residual=residual,
                fused_activation=fused,
                concat=op == "Concat",
                follows_pointwise=not residual
                and not fused
                and op in _FUSABLE
                and len(ins) == 1
                and ins[0] in elementwise_out
                and sole_consumer(ins[0]),
                out_channels=int(shapes[out][1]) if len(shapes.get(out, ())) == 4 else 0,
            )
        )
        elementwise_out.update(o for o in n.output if o)
        if len(ins) == 1 and pointwise:
            for o in n.output:
                group_root[o] = (ins[0], len(kernels) - 1)
    inputs = [i.name for i in graph.input if i.name not in inits]
    input_elems = sum(math.prod(shapes.get(n, ())) for n in inputs if n in shapes)
    return OnnxKernels(tuple(kernels), layer_bits, activation_bits, batch, input_elems)
