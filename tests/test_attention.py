"""Attention the operators can reach: nn.MultiheadAttention as four projections and explicit
matmuls (same outputs), whole heads removed by a plan, and their cost."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import torch
import torchvision
from torch import nn

import spaces
from search.compress import compress, compressible_layers
from search.compress._attention import Attention, attention_blocks, explicit_attention
from search.hardware.graph import summarize
from spaces import CompressionPlan, LowRankConfig, PruneConfig, SearchSpace


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("batch_first", [True, False])
def test_explicit_attention_gives_multihead_attentions_outputs(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    net = explicit_attention(nn.Sequential(mha))[0]
    assert isinstance(net, Attention) and net.num_heads == 4
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}):
            want, want_w = mha(x, x, x, **kwargs)
            got, got_w = net(x, x, x, **kwargs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert got_w is not None and want_w is not None
            torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
        one = torch.randn(7, 16)  # a single sequence, no batch dimension
        torch.testing.assert_close(
            net(one, one, one)[0], mha(one, one, one)[0], rtol=1e-5, atol=1e-6
        )


def test_a_vision_transformer_runs_the_same_with_explicit_attention() -> None:
    vit = _vit()
    explicit = explicit_attention(vit)
    assert explicit is not vit and len(attention_blocks(explicit)) == 2
    assert not attention_blocks(vit)  # the user's model is untouched
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), vit(x), rtol=1e-5, atol=1e-5)
    names = {x.name for x in compressible_layers(vit)}
    block = "encoder.layers.encoder_layer_0.self_attention"
    assert {f"{block}.{p}" for p in "qkv"} | {f"{block}.out"} <= names
    # Heads are pruned whole, never channel by channel.
    assert not any(x.prunable for x in compressible_layers(vit) if x.name.startswith(block))


def test_attention_inside_a_transformer_layer_keeps_its_fused_weight() -> None:
    """nn.TransformerEncoderLayer reads its attention's fused weight on its fast path."""
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    assert explicit_attention(nn.Sequential(layer)) is not None
    assert not attention_blocks(explicit_attention(nn.Sequential(layer)))


def _plan(heads: float, rank: float = 1.0) -> CompressionPlan:
    vit = _vit()
    blocks = [n for n, _ in attention_blocks(explicit_attention(vit))]
    ranks = {x.name: rank for x in compressible_layers(vit) if x.attention}
    return CompressionPlan(
        lowrank=LowRankConfig(ranks=tuple(ranks.items())),
        prune=PruneConfig(heads=tuple((b, heads) for b in blocks)),
    )


def _compress(plan: CompressionPlan) -> nn.Module:
    torch.manual_seed(1)
    x = torch.randn(8, 3, 16, 16)
    return compress(
        plan,
        _vit(),
        input_shape=(3, 16, 16),
        num_classes=5,
        calib_inputs=x,
        grad_batch=(x, torch.zeros(8, dtype=torch.long)),
    ).model


def test_pruning_heads_removes_whole_heads_and_their_cost() -> None:
    """Half of 4 heads go: q, k and v lose those heads' rows, out their columns, and the
    pruned block computes what the full one does with those heads' outputs zeroed."""
    full, pruned = _compress(_plan(0.0)), _compress(_plan(0.5))
    for (_, a), (_, b) in zip(attention_blocks(full), attention_blocks(pruned), strict=True):
        assert (a.num_heads, b.num_heads) == (4, 2)
        assert b.q.weight.shape == (16, 32) and b.out.weight.shape == (32, 16)
        # The kept heads, found by their q rows, give the full block's output with the
        # others silenced.
        d = a.head_dim
        kept = [h for h in range(4) if any(torch.equal(a.q.weight[h * d], r) for r in b.q.weight)]
        assert len(kept) == 2
        silenced = Attention(32, 4, 8, batch_first=True)
        silenced.load_state_dict(a.state_dict())
        with torch.no_grad():
            for h in set(range(4)) - set(kept):
                silenced.out.weight[:, h * d : (h + 1) * d] = 0
        x = torch.randn(2, 5, 32)
        with torch.no_grad():
            torch.testing.assert_close(b(x, x, x)[0], silenced(x, x, x)[0], rtol=1e-5, atol=1e-6)
    shape = (1, 3, 16, 16)
    macs = {
        name: sum(k.macs for k in summarize(model, shape).kernels)
        for name, model in (("full", full), ("pruned", pruned))
    }
    # Per block at 17 tokens (16 patches and the class token): projections 4 x 17 x 32 x 32 and
    # scores 2 x 17 x 17 x 32, all halved with half the heads.
    saved = 2 * (4 * 17 * 32 * 32 + 2 * 17 * 17 * 32) // 2
    assert macs["full"] - macs["pruned"] == saved


def test_heads_prune_after_low_rank_splits_the_projections() -> None:
    model = _compress(_plan(0.25, rank=0.25))
    blocks = attention_blocks(model)
    assert blocks and all(b.num_heads == 3 for _, b in blocks)
    assert all(isinstance(b.q, nn.Sequential) for _, b in blocks)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_the_space_offers_heads_only_where_there_is_attention() -> None:
    space = SearchSpace.from_file(Path(spaces.__file__).parent / "joint.yaml")

    def sample(model: nn.Module) -> tuple[dict, CompressionPlan]:
        layers = compressible_layers(model)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
        base = {"arch.family": "base", "prune.mode": "per_layer"}
        study.enqueue_trial({**base, "heads.all": 0.5, "heads.vary": False})
        trial = study.ask()
        plan = space.suggest(trial, lambda arch: layers)
        return trial.params, plan

    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 5))
    params, plan = sample(cnn)
    assert not any(k.startswith("heads") for k in params) and plan.prune.heads == ()
    params, plan = sample(_vit())
    assert params["heads.all"] == 0.5
    assert [b for b, _ in plan.prune.heads] == [
        f"encoder.layers.encoder_layer_{i}.self_attention" for i in (0, 1)
    ]
    assert "heads~" in plan.describe()


def test_square_projections_are_offered_the_rank_that_cuts_their_macs() -> None:
    """q, k, v and out are square: half the rank saves nothing, a quarter halves their MACs,
    so the space offers them low rank, and a plan asking half is told it saves nothing."""
    vit = _vit()
    block = "encoder.layers.encoder_layer_0.self_attention"
    info = {x.name: x for x in compressible_layers(vit)}
    assert all(info[f"{block}.{p}"].factorizable for p in ("q", "k", "v", "out"))
    square = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    assert not compressible_layers(square)[0].factorizable  # outside attention: half must cut
    quarter, half = _compress(_plan(0.0, rank=0.25)), _compress(_plan(0.0, rank=0.5))
    assert isinstance(quarter.get_submodule(f"{block}.q"), nn.Sequential)
    assert isinstance(half.get_submodule(f"{block}.q"), nn.Linear)
    space = SearchSpace.from_file(Path(spaces.__file__).parent / "joint.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    study.enqueue_trial({"arch.family": "base", "rank.vary": True})  # a rank per layer
    trial = study.ask()
    space.suggest(trial, lambda arch: compressible_layers(vit))
    assert {f"rank.{block}.{p}" for p in ("q", "k", "v", "out")} <= set(trial.params)


def _swin(v2: bool) -> nn.Module:
    """Two Swin blocks at 8 x 8 tokens in windows of 4 x 4: the second one shifts."""
    from torchvision.models import swin_transformer as swin

    torch.manual_seed(0)
    extra = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    return swin.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[4], window_size=[4, 4],
        num_classes=5, **(extra if v2 else {}),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("v2", [False, True])
def test_swin_attention_runs_the_same_as_layers(v2: bool) -> None:
    """Shifted and unshifted windows, and a size that needs padding (36 px: 9 x 9 tokens)."""
    net = _swin(v2)
    explicit = explicit_attention(net)
    blocks = attention_blocks(explicit)
    assert [type(b).__name__ for _, b in blocks] == ["WindowAttention"] * 2
    assert not attention_blocks(net)
    with torch.no_grad():
        for size in (32, 36):
            x = torch.randn(2, 3, size, size)
            torch.testing.assert_close(explicit(x), net(x), rtol=1e-5, atol=1e-5)
    qkv = {x.name for x in compressible_layers(net) if x.attention}
    assert {f"{b}.{p}" for b, _ in blocks for p in ("qkv", "proj")} <= qkv


@pytest.mark.parametrize("v2", [False, True])
def test_pruning_swin_heads_silences_them_and_saves_their_cost(v2: bool) -> None:
    full = explicit_attention(_swin(v2))
    blocks = [n for n, _ in attention_blocks(full)]
    plan = CompressionPlan(prune=PruneConfig(heads=tuple((b, 0.5) for b in blocks)))
    x = torch.randn(2, 3, 32, 32)
    pruned = compress(
        plan, _swin(v2), input_shape=(3, 32, 32), num_classes=5, calib_inputs=x,
        grad_batch=(x, torch.zeros(2, dtype=torch.long)),
    ).model  # fmt: skip
    tokens = torch.randn(2, 8, 8, 16)
    for name in blocks:
        a, b = full.get_submodule(name), pruned.get_submodule(name)
        assert (a.num_heads, b.num_heads, b.head_dim) == (4, 2, 4)
        assert b.qkv.weight.shape == (24, 16) and b.proj.weight.shape == (16, 8)
        # The kept heads, found by their query rows, give the full block's output with the
        # other heads' share of the output projection zeroed.
        rows = b.qkv.weight
        kept = [h for h in range(4) if any(torch.equal(a.qkv.weight[h * 4], r) for r in rows)]
        assert len(kept) == 2
        silenced = copy.deepcopy(a)
        with torch.no_grad():
            for h in set(range(4)) - set(kept):
                silenced.proj.weight[:, h * 4 : (h + 1) * 4] = 0
            torch.testing.assert_close(b(tokens), silenced(tokens), rtol=1e-5, atol=1e-6)
    macs = {
        name: sum(k.macs for k in summarize(model, (1, 3, 32, 32)).kernels)
        for name, model in (("full", full), ("pruned", pruned))
    }
    # Per block, 64 tokens of 16 channels lose 2 heads of 4 features: qkv 64 x 16 x 3 x 8,
    # proj 64 x 8 x 16, and the scores and weighted values of 4 windows of 16 tokens,
    # 2 x 4 x 16 x 16 x 8; V2's bias MLP loses 2 outputs of 512 inputs at 7 x 7 positions.
    saved = 64 * 16 * 3 * 8 + 64 * 8 * 16 + 2 * 4 * 16 * 16 * 8 + (49 * 512 * 2 if v2 else 0)
    assert macs["full"] - macs["pruned"] == 2 * saved
