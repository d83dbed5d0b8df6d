"""Turn a traced torch.fx graph into runtime kernels: one rule per op kind.

Each node gets a kind: `compute` (a conv, linear or matrix product: one kernel), `fused` (batch
norm or a cheap activation folded into the compute before it), `alias` (a view: no kernel, the
input's buffer), `split`, `elementwise` (bytes moved), `io` or `other`. The rules are looked
up per node op (`call_module` by module type, `call_function` by function, `call_method` by
name); a node no rule claims is element-wise work, or compute when it counted FLOPs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ._fx_trace import trace_graph
from ._kernels import GraphSummary, Kernel
from ._liveness import liveness
from ._op_rules import (
    ALIAS_FUNCS,
    ALIAS_METHODS,
    ALIAS_MODULES,
    FUSABLE_FUNCS,
    FUSABLE_METHODS,
    FUSABLE_MODULES,
    NORM_MODULES,
    bias_numel,
    conv_kind,
    conv_macs,
    is_activation,
    is_add,
    is_cat,
    is_epilogue_activation,
    is_folded_module,
    is_gate,
    is_mul,
    is_split,
    layer_weight_numel,
    mha_macs,
    numel,
    param_numels,
)
from ._tflm_graph import tflm_graph


@dataclass(frozen=True)
class _Step:
    """One tensor-producing node being classified, with its tensor inputs and sizes."""

    node: fx.Node
    ins: list[fx.Node]
    out_shape: tuple[int, ...]
    in_elems: int
    out_elems: int


class _Walk:
    """The state of one pass over the graph in order: kinds, kernels and fusions so far."""

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule,
        shapes: dict[str, Any],
        flops: dict[str, int],
        identity: set[str],
    ) -> None:
        self.modules = dict(model.named_modules())
        self.nodes = list(gm.graph.nodes)
        self.users = {n: [u for u in n.users] for n in self.nodes}
        self.shapes = shapes
        self.flops = flops
        self.identity = identity
        self.kind_of: dict[fx.Node, str] = {}  # compute | fused | alias | elementwise | io | other
        self.kernels: list[Kernel] = []
        self.fused_into: dict[fx.Node, fx.Node] = {}
        self.folded_bias = 0
        self.conv_has_bias: dict[fx.Node, bool] = {}
        self.compute_kernel_index: dict[fx.Node, int] = {}
        self.residual_nodes: set[fx.Node] = set()

    # -- graph queries ---------------------------------------------------------------------------

    def shape(self, n: Any) -> tuple[int, ...] | None:
        s = self.shapes.get(n.name) if isinstance(n, fx.Node) else None
        return s if isinstance(s, tuple) else None

    def tensor_inputs(self, n: fx.Node) -> list[fx.Node]:
        seen: list[fx.Node] = []
        for a in n.all_input_nodes:
            if isinstance(self.shapes.get(a.name), tuple) and a not in seen:
                seen.append(a)
        return seen

    def from_conv(self, a: fx.Node) -> bool:
        """`a` is a conv's output (through fused bn/activation and no-op aliases), read once."""
        users, kind_of = self.users, self.kind_of
        while kind_of.get(a) == "alias" and len(users[a]) == 1 and len(self.tensor_inputs(a)) == 1:
            a = self.tensor_inputs(a)[0]
        root = self.fused_into.get(a, a)
        return (
            len(users[a]) == 1
            and kind_of.get(root) == "compute"
            and isinstance(self.modules.get(str(root.target)), nn.modules.conv._ConvNd)
        )

    def fusion_root(self, n: fx.Node) -> fx.Node | None:
        """The compute node `n` fuses into: its only input, when nothing else reads that input."""
        ins = self.tensor_inputs(n)
        if len(ins) != 1:
            return None
        src = ins[0]
        if len(self.users[src]) != 1:
            return None
        root = self.fused_into.get(src, src)
        return root if self.kind_of.get(root) == "compute" else None

    def compute_output(self, a: fx.Node) -> bool:
        """`a` is the output of a compute node (through a fused batch norm or activation)."""
        return self.kind_of.get(self.fused_into.get(a, a)) == "compute"

    def swish_pair(self, gate: fx.Node) -> fx.Node | None:
        """The mul of x * gate(x), when `gate` and that mul are the only readers of x."""
        ins = self.tensor_inputs(gate)
        if len(ins) != 1 or len(self.users[gate]) != 1:
            return None
        x, mul = ins[0], self.users[gate][0]
        if not is_mul(mul) or set(self.tensor_inputs(mul)) != {x, gate}:
            return None
        return mul if set(self.users[x]) == {gate, mul} else None

    def fused_activation(self, step: _Step) -> bool:
        """Element-wise work a `fused_activation` runtime runs inside a conv (Kernel docs)."""
        n = step.node
        if is_epilogue_activation(n, self.modules):
            return self.fusion_root(n) is not None
        if is_gate(n, self.modules):
            ins = step.ins
            return len(ins) == 1 and self.compute_output(ins[0]) and self.swish_pair(n) is not None
        if is_mul(n) and len(step.ins) == 2:
            return any(
                is_gate(gate, self.modules)
                and self.swish_pair(gate) is n
                and self.compute_output(self.tensor_inputs(gate)[0])
                for gate in step.ins
            )
        return False

    # -- recording -------------------------------------------------------------------------------

    def compute(self, n: fx.Node, kernel: Kernel, has_bias: bool | None = True) -> bool:
        """Record a compute kernel; `has_bias` None: no batch norm can fold a bias into it."""
        self.kernels.append(kernel)
        self.kind_of[n] = "compute"
        if has_bias is not None:
            self.conv_has_bias[n] = has_bias
            self.compute_kernel_index[n] = len(self.kernels) - 1
        return True

    def alias(self, n: fx.Node) -> bool:
        self.kind_of[n] = "alias"
        return True

    def fuse(self, n: fx.Node) -> bool:
        """Fuse `n` into the compute before it, if it is that compute's only reader."""
        root = self.fusion_root(n)
        if root is None:
            return False
        self.fused_into[n] = root
        self.kind_of[n] = "fused"
        return True

    # -- the pass --------------------------------------------------------------------------------

    def run(self) -> None:
        for n in self.nodes:
            self.classify(n)

    def classify(self, n: fx.Node) -> None:
        if n.op in ("placeholder", "output"):
            self.kind_of[n] = "io"
            return
        if n.op == "get_attr":
            self.kind_of[n] = "other"
            return
        out_shape = self.shapes.get(n.name)
        ins = self.tensor_inputs(n)
        if isinstance(out_shape, list) and out_shape and ins and is_split(n):
            # chunk/split copy their slices in a runtime (ONNX Split/Slice), one pass in all.
            for i, piece in enumerate(out_shape):
                size = numel(piece)
                self.kernels.append(Kernel(f"{n.name}.{i}", "elementwise", 0, size, size))
            self.kind_of[n] = "split"
            return
        if not isinstance(out_shape, tuple):
            # Tuples (getitem sources), sizes and other non-tensors: no kernel, alias memory.
            self.kind_of[n] = "alias" if out_shape else "other"
            return
        in_elems = sum(numel(self.shapes[a.name]) for a in ins)
        step = _Step(n, ins, out_shape, in_elems, numel(out_shape))
        if n.op == "call_function" and n.target is operator.getitem and ins:
            self.index(step)
            return
        if n.op == "call_module" and str(n.target) in self.identity:
            self.alias(n)
            return
        rule = _OP_RULES.get(n.op)
        if rule is not None and rule(self, step):
            return
        if self.flops.get(n.name, 0) > 0:
            self.opaque_compute(step)
            return
        self.elementwise(step)

    def index(self, step: _Step) -> None:
        """Indexing a tensor (x[:, 0], x[:, :c]) copies the selection (ONNX Slice/Gather)."""
        n = step.node
        if step.out_elems == step.in_elems:
            self.kind_of[n] = "alias"
            return
        self.kernels.append(
            Kernel(
                name=n.name,
                kind="elementwise",
                macs=0,
                in_elems=step.out_elems,
                out_elems=step.out_elems,
            )
        )
        self.kind_of[n] = "elementwise"

    def opaque_compute(self, step: _Step) -> None:
        """An op the tables do not know that counted FLOPs: a matrix product, say."""
        n = step.node
        self.compute(
            n,
            Kernel(
                name=n.name,
                kind="linear",
                macs=self.flops[n.name] // 2,
                in_elems=step.in_elems,
                out_elems=step.out_elems,
            ),
        )

    def elementwise(self, step: _Step) -> None:
        """The rest moves bytes: adds, muls, concat, pooling, norms, activations, softmax."""
        n, ins, out_shape = step.node, step.ins, step.out_shape
        residual = False
        if is_add(n) and len(ins) == 2:
            residual = any(self.from_conv(a) for a in ins)
        elif is_activation(n, self.modules) and len(ins) == 1 and len(self.users[ins[0]]) == 1:
            residual = ins[0] in self.residual_nodes
        if residual:
            self.residual_nodes.add(n)
        fused = not residual and self.fused_activation(step)
        follows = (
            not residual
            and not fused
            and is_activation(n, self.modules)
            and len(ins) == 1
            and self.kind_of.get(ins[0]) == "elementwise"
            and len(self.users[ins[0]]) == 1
        )
        self.kernels.append(
            Kernel(
                name=n.name,
                kind="elementwise",
                macs=0,
                in_elems=step.in_elems,
                out_elems=step.out_elems,
                residual=residual,
                fused_activation=fused,
                concat=is_cat(n),
                follows_pointwise=follows,
                out_channels=int(out_shape[1]) if len(out_shape) == 4 else 0,
            )
        )
        self.kind_of[n] = "elementwise"

    # -- call_module rules -----------------------------------------------------------------------

    def module(self, step: _Step) -> bool:
        m = self.modules[str(step.node.target)]
        for types, rule in _MODULE_RULES:
            if isinstance(m, types):
                return rule(self, step, m)
        if (isinstance(m, ALIAS_MODULES) or is_folded_module(m)) and (
            step.ins and step.out_elems == numel(self.shapes[step.ins[0].name])
        ):
            return self.alias(step.node)
        return False

    def conv_module(self, step: _Step, m: Any) -> bool:
        n = step.node
        in_shape = self.shape(step.ins[0]) if step.ins else None
        kernel = Kernel(
            name=str(n.target),
            kind=conv_kind(m.groups, m.in_channels),
            macs=conv_macs(m, step.out_shape, in_shape or ()),
            in_elems=step.in_elems,
            out_elems=step.out_elems,
            weight_numel=layer_weight_numel(m),
            bias_numel=bias_numel(m),
            out_channels=int(m.out_channels),
            layer=str(n.target),
            in_channels=int(m.in_channels),
            groups=int(m.groups),
        )
        return self.compute(n, kernel, has_bias=bias_numel(m) > 0)

    def linear_module(self, step: _Step, m: Any) -> bool:
        n = step.node
        kernel = Kernel(
            name=str(n.target),
            kind="linear",
            macs=int(step.out_elems // m.out_features * m.in_features * m.out_features),
            in_elems=step.in_elems,
            out_elems=step.out_elems,
            weight_numel=layer_weight_numel(m),
            bias_numel=bias_numel(m),
            out_channels=int(m.out_features),
            layer=str(n.target),
        )
        return self.compute(n, kernel, has_bias=bias_numel(m) > 0)

    def attention_module(self, step: _Step, m: Any) -> bool:
        n = step.node
        q = self.shape(n.args[0]) if n.args else None
        k = self.shape(n.args[1]) if len(n.args) > 1 else q
        kernel = Kernel(
            name=str(n.target),
            kind="linear",
            macs=mha_macs(m, q or step.out_shape, k or step.out_shape),
            in_elems=step.in_elems,
            out_elems=step.out_elems,
            weight_numel=sum(p.numel() for p in m.parameters()),
            out_channels=int(m.embed_dim),
            layer=str(n.target),
        )
        return self.compute(n, kernel, has_bias=None)

    def norm_module(self, step: _Step, m: Any) -> bool:
        """A batch norm folds into the conv before it, adding a bias where the conv had none."""
        if not self.fuse(step.node):
            return False
        root = self.fused_into[step.node]
        if not self.conv_has_bias.get(root, True):
            self.folded_bias += self.kernels[self.compute_kernel_index[root]].out_channels
            self.conv_has_bias[root] = True
        return True

    def activation_module(self, step: _Step, m: Any) -> bool:
        return self.fuse(step.node)

    # -- call_function and call_method rules -----------------------------------------------------

    def function(self, step: _Step) -> bool:
        fn = step.node.target
        rule = _FUNCTION_RULES.get(fn)
        if rule is not None and rule(self, step):
            return True
        if fn in FUSABLE_FUNCS and self.fuse(step.node):
            return True
        return fn in ALIAS_FUNCS and self.alias(step.node)

    def method(self, step: _Step) -> bool:
        name = step.node.target
        if name in FUSABLE_METHODS and self.fuse(step.node):
            return True
        return name in ALIAS_METHODS and self.alias(step.node)

    def conv_function(self, step: _Step) -> bool:
        n = step.node
        w = self.shape(n.args[1]) if len(n.args) > 1 else None
        groups_arg: Any = n.kwargs.get("groups", n.args[6] if len(n.args) > 6 else 1)
        groups = int(groups_arg)
        if w is None:
            return False
        kernel = Kernel(
            name=n.name,
            kind=conv_kind(groups, w[1] * groups),
            macs=numel(step.out_shape) * math.prod(w[1:]),
            in_elems=numel(self.shape(n.args[0])),
            out_elems=step.out_elems,
        )
        return self.compute(n, kernel)

    def linear_function(self, step: _Step) -> bool:
        n = step.node
        w = self.shape(n.args[1]) if len(n.args) > 1 else None
        if w is None:
            return False
        kernel = Kernel(
            name=n.name,
            kind="linear",
            macs=numel(step.out_shape) * w[-1],
            in_elems=numel(self.shape(n.args[0])),
            out_elems=step.out_elems,
        )
        return self.compute(n, kernel)

    def matmul_function(self, step: _Step) -> bool:
        n = step.node
        a = self.shape(n.args[0])
        if a is None:
            return False
        kernel = Kernel(
            name=n.name,
            kind="linear",
            macs=numel(step.out_shape) * a[-1],
            in_elems=step.in_elems,
            out_elems=step.out_elems,
        )
        return self.compute(n, kernel)

    # -- the summary -----------------------------------------------------------------------------

    def folded_norm_params(self) -> int:
        """Parameters of the batch norms folded into a conv (only that conv's bias remains)."""
        return sum(
            sum(p.numel() for p in self.modules[str(n.target)].parameters(recurse=False))
            for n, k in self.kind_of.items()
            if k == "fused"
            and n.op == "call_module"
            and isinstance(self.modules[str(n.target)], NORM_MODULES)
        )


_Rule = Callable[[_Walk, _Step], bool]
_OP_RULES: dict[str, _Rule] = {
    "call_module": _Walk.module,
    "call_function": _Walk.function,
    "call_method": _Walk.method,
}
# First match wins, in this order; a module none matches may still be an alias.
_MODULE_RULES: tuple[tuple[Any, Callable[[_Walk, _Step, Any], bool]], ...] = (
    (nn.modules.conv._ConvNd, _Walk.conv_module),
    (nn.Linear, _Walk.linear_module),
    (nn.MultiheadAttention, _Walk.attention_module),
    (NORM_MODULES, _Walk.norm_module),
    (FUSABLE_MODULES, _Walk.activation_module),
)
_FUNCTION_RULES: dict[Any, _Rule] = {
    torch.nn.functional.conv1d: _Walk.conv_function,
    torch.nn.functional.conv2d: _Walk.conv_function,
    torch.nn.functional.conv3d: _Walk.conv_function,
    torch.nn.functional.linear: _Walk.linear_function,
    torch.matmul: _Walk.matmul_function,
    torch.bmm: _Walk.matmul_function,
    torch.mm: _Walk.matmul_function,
    operator.matmul: _Walk.matmul_function,
}


def summarize_fx(model: nn.Module, input_shape: tuple[int, ...]) -> GraphSummary:
    """The kernels and memory timeline of `model`, traced with torch.fx (raises if it cannot)."""
    gm, shapes, flops, identity = trace_graph(model, torch.zeros(input_shape))
    walk = _Walk(model, gm, shapes, flops, identity)
    walk.run()
    nodes, kind_of, users, modules = walk.nodes, walk.kind_of, walk.users, walk.modules
    peak, peak_ip, intervals = liveness(nodes, kind_of, shapes, users, modules)
    notes: tuple[str, ...] = ()
    try:
        tflm_buffers, tflm_ops = tflm_graph(nodes, kind_of, shapes, users, modules, intervals)
    except Exception as exc:  # noqa: BLE001 - a graph the TFLM model does not know: liveness
        tflm_buffers, tflm_ops = (), ()
        notes = (
            f"TFLite Micro memory model cannot follow this graph ({type(exc).__name__}); "
            "a tflm profile prices its memory by buffer liveness",
        )
    params, _, other = param_numels(model)
    return GraphSummary(
        kernels=tuple(walk.kernels),
        params=params,
        other_param_numel=max(other - walk.folded_norm_params(), 0),
        folded_bias_numel=walk.folded_bias,
        peak_elems=peak,
        peak_elems_dw_in_place=peak_ip,
        input_elems=numel(input_shape),
        traced=True,
        notes=notes,
        tflm_buffers=tflm_buffers,
        tflm_ops=tflm_ops,
    )
