"""The buffers and operators TFLite Micro runs for the `.tflite` a traced model converts to."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from ._op_rules import is_activation, is_add, numel


def _same_padding(m: Any, in_shape: tuple[int, ...] | None) -> bool:
    """Whether a conv's zero padding is what TFLite's SAME (or VALID) gives: no PAD op then.

    The converter maps other paddings to an explicit PAD in front of the conv (TF's SAME pads
    the odd pixel after, PyTorch both sides), which costs a padded copy of the input.
    """
    pad = getattr(m, "padding", 0)
    if isinstance(pad, str) or in_shape is None or len(in_shape) != 4:
        return True
    pads = tuple(pad) if isinstance(pad, (tuple, list)) else (pad, pad)
    if not any(pads):
        return True
    for p, k, s, d, n in zip(pads, m.kernel_size, m.stride, m.dilation, in_shape[2:]):
        ke = (k - 1) * d + 1
        total = max((-(-n // s) - 1) * s + ke - n, 0)
        if (total // 2, total - total // 2) != (p, p):
            return False
    return True


def tflm_graph(
    nodes: list[fx.Node],
    kind_of: dict[fx.Node, str],
    shapes: dict[str, Any],
    users: dict[fx.Node, list[fx.Node]],
    modules: dict[str, nn.Module],
    intervals: dict[fx.Node, tuple[int, int, int]],
) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[str, int], ...]]:
    """The buffers and operators of the `.tflite` litert-torch makes, as TFLite Micro runs it.

    On top of the fx buffers (times doubled, so an inserted op sits between two nodes): the
    NHWC TRANSPOSE of a 4-D input with channels (a RESHAPE with one channel) and back at a 4-D
    output, a PAD before a conv whose padding is not TFLite's SAME, and a TRANSPOSE back to
    NCHW before flattening a feature map into a linear layer. Operators carry the output
    channels their per-channel quantization data scales with.
    """
    live = {b: [e, 2 * a, 2 * t] for b, (e, a, t) in intervals.items() if e > 0}
    buffers: list[tuple[int, int, int]] = []
    ops: list[tuple[str, int]] = []
    for n in nodes:
        s = shapes.get(n.name)
        if n.op == "placeholder" and isinstance(s, tuple) and len(s) == 4:
            ops.append(("transpose" if s[1] > 1 else "reshape", 0))
            buffers.append((numel(s), 0, 0))  # the NCHW input beside its NHWC copy
        kind = kind_of.get(n)
        if n.op == "output":
            outs = [a for a in n.all_input_nodes if isinstance(shapes.get(a.name), tuple)]
            for a in outs:
                if len(shapes[a.name]) == 4 and numel(shapes[a.name][2:]) > 1:
                    ops.append(("transpose", 0))
                    end = 2 * len(nodes)
                    buffers.append((numel(shapes[a.name]), end, end))
            continue
        if kind == "compute" and n.op == "call_module":
            m = modules[str(n.target)]
            ins = [a for a in n.all_input_nodes if isinstance(shapes.get(a.name), tuple)]
            i = 2 * nodes.index(n)
            if isinstance(m, nn.modules.conv._ConvNd) and ins:
                in_shape = shapes[ins[0].name]
                if not _same_padding(m, in_shape):
                    pad: Any = m.padding
                    pads = pad if isinstance(pad, tuple) else (pad,) * 2
                    padded = in_shape[0] * in_shape[1]
                    for n_, p in zip(in_shape[2:], pads):
                        padded *= n_ + 2 * int(p)
                    ops.append(("pad", 0))
                    buffers.append((padded, i - 1, i))
                    root = _buffer_root(ins[0], kind_of)
                    if root in live and live[root][2] == i:
                        live[root][2] = i - 1  # the PAD is its last reader now
                groups = getattr(m, "groups", 1)
                dw = groups > 1 and groups == m.in_channels
                ops.append(("dwconv" if dw else "conv", int(m.out_channels)))
            elif isinstance(m, nn.Linear):
                src = ins[0] if ins else None
                while src is not None and kind_of.get(src) == "alias" and src.all_input_nodes:
                    src_shape = shapes.get(src.all_input_nodes[0].name)
                    if isinstance(src_shape, tuple) and len(src_shape) == 4:
                        if numel(src_shape[2:]) > 1:
                            ops.append(("transpose", 0))
                            buffers.append((numel(src_shape), i - 1, i))
                        break
                    src = src.all_input_nodes[0]
                ops.append(("linear", int(m.out_features)))
            else:
                ops.append(("linear", int(shapes[n.name][-1]) if shapes.get(n.name) else 0))
        elif kind == "compute":
            ops.append(("linear", 0))
        elif kind in ("elementwise", "split"):
            ins = [a for a in n.all_input_nodes if isinstance(shapes.get(a.name), tuple)]
            if (
                is_activation(n, modules)
                and len(ins) == 1
                and len(users[ins[0]]) == 1
                and kind_of.get(ins[0]) == "elementwise"
            ):
                continue  # fused into the ADD (or other op) before it
            kind_ = _tflm_kind(n, modules)
            if kind_ == "concat":
                # A concat's inputs share its int8 scale: an input that other ops also read
                # gets a requantized copy (a QUANTIZE right after its producer).
                for a in ins:
                    root = _buffer_root(a, kind_of)
                    if len(users[a]) > 1 and root in live:
                        ops.append(("quantize", 0))
                        e, first, _ = live[root]
                        buffers.append((e, first + 1, 2 * nodes.index(n)))
            ops.append((kind_, 0))
    buffers += [(e, a, t) for e, a, t in live.values()]
    return tuple(buffers), tuple(ops)


def _buffer_root(n: fx.Node, kind_of: dict[fx.Node, str]) -> fx.Node:
    """The node whose buffer `n` reads (through views and fused activations)."""
    while kind_of.get(n) in ("alias", "fused") and n.all_input_nodes:
        n = n.all_input_nodes[0]
    return n


def _tflm_kind(n: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The TFLite op family of an element-wise node (what its persistent data looks like)."""
    if is_add(n):
        return "add"
    target = modules.get(str(n.target)) if n.op == "call_module" else n.target
    name = (type(target).__name__ if n.op == "call_module" else str(target)).lower()
    for part, kind in (
        ("adaptiveavg", "mean"),
        ("mean", "mean"),
        ("pool", "pool"),
        ("cat", "concat"),
        ("softmax", "softmax"),
    ):
        if part in name:
            return kind
    return "other"
