"""Structured channel pruning through torch-pruning's dependency graph, and magnitude sparsity.

Structured: layers coupled by residual adds, concatenations, depthwise groups or squeeze-excite
form one group in torch-pruning's DependencyGraph, and a group loses the same channels in every
member, so the channels physically go. Per-layer mode gives each group the mean of its members'
plan ratios; global mode ranks all groups' channels together against one ratio.
Unstructured: a fixed magnitude mask per layer, kept as a parametrization so fine-tuning cannot
revive pruned weights.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from spaces import PruneConfig

from ._layers import LAYER_TYPES, fixed_width, layer_modules, output_layer
from ._registry import Context, register_handler

MAX_RATIO = 0.9  # a group always keeps at least a tenth of its channels (and at least one)
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


def _taylor_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Eval mode: BatchNorm must not fold this batch into its running statistics.
    model.zero_grad(set_to_none=True)
    x, y = batch
    F.cross_entropy(model(x), y).backward()


def _out_members(dg: tp.DependencyGraph, group) -> list[nn.Module]:
    return [
        d.target.module
        for d, _ in group
        if dg.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, LAYER_TYPES)
    ]


def _blocker(dg, module: nn.Module, ignored: dict[nn.Module, str]) -> str:
    """Why the group of `module` cannot be pruned: the ignored layer coupled to its channels."""
    try:
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, [0])
    except Exception:  # noqa: BLE001 - a module the graph does not know
        return "not reached by the forward pass"
    for d, _ in group:
        if dg.is_out_channel_pruning_fn(d.handler):
            for m in d.target.module.modules():
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
    common = dict(
        ignored_layers=list(ignored),
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
        groups = list(
            pruner.DG.get_all_groups(list(pruner.ignored_layers), [nn.Conv2d, nn.Linear])
        )
    else:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        groups = list(dg.get_all_groups(list(ignored), [nn.Conv2d, nn.Linear]))
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
    dg = pruner.DG
    in_groups = {m for group in groups for m in _out_members(dg, group)}
    for name, m in layer_modules(model):
        if m in in_groups or not requested.get(name):
            continue
        if name == logits:
            if cfg.global_ratio is None:
                skips[name] = "prune: the output layer keeps one channel per class"
            continue
        if _is_depthwise(m):
            continue  # pruned with the layer that feeds it
        if m in ignored:
            if cfg.global_ratio is None or name in extra:  # asked for: say why not
                skips[name] = f"prune: {direct.get(m, 'the output layer keeps its width')}"
            continue
        skips[name] = f"prune: {_blocker(dg, m, ignored)}"

    if cfg.importance == "taylor":
        _taylor_gradients(model, ctx.grad_batch)
    for group in pruner.step(interactive=True):
        if _unsafe_reshape(group):
            for member in _out_members(dg, group):
                skips[names[member]] = (
                    "prune: its channels pass through a reshape the dependency graph cannot "
                    "follow (e.g. a channel shuffle)"
                )
            continue
        if cfg.global_ratio is not None:
            group = _capped(pruner, group)
        group.prune()
    model.zero_grad(set_to_none=True)
    return model


def _keeps_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """A reshape that leaves every channel index where it was.

    Linear-style (channels last): only leading dims merge or split, (B, L, C) <-> (B*L, C).
    Conv-style (channels at dim 1): only unit spatial dims come or go, (B, C, 1, 1) -> (B, C).
    """
    if 2 <= len(before) <= 3 and 2 <= len(after) <= 3 and before[-1] == after[-1]:
        return math.prod(before[:-1]) == math.prod(after[:-1])
    return (
        len(before) >= 2
        and len(after) >= 2
        and before[:2] == after[:2]
        and math.prod(before[2:]) == 1
        and math.prod(after[2:]) == 1
    )


def _unsafe_reshape(group) -> bool:
    """True if the group's channels go through a reshape torch-pruning cannot map.

    torch-pruning maps a flatten it recognises; any other reshape it treats as the identity,
    which silently mis-prunes e.g. a channel shuffle's (B, C, H, W) -> (B, 2, C/2, H, W).
    """
    for dep, _ in group:
        for node in (dep.source, dep.target):
            if node.type != tp.ops.OPTYPE.RESHAPE:
                continue
            mappings = [m for d in node.dependencies for m in d.index_mapping]
            if any(type(m).__name__ == "_FlattenIndexMapping" for m in mappings):
                continue
            fn = node.grad_fn
            try:
                before = tuple(int(v) for v in fn._saved_self_sym_sizes)
                after = tuple(int(v) for v in fn._input_metadata[0].shape)
            except (AttributeError, IndexError, TypeError):
                return True  # cannot tell: do not risk it
            if not _keeps_channels(before, after):
                return True
    return False


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
    """Prune a copy of `model`; raise if the result does not run with the same output shape."""
    skips: dict[str, str] = {}
    pruned = _structured(copy.deepcopy(model), cfg, ctx, extra, skips, logits)
    with torch.no_grad():
        out = pruned(ctx.example_inputs())
        expected = model(ctx.example_inputs())
    if out.shape != expected.shape:
        raise RuntimeError(f"output shape changed to {tuple(out.shape)}")
    return pruned, skips


def _group_roots(model: nn.Module, ctx: Context, logits: str | None) -> list[str]:
    """Names of the root layers of the prunable groups (on a copy: building the graph is free
    of side effects only there)."""
    twin = copy.deepcopy(model)
    ignored, _ = _ignored(twin, {}, logits)
    dg = tp.DependencyGraph().build_dependency(twin, example_inputs=ctx.example_inputs())
    names = {m: n for n, m in twin.named_modules()}
    groups = dg.get_all_groups(list(ignored), [nn.Conv2d, nn.Linear])
    return [names[g[0].dep.target.module] for g in groups]


@register_handler(PruneConfig)
def prune(model: nn.Module, cfg: PruneConfig, ctx: Context) -> nn.Module:
    """Structured pruning (per-layer or global), then unstructured sparsity on what is left.

    If torch-pruning fails on the model, each group is tried alone; the groups that fail are
    left whole (and reported), the others are pruned.
    """
    if not (cfg.global_ratio is not None or any(r > 0 for _, r in cfg.ratios) or cfg.sparsity):
        return model
    logits = output_layer(model)  # one fx trace: pruning keeps every module's name
    if cfg.global_ratio is not None or any(r > 0 for _, r in cfg.ratios):
        model.eval()
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
