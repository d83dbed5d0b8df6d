"""Which layers of a network the operators can touch, and small module-tree helpers."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from spaces import LayerInfo

from ._attention import ATTENTION, explicit_attention

LAYER_TYPES = (nn.Conv2d, nn.Linear)
# Containers whose forward reads their children's weights directly (not through a call), so a
# child cannot be replaced by two layers, and attention projections keep their width.
_WEIGHT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


Layer = nn.Conv2d | nn.Linear


def layer_modules(model: nn.Module) -> list[tuple[str, Layer]]:
    """(name, module) of every Conv2d / Linear, in registration order."""
    return [(n, cast(Layer, m)) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def output_layer(model: nn.Module) -> str | None:
    """Name of the layer that produces the logits: the last Conv2d/Linear the forward calls.

    Uses torch.fx when the model traces; otherwise the last one registered.
    """
    names = {n for n, _ in layer_modules(model)}
    if not names:
        return None
    try:
        graph = torch.fx.Tracer().trace(model)  # symbolic_trace's graph, no GraphModule built
        called = [str(node.target) for node in graph.nodes if node.op == "call_module"]
        called = [t for t in called if t in names]
        if called:
            return called[-1]
    except Exception:  # noqa: BLE001 - any untraceable model falls back to registration order
        pass
    return layer_modules(model)[-1][0]


def fixed_width(model: nn.Module) -> dict[str, str]:
    """Layers a (sub)module declares unprunable, with the reason.

    Any module may define `fixed_width_layers() -> list[str]` (names relative to itself) and an
    optional `fixed_width_reason`; the students use it for their channel shuffles.
    """
    out = {}
    for prefix, m in model.named_modules():
        names = getattr(m, "fixed_width_layers", None)
        if callable(names):
            why = getattr(m, "fixed_width_reason", "the model declares its width fixed")
            for n in names():
                out[f"{prefix}.{n}" if prefix else n] = why
    return out


def owner_of(model: nn.Module, name: str, kinds: tuple[type, ...]) -> str | None:
    """Name of the closest ancestor of module `name` that is an instance of `kinds`."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent_name = ".".join(parts[:i])
        if isinstance(model.get_submodule(parent_name), kinds):
            return parent_name
    return None


def head_count(m: nn.Module) -> int | None:
    """A module's `num_heads` (or MaxViT's `n_heads`); None if it counts none."""
    v = getattr(m, "num_heads", getattr(m, "n_heads", None))
    return v if isinstance(v, int) else None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every attention block: nn.MultiheadAttention, ours (`ATTENTION`), and any other module
    that counts heads (`num_heads` / `n_heads`, e.g. MaxViT's) where none of its children
    does (ViT's encoder block counts the heads of the attention it holds)."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.MultiheadAttention, *ATTENTION))
        or head_count(m) is not None
        and not any(head_count(c) is not None for c in m.modules() if c is not m)
    }


def in_attention(blocks: dict[str, nn.Module], name: str) -> str | None:
    """The attention block of `blocks` (`attention_modules`) that `name` projects for, if any."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in blocks:
            return ".".join(parts[:i])
    return None


def reads_weight_directly(model: nn.Module, name: str) -> bool:
    return owner_of(model, name, _WEIGHT_READERS) is not None


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


# Low-rank arithmetic (the factorization itself is in _lowrank): here, because which layers
# are factorizable is decided from it.


def is_spatial(layer: Layer, mode: str) -> bool:
    """Whether low-rank `mode` splits this layer k x 1 then 1 x k (a 1x1 conv never is)."""
    return (
        mode == "spatial" and isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1)
    )


def full_rank(layer: Layer, mode: str) -> int:
    """The rank at which the factorization is exact."""
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    kh, kw = layer.kernel_size
    if is_spatial(layer, mode):
        return min(layer.in_channels * kh, layer.out_channels * kw)
    return min(layer.out_channels, layer.in_channels * kh * kw)


def lowrank_macs(layer: Layer, rank: int, mode: str) -> int:
    """MACs per output position of the factorized pair (stride counted for the spatial mode)."""
    if isinstance(layer, nn.Linear):
        return rank * (layer.in_features + layer.out_features)
    kh, kw = layer.kernel_size
    if is_spatial(layer, mode):
        # the k x 1 half runs at full width: the 1 x k half applies the horizontal stride
        return rank * layer.in_channels * kh * layer.stride[1] + layer.out_channels * rank * kw
    return rank * layer.in_channels * kh * kw + layer.out_channels * rank


def lowrank_gain(layer: Layer, rank: int, mode: str) -> int:
    """MACs per output position saved by factorizing at `rank` (<= 0: no saving)."""
    if isinstance(layer, nn.Linear):
        dense = layer.in_features * layer.out_features
    else:
        kh, kw = layer.kernel_size
        dense = layer.out_channels * layer.in_channels // layer.groups * kh * kw
    return dense - lowrank_macs(layer, rank, mode)


# Low rank is offered on a layer when keeping this fraction of its rank cuts its MACs.
FACTORIZE_AT = 0.5
ATTENTION_FACTORIZE_AT = 0.25  # the joint space's lowest rank


def compressible_layers(model: nn.Module) -> list[LayerInfo]:
    """The Conv2d / Linear layers of `model`, as the search space sees them.

    `prunable` is False for the logits layer, for depthwise convolutions (their channels follow
    the layer that feeds them) and for projections inside attention blocks (`attention` names
    the block: its heads are pruned whole). `factorizable` is True when keeping half the rank
    would cut the layer's MACs (see `lowrank_macs`), or, inside an attention block, a quarter:
    its q, k, v and out projections are square, where half the rank saves nothing. Names are
    those of the model as `compress` sees it: with its nn.MultiheadAttention made explicit
    (`explicit_attention`).

    Example:
        >>> [x.name for x in compressible_layers(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))]
        ['0', '1']
    """
    model = explicit_attention(model)
    logits = output_layer(model)
    fixed = fixed_width(model)
    blocks = attention_modules(model)
    out = []
    for name, m in layer_modules(model):
        if isinstance(m, nn.Linear):
            kind, cin, cout, kernel = "linear", m.in_features, m.out_features, (1, 1)
        else:
            depthwise = m.groups > 1 and m.groups == m.in_channels
            kind = "dwconv" if depthwise else "conv"
            cin, cout = m.in_channels, m.out_channels
            kernel = (int(m.kernel_size[0]), int(m.kernel_size[1]))
        block = in_attention(blocks, name)
        prunable = name != logits and kind != "dwconv" and name not in fixed and block is None
        kept = ATTENTION_FACTORIZE_AT if block else FACTORIZE_AT
        factorizable = (
            not reads_weight_directly(model, name)
            and getattr(m, "groups", 1) == 1
            and lowrank_gain(m, max(1, round(kept * full_rank(m, "svd"))), "svd") > 0
        )
        explicit = block if block and isinstance(model.get_submodule(block), ATTENTION) else ""
        out.append(LayerInfo(name, kind, cin, cout, kernel, prunable, factorizable, explicit))
    return out
