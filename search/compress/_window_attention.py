"""Swin's shifted-window attention as layers the operators can reach.

torchvision's ShiftedWindowAttention (and V2) hands `qkv.weight` and `proj.weight` to one
wrapped function, which takes the head width from the input's channels (C // num_heads): no
operator could factorize or quantize the projections on their own, and removing a head would
change the width every other head is read with. `WindowAttention` has the same weights and the
same outputs; it calls `qkv` and `proj` as layers and keeps `head_dim` as its own number, so
whole heads can go (`keep_heads`): their rows of qkv, columns of proj and their column of the
relative-position bias (V2: the bias MLP's output row and the head's logit scale).

The window partition and the scores are wrapped for torch.fx like torchvision's function, so
the cost model sees the two projections as layers and counts the score matmuls.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._heads import head_rows, keep_columns, keep_rows, projection_chain


def torchvision_window_attention() -> tuple[type, ...]:
    """What `WindowAttention` replaces (each as it is: a subclass may compute something else).
    A model can only hold these once torchvision's Swin module is imported, so importing it
    here would only cost every command a few seconds."""
    swin = sys.modules.get("torchvision.models.swin_transformer")
    return () if swin is None else (swin.ShiftedWindowAttention, swin.ShiftedWindowAttentionV2)


# (B, H, W, padded H, padded W, window height, window width, shift down, shift right)
Layout = tuple[int, int, int, int, int, int, int, int, int]


def _partition(
    x: torch.Tensor, window: list[int], shift: list[int]
) -> tuple[torch.Tensor, Layout]:
    """(B, H, W, C) -> (B * windows, Wh * Ww, C), padded to whole windows and cyclically
    shifted (no shift along a side one window covers), and the layout to undo it."""
    b, h, w, c = x.shape
    wh, ww = window
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    ph, pw = x.shape[1], x.shape[2]
    sh, sw = (0 if wh >= ph else shift[0]), (0 if ww >= pw else shift[1])
    if sh + sw > 0:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    x = x.view(b, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c), (b, h, w, ph, pw, wh, ww, sh, sw)


def _shift_mask(layout: Layout, like: torch.Tensor) -> torch.Tensor:
    """(windows, L, L): -100 between tokens a cyclic shift brought from different regions."""
    _, _, _, ph, pw, wh, ww, sh, sw = layout
    region = like.new_zeros((ph, pw))
    count = 0
    for hs in ((0, -wh), (-wh, -sh), (-sh, None)):
        for ws in ((0, -ww), (-ww, -sw), (-sw, None)):
            region[hs[0] : hs[1], ws[0] : ws[1]] = count
            count += 1
    region = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _attend(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    heads: int,
    head_dim: int,
    logit_scale: torch.Tensor | None,
    layout: Layout,
    dropout: float,
    training: bool,
) -> torch.Tensor:
    """Scores and weighted values of every window: (N, L, 3 * heads * d) -> (N, L, heads * d).
    With `logit_scale` (V2), cosine scores; else scaled dot products."""
    n, length = qkv.shape[0], qkv.shape[1]
    q, k, v = qkv.reshape(n, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    attn = attn + bias
    if layout[7] + layout[8] > 0:
        mask = _shift_mask(layout, qkv)
        attn = attn.view(-1, mask.shape[0], heads, length, length) + mask[None, :, None]
        attn = attn.view(-1, heads, length, length)
    attn = F.dropout(F.softmax(attn, dim=-1), p=dropout, training=training)
    return (attn @ v).transpose(1, 2).reshape(n, length, heads * head_dim)


def _reverse(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Undo `_partition`: (B * windows, L, C) -> (B, H, W, C)."""
    b, h, w, ph, pw, wh, ww, sh, sw = layout
    x = x.view(b, ph // wh, pw // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, ph, pw, -1)
    if sh + sw > 0:
        x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


for _fn in (_partition, _attend, _reverse):
    fx.wrap(_fn.__name__)


class WindowAttention(nn.Module):
    """torchvision's ShiftedWindowAttention(V2) with its projections called as layers.

    `num_heads` heads of `head_dim` each: qkv projects C to 3 * num_heads * head_dim, proj
    projects num_heads * head_dim back to C. Takes over the parameters of `m`, a torchvision
    module.
    """

    qkv: nn.Module
    proj: nn.Module
    cpb_mlp: nn.Module
    logit_scale: nn.Parameter
    relative_position_bias_table: nn.Parameter
    relative_position_index: torch.Tensor
    relative_coords_table: torch.Tensor

    def __init__(self, m: Any) -> None:
        super().__init__()
        self.window_size, self.shift_size = list(m.window_size), list(m.shift_size)
        self.num_heads: int = m.num_heads
        self.head_dim: int = m.qkv.in_features // m.num_heads
        self.attention_dropout, self.dropout = m.attention_dropout, m.dropout
        self.qkv, self.proj = m.qkv, m.proj
        self.cosine = hasattr(m, "logit_scale")  # V2
        self.register_buffer("relative_position_index", m.relative_position_index)
        if self.cosine:
            self.logit_scale, self.cpb_mlp = m.logit_scale, m.cpb_mlp
            self.register_buffer("relative_coords_table", m.relative_coords_table)
        else:
            self.relative_position_bias_table = m.relative_position_bias_table

    def position_bias(self) -> torch.Tensor:
        """(1, heads, L, L): each head's bias by the two tokens' relative position."""
        if self.cosine:
            table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        else:
            table = self.relative_position_bias_table
        length = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index].view(length, length, -1)
        bias = bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.cosine else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows, layout = _partition(x, self.window_size, self.shift_size)
        qkv = self.qkv(windows)
        bias = projection_chain(self.qkv)[-1].bias
        if self.cosine and bias is not None:  # V2 gives keys no bias (as torchvision does)
            n = bias.shape[0] // 3
            qkv = qkv - torch.cat([bias.new_zeros(n), bias[n : 2 * n], bias.new_zeros(n)])
        scale = self.logit_scale if self.cosine else None
        out = _attend(
            qkv,
            self.position_bias(),
            self.num_heads,
            self.head_dim,
            scale,
            layout,
            self.attention_dropout,
            self.training,
        )
        out = F.dropout(self.proj(out), p=self.dropout, training=self.training)
        return _reverse(out, layout)

    def head_importance(self) -> torch.Tensor:
        """L1 norm of each head's rows of qkv (its last layer when factorized) and columns of
        proj (its first layer)."""
        h, d = self.num_heads, self.head_dim
        w = projection_chain(self.qkv)[-1].weight.detach().abs()
        score = w.reshape(3, h, d, -1).sum((0, 2, 3))
        w = projection_chain(self.proj)[0].weight.detach().abs()
        return score + w.reshape(w.shape[0], h, d).sum((0, 2))

    def keep_heads(self, keep: torch.Tensor) -> None:
        """Keep only the heads `keep` (sorted indices), in place."""
        d, inner = self.head_dim, self.num_heads * self.head_dim
        rows = head_rows(keep, d)
        keep_rows(projection_chain(self.qkv)[-1], torch.cat([rows + i * inner for i in range(3)]))
        keep_columns(projection_chain(self.proj)[0], rows)
        with torch.no_grad():
            if self.cosine:
                keep_rows(projection_chain(self.cpb_mlp)[-1], keep)
                self.logit_scale = nn.Parameter(self.logit_scale[keep].clone())
            else:
                table = self.relative_position_bias_table[:, keep].clone()
                self.relative_position_bias_table = nn.Parameter(table)
        self.num_heads = len(keep)
