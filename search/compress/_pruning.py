"""Structured channel pruning through torch-pruning's dependency graph, and magnitude sparsity.

Structured: layers coupled by residual adds, concatenations, depthwise groups or squeeze-excite
form one group in torch-pruning's DependencyGraph, and a group loses the same channels in every
member, so the channels physically go. Per-layer mode gives each group the mean of its members'
plan ratios; global mode ranks all groups' channels together against one ratio.
Unstructured: a fixed magnitude mask per layer, kept as a parametrization so fine-tuning cannot
revive pruned weights.

A group is left whole, and its layers reported, when pruning it would break the model or
silently remove the wrong channels: its channels pass through a reshape, concatenation, split or
slice the graph cannot map (ShuffleNet's channel shuffle, Swin's channels-last patch merge),
reach a layer whose container uses the weight directly instead of calling it (Swin's
attention), or are a model output. Such groups are set aside before ranking, so global mode
spreads its ratio over the groups that can be pruned. A plan that asks for pruning and removes
no channel says so under the key `MODEL_NOTE` of the skipped layers.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from spaces import PruneConfig

from ._layers import LAYER_TYPES, fixed_width, layer_modules, output_layer
from ._registry import Context, register_handler

MAX_RATIO = 0.9  # a group always keeps at least a tenth of its channels (and at least one)
MODEL_NOTE = "(model)"  # skipped-layers key of what concerns the whole model, not one layer
_IMPORTANCE = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
}


class WeightMask(nn.Module):
    """Parametrization: zero the weights outside a fixed mask."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, or dicts / lists / tuples of them, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _tensors(out)]


def _taylor_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Eval mode: BatchNorm must not fold this batch into its running statistics.
    model.zero_grad(set_to_none=True)
    x, y = batch
    logits = _tensors(model(x))[0]  # a dict output (segmentation): its first entry, "out"
    if logits.dim() > 2 and y.dim() == 1:
        logits = logits.flatten(2).mean(2)  # per-image labels for a per-pixel output
    F.cross_entropy(logits, y).backward()


# --- torch-pruning 1.6 under torch 2: shape attributes it looks for under their old names ------
# It reads a reshape's input sizes from `grad_fn._saved_self_sizes` and a split's sizes from
# `_saved_self_sizes` / `_saved_split_sizes`; torch 2 names them `_saved_self_sym_sizes` and
# `_saved_split_size` (chunk). Missing them, it infers both from the channel counts around the
# op, which through ShuffleNetV2's chunk, concat and channel shuffle gives a split of sizes
# [None, 48] (IndexError) and a reshape ratio of 0 (ZeroDivisionError), and through Swin's
# window partition attaches flatten mappings to reshapes that are none, so a group's index
# lists grow without end. It also takes a `_saved_dim` of 2**64 - 1 (torch's record of dim=-1)
# for an uninitialised value and maps Swin's channels-last torch.cat(..., -1) as a channel
# concat, whose sizes it cannot infer (TypeError: int + NoneType). `_guarded_shapes` swaps in
# the three functions below meanwhile; `_why_unsafe` then judges what they leave unmapped.
_TP_INDEX_MAPPING: Any = tp.dependency.index_mapping
_TP_SHAPE_INFER: Any = tp.dependency.shape_infer
_TP_RESHAPE_MAPPING = _TP_INDEX_MAPPING.update_reshape_index_mapping
_TP_CONCAT_MAPPING = _TP_INDEX_MAPPING.update_concat_index_mapping
_TP_INIT_SHAPES = _TP_SHAPE_INFER.init_shape_information
_PATCH_LOCK = threading.RLock()


def _reshape_sizes(fn: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, output shape) of a view / reshape node's autograd function."""
    try:
        sizes = getattr(fn, "_saved_self_sym_sizes", None)
        if sizes is None:
            sizes = fn._saved_self_sizes  # torch < 2
        return tuple(int(v) for v in sizes), tuple(int(v) for v in fn._input_metadata[0].shape)
    except (AttributeError, IndexError, TypeError):
        return None


def _reshape_index_mapping(graph: Any, node: Any) -> None:
    """torch-pruning's reshape index mapping, for a flatten (B, C, H, W) -> (B, C*H*W) only.

    Any other reshape stays unmapped (the identity), and `_reshape_keeps_channels` decides
    whether a group through it may be pruned.
    """
    sizes = _reshape_sizes(node.grad_fn)
    if sizes is None:
        return
    before, after = sizes
    if len(before) == 4 and len(after) == 2 and after == (before[0], math.prod(before[1:])):
        with contextlib.suppress(ZeroDivisionError):
            _TP_RESHAPE_MAPPING(graph, node)


def _op_sizes(fn: Any) -> tuple[int, ...] | None:
    """The shape a concat produces, or a split / slice takes."""
    try:
        if "cat" in fn.name().lower():
            return tuple(int(v) for v in fn._input_metadata[0].shape)
        return tuple(int(v) for v in fn._saved_self_sym_sizes)
    except (AttributeError, IndexError, TypeError):
        return None


def _op_dim(fn: Any) -> int | None:
    """The dim a concat / split / slice autograd function works on (non-negative); None if it
    does not say. torch records a negative dim as its unsigned 64-bit image."""
    dim, sizes = getattr(fn, "_saved_dim", None), _op_sizes(fn)
    if dim is None or not sizes:
        return None
    dim = int(dim)
    if dim >= 2**63:
        dim -= 2**64
    return dim % len(sizes) if -len(sizes) <= dim < len(sizes) else None


def _split_sizes(fn: Any) -> list[int] | None:
    """Sizes of the parts of a split / chunk along dim 1; None if it splits another dim or does
    not say."""
    if _op_dim(fn) != 1:
        return None
    total = int(fn._saved_self_sym_sizes[1])
    if getattr(fn, "_saved_split_sizes", None) is not None:
        return [int(v) for v in fn._saved_split_sizes]
    size = int(getattr(fn, "_saved_split_size", 0) or 0)
    if size <= 0:
        return None
    return [min(size, total - start) for start in range(0, total, size)]


def _init_shape_information(graph: Any) -> None:
    """torch-pruning's split sizes, read from torch 2's attribute names where it missed them."""
    _TP_INIT_SHAPES(graph)
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT:
            continue
        chs = _split_sizes(node.grad_fn)
        if chs is not None:
            node.module.split_sizes = chs
            node.module.offsets = [0, *itertools.accumulate(chs)]
        else:  # another dim, or it does not say: no mapping, `_parts_ok` judges
            node.module.split_sizes = node.module.offsets = None


def _concat_index_mapping(graph: Any, node: Any) -> None:
    """torch-pruning's concat index mapping, for a concat along dim 1 only (others unmapped)."""
    if _op_dim(node.grad_fn) == 1:
        with contextlib.suppress(TypeError, IndexError, ZeroDivisionError):
            _TP_CONCAT_MAPPING(graph, node)


@contextlib.contextmanager
def _guarded_shapes() -> Iterator[None]:
    """Use the three functions above in torch-pruning for the duration (one thread at a time).

    Its UserWarnings (unwrapped parameters, recursion depth) are silenced meanwhile: what they
    imply reaches the skipped layers.
    """
    with _PATCH_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch_pruning\.")
        saved = (
            _TP_INDEX_MAPPING.update_reshape_index_mapping,
            _TP_INDEX_MAPPING.update_concat_index_mapping,
            _TP_SHAPE_INFER.init_shape_information,
        )
        _TP_INDEX_MAPPING.update_reshape_index_mapping = _reshape_index_mapping
        _TP_INDEX_MAPPING.update_concat_index_mapping = _concat_index_mapping
        _TP_SHAPE_INFER.init_shape_information = _init_shape_information
        try:
            yield
        finally:
            (
                _TP_INDEX_MAPPING.update_reshape_index_mapping,
                _TP_INDEX_MAPPING.update_concat_index_mapping,
                _TP_SHAPE_INFER.init_shape_information,
            ) = saved


# --- which groups can be pruned ----------------------------------------------------------------
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
    dg: tp.DependencyGraph,
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
        if dep.target.type == tp.ops.OPTYPE.OUTPUT or (
            not dep.target.outputs and dg.is_out_channel_pruning_fn(dep.handler)
        ):
            return "its channels are a model output"
    return None


def _candidate_groups(
    model: nn.Module, dg: tp.DependencyGraph, ignored: dict[nn.Module, str]
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
    for n, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            # Attention widths are tied to the head count; the projections keep their size.
            for sub in m.modules():
                ignored[sub] = f"the attention block {n}"
                direct[sub] = f"part of the attention block {n}"
    for n, why in extra.items():
        ignored[model.get_submodule(n)] = f"{n}, which the pruner cannot handle"
        direct[model.get_submodule(n)] = why.removeprefix("prune: ")
    return ignored, direct


def _structured(
    model: nn.Module,
    cfg: PruneConfig,
    ctx: Context,
    extra: dict[str, str],
    skips: dict[str, str],
    logits: str | None,
) -> nn.Module:
    names = {m: n for n, m in model.named_modules()}
    ignored, direct = _ignored(model, extra, logits)
    example = ctx.example_inputs()
    requested = {
        n: (cfg.global_ratio if cfg.global_ratio is not None else cfg.ratio(ctx.key(n)))
        for n, _ in layer_modules(model)
    }
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    groups, unsafe, weights = _candidate_groups(model, dg, ignored)
    common = dict(
        ignored_layers=[*ignored, *unsafe],  # unsafe groups stay out of the ranking
        max_pruning_ratio=MAX_RATIO,
        root_module_types=[nn.Conv2d, nn.Linear],
    )
    importance = _IMPORTANCE[cfg.importance]()
    if cfg.global_ratio is not None:
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance,
            global_pruning=True,
            pruning_ratio=cfg.global_ratio,
            **common,
        )
    else:
        ratios: dict[nn.Module, float] = {}
        for group in groups:
            members = [m for m in _out_members(dg, group) if not _is_depthwise(m)]
            values = [requested.get(names[m], 0.0) for m in members]
            ratio = sum(values) / len(values) if values else 0.0
            if ratio > 0:
                ratios[group[0].dep.target.module] = min(ratio, MAX_RATIO)
        pruner = tp.pruner.BasePruner(
            model, example, importance, pruning_ratio=0.0, pruning_ratio_dict=ratios, **common
        )
    in_groups = {m for group in groups for m in _out_members(dg, group)}
    for name, m in layer_modules(model):
        if m in in_groups or not requested.get(name):
            continue
        if name == logits:
            if cfg.global_ratio is None:
                skips[name] = "prune: the output layer keeps one channel per class"
            continue
        if m in unsafe:
            skips[name] = f"prune: {unsafe[m]}"
            continue
        if _is_depthwise(m):
            continue  # pruned with the layer that feeds it
        if m in ignored:
            if cfg.global_ratio is None or name in extra:  # asked for: say why not
                skips[name] = f"prune: {direct.get(m, 'the output layer keeps its width')}"
            continue
        skips[name] = f"prune: {_blocker(dg, m, ignored, weights)}"

    if cfg.importance == "taylor":
        _taylor_gradients(model, ctx.grad_batch)
    for group in pruner.step(interactive=True):
        if cfg.global_ratio is not None:
            group = _capped(pruner, group)
        group.prune()
    model.zero_grad(set_to_none=True)
    return model


def _capped(pruner: tp.pruner.BasePruner, group):
    """Global ranking may empty a group; keep its most important tenth instead."""
    dg = pruner.DG
    root, fn, idxs = group[0].dep.target.module, group[0].dep.handler, group[0].idxs
    channels = (dg.get_out_channels if dg.is_out_channel_pruning_fn(fn) else dg.get_in_channels)(
        root
    )
    keep = max(1, math.ceil(channels * (1 - MAX_RATIO)))
    if channels is None or channels - len(idxs) >= keep:
        return group
    full = dg.get_pruning_group(root, fn, list(range(channels)))
    order = torch.argsort(pruner.estimate_importance(full)).tolist()
    return dg.get_pruning_group(root, fn, sorted(order[: channels - keep]))


def _sparsify(model: nn.Module, sparsity: float, ctx: Context, logits: str | None) -> None:
    for name, layer in layer_modules(model):
        if name == logits:
            continue  # few weights, and every one of them feeds a class score
        w = layer.weight.detach()
        k = int(sparsity * w.numel())
        if k == 0:
            ctx.skip(name, "sparsity: too few weights")
            continue
        threshold = w.abs().flatten().kthvalue(k).values
        parametrize.register_parametrization(
            layer, "weight", WeightMask((w.abs() > threshold).to(w.dtype))
        )


def _attempt(
    model: nn.Module, cfg: PruneConfig, ctx: Context, extra: dict[str, str], logits: str | None
) -> tuple[nn.Module, dict[str, str]]:
    """Prune a copy of `model`; raise if the result does not run with the same output shapes
    (every tensor of a dict or list output, e.g. a segmentation model's {"out", "aux"})."""
    skips: dict[str, str] = {}
    pruned = _structured(copy.deepcopy(model), cfg, ctx, extra, skips, logits)
    with torch.no_grad():
        out = _shapes(pruned(ctx.example_inputs()))
        expected = _shapes(model(ctx.example_inputs()))
    if out != expected:
        raise RuntimeError(f"output shape changed to {out[0] if len(out) == 1 else out}")
    return pruned, skips


def _group_roots(model: nn.Module, ctx: Context, logits: str | None) -> list[str]:
    """Names of the root layers of the prunable groups (on a copy: building the graph is free
    of side effects only there)."""
    twin = copy.deepcopy(model)
    ignored, _ = _ignored(twin, {}, logits)
    dg = tp.DependencyGraph().build_dependency(
        twin, example_inputs=ctx.example_inputs(), verbose=False
    )
    names = {m: n for n, m in twin.named_modules()}
    groups, _, _ = _candidate_groups(twin, dg, ignored)
    return [names[g[0].dep.target.module] for g in groups]


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in layer_modules(model)
    }


@register_handler(PruneConfig)
def prune(model: nn.Module, cfg: PruneConfig, ctx: Context) -> nn.Module:
    """Structured pruning (per-layer or global), then unstructured sparsity on what is left.

    If torch-pruning fails on the model, each group is tried alone; the groups that fail are
    left whole (and reported), the others are pruned. If no channel at all was removed, the
    skipped layers say so under `MODEL_NOTE`: the model keeps its width under the plan's name.
    """
    if not (cfg.global_ratio is not None or any(r > 0 for _, r in cfg.ratios) or cfg.sparsity):
        return model
    logits = output_layer(model)  # one fx trace: pruning keeps every module's name
    if cfg.global_ratio is not None or any(r > 0 for _, r in cfg.ratios):
        model.eval()
        before = _widths(model)
        with _guarded_shapes():
            try:
                model, skips = _attempt(model, cfg, ctx, {}, logits)
            except Exception:  # noqa: BLE001 - an operator must never crash a trial
                skips = _prune_around_failures(model, cfg, ctx, logits)
                if "" not in skips:
                    model, skips = _attempt(model, cfg, ctx, _failing(skips), logits)
                else:
                    skips.pop("")
        for name, why in skips.items():
            ctx.skip(name, why)
        after = _widths(model)
        if not any(after.get(n, c) < c for n, c in before.items()):
            ctx.skip(
                MODEL_NOTE,
                "prune: no channel removed; the model keeps its full width "
                f"({len(skips)} layers left whole, each with its reason)",
            )
    if cfg.sparsity > 0:
        _sparsify(model, cfg.sparsity, ctx, logits)
    return model


def _failing(skips: dict[str, str]) -> dict[str, str]:
    return {n: why for n, why in skips.items() if why.startswith("prune: fails")}


def _prune_around_failures(
    model: nn.Module, cfg: PruneConfig, ctx: Context, logits: str | None
) -> dict[str, str]:
    """{root layer: why} for the groups that fail when pruned alone.

    Contains the key "" when even that search fails (then every layer is reported).
    """
    try:
        roots = _group_roots(model, ctx, logits)
        bad: dict[str, str] = {}
        for root in roots:
            others = {n: "" for n in roots if n != root}
            try:
                _attempt(model, cfg, ctx, others, logits)
            except Exception as exc:  # noqa: BLE001
                bad[root] = f"prune: fails on this layer ({type(exc).__name__}: {exc})"[:300]
        if len(bad) < len(roots):
            _attempt(model, cfg, ctx, bad, logits)  # the rest together must work too
            return bad
        raise RuntimeError(next(iter(bad.values()), "no prunable group"))
    except Exception as exc:  # noqa: BLE001
        why = f"prune: failed ({type(exc).__name__}: {exc})"[:300]
        return {"": why, **{n: why for n, _ in layer_modules(model)}}
