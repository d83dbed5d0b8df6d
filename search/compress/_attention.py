"""Attention as layers the operators can reach, and whole-head pruning.

nn.MultiheadAttention keeps its query/key/value projection as one fused parameter that its
forward reads directly, so no operator could touch it: its heads could not be removed, nor its
projections factorized or given their own bit width. `explicit_attention` swaps each one for an
`Attention` with the same weights and the same outputs, whose q, k, v and out projections are
plain nn.Linear layers and whose scores are explicit matmuls (which the cost model prices and
every exporter writes). `prune_heads` then removes whole heads: the same rows of q, k and v
and columns of out, so every head that stays is intact.

torchvision's shifted-window attention (Swin) becomes a `WindowAttention` the same way.
A multi-head attention inside nn.TransformerEncoderLayer / DecoderLayer stays as it is: those
layers read its fused weight on their fast path.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._heads import head_rows, heads_removed, keep_columns, keep_rows, projection_chain
from ._registry import Context
from ._window_attention import WindowAttention, torchvision_window_attention

# Containers whose forward reads their attention's fused weight (their fast path).
_FUSED_READERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class Attention(nn.Module):
    """nn.MultiheadAttention's forward with its projections as four layers.

    `num_heads` heads of `head_dim` each: q, k and v project `embed_dim` to
    num_heads * head_dim, out projects it back. Returns (output, attention weights or None) as
    nn.MultiheadAttention does.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.q = nn.Linear(embed_dim, inner, bias=bias)
        self.k = nn.Linear(kdim or embed_dim, inner, bias=bias)
        self.v = nn.Linear(vdim or embed_dim, inner, bias=bias)
        self.out = nn.Linear(inner, embed_dim, bias=bias)
        self.dropout = dropout
        self.batch_first = batch_first
        self.scale = 1.0 / math.sqrt(head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, heads * d) -> (N, heads, L, d)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def head_importance(self) -> torch.Tensor:
        """L1 norm of each head's rows of q, k and v (their last layer when factorized) and
        its columns of out (its first layer)."""
        h, d = self.num_heads, self.head_dim
        w = projection_chain(self.out)[0].weight.detach().abs()
        score = w.reshape(w.shape[0], h, d).sum((0, 2))
        for proj in (self.q, self.k, self.v):
            score += projection_chain(proj)[-1].weight.detach().abs().reshape(h, d, -1).sum((1, 2))
        return score

    def keep_heads(self, keep: torch.Tensor) -> None:
        """Keep only the heads `keep` (sorted indices), in place."""
        rows = head_rows(keep, self.head_dim)
        for proj in (self.q, self.k, self.v):
            keep_rows(projection_chain(proj)[-1], rows)
        keep_columns(projection_chain(self.out)[0], rows)
        self.num_heads = len(keep)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # (L, E) inputs are one sequence; torch.fx traces the batched path (shapes are symbolic).
        unbatched = not isinstance(query, torch.fx.Proxy) and query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._split(self.q(query)), self._split(self.k(key)), self._split(self.v(value))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if is_causal and attn_mask is None:
            n = scores.shape[-1]
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (N * heads, L, S)
                attn_mask = attn_mask.unflatten(0, (-1, self.num_heads))
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            if pad.dtype == torch.bool:
                scores = scores.masked_fill(pad, float("-inf"))
            else:
                scores = scores + pad
        weights = torch.softmax(scores, dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        out = self.out(torch.matmul(weights, v).transpose(1, 2).flatten(2))
        if unbatched:
            out, weights = out.squeeze(0), weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(-3) if average_attn_weights else weights


def _from_mha(m: nn.MultiheadAttention) -> Attention | None:
    """The `Attention` with `m`'s weights; None for what it does not reproduce (bias_k/bias_v,
    add_zero_attn)."""
    if m.bias_k is not None or m.add_zero_attn:
        return None
    e, h = m.embed_dim, m.num_heads
    bias = m.in_proj_bias is not None
    a = Attention(
        e,
        h,
        e // h,
        kdim=m.kdim,
        vdim=m.vdim,
        bias=bias,
        dropout=m.dropout,
        batch_first=m.batch_first,
    )
    a = a.to(device=m.out_proj.weight.device, dtype=m.out_proj.weight.dtype)
    with torch.no_grad():
        if m._qkv_same_embed_dim:
            wq, wk, wv = m.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        for layer, w in ((a.q, wq), (a.k, wk), (a.v, wv)):
            layer.weight.copy_(w)
        if bias:
            for layer, b in zip((a.q, a.k, a.v), m.in_proj_bias.chunk(3)):
                layer.bias.copy_(b)
            a.out.bias.copy_(m.out_proj.bias)
        a.out.weight.copy_(m.out_proj.weight)
    return a.train(m.training)


def _replaceable(model: nn.Module) -> list[str]:
    """Names of the nn.MultiheadAttention modules no fused-weight reader owns, and of
    torchvision's shifted-window attention modules."""
    if isinstance(model, _FUSED_READERS):
        return []
    readers = [n for n, m in model.named_modules() if n and isinstance(m, _FUSED_READERS)]
    swin = torchvision_window_attention()
    return [
        n
        for n, m in model.named_modules()
        if type(m) in swin
        or isinstance(m, nn.MultiheadAttention)
        and not any(n.startswith(f"{r}.") for r in readers)
    ]


def explicit_attention(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """`model` with every replaceable nn.MultiheadAttention as an `Attention` and every
    torchvision shifted-window attention as a `WindowAttention`: a copy (`model` itself when it
    has none), or `model` changed in place."""
    names = _replaceable(model)
    if not names:
        return model
    if not inplace:
        model = copy.deepcopy(model)
    for name in names:
        m = model.get_submodule(name)
        explicit = _from_mha(m) if isinstance(m, nn.MultiheadAttention) else WindowAttention(m)
        if explicit is None:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, explicit)
    return model


ATTENTION = (Attention, WindowAttention)


def attention_blocks(model: nn.Module) -> list[tuple[str, Attention | WindowAttention]]:
    """(name, module) of every `Attention` and `WindowAttention`, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ATTENTION)]


def prune_heads(model: nn.Module, ratios: dict[str, float], ctx: Context) -> None:
    """Remove the least important whole heads of each attention block named in `ratios`
    (block -> fraction of its heads), in place. A ratio too small to remove one head is
    reported."""
    for name, block in attention_blocks(model):
        ratio = ratios.get(ctx.key(name), 0.0)
        if ratio <= 0:
            continue
        drop = heads_removed(block.num_heads, ratio)
        if drop == 0:
            ctx.skip(name, f"heads: {ratio:g} of {block.num_heads} heads is less than one head")
            continue
        order = torch.argsort(block.head_importance(), descending=True)
        block.keep_heads(torch.sort(order[: block.num_heads - drop]).values)
