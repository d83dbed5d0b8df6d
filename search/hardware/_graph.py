"""Turn a model into the list of kernels a deployment runtime would run, plus a memory timeline.

A *kernel* is what the runtime executes after its usual fusions: batch norm folded into the
convolution before it, and a cheap activation (ReLU, ReLU6, sigmoid ...) fused into it. Views,
flattening, dropout and identities cost nothing. Everything else that is not a convolution, a
linear layer or a matrix product is element-wise work costed by the bytes it moves
(FlopCounterMode counts those ops as 0 FLOPs).

Activation memory comes from a liveness analysis of the torch.fx graph: a buffer is live from the
node that produces it to its last reader, so a tensor kept for a later residual add or concat
counts while the branch runs.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

COMPUTE_KINDS = ("conv", "dwconv", "linear")

# Activations a runtime fuses into the conv/linear before them (ONNX Runtime's conv-activation
# fusion, TFLite's fused activation): they cost no extra pass over memory.
_FUSABLE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardsigmoid,
)
_FUSABLE_FUNCS = {
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
_FUSABLE_METHODS = {"relu", "relu_", "clamp", "clamp_", "clip", "sigmoid", "tanh"}
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Shape-only or no-op: the output is the input's buffer.
_ALIAS_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Flatten,
    nn.Unflatten,
)
_ALIAS_FUNCS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.nn.functional.dropout,
    operator.getitem,
}
_ALIAS_METHODS = {
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
_KNOWN_FUNCS = (
    _FUSABLE_FUNCS
    | _ALIAS_FUNCS
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
    # The graph as TFLite Micro runs the converted .tflite (`_tflm_graph`): activation buffers
    # as (elements, first op, last op), and the operators as (kind, output channels).
    tflm_buffers: tuple[tuple[int, int, int], ...] = ()
    tflm_ops: tuple[tuple[str, int], ...] = ()


class _LeafTracer(fx.Tracer):
    """fx tracer keeping conv/linear (parametrized ones too) and childless modules whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)):
            return True
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        if not any(True for _ in m.children()):
            return True
        return super().is_leaf_module(m, qualname)


def _numel(shape: Any) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _conv_macs(m: Any, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> int:
    k = math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return _numel(in_shape) * (m.out_channels // m.groups) * k
    return _numel(out_shape) * (m.in_channels // m.groups) * k


def _conv_kind(groups: int, in_channels: int) -> str:
    return "dwconv" if groups > 1 and groups == in_channels else "conv"


def _is_add(n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in (operator.add, operator.iadd, torch.add)
    return n.op == "call_method" and n.target in ("add", "add_")


def _is_activation(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_module":
        return isinstance(modules.get(str(n.target)), _FUSABLE_MODULES)
    if n.op == "call_function":
        return n.target in _FUSABLE_FUNCS
    return n.op == "call_method" and n.target in _FUSABLE_METHODS


def _is_split(n: fx.Node) -> bool:
    if n.op == "call_method":
        return n.target in ("chunk", "split", "unbind", "tensor_split", "split_with_sizes")
    return n.op == "call_function" and n.target in (
        torch.chunk,
        torch.split,
        torch.unbind,
        torch.tensor_split,
    )


def _is_folded_module(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return any(part in name for part in _FOLDED_NAME_PARTS)


def _shape_of(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _tensor_shapes(value: Any) -> list[tuple[int, ...]]:
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _tensor_shapes(v)]
    return []


def _param_numels(model: nn.Module) -> tuple[int, int, int]:
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
            conv_lin += _layer_weight_numel(m) + _bias_numel(m)
            layer_prefixes.append(name + "." if name else "")
            continue
        other += sum(p.numel() for p in m.parameters(recurse=False))
    return conv_lin + other, conv_lin, other


def _layer_weight_numel(m: Any) -> int:
    if isinstance(m, nn.Linear):
        return int(m.in_features * m.out_features)
    k = math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return int(m.in_channels * (m.out_channels // m.groups) * k)
    return int(m.out_channels * (m.in_channels // m.groups) * k)


def _bias_numel(m: Any) -> int:
    if isinstance(m, nn.Linear):
        return int(m.out_features) if m.bias is not None else 0
    if "bias" in getattr(m, "_parameters", {}) or hasattr(m, "parametrizations"):
        return int(m.out_channels) if getattr(m, "bias", None) is not None else 0
    return 0


def _mha_macs(m: nn.MultiheadAttention, q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> int:
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


# ------------------------------------------------------------------------------------------------
# torch.fx path
# ------------------------------------------------------------------------------------------------


def _opaque(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_module":
        m = modules[str(n.target)]
        known = (
            nn.modules.conv._ConvNd,
            nn.Linear,
            nn.MultiheadAttention,
            *_NORM_MODULES,
            *_FUSABLE_MODULES,
            *_ALIAS_MODULES,
        )
        return not isinstance(m, known) and type(m).__module__.split(".")[0] != "torch"
    if n.op == "call_function":
        return n.target not in _KNOWN_FUNCS and getattr(n.target, "__module__", "") not in (
            "_operator",
            "operator",
        )
    return False


def _trace_graph(
    model: nn.Module, example: torch.Tensor
) -> tuple[fx.GraphModule, dict[str, Any], dict[str, int], set[str]]:
    graph = _LeafTracer().trace(model)
    gm = fx.GraphModule(model, graph)
    modules = dict(model.named_modules())
    shapes: dict[str, Any] = {}
    flops: dict[str, int] = {}
    identity: set[str] = set()

    class _Rec(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            out = super().call_module(target, args, kwargs)
            m = self.fetch_attr(target)
            if any(out is a for a in args) and not getattr(m, "inplace", False):
                identity.add(str(target))  # returns its input (stochastic depth in eval)
            return out

        def run_node(self, n: fx.Node) -> Any:
            if _opaque(n, modules):
                # An op the kernel table does not know (a wrapped attention function, a custom
                # module) may still multiply matrices: count it as torch's FlopCounterMode does.
                with FlopCounterMode(display=False) as counter:
                    out = super().run_node(n)
                flops[n.name] = int(counter.get_total_flops())
            else:
                out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = tuple(out.shape)
            elif isinstance(out, (tuple, list)):
                shapes[n.name] = _tensor_shapes(out)
            else:
                shapes[n.name] = None
            return out

    with torch.no_grad():
        _Rec(gm).run(example)
    return gm, shapes, flops, identity


def _summarize_fx(model: nn.Module, input_shape: tuple[int, ...]) -> GraphSummary:
    example = torch.zeros(input_shape)
    gm, shapes, flops, identity = _trace_graph(model, example)
    modules = dict(model.named_modules())
    nodes = list(gm.graph.nodes)
    users = {n: [u for u in n.users] for n in nodes}

    def shape(n: Any) -> tuple[int, ...] | None:
        s = shapes.get(n.name) if isinstance(n, fx.Node) else None
        return s if isinstance(s, tuple) else None

    def tensor_inputs(n: fx.Node) -> list[fx.Node]:
        seen: list[fx.Node] = []
        for a in n.all_input_nodes:
            if isinstance(shapes.get(a.name), tuple) and a not in seen:
                seen.append(a)
        return seen

    kind_of: dict[fx.Node, str] = {}  # compute | fused | alias | elementwise | io | other
    kernels: list[Kernel] = []
    fused_into: dict[fx.Node, fx.Node] = {}
    folded_bias = 0
    conv_has_bias: dict[fx.Node, bool] = {}
    compute_kernel_index: dict[fx.Node, int] = {}
    residual_nodes: set[fx.Node] = set()

    def _from_conv(a: fx.Node) -> bool:
        """`a` is a conv's output (through fused bn/activation and no-op aliases), read once."""
        while kind_of.get(a) == "alias" and len(users[a]) == 1 and len(tensor_inputs(a)) == 1:
            a = tensor_inputs(a)[0]
        root = fused_into.get(a, a)
        return (
            len(users[a]) == 1
            and kind_of.get(root) == "compute"
            and isinstance(modules.get(str(root.target)), nn.modules.conv._ConvNd)
        )

    def single_producer_chain_ok(n: fx.Node) -> fx.Node | None:
        """The compute node `n` fuses into: its only input, when nothing else reads that input."""
        ins = tensor_inputs(n)
        if len(ins) != 1:
            return None
        src = ins[0]
        if len(users[src]) != 1:
            return None
        root = fused_into.get(src, src)
        return root if kind_of.get(root) == "compute" else None

    for n in nodes:
        if n.op == "placeholder":
            kind_of[n] = "io"
            continue
        if n.op == "output":
            kind_of[n] = "io"
            continue
        if n.op == "get_attr":
            kind_of[n] = "other"
            continue
        out_shape = shapes.get(n.name)
        ins = tensor_inputs(n)
        if isinstance(out_shape, list) and out_shape and ins and _is_split(n):
            # chunk/split copy their slices in a runtime (ONNX Split/Slice), one pass in all.
            for i, piece in enumerate(out_shape):
                size = _numel(piece)
                kernels.append(Kernel(f"{n.name}.{i}", "elementwise", 0, size, size))
            kind_of[n] = "split"
            continue
        if not isinstance(out_shape, tuple):
            # Tuples (getitem sources), sizes and other non-tensors: no kernel, alias memory.
            kind_of[n] = "alias" if out_shape else "other"
            continue
        in_elems = sum(_numel(shapes[a.name]) for a in ins)
        out_elems = _numel(out_shape)
        if n.op == "call_function" and n.target is operator.getitem and ins:
            # Indexing a tensor (x[:, 0], x[:, :c]) copies the selection (ONNX Slice/Gather).
            if out_elems == in_elems:
                kind_of[n] = "alias"
            else:
                kernels.append(
                    Kernel(
                        name=n.name,
                        kind="elementwise",
                        macs=0,
                        in_elems=out_elems,
                        out_elems=out_elems,
                    )
                )
                kind_of[n] = "elementwise"
            continue
        if n.op == "call_module" and str(n.target) in identity:
            kind_of[n] = "alias"
            continue
        if n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, nn.modules.conv._ConvNd):
                kind = _conv_kind(m.groups, m.in_channels)
                in_shape = shape(ins[0]) if ins else None
                kernels.append(
                    Kernel(
                        name=str(n.target),
                        kind=kind,
                        macs=_conv_macs(m, out_shape, in_shape or ()),
                        in_elems=in_elems,
                        out_elems=out_elems,
                        weight_numel=_layer_weight_numel(m),
                        bias_numel=_bias_numel(m),
                        out_channels=int(m.out_channels),
                        layer=str(n.target),
                        in_channels=int(m.in_channels),
                        groups=int(m.groups),
                    )
                )
                kind_of[n] = "compute"
                conv_has_bias[n] = _bias_numel(m) > 0
                compute_kernel_index[n] = len(kernels) - 1
                continue
            if isinstance(m, nn.Linear):
                kernels.append(
                    Kernel(
                        name=str(n.target),
                        kind="linear",
                        macs=int(out_elems // m.out_features * m.in_features * m.out_features),
                        in_elems=in_elems,
                        out_elems=out_elems,
                        weight_numel=_layer_weight_numel(m),
                        bias_numel=_bias_numel(m),
                        out_channels=int(m.out_features),
                        layer=str(n.target),
                    )
                )
                kind_of[n] = "compute"
                conv_has_bias[n] = _bias_numel(m) > 0
                compute_kernel_index[n] = len(kernels) - 1
                continue
            if isinstance(m, nn.MultiheadAttention):
                q = shape(n.args[0]) if n.args else None
                k = shape(n.args[1]) if len(n.args) > 1 else q
                kernels.append(
                    Kernel(
                        name=str(n.target),
                        kind="linear",
                        macs=_mha_macs(m, q or out_shape, k or out_shape),
                        in_elems=in_elems,
                        out_elems=out_elems,
                        weight_numel=sum(p.numel() for p in m.parameters()),
                        out_channels=int(m.embed_dim),
                        layer=str(n.target),
                    )
                )
                kind_of[n] = "compute"
                continue
            if isinstance(m, _NORM_MODULES):
                root = single_producer_chain_ok(n)
                if root is not None:
                    fused_into[n] = root
                    kind_of[n] = "fused"
                    if not conv_has_bias.get(root, True):
                        folded_bias += kernels[compute_kernel_index[root]].out_channels
                        conv_has_bias[root] = True
                    continue
            elif isinstance(m, _FUSABLE_MODULES):
                root = single_producer_chain_ok(n)
                if root is not None:
                    fused_into[n] = root
                    kind_of[n] = "fused"
                    continue
            elif (isinstance(m, _ALIAS_MODULES) or _is_folded_module(m)) and (
                ins and out_elems == _numel(shapes[ins[0].name])
            ):
                kind_of[n] = "alias"
                continue
        elif n.op == "call_function":
            fn = n.target
            if fn in (
                torch.nn.functional.conv1d,
                torch.nn.functional.conv2d,
                torch.nn.functional.conv3d,
            ):
                w = shape(n.args[1]) if len(n.args) > 1 else None
                groups = int(n.kwargs.get("groups", n.args[6] if len(n.args) > 6 else 1))
                if w is not None:
                    cin = w[1] * groups
                    kernels.append(
                        Kernel(
                            name=n.name,
                            kind=_conv_kind(groups, cin),
                            macs=_numel(out_shape) * math.prod(w[1:]),
                            in_elems=_numel(shape(n.args[0])),
                            out_elems=out_elems,
                        )
                    )
                    kind_of[n] = "compute"
                    compute_kernel_index[n] = len(kernels) - 1
                    conv_has_bias[n] = True
                    continue
            if fn in (torch.nn.functional.linear,):
                w = shape(n.args[1]) if len(n.args) > 1 else None
                if w is not None:
                    kernels.append(
                        Kernel(
                            name=n.name,
                            kind="linear",
                            macs=_numel(out_shape) * w[-1],
                            in_elems=_numel(shape(n.args[0])),
                            out_elems=out_elems,
                        )
                    )
                    kind_of[n] = "compute"
                    compute_kernel_index[n] = len(kernels) - 1
                    conv_has_bias[n] = True
                    continue
            if fn in (torch.matmul, torch.bmm, torch.mm, operator.matmul):
                a = shape(n.args[0])
                if a is not None:
                    kernels.append(
                        Kernel(
                            name=n.name,
                            kind="linear",
                            macs=_numel(out_shape) * a[-1],
                            in_elems=in_elems,
                            out_elems=out_elems,
                        )
                    )
                    kind_of[n] = "compute"
                    compute_kernel_index[n] = len(kernels) - 1
                    conv_has_bias[n] = True
                    continue
            if fn in _FUSABLE_FUNCS:
                root = single_producer_chain_ok(n)
                if root is not None:
                    fused_into[n] = root
                    kind_of[n] = "fused"
                    continue
            if fn in _ALIAS_FUNCS:
                kind_of[n] = "alias"
                continue
        elif n.op == "call_method":
            if n.target in _FUSABLE_METHODS:
                root = single_producer_chain_ok(n)
                if root is not None:
                    fused_into[n] = root
                    kind_of[n] = "fused"
                    continue
            if n.target in _ALIAS_METHODS:
                kind_of[n] = "alias"
                continue
        if flops.get(n.name, 0) > 0:
            kernels.append(
                Kernel(
                    name=n.name,
                    kind="linear",
                    macs=flops[n.name] // 2,
                    in_elems=in_elems,
                    out_elems=out_elems,
                )
            )
            kind_of[n] = "compute"
            compute_kernel_index[n] = len(kernels) - 1
            conv_has_bias[n] = True
            continue
        # Everything else moves bytes: adds, muls, concat, pooling, norms, activations, softmax.
        residual = False
        if _is_add(n) and len(ins) == 2:
            residual = any(_from_conv(a) for a in ins)
        elif _is_activation(n, modules) and len(ins) == 1 and len(users[ins[0]]) == 1:
            residual = ins[0] in residual_nodes
        if residual:
            residual_nodes.add(n)
        kernels.append(
            Kernel(
                name=n.name,
                kind="elementwise",
                macs=0,
                in_elems=in_elems,
                out_elems=out_elems,
                residual=residual,
                out_channels=int(out_shape[1]) if len(out_shape) == 4 else 0,
            )
        )
        kind_of[n] = "elementwise"

    peak, peak_ip, intervals = _liveness(nodes, kind_of, shapes, users, modules)
    notes: tuple[str, ...] = ()
    try:
        tflm_buffers, tflm_ops = _tflm_graph(nodes, kind_of, shapes, users, modules, intervals)
    except Exception as exc:  # noqa: BLE001 - a graph the TFLM model does not know: liveness
        tflm_buffers, tflm_ops = (), ()
        notes = (
            f"TFLite Micro memory model cannot follow this graph ({type(exc).__name__}); "
            "a tflm profile prices its memory by buffer liveness",
        )
    params, conv_lin, other = _param_numels(model)
    # Batch norms folded into a conv leave only that conv's bias behind.
    folded_norm_params = sum(
        sum(p.numel() for p in modules[str(n.target)].parameters(recurse=False))
        for n, k in kind_of.items()
        if k == "fused"
        and n.op == "call_module"
        and isinstance(modules[str(n.target)], _NORM_MODULES)
    )
    return GraphSummary(
        kernels=tuple(kernels),
        params=params,
        other_param_numel=max(other - folded_norm_params, 0),
        folded_bias_numel=folded_bias,
        peak_elems=peak,
        peak_elems_dw_in_place=peak_ip,
        input_elems=_numel(input_shape),
        traced=True,
        notes=notes,
        tflm_buffers=tflm_buffers,
        tflm_ops=tflm_ops,
    )


def _liveness(
    nodes: list[fx.Node],
    kind_of: dict[fx.Node, str],
    shapes: dict[str, Any],
    users: dict[fx.Node, list[fx.Node]],
    modules: dict[str, nn.Module],
) -> tuple[int, int, dict[fx.Node, tuple[int, int, int]]]:
    """Peak live activation elements, executing nodes in graph order (also with in-place dw).

    Also returns every buffer as its producing node -> (elements, first node, last node index).
    """
    # Map every node to the buffer it writes; an alias or in-place unary op reuses its input's.
    buffer_of: dict[fx.Node, fx.Node] = {}
    size: dict[fx.Node, int] = {}
    for n in nodes:
        k = kind_of.get(n)
        s = shapes.get(n.name)
        tensor_ins = [a for a in n.all_input_nodes if a in buffer_of]
        if n.op in ("get_attr", "output"):
            continue  # parameters are weights, not activations; the output node only returns
        if k in ("alias", "fused") and tensor_ins:
            buffer_of[n] = buffer_of[tensor_ins[0]]
        elif (
            k == "elementwise"
            and len(tensor_ins) == 1
            and len(users[tensor_ins[0]]) == 1
            and (isinstance(s, tuple) and _numel(s) == size.get(buffer_of[tensor_ins[0]], -1))
        ):
            # A unary op whose input dies here runs in place (no second buffer).
            buffer_of[n] = buffer_of[tensor_ins[0]]
        elif isinstance(s, tuple) or (k == "io" and n.op == "placeholder"):
            buffer_of[n] = n
            size[n] = _numel(s) if isinstance(s, tuple) else 0
        elif isinstance(s, list):
            buffer_of[n] = n
            size[n] = sum(_numel(x) for x in s)
    # Last reader of each buffer (through its aliases).
    index = {n: i for i, n in enumerate(nodes)}
    last_use: dict[fx.Node, int] = {}
    for n in nodes:
        if n not in buffer_of:
            continue
        b = buffer_of[n]
        end = max([index[u] for u in users[n]] + [index[n]])
        if n.op == "placeholder" and not users[n]:
            end = index[n]
        last_use[b] = max(last_use.get(b, 0), end)
    for n in nodes:
        if n.op == "output":
            for a in n.all_input_nodes:
                if a in buffer_of:
                    last_use[buffer_of[a]] = len(nodes)
    starts = {b: index[b] for b in size}

    def peak_at(in_place: bool) -> int:
        best = 0
        for i, n in enumerate(nodes):
            live = sum(size[b] for b in size if starts[b] <= i <= last_use.get(b, starts[b]))
            if in_place and n.op == "call_module" and kind_of.get(n) == "compute":
                m = modules[str(n.target)]
                ins = [a for a in n.all_input_nodes if a in buffer_of]
                if (
                    isinstance(m, nn.modules.conv._ConvNd)
                    and _conv_kind(m.groups, m.in_channels) == "dwconv"
                    and ins
                    and last_use.get(buffer_of[ins[0]], -1) == i
                    and m.out_channels == m.in_channels
                ):
                    # In-place depthwise (MCUNetV2 / TinyEngine): each output channel overwrites
                    # its input channel through a one-channel buffer.
                    out_b = buffer_of[n]
                    out_elems = size[out_b]
                    in_elems = size[buffer_of[ins[0]]]
                    one_channel = out_elems // max(m.out_channels, 1)
                    live = live - out_elems - in_elems + max(in_elems, out_elems) + one_channel
            best = max(best, live)
        return best

    intervals = {b: (size[b], starts[b], last_use.get(b, starts[b])) for b in size}
    return peak_at(False), peak_at(True), intervals


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


def _tflm_graph(
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
            buffers.append((_numel(s), 0, 0))  # the NCHW input beside its NHWC copy
        kind = kind_of.get(n)
        if n.op == "output":
            outs = [a for a in n.all_input_nodes if isinstance(shapes.get(a.name), tuple)]
            for a in outs:
                if len(shapes[a.name]) == 4 and _numel(shapes[a.name][2:]) > 1:
                    ops.append(("transpose", 0))
                    end = 2 * len(nodes)
                    buffers.append((_numel(shapes[a.name]), end, end))
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
                        if _numel(src_shape[2:]) > 1:
                            ops.append(("transpose", 0))
                            buffers.append((_numel(src_shape), i - 1, i))
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
                _is_activation(n, modules)
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
    if _is_add(n):
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


# ------------------------------------------------------------------------------------------------
# Hook fallback for models torch.fx cannot trace
# ------------------------------------------------------------------------------------------------


def _summarize_hooks(model: nn.Module, input_shape: tuple[int, ...], reason: str) -> GraphSummary:
    records: list[tuple[str, nn.Module, list[tuple[int, ...]], list[tuple[int, ...]]]] = []
    tracer = _LeafTracer()
    handles = []
    leaves: list[str] = []
    for name, m in model.named_modules():
        if m is model or not tracer.is_leaf_module(m, name):
            continue
        if any(name.startswith(p + ".") for p in leaves):
            continue  # inside a leaf (a conv's parametrization)
        leaves.append(name)

        def hook(mod: nn.Module, args: Any, out: Any, _name: str = name) -> None:
            records.append((_name, mod, _tensor_shapes(args), _tensor_shapes(out)))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    kernels: list[Kernel] = []
    peak = _numel(input_shape)
    prev_compute = False
    for name, m, ins, outs in records:
        # Nested leaves (a conv inside a hooked custom leaf) are not possible: leaves are childless
        # or conv/linear, so every record is one kernel.
        in_elems = sum(_numel(s) for s in ins)
        out_elems = sum(_numel(s) for s in outs)
        peak = max(peak, in_elems + out_elems)
        if isinstance(m, nn.modules.conv._ConvNd):
            kernels.append(
                Kernel(
                    name,
                    _conv_kind(m.groups, m.in_channels),
                    _conv_macs(m, outs[0], ins[0]),
                    in_elems,
                    out_elems,
                    _layer_weight_numel(m),
                    _bias_numel(m),
                    m.out_channels,
                    name,
                    in_channels=m.in_channels,
                    groups=m.groups,
                )
            )
            prev_compute = True
        elif isinstance(m, nn.Linear):
            kernels.append(
                Kernel(
                    name,
                    "linear",
                    out_elems // m.out_features * m.in_features * m.out_features,
                    in_elems,
                    out_elems,
                    _layer_weight_numel(m),
                    _bias_numel(m),
                    m.out_features,
                    name,
                )
            )
            prev_compute = True
        elif (isinstance(m, _NORM_MODULES + _FUSABLE_MODULES) and prev_compute) or (
            isinstance(m, _ALIAS_MODULES) or _is_folded_module(m)
        ):
            continue
        else:
            kernels.append(Kernel(name, "elementwise", 0, in_elems, out_elems))
            prev_compute = False
    params, _, other = _param_numels(model)
    note = (
        f"torch.fx could not trace the model ({reason}); costs come from forward hooks: "
        "functional ops (adds, concats) are missed and peak memory assumes a plain chain"
    )
    return GraphSummary(
        kernels=tuple(kernels),
        params=params,
        other_param_numel=other,
        folded_bias_numel=0,
        peak_elems=peak,
        peak_elems_dw_in_place=peak,
        input_elems=_numel(input_shape),
        traced=False,
        notes=(note,),
    )


# ------------------------------------------------------------------------------------------------
# Cache per model structure: the search costs many plans whose models share a structure.
# ------------------------------------------------------------------------------------------------

_CACHE: OrderedDict[Any, GraphSummary] = OrderedDict()
_CACHE_SIZE = 128


def _structure_key(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    parts: list[Any] = [type(model).__module__, type(model).__qualname__, tuple(input_shape)]
    for name, m in model.named_modules():
        row: tuple[Any, ...] = (name, type(m).__name__)
        if isinstance(m, nn.modules.conv._ConvNd):
            row += (
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                _bias_numel(m),
            )
        elif isinstance(m, nn.Linear):
            row += (m.in_features, m.out_features, m.bias is not None)
        else:
            row += tuple((n, tuple(p.shape)) for n, p in m.named_parameters(recurse=False))
        parts.append(row)
    return tuple(parts)


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> GraphSummary:
    """The kernels and memory timeline of `model` on an input of `input_shape` (batch included)."""
    key = _structure_key(model, input_shape)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    was_training = model.training
    model.eval()
    try:
        try:
            summary = _summarize_fx(model, input_shape)
        except Exception as exc:  # noqa: BLE001 - any tracing failure falls back to hooks
            summary = _summarize_hooks(model, input_shape, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        model.train(was_training)
    _CACHE[key] = summary
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return summary


def clear_cache() -> None:
    _CACHE.clear()
