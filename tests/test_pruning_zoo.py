"""Structured pruning on real torchvision networks (random weights, small inputs).

Each network once defeated the way the project drives torch-pruning: ShuffleNetV2 (chunk,
concat and channel shuffle: torch-pruning 1.6 misreads torch 2's split and reshape sizes),
ConvNeXt (channels-last reshapes into its Linear layers, taken for a channel shuffle), a
segmentation network (a dict output), ViT (unwrapped parameters in the reason-finding) and Swin
(attention that calls F.linear on its layers' weights: index lists without end). Each test
checks that a 30 % global plan removes channels, that the model runs with its output shapes, and
that every layer left whole says why. Where the network has no LayerNorm, the pruned model is
also checked against the original with the same channels zeroed: the channels that went are the
ones the dependency graph says, not a shuffled set.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torchvision
from torch import nn
from torch_pruning.dependency.group import Group

from search.compress import Compressed, compress, compressible_layers
from search.compress._pruning import MODEL_NOTE
from search.compress._pruning_groups import _keeps_channels
from spaces import CompressionPlan, LowRankConfig, PruneConfig, QuantizeConfig

torch.set_num_threads(1)

PLAN = CompressionPlan(prune=PruneConfig(global_ratio=0.3))
LAYERS = (nn.Conv2d, nn.Linear)


def _compress(plan: CompressionPlan, base: nn.Module, size: int) -> Compressed:
    x = torch.randn(2, 3, size, size)
    return compress(
        plan, base, input_shape=(3, size, size), num_classes=10, calib_inputs=x,
        grad_batch=(x, torch.zeros(2, dtype=torch.long)),
    )  # fmt: skip


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def _removed(base: nn.Module, pruned: nn.Module) -> int:
    after = _widths(pruned)
    return sum(c - after[n] for n, c in _widths(base).items() if n in after)


def _shapes(out) -> object:
    if isinstance(out, dict):
        return {k: tuple(v.shape) for k, v in out.items()}
    return tuple(out.shape)


def _check(base: nn.Module, out: Compressed, size: int) -> None:
    """Channels went, the output shapes stayed, and every pruning skip has a reason."""
    assert _params(out.model) < 0.9 * _params(base)
    assert _removed(base, out.model) > 0
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _shapes(out.model(x)) == _shapes(base(x))
    assert MODEL_NOTE not in out.skipped
    for name, why in out.skipped.items():
        assert why.startswith("prune: ") and len(why) > len("prune: ") + 10, (name, why)
        assert "failed" not in why and "fails on" not in why, (name, why)


def _random_batchnorm(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _zero(twin: nn.Module, name: str, side: str, idxs: list[int]) -> None:
    """Zero, in `twin`, the output ("out") or input ("in") channels `idxs` of layer `name`."""
    m = twin.get_submodule(name)
    with torch.no_grad():
        if side == "in":
            m.weight[:, idxs] = 0
            return
        m.weight[idxs] = 0  # a BatchNorm's scale; a depthwise conv's one channel in and out
        if m.bias is not None:
            m.bias[idxs] = 0


def _pruned_and_zeroed(base: nn.Module, size: int, monkeypatch) -> tuple[Compressed, nn.Module]:
    """Prune `base`, and zero the same channels in a copy of it (BatchNorm and conv only).

    Groups go one after another and a concatenation's consumer holds channels of several, so
    each layer side keeps the original numbers of its channels still there.
    """
    twin = copy.deepcopy(base)
    alive: dict[tuple[str, str], list[int]] = {}
    real = Group.prune

    def prune(self, *args, **kwargs):
        dg = self._DG
        names = {m: n for n, m in dg.model.named_modules()}
        for dep, idxs in self:
            m = dep.target.module
            if not isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                assert not isinstance(m, (nn.Parameter, nn.LayerNorm)), "cannot zero it"
                continue
            depthwise = isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
            out = dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(m, LAYERS)
            side = "out" if out or depthwise else "in"
            size = m.weight.shape[1 if side == "in" else 0]
            now = alive.setdefault((names[m], side), list(range(size)))
            gone = set(idxs)
            _zero(twin, names[m], side, [now[i] for i in sorted(gone)])
            alive[names[m], side] = [c for i, c in enumerate(now) if i not in gone]
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Group, "prune", prune)
    return _compress(PLAN, base, size), twin


def _assert_same(a, b) -> None:
    a = a["out"] if isinstance(a, dict) else a
    b = b["out"] if isinstance(b, dict) else b
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


# --- the networks ------------------------------------------------------------------------------
def test_shufflenet_v2_prunes_its_branches_and_leaves_the_shuffled_channels(monkeypatch) -> None:
    torch.manual_seed(0)
    base = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10).eval()
    _random_batchnorm(base)
    out, zeroed = _pruned_and_zeroed(base, 64, monkeypatch)
    _check(base, out, 64)
    m = out.model
    # inside a branch: 1x1 conv -> depthwise -> 1x1 conv, no shuffle between: pruned
    assert m.stage2[1].branch2[0].out_channels < 24 == base.stage2[1].branch2[0].out_channels
    assert m.stage2[1].branch2[3].groups == m.stage2[1].branch2[0].out_channels
    # a branch's output is concatenated and shuffled: left whole, and said why
    assert m.stage2[1].branch2[5].out_channels == 24
    assert "reshape" in out.skipped["stage2.1.branch2.5"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _assert_same(m(x), zeroed(x))  # exactly the channels the graph names went


def test_convnext_prunes_through_its_channels_last_blocks() -> None:
    torch.manual_seed(0)
    base = torchvision.models.convnext_tiny(weights=None, num_classes=10).eval()
    out = _compress(PLAN, base, 64)
    _check(base, out, 64)
    m = out.model
    block = m.features[1][0].block  # dwconv, permute, LayerNorm, Linear, GELU, Linear, permute
    assert block[3].out_features < 384 and block[5].in_features == block[3].out_features
    assert block[0].out_channels < 96  # the residual stream: dwconv, LayerNorm, layer_scale
    width = block[0].out_channels
    assert m.features[1][0].layer_scale.shape[0] == width == block[2].weight.numel()
    assert not out.skipped


def test_a_segmentation_network_with_a_dict_output_is_pruned(monkeypatch) -> None:
    torch.manual_seed(0)
    base = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()
    _random_batchnorm(base)
    out, zeroed = _pruned_and_zeroed(base, 64, monkeypatch)
    _check(base, out, 64)
    # the two classifiers add into the output: both keep one channel per class
    assert out.model.classifier.low_classifier.out_channels == 4
    assert "output layer" in out.skipped["classifier.low_classifier"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _assert_same(out.model(x), zeroed(x))


def test_a_second_model_output_keeps_its_width() -> None:
    torch.manual_seed(0)
    base = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True
    ).eval()
    out = _compress(PLAN, base, 64)
    _check(base, out, 64)  # "out" and "aux" both keep their 4 classes
    # the last head called is taken for the logits layer; the other is found as a model output
    assert out.model.aux_classifier[4].out_channels == out.model.classifier[4].out_channels == 4
    assert "model output" in out.skipped["classifier.4"]


def _small_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=10,
    ).eval()  # fmt: skip


class _TinyFPN(nn.Module):
    """A detection backbone as torchvision builds RetinaNet's: a feature pyramid whose P5 is
    returned and also read by P6, which P7 reads in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1))
        self.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1))
        p6p7 = torchvision.ops.feature_pyramid_network.LastLevelP6P7(16, 16)
        self.fpn = torchvision.ops.FeaturePyramidNetwork([16, 32], 16, extra_blocks=p6p7)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.c1(x)
        return self.fpn({"a": a, "b": self.c2(a)})


def test_a_returned_feature_another_layer_reads_keeps_its_width(monkeypatch) -> None:
    """torch-pruning's graph marks no output where a layer also reads the returned tensor; the
    pyramid's outputs must still keep their width, found up front (not by the slow fallback
    that prunes each group alone once the pruned model's outputs came out wrong)."""
    import search.compress._pruning as pruning

    def no_fallback(*args, **kwargs):
        raise AssertionError("the per-group fallback ran")

    monkeypatch.setattr(pruning, "_prune_around_failures", no_fallback)
    torch.manual_seed(0)
    base = _TinyFPN().eval()
    out = _compress(PLAN, base, 32)
    _check(base, out, 32)
    for layer in ("fpn.layer_blocks.1.0", "fpn.extra_blocks.p6"):
        assert out.skipped[layer] == "prune: its channels are a model output", layer
    assert out.model.c1[0].out_channels < 16 and out.model.c2[0].out_channels < 32


def test_vision_transformer_prunes_its_mlps_and_says_why_the_rest_stays() -> None:
    base = _small_vit()
    out = _compress(PLAN, base, 32)
    _check(base, out, 32)
    m = out.model
    for layer in m.encoder.layers:
        assert layer.mlp[0].out_features < 128
        assert layer.mlp[3].in_features == layer.mlp[0].out_features
        assert layer.self_attention.embed_dim == 64
    # the residual width is tied to the attention blocks' heads: whole, with the reason
    assert m.conv_proj.out_channels == 64
    assert "attention block" in out.skipped["conv_proj"]


def test_vision_transformer_under_the_joint_plan() -> None:
    """Low-rank 0.5 on every factorizable layer, 30 % global pruning, int8: the issue's plan."""
    base = _small_vit()
    layers = compressible_layers(base)
    plan = CompressionPlan(
        lowrank=LowRankConfig(ranks={x.name: 0.5 for x in layers if x.factorizable}),
        prune=PruneConfig(global_ratio=0.3),
        quantize=QuantizeConfig(default_weight_bits=8, activation_bits=8),
    )
    out = _compress(plan, base, 32)
    assert _params(out.model) < 0.8 * _params(base)
    assert out.model.encoder.layers[0].mlp[0][1].out_features < 128  # the split layer's half
    assert not any("fail" in why for why in out.skipped.values())
    with torch.no_grad():
        assert out.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.timeout(120)
def test_swin_prunes_its_mlps_in_seconds() -> None:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    base = SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=10,
    ).eval()  # fmt: skip
    t0 = time.perf_counter()
    out = _compress(PLAN, base, 32)
    assert time.perf_counter() - t0 < 30
    _check(base, out, 32)
    mlp = out.model.features[1][0].mlp
    assert mlp[0].out_features < 128 and mlp[3].in_features == mlp[0].out_features
    # The attention's projections are called as layers; channel pruning leaves them whole
    # (heads go whole, under `prune.heads`).
    attn = out.model.features[1][0].attn
    assert type(attn).__name__ == "WindowAttention" and attn.qkv.out_features == 3 * 32
    assert out.model.features[0][0].out_channels == 32


@pytest.mark.slow
def test_vit_b_16_at_its_native_size() -> None:
    torch.manual_seed(0)
    base = torchvision.models.vit_b_16(weights=None, num_classes=10).eval()
    out = _compress(PLAN, base, 224)
    _check(base, out, 224)
    assert out.model.encoder.layers[0].mlp[0].out_features < 3072


# --- the rules behind it -----------------------------------------------------------------------
def test_a_plan_that_removes_no_channel_says_so() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()  # only the logits layer
    x = torch.randn(4, 3, 2, 2)
    out = compress(
        PLAN, base, input_shape=(3, 2, 2), num_classes=3, calib_inputs=x,
        grad_batch=(x, torch.zeros(4, dtype=torch.long)),
    )  # fmt: skip
    assert "no channel removed" in out.skipped[MODEL_NOTE]


@pytest.mark.parametrize(
    "before, after, channels, keeps",
    [
        ((2, 16, 16, 96), (512, 96), 96, True),  # ConvNeXt: channels last into a Linear
        ((512, 96), (2, 16, 16, 96), 96, True),
        ((2, 17, 64), (34, 64), 64, True),  # tokens
        ((2, 64, 4, 4), (2, 64, 16), 64, True),  # spatial dims merge, channels at dim 1
        ((2, 48, 1, 1), (2, 48), 48, True),
        ((2, 48, 8, 8), (2, 2, 24, 8, 8), 48, False),  # a channel shuffle
        ((2, 24, 2, 8, 8), (2, 48, 8, 8), 48, False),
        ((2, 16, 4, 16), (128, 16), 16, False),  # 16 channels at dim 1 or 3: cannot tell
        ((2, 16, 4, 16), (128, 16), None, False),
        ((2, 17, 64), (34, 64), None, True),
    ],
)
def test_which_reshapes_keep_the_channels(before, after, channels, keeps) -> None:
    assert _keeps_channels(before, after, channels) is keeps


def _groups(model: nn.Module, x: torch.Tensor, ours: bool, monkeypatch) -> list:
    """Every group of `model`'s graph as (layer, cut, channels) triples: formed by the project's
    set-based Group methods and get_all_groups (`ours`), or by torch-pruning's own."""
    import torch_pruning as tp

    from search.compress import _pruning_compat as compat

    with monkeypatch.context() as patch:
        if not ours:
            group_swaps = [s for s in compat._SWAPS if s[0] is tp.dependency.Group]
            patch.setattr(
                compat, "_SWAPS", tuple(s for s in compat._SWAPS if s not in group_swaps)
            )
            patch.setattr(compat.OutputGraph, "get_all_groups", tp.DependencyGraph.get_all_groups)
        with compat._guarded_shapes():
            dg = compat.OutputGraph().build_dependency(model, example_inputs=x, verbose=False)
            names = {module: n for n, module in model.named_modules()}
            return [
                [(names.get(d.target.module), d.handler.__name__, tuple(i)) for d, i in g]
                for g in dg.get_all_groups([], (nn.Conv2d, nn.Linear))
            ]


@pytest.mark.parametrize("net", ["densenet", "swin"])
def test_our_group_forming_gives_torch_prunings_groups(net: str, monkeypatch) -> None:
    """The sets and dicts that replace torch-pruning's list scans (has_pruning_op, add_and_merge,
    get_all_groups) give the same groups, item for item, through concatenations and Swin's
    residual stream."""
    torch.manual_seed(0)
    if net == "densenet":
        model = torchvision.models.DenseNet(8, (2, 2), 16, num_classes=5).eval()
        x = torch.randn(2, 3, 32, 32)
    else:
        model = torchvision.models.SwinTransformer(
            [4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=5
        ).eval()
        x = torch.randn(2, 3, 32, 32)
    ours = _groups(model, x, True, monkeypatch)
    theirs = _groups(model, x, False, monkeypatch)
    assert len(ours) > 3 and max(len(g) for g in ours) > 10
    assert ours == theirs
