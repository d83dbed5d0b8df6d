"""Low-rank factorization by truncated SVD, only where it cuts multiply-accumulates.

Linear(in, out) -> Linear(in, r) then Linear(r, out).
Conv2d k x k, mode "svd": k x k conv with r outputs, then a 1x1 conv (SVD of the weight seen as
an out x (in*k*k) matrix). Mode "spatial": a k x 1 conv with r outputs, then a 1 x k conv (SVD of
the weight seen as an (in*kh) x (out*kw) matrix); a 1x1 conv has no spatial extent and uses
"svd". The two halves replace the layer as an nn.Sequential, so `conv1` becomes `conv1.0` and
`conv1.1`; at full rank the pair reproduces the layer exactly (up to float rounding).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spaces import LowRankConfig

from ._layers import (
    Layer,
    full_rank,
    is_spatial,
    layer_modules,
    lowrank_gain,
    reads_weight_directly,
    set_module,
)
from ._registry import Context, register_handler

# Kept SVDs are truncated at the largest rank that can cut MACs, m n / (m + n): in float64 at
# most twice a layer's float32 bytes, so 1 GiB holds every factorizable layer of ViT-B.
SVD_CACHE_BYTES = 2**30
# Above this many entries a weight's SVD comes from the eigenvectors of its Gram matrix (the
# smaller of W W^T and W^T W): a quarter of the time of a full SVD in float64 (ViT-B's
# 768 x 3072 MLP weights: 0.25 s instead of 0.95 s), the same truncations to 1e-14. The
# small layers of the built-in tasks (at most 2^18 entries) keep the full SVD.
GRAM_ABOVE = 2**20
_svds: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()


def _useful_rank(shape: tuple[int, ...]) -> int:
    """Ranks from this one up never cut MACs: r (m + n) >= m n (stride only lowers it)."""
    m, n = shape
    return -(-m * n // (m + n))


def _svd(w2d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SVD of `w2d` in float64, at least to `rank`, kept by content up to `_useful_rank`:
    a study factorises the same trained weights at several ranks and in many plans, and
    recomputing gives the same numbers."""
    w = w2d.detach().double()
    keep = _useful_rank(tuple(w.shape))
    data = w.contiguous().cpu().numpy().tobytes()
    key = (tuple(w.shape), hashlib.blake2b(data, digest_size=16).digest())
    hit = _svds.get(key) if rank <= keep else None
    if hit is not None:
        _svds.move_to_end(key)
        return hit
    u, s, vh = (
        torch.linalg.svd(w, full_matrices=False) if w.numel() <= GRAM_ABOVE else _gram_svd(w)
    )
    if rank > keep:
        return u, s, vh
    _svds[key] = (u[:, :keep].clone(), s[:keep].clone(), vh[:keep].clone())
    while sum(sum(t.numel() * 8 for t in v) for v in _svds.values()) > SVD_CACHE_BYTES:
        _svds.popitem(last=False)
    return _svds[key]


def _gram_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, s, vh of float64 `w` from the eigendecomposition of its smaller Gram matrix. The
    other side is projected, (u^T w) / s: each component s_i u_i vh_i is u_i u_i^T w exactly,
    so a truncation keeps what the leading directions span even where s_i is tiny."""
    wide = w.shape[0] <= w.shape[1]
    m = w if wide else w.T
    lam, u = torch.linalg.eigh(m @ m.T)
    lam, u = lam.flip(0).clamp_min(0.0), u.flip(1)
    s = lam.sqrt()
    vh = (u.T @ m) / s.clamp_min(s[0] * 1e-12 + 1e-300)[:, None]
    return (u, s, vh) if wide else (vh.T, s, u.T)


def clear_svd_cache() -> None:
    """Forget every SVD kept (a benchmark that times a cold start)."""
    _svds.clear()


def _split(w2d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w2d ~= a @ b with a: (m, rank), b: (rank, n); singular values split evenly."""
    u, s, vh = _svd(w2d, rank)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w2d.dtype), (root[:, None] * vh[:rank]).to(w2d.dtype)


@torch.no_grad()
def factorize(layer: Layer, rank: int, mode: str = "svd") -> nn.Sequential:
    """The two-layer replacement of `layer` at `rank` (see the module docstring)."""
    conv: Any = layer  # torch's stubs type stride/padding loosely
    first: Any
    second: Any
    dtype, device = layer.weight.dtype, layer.weight.device
    bias = layer.bias is not None
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        a, b = _split(w, rank)  # (out, r), (r, in)
        first = nn.Linear(layer.in_features, rank, bias=False, device=device, dtype=dtype)
        second = nn.Linear(rank, layer.out_features, bias=bias, device=device, dtype=dtype)
        first.weight.copy_(b)
        second.weight.copy_(a)
    elif not is_spatial(layer, mode):
        cout, cin, kh, kw = w.shape
        a, b = _split(w.reshape(cout, cin * kh * kw), rank)
        first = nn.Conv2d(
            cin, rank, (kh, kw), stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode,
            device=device, dtype=dtype,
        )  # fmt: skip
        second = nn.Conv2d(rank, cout, 1, bias=bias, device=device, dtype=dtype)
        first.weight.copy_(b.reshape(rank, cin, kh, kw))
        second.weight.copy_(a.reshape(cout, rank, 1, 1))
    else:
        cout, cin, kh, kw = w.shape
        # W[co, ci, y, x] = sum_r A[(ci, y), r] B[r, (co, x)]
        a, b = _split(w.permute(1, 2, 0, 3).reshape(cin * kh, cout * kw), rank)
        pad = conv.padding if isinstance(conv.padding, str) else None
        ph, pw = (0, 0) if pad else conv.padding
        first = nn.Conv2d(
            cin, rank, (kh, 1), stride=(conv.stride[0], 1), padding=pad or (ph, 0),
            dilation=(conv.dilation[0], 1), bias=False, device=device, dtype=dtype,
        )  # fmt: skip
        second = nn.Conv2d(
            rank, cout, (1, kw), stride=(1, conv.stride[1]), padding=pad or (0, pw),
            dilation=(1, conv.dilation[1]), bias=bias, device=device, dtype=dtype,
        )  # fmt: skip
        first.weight.copy_(a.reshape(cin, kh, rank).permute(2, 0, 1).unsqueeze(-1))
        second.weight.copy_(b.reshape(rank, cout, kw).permute(1, 0, 2).unsqueeze(2))
    if bias:
        second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def _why_not(model: nn.Module, name: str, layer: Layer, mode: str) -> str | None:
    if reads_weight_directly(model, name):
        return "its container reads the weight directly"
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return "grouped or depthwise convolution"
    if is_spatial(layer, mode) and layer.padding_mode != "zeros":
        return "spatial mode needs zero padding"
    return None


def _runs(model: nn.Module, ctx: Context) -> bool:
    try:
        with torch.no_grad():
            model.eval()(ctx.example_inputs())
        return True
    except Exception:  # noqa: BLE001 - any failure means the replacement is not usable
        return False


@register_handler(LowRankConfig)
def lowrank(model: nn.Module, cfg: LowRankConfig, ctx: Context) -> nn.Module:
    """Factorize every layer whose kept-rank fraction is below 1 and whose MACs would drop."""
    todo: list[tuple[str, nn.Sequential]] = []
    for name, layer in layer_modules(model):
        fraction = cfg.rank(ctx.key(name))
        if fraction >= 1.0:
            continue
        mode = cfg.mode
        why = _why_not(model, name, layer, mode)
        if why is None:
            rank = max(1, round(fraction * full_rank(layer, mode)))
            if lowrank_gain(layer, rank, mode) <= 0:
                why = f"rank {rank} would not cut MACs"
        if why is not None:
            ctx.skip(name, f"lowrank: {why}")
            continue
        todo.append((name, factorize(layer, rank, mode)))

    def replace(items: Sequence[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Swap `items` into the model; the layers they replaced."""
        old = [(name, model.get_submodule(name)) for name, _ in items]
        for name, module in items:
            set_module(model, name, module)
        return old

    def commit(items: list[tuple[str, nn.Sequential]]) -> nn.Module:
        for name, _ in items:
            origin = ctx.origin.pop(name, name)
            ctx.origin[f"{name}.0"] = ctx.origin[f"{name}.1"] = origin
        return model

    if not todo:
        return model
    # Tried in place and put back if the model no longer runs (no copy of the model).
    old = replace(todo)
    if _runs(model, ctx):
        return commit(todo)
    replace(old)
    # Some container does not call the layer as a module: find which, one at a time.
    ok = []
    for item in todo:
        old = replace([item])
        if _runs(model, ctx):
            ok.append(item)
        else:
            replace(old)
            ctx.skip(item[0], "lowrank: the model no longer runs with this layer split")
    return commit(ok)
