"""Which groups of torch-pruning's dependency graph can be pruned, and why the others cannot.

A group is left whole, and its layers reported, when pruning it would break the model or
silently remove the wrong channels: its channels pass through a reshape, concatenation, split or
slice the graph cannot map (ShuffleNet's channel shuffle, Swin's channels-last patch merge),
reach a layer whose container uses the weight directly instead of calling it (Swin's
attention), or are a model output. Layers the pruner must not touch at all (the output layer,
fixed widths, attention blocks) come from `_ignored`.
"""

from __future__ import annotations

import math
from typing import Any

import torch_pruning as tp
from torch import nn

from ._layers import LAYER_TYPES, attention_modules, fixed_width
from ._pruning_compat import OutputGraph, _op_dim, _op_sizes, _reshape_sizes

_WEIGHTED = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
)


def _out_members(dg: tp.DependencyGraph, group) -> list[nn.Module]:
    return [
        d.target.module
        for d, _ in group
        if dg.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, LAYER_TYPES)
    ]


def _direct_weights(model: nn.Module, dg: tp.DependencyGraph) -> dict[int, str]:
    """id of each parameter of a layer the graph never saw called -> the layer's name.

    Such a layer's container hands its weight to a functional op (Swin's attention calls
    `F.linear(x, self.qkv.weight)`, nn.MultiheadAttention its `out_proj.weight`), which the
    graph takes for an element-wise op: it cannot see that the op changes the width.
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _WEIGHTED) and m not in dg.module2node:
            for p in m.parameters(recurse=False):
                out[id(p)] = name
    return out


def _channels(dg: tp.DependencyGraph, node, *, out: bool) -> int | None:
    """Channels `node` produces (out) or takes (not out), as the graph infers them."""
    infer = tp.dependency.shape_infer
    fn = infer.infer_out_channels_recursively if out else infer.infer_in_channels_recursively
    try:
        ch = fn(dg, node, [0])
    except Exception:  # noqa: BLE001 - unknown: the caller stays conservative
        return None
    return int(ch) if ch else None


def _channels_into(dg: tp.DependencyGraph, node) -> int | None:
    """Channels of the tensor entering a reshape node."""
    for n in node.inputs:
        ch = _channels(dg, n, out=True)
        if ch:
            return ch
    return None


def _keeps_channels(
    before: tuple[int, ...], after: tuple[int, ...], channels: int | None = None
) -> bool:
    """A reshape that leaves every channel index where it was.

    Channels last: only leading dims merge or split, (B, H, W, C) <-> (B*H*W, C), and C is no
    other dim's size (else the channels might be the dim 1 that merges).
    Channels at dim 1: only trailing dims merge or split, (B, C, H, W) -> (B, C, H*W).
    Without the channel count, only (B, L, C) <-> (B*L, C) and (B, C, 1, 1) -> (B, C) pass.
    """
    if len(before) < 2 or len(after) < 2:
        return False
    last = before[-1] == after[-1] and math.prod(before[:-1]) == math.prod(after[:-1])
    first = before[:2] == after[:2] and math.prod(before[2:]) == math.prod(after[2:])
    if channels is None:
        return (last and len(before) <= 3 and len(after) <= 3) or (
            first and math.prod(before[2:]) == 1
        )
    if last and before[-1] == channels and channels not in (*before[1:-1], *after[1:-1]):
        return True
    return first and before[1] == channels and channels not in (*before[2:], *after[2:])


def _reshape_keeps_channels(dg: tp.DependencyGraph, node) -> bool:
    """torch-pruning maps a flatten it recognises; any other reshape it treats as the identity,
    which silently mis-prunes e.g. a channel shuffle's (B, C, H, W) -> (B, 2, C/2, H, W)."""
    mappings = [m for d in node.dependencies for m in d.index_mapping]
    if any(type(m).__name__ == "_FlattenIndexMapping" for m in mappings):
        return True
    sizes = _reshape_sizes(node.grad_fn)
    return sizes is not None and _keeps_channels(*sizes, _channels_into(dg, node))


def _in_order(node) -> bool:
    """Whether torch-pruning's offsets of a split's outputs / a concat's inputs are the right ones.

    It gives the i-th part's offsets to the i-th neighbour in the order it traced them, so the
    i-th neighbour must be the one that produces / takes exactly part i.
    """
    fn = node.grad_fn
    if node.type == tp.ops.OPTYPE.CONCAT:
        nxt = getattr(fn, "next_functions", ())
        return len(nxt) == len(node.inputs) and all(
            f is not None and f is n.grad_fn for (f, _), n in zip(nxt, node.inputs, strict=True)
        )
    for i, out in enumerate(node.outputs):
        used = {k for f, k in getattr(out.grad_fn, "next_functions", ()) if f is fn}
        if used != {i}:
            return False
    return True


_PARTS = (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE)
_PART_MAPPINGS = ("_ConcatIndexMapping", "_SplitIndexMapping", "_SliceIndexMapping")


def _parts_ok(dg: tp.DependencyGraph, node) -> bool:
    """Whether torch-pruning carries channel indices through a concat / split / slice rightly.

    It maps one along dim 1 (channels first), which must then take its parts in order (a slice:
    its dim must be the channels); any other it passes through unchanged, which is right only
    when the op keeps the channel count and its dim does not hold the channels (ViT's class
    token joins the tokens: right; Swin's channels-last merge of four patches: wrong).
    """
    mapped = any(
        type(m).__name__ in _PART_MAPPINGS for d in node.dependencies for m in d.index_mapping
    )
    sizes, dim = _op_sizes(node.grad_fn), _op_dim(node.grad_fn)
    if sizes is None or dim is None:
        return False
    if mapped and node.type != tp.ops.OPTYPE.SLICE:
        return dim == 1 and _in_order(node)
    into = [_channels(dg, n, out=True) for n in node.inputs]
    if mapped:
        return dim == 1 and into == [sizes[1]]
    channels = set(into) | {_channels(dg, n, out=False) for n in node.outputs}
    return len(channels) == 1 and None not in channels and sizes[dim] not in channels


def _node_verdict(dg: tp.DependencyGraph, node, direct: dict[int, str]) -> str | None:
    """Why channels cannot pass through `node`; None if they can."""
    if node.type == tp.ops.OPTYPE.RESHAPE and not _reshape_keeps_channels(dg, node):
        return (
            "its channels pass through a reshape the dependency graph cannot follow "
            "(e.g. a channel shuffle)"
        )
    if node.type in _PARTS and not _parts_ok(dg, node):
        return (
            "its channels pass through a concatenation, split or slice the dependency graph "
            "cannot place"
        )
    for nxt, _ in getattr(node.grad_fn, "next_functions", ()) or ():
        layer = direct.get(id(getattr(nxt, "variable", None)))
        if layer is not None:
            return (
                f"its channels reach {layer}, whose weight its container uses directly (not by "
                "calling it), which the dependency graph cannot follow"
            )
    return None


def _why_unsafe(
    dg: OutputGraph,
    group,
    direct: dict[int, str],
    verdicts: dict[Any, str | None] | None = None,
) -> str | None:
    """Why pruning `group` would break or silently corrupt the model; None if it would not.
    `verdicts` caches `_node_verdict` across the groups of one graph."""
    verdicts = {} if verdicts is None else verdicts
    for dep, _ in group:
        for node in (dep.source, dep.target):
            if node not in verdicts:
                verdicts[node] = _node_verdict(dg, node, direct)
            if verdicts[node] is not None:
                return verdicts[node]
        # A returned tensor a layer also reads has no output node of its own (FPN's P5).
        returned = not dep.target.outputs or dep.target.grad_fn in dg.output_roots
        if dep.target.type == tp.ops.OPTYPE.OUTPUT or (
            returned and dg.is_out_channel_pruning_fn(dep.handler)
        ):
            return "its channels are a model output"
    return None


def _candidate_groups(
    model: nn.Module, dg: OutputGraph, ignored: dict[nn.Module, str]
) -> tuple[list, dict[nn.Module, str], dict[int, str]]:
    """The groups free of `ignored` layers that can be pruned; {layer: why not} for the layers of
    those that cannot; the directly used weights (`_direct_weights`)."""
    direct = _direct_weights(model, dg)
    groups: list = []
    unsafe: dict[nn.Module, str] = {}
    verdicts: dict[Any, str | None] = {}
    for group in dg.get_all_groups(list(ignored), [nn.Conv2d, nn.Linear]):
        why = _why_unsafe(dg, group, direct, verdicts)
        if why is None:
            groups.append(group)
        else:
            for m in _out_members(dg, group):
                unsafe[m] = why
    return groups, unsafe, direct


def _blocker(
    dg: tp.DependencyGraph,
    module: nn.Module,
    ignored: dict[nn.Module, str],
    direct: dict[int, str],
) -> str:
    """Why the group of `module` cannot be pruned: the ignored layer coupled to its channels."""
    if module not in dg.module2node:
        if any(id(p) in direct for p in module.parameters(recurse=False)):
            return (
                "its container uses its weight directly (not by calling it), which the "
                "dependency graph cannot follow"
            )
        return "not reached by the forward pass"
    try:
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, [0])
    except Exception:  # noqa: BLE001 - a module the graph cannot group
        return "the dependency graph offers no prunable group for it"
    for d, _ in group:
        target = d.target.module
        if dg.is_out_channel_pruning_fn(d.handler) and isinstance(target, nn.Module):
            for m in target.modules():
                if m in ignored:
                    return f"its channels are coupled to {ignored[m]}"
    return "the dependency graph offers no prunable group for it"


def _ignored(
    model: nn.Module, extra: dict[str, str], logits: str | None
) -> tuple[dict[nn.Module, str], dict[nn.Module, str]]:
    """Layers torch-pruning must not prune: {module: what it is}, {module: why not}."""
    ignored: dict[nn.Module, str] = {}
    direct: dict[nn.Module, str] = {}  # why an ignored layer itself is not pruned
    if logits is not None:
        ignored[model.get_submodule(logits)] = f"the output layer {logits}"
    for n, why in fixed_width(model).items():
        ignored[model.get_submodule(n)] = f"{n}, whose width is fixed"
        direct[model.get_submodule(n)] = why
    for n, m in attention_modules(model).items():
        # Attention widths are tied to the head count: heads go whole (`prune_heads`), and a
        # block reshapes by its input's width, which the dependency graph cannot see.
        for sub in m.modules():
            ignored[sub] = f"the attention block {n}"
            direct[sub] = f"part of the attention block {n}"
    for n, why in extra.items():
        ignored[model.get_submodule(n)] = f"{n}, which the pruner cannot handle"
        direct[model.get_submodule(n)] = why.removeprefix("prune: ")
    return ignored, direct
