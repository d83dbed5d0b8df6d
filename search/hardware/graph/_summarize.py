"""Turn a model into the list of kernels a deployment runtime would run, plus a memory timeline.

A *kernel* is what the runtime executes after its usual fusions: batch norm folded into the
convolution before it, and a cheap activation (ReLU, ReLU6, sigmoid ...) fused into it. Views,
flattening, dropout and identities cost nothing. Everything else that is not a convolution, a
linear layer or a matrix product is element-wise work costed by the bytes it moves
(FlopCounterMode counts those ops as 0 FLOPs).

Activation memory comes from a liveness analysis of the torch.fx graph: a buffer is live from the
node that produces it to its last reader, so a tensor kept for a later residual add or concat
counts while the branch runs.

The work is split by concern: `_fx_trace` runs the model once under torch.fx, `_op_rules` says
what each op costs, `_fx_summary` turns the nodes into kernels, `_liveness` and `_tflm_graph`
lay out the activation memory, `_hooks` covers models torch.fx cannot trace. This module
caches the summary per model structure.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from ._fx_summary import summarize_fx
from ._hooks import summarize_hooks
from ._kernels import GraphSummary
from ._op_rules import bias_numel, is_folded_module

# Cache per model structure: the search costs many plans whose models share a structure.
_CACHE: OrderedDict[Any, GraphSummary] = OrderedDict()
_CACHE_SIZE = 128


def _bookkeeping(m: nn.Module) -> bool:
    """Fake quant and observers, and parametrization containers holding only those: folded into
    the int kernels, they change no kernel and no buffer, so plans that differ only in bit
    widths share one summary."""
    if is_folded_module(m):
        return True
    if not isinstance(m, (parametrize.ParametrizationList, nn.ModuleDict)):
        return False
    kids = list(m.modules())[1:]
    return bool(kids) and all(_bookkeeping(k) for k in kids)


def _type_name(m: nn.Module) -> str:
    """The class name, that of the layer before `parametrize` wrapped it where every
    parametrization is bookkeeping."""
    held = getattr(m, "parametrizations", None)
    if parametrize.is_parametrized(m) and isinstance(held, nn.Module) and _bookkeeping(held):
        return type(m).__bases__[0].__name__
    return type(m).__name__


def _structure_key(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    parts: list[Any] = [type(model).__module__, type(model).__qualname__, tuple(input_shape)]
    for name, m in model.named_modules():
        if _bookkeeping(m):
            continue
        row: tuple[Any, ...] = (name, _type_name(m))
        if isinstance(m, nn.modules.conv._ConvNd):
            row += (
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                bias_numel(m),
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
            summary = summarize_fx(model, input_shape)
        except Exception as exc:  # noqa: BLE001 - any tracing failure falls back to hooks
            summary = summarize_hooks(model, input_shape, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        model.train(was_training)
    _CACHE[key] = summary
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return summary


def clear_cache() -> None:
    _CACHE.clear()
