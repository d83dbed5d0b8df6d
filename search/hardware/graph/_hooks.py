"""Fallback for models torch.fx cannot trace: forward hooks on the leaf modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._fx_trace import LeafTracer
from ._kernels import GraphSummary, Kernel
from ._op_rules import (
    ALIAS_MODULES,
    FUSABLE_MODULES,
    NORM_MODULES,
    bias_numel,
    conv_kind,
    conv_macs,
    is_folded_module,
    layer_weight_numel,
    numel,
    param_numels,
    tensor_shapes,
)


def summarize_hooks(model: nn.Module, input_shape: tuple[int, ...], reason: str) -> GraphSummary:
    records: list[tuple[str, nn.Module, list[tuple[int, ...]], list[tuple[int, ...]]]] = []
    tracer = LeafTracer()
    handles = []
    leaves: list[str] = []
    for name, m in model.named_modules():
        if m is model or not tracer.is_leaf_module(m, name):
            continue
        if any(name.startswith(p + ".") for p in leaves):
            continue  # inside a leaf (a conv's parametrization)
        leaves.append(name)

        def hook(mod: nn.Module, args: Any, out: Any, _name: str = name) -> None:
            records.append((_name, mod, tensor_shapes(args), tensor_shapes(out)))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    kernels: list[Kernel] = []
    peak = numel(input_shape)
    prev_compute = False
    for name, m, ins, outs in records:
        # Nested leaves (a conv inside a hooked custom leaf) are not possible: leaves are childless
        # or conv/linear, so every record is one kernel.
        in_elems = sum(numel(s) for s in ins)
        out_elems = sum(numel(s) for s in outs)
        peak = max(peak, in_elems + out_elems)
        if isinstance(m, nn.modules.conv._ConvNd):
            kernels.append(
                Kernel(
                    name,
                    conv_kind(m.groups, m.in_channels),
                    conv_macs(m, outs[0], ins[0]),
                    in_elems,
                    out_elems,
                    layer_weight_numel(m),
                    bias_numel(m),
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
                    layer_weight_numel(m),
                    bias_numel(m),
                    m.out_features,
                    name,
                )
            )
            prev_compute = True
        elif (isinstance(m, NORM_MODULES + FUSABLE_MODULES) and prev_compute) or (
            isinstance(m, ALIAS_MODULES) or is_folded_module(m)
        ):
            continue
        else:
            kernels.append(Kernel(name, "elementwise", 0, in_elems, out_elems))
            prev_compute = False
    params, _, other = param_numels(model)
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
        input_elems=numel(input_shape),
        traced=False,
        notes=(note,),
    )
