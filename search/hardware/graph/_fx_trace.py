"""Trace a model with torch.fx and record every node's output shape in one run."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from ._op_rules import (
    ALIAS_MODULES,
    FUSABLE_MODULES,
    KNOWN_FUNCS,
    NORM_MODULES,
    tensor_shapes,
)


class LeafTracer(fx.Tracer):
    """fx tracer keeping conv/linear (parametrized ones too) and childless modules whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)):
            return True
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        if not any(True for _ in m.children()):
            return True
        return super().is_leaf_module(m, qualname)


def _opaque(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_module":
        m = modules[str(n.target)]
        known = (
            nn.modules.conv._ConvNd,
            nn.Linear,
            nn.MultiheadAttention,
            *NORM_MODULES,
            *FUSABLE_MODULES,
            *ALIAS_MODULES,
        )
        return not isinstance(m, known) and type(m).__module__.split(".")[0] != "torch"
    if n.op == "call_function":
        return n.target not in KNOWN_FUNCS and getattr(n.target, "__module__", "") not in (
            "_operator",
            "operator",
        )
    return False


def trace_graph(
    model: nn.Module, example: torch.Tensor
) -> tuple[fx.GraphModule, dict[str, Any], dict[str, int], set[str]]:
    graph = LeafTracer().trace(model)
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
                shapes[n.name] = tensor_shapes(out)
            else:
                shapes[n.name] = None
            return out

    with torch.no_grad():
        _Rec(gm).run(example)
    return gm, shapes, flops, identity
