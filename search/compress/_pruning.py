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

The torch-pruning fixes for torch 2 are in `_pruning_compat`; which groups are safe to prune,
and why the others are not, in `_pruning_groups`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from spaces import PruneConfig

from ._attention import prune_heads
from ._layers import layer_modules, output_layer
from ._pruning_compat import OutputGraph, _guarded_shapes, prebuilt_graph, stale_mappings
from ._pruning_groups import _blocker, _candidate_groups, _ignored, _out_members
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


def _structured(
    model: nn.Module,
    cfg: PruneConfig,
    ctx: Context,
    extra: dict[str, str],
    skips: dict[str, str],
    logits: str | None,
) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """`model` pruned in place, and the shapes of its outputs before."""
    names = {m: n for n, m in model.named_modules()}
    ignored, direct = _ignored(model, extra, logits)
    example = ctx.example_inputs()
    requested = {
        n: (cfg.global_ratio if cfg.global_ratio is not None else cfg.ratio(ctx.key(n)))
        for n, _ in layer_modules(model)
    }
    dg = OutputGraph().build_dependency(model, example_inputs=example, verbose=False)
    groups, unsafe, weights = _candidate_groups(model, dg, ignored)
    common = dict(
        ignored_layers=[*ignored, *unsafe],  # unsafe groups stay out of the ranking
        max_pruning_ratio=MAX_RATIO,
        root_module_types=[nn.Conv2d, nn.Linear],
    )
    importance = _IMPORTANCE[cfg.importance]()
    ratios: dict[nn.Module, float] = {}
    if cfg.global_ratio is None:
        for group in groups:
            members = [m for m in _out_members(dg, group) if not _is_depthwise(m)]
            values = [requested.get(names[m], 0.0) for m in members]
            ratio = sum(values) / len(values) if values else 0.0
            if ratio > 0:
                ratios[group[0].dep.target.module] = min(ratio, MAX_RATIO)
    with prebuilt_graph(dg):
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance,
            global_pruning=cfg.global_ratio is not None,
            pruning_ratio=cfg.global_ratio or 0.0,
            pruning_ratio_dict=ratios,
            **common,
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
    groups = list(pruner.step(interactive=True))
    if cfg.global_ratio is not None:
        groups = [_capped(pruner, group) for group in groups]
    _prune_together(pruner.DG, groups)
    model.zero_grad(set_to_none=True)
    return model, dg.output_shapes


def _prune_together(dg: tp.DependencyGraph, groups: list) -> None:
    """Apply every group's pruning at once: each layer dimension is cut once, by the union of
    the indices the groups give it.

    Every group's indices are those of the unpruned model (they were all formed before any
    pruning), so the result is what pruning them one by one gives, without torch-pruning's
    recomputing every concat's index mapping between two groups (DenseNet: hundreds of times).
    """
    merged: dict[tuple, tuple[Any, set[int]]] = {}
    for group in groups:
        for dep, idxs in group:
            # A layer's in and out pruning functions are one where they cut the same dim (BN).
            key = (dep.target, getattr(dep.handler, "__func__", dep.handler))
            merged.setdefault(key, (dep, set()))[1].update(int(i) for i in idxs)
    together = tp.dependency.Group()
    together._DG = dg
    for dep, idxs in merged.values():
        together.add_dep(dep, sorted(idxs))
    together.prune(record_history=False)
    stale_mappings(dg)


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
    pruned, expected = _structured(copy.deepcopy(model), cfg, ctx, extra, skips, logits)
    with torch.no_grad():
        out = _shapes(pruned(ctx.example_inputs()))
    if out != expected:
        raise RuntimeError(f"output shape changed to {out[0] if len(out) == 1 else out}")
    return pruned, skips


def _group_roots(model: nn.Module, ctx: Context, logits: str | None) -> list[str]:
    """Names of the root layers of the prunable groups (on a copy: building the graph is free
    of side effects only there)."""
    twin = copy.deepcopy(model)
    ignored, _ = _ignored(twin, {}, logits)
    dg = OutputGraph().build_dependency(twin, example_inputs=ctx.example_inputs(), verbose=False)
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
    """Whole attention heads, structured pruning (per-layer or global), then unstructured
    sparsity on what is left.

    If torch-pruning fails on the model, each group is tried alone; the groups that fail are
    left whole (and reported), the others are pruned. If no channel at all was removed, the
    skipped layers say so under `MODEL_NOTE`: the model keeps its width under the plan's name.
    """
    if any(r > 0 for _, r in cfg.heads):
        prune_heads(model, dict(cfg.heads), ctx)
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
