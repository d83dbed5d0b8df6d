"""torch-pruning 1.6 under torch 2: shape attributes it looks for under their old names.

It reads a reshape's input sizes from `grad_fn._saved_self_sizes` and a split's sizes from
`_saved_self_sizes` / `_saved_split_sizes`; torch 2 names them `_saved_self_sym_sizes` and
`_saved_split_size` (chunk). Missing them, it infers both from the channel counts around the
op, which through ShuffleNetV2's chunk, concat and channel shuffle gives a split of sizes
[None, 48] (IndexError) and a reshape ratio of 0 (ZeroDivisionError), and through Swin's
window partition attaches flatten mappings to reshapes that are none, so a group's index
lists grow without end. It also takes a `_saved_dim` of 2**64 - 1 (torch's record of dim=-1)
for an uninitialised value and maps Swin's channels-last torch.cat(..., -1) as a channel
concat, whose sizes it cannot infer (TypeError: int + NoneType). `_guarded_shapes` swaps in
the functions below meanwhile; `_pruning_groups._why_unsafe` then judges what they leave
unmapped.

It also recomputes every concat / split / reshape mapping of the graph each time it forms a
group, which through DenseNet's hundreds of concatenations was most of a plan's time. The
mappings follow from the layers' widths alone, so `_update_index_mapping` recomputes them only
after pruning changed a width (`stale_mappings`), and forms each group once until then (the
pruner forms every group again after `_candidate_groups` did; through Swin's residual stream
one group holds hundreds of layers). Forming a group, it searched the group's list for each
item it added, and `get_all_groups` lists of visited and ignored layers: `_has_pruning_op`,
`_add_and_merge` and `OutputGraph.get_all_groups` use sets, with the same groups. And its pruner
builds a dependency graph of its own, a second trace of the model: `prebuilt_graph` hands it
the one already built.

Its graph gives a model output an output node only when no layer also reads it: FPN's P5 is
returned and feeds P6, so it looked prunable and the pruned model's outputs changed width.
`OutputGraph` records what the model returns (`output_roots`) for `_why_unsafe`, and the
shapes to check the pruned model against, without another forward pass.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from typing import Any

import torch_pruning as tp
from torch import nn

_TP_INDEX_MAPPING: Any = tp.dependency.index_mapping
_TP_SHAPE_INFER: Any = tp.dependency.shape_infer
_TP_RESHAPE_MAPPING = _TP_INDEX_MAPPING.update_reshape_index_mapping
_TP_CONCAT_MAPPING = _TP_INDEX_MAPPING.update_concat_index_mapping
_TP_INIT_SHAPES = _TP_SHAPE_INFER.init_shape_information
_TP_UPDATE_MAPPINGS = _TP_INDEX_MAPPING.update_index_mapping
_TP_GET_GROUP = tp.DependencyGraph.get_pruning_group
_TP_BASE_PRUNER: Any = sys.modules["torch_pruning.pruner.algorithms.base_pruner"]
_TP_HELPERS: Any = tp._helpers
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


def _update_index_mapping(graph: Any) -> None:
    """torch-pruning's update of every index mapping, skipped while they are current: widths
    change only when groups are pruned, and `stale_mappings` says so."""
    if not getattr(graph, "_mappings_current", False):
        _TP_UPDATE_MAPPINGS(graph)
        graph._mappings_current = True


def stale_mappings(graph: Any) -> None:
    """Widths of `graph`'s layers changed: recompute its index mappings and groups when next
    needed."""
    graph._mappings_current = False
    graph._groups = {}


def _get_pruning_group(graph: Any, module: Any, pruning_fn: Any, idxs: Any) -> Any:
    """torch-pruning's group of `module`'s `idxs`, formed once while no width changes."""
    key = (module, pruning_fn, (idxs,) if isinstance(idxs, int) else tuple(idxs))
    groups = graph.__dict__.setdefault("_groups", {})
    if key not in groups:
        groups[key] = _TP_GET_GROUP(graph, module, pruning_fn, idxs)
    return groups[key]


class OutputGraph(tp.DependencyGraph):
    """torch-pruning's dependency graph that remembers the model's outputs as it traced them:
    their autograd nodes (including those a layer also reads) and their shapes, in order."""

    def build_dependency(self, *args: Any, **kwargs: Any) -> OutputGraph:
        self.output_roots: set[Any] = set()
        self.output_shapes: list[tuple[int, ...]] = []
        return super().build_dependency(*args, **kwargs)

    def get_all_groups(self, ignored_layers=(), root_module_types=(nn.Conv2d, nn.Linear)):  # noqa: ANN001, ANN201 - torch-pruning's signature
        """torch-pruning's groups, one per root layer not already in one: the same loop with
        sets where it searched lists (every member of every group against every ignored layer:
        through Swin's residual stream and hundreds of attention layers, seconds a plan)."""
        ignored = {id(m) for m in [*ignored_layers, *self.IGNORED_LAYERS_IN_TRACING]}
        visited: set[int] = set()
        for m in list(self.module2node):
            if id(m) in ignored or not isinstance(m, tuple(root_module_types)):
                continue
            pruner = self.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None or id(m) in visited:
                continue
            channels = list(range(pruner.get_out_channels(m)))
            group = self.get_pruning_group(m, pruner.prune_out_channels, channels)
            prunable = True
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited.add(id(dep.target.module))
                    prunable = prunable and id(dep.target.module) not in ignored
            if prunable:
                yield group

    def _trace_computational_graph(self, module2node, output, *args: Any, **kwargs: Any):  # noqa: ANN001, ANN202 - torch-pruning's signature
        self.output_roots.add(output.grad_fn)
        self.output_shapes.append(tuple(output.shape))
        return super()._trace_computational_graph(module2node, output, *args, **kwargs)


def _has_pruning_op(group: Any, dep: Any, idxs: Any) -> bool:
    """torch-pruning's test of whether `group` already cuts `idxs` of `dep`'s target, by a set
    of what it holds: it compared against every item, and through Swin's residual stream a group
    holds hundreds (most of a plan's time). Its one caller only appends to the group."""
    seen, done = group.__dict__.setdefault("_ops", (set(), [0]))
    for d, i in group.items[done[0] :]:
        seen.add((d.target, d.handler, tuple(i)))
    done[0] = len(group.items)
    return (dep.target, dep.handler, tuple(idxs)) in seen


def _add_and_merge(group: Any, dep: Any, idxs: Any) -> None:
    """torch-pruning's merge of `idxs` into the item that cuts `dep`'s target with the same
    function (else a new item), finding that item by a dict instead of a scan."""
    where, done = group.__dict__.setdefault("_where", ({}, [0]))
    for k, (d, _) in enumerate(group.items[done[0] :], start=done[0]):
        where.setdefault((d.target, d.handler), k)
    done[0] = len(group.items)
    k = where.get((dep.target, dep.handler))
    if k is None:
        group.add_dep(dep, idxs)
        return
    merged, seen = [], set()
    for i in [*group[k].idxs, *idxs]:  # in order, each channel once
        if i.idx not in seen:
            seen.add(i.idx)
            merged.append(i)
    group[k] = _TP_HELPERS.GroupItem(dep=group[k].dep, idxs=merged)


# (owner, attribute, ours) for the duration of `_guarded_shapes`
_SWAPS = (
    (_TP_INDEX_MAPPING, "update_reshape_index_mapping", _reshape_index_mapping),
    (_TP_INDEX_MAPPING, "update_concat_index_mapping", _concat_index_mapping),
    (_TP_SHAPE_INFER, "init_shape_information", _init_shape_information),
    (_TP_INDEX_MAPPING, "update_index_mapping", _update_index_mapping),
    (tp.DependencyGraph, "get_pruning_group", _get_pruning_group),
    (tp.dependency.Group, "has_pruning_op", _has_pruning_op),
    (tp.dependency.Group, "add_and_merge", _add_and_merge),
)


@contextlib.contextmanager
def _guarded_shapes() -> Iterator[None]:
    """Use the functions above in torch-pruning for the duration (one thread at a time).

    Its UserWarnings (unwrapped parameters, recursion depth) are silenced meanwhile: what they
    imply reaches the skipped layers.
    """
    with _PATCH_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch_pruning\.")
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _SWAPS]
        for owner, name, ours in _SWAPS:
            setattr(owner, name, ours)
        try:
            yield
        finally:
            for owner, name, theirs in saved:
                setattr(owner, name, theirs)


@contextlib.contextmanager
def prebuilt_graph(dg: tp.DependencyGraph) -> Iterator[None]:
    """A torch-pruning pruner made meanwhile takes `dg` (built on the same model and inputs, as
    it would build it) instead of tracing the model again."""

    class _Built:
        def build_dependency(self, *args: Any, **kwargs: Any) -> tp.DependencyGraph:
            return dg

    with _PATCH_LOCK:
        saved = _TP_BASE_PRUNER.dependency
        _TP_BASE_PRUNER.dependency = types.SimpleNamespace(DependencyGraph=_Built)
        try:
            yield
        finally:
            _TP_BASE_PRUNER.dependency = saved
