"""One shared, parametrized suite for every compression operator, plus operator-specific checks.

Every operator runs over four tiny networks (tests/_operator_nets.py): a CNN, an MLP, a residual
+ concat net with a depthwise convolution and squeeze-excite, and an nn.TransformerEncoder
classifier. Quantization's own checks, and the ONNX export, are in tests/test_quantization.py.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.compress import build_student, compress, compressible_layers, distillation_loss
from search.compress._lowrank import GRAM_ABOVE, factorize, full_rank
from search.compress._registry import handler_for, register_handler
from spaces import (
    ArchitectureConfig,
    CompressionPlan,
    DistillConfig,
    LowRankConfig,
    PruneConfig,
    QuantizeConfig,
)
from tests._operator_nets import NETS, ResConcatNet, TinyTransformer, _compress, _params, _setup

torch.set_num_threads(1)


# --- every operator, as a plan built from the network's compressible layers ---------------------
def _prunable(layers):
    return {x.name: 0.5 for x in layers if x.prunable}


_BITS = (2, 4, 8, 16, 32)
OPERATORS = {
    "prune-l1": lambda L: CompressionPlan(prune=PruneConfig(ratios=_prunable(L), importance="l1")),
    "prune-l2": lambda L: CompressionPlan(prune=PruneConfig(ratios=_prunable(L), importance="l2")),
    "prune-taylor": lambda L: CompressionPlan(
        prune=PruneConfig(ratios=_prunable(L), importance="taylor")
    ),
    "prune-global": lambda L: CompressionPlan(prune=PruneConfig(global_ratio=0.5)),
    "sparsity": lambda L: CompressionPlan(prune=PruneConfig(sparsity=0.75)),
    "quantize": lambda L: CompressionPlan(
        quantize=QuantizeConfig(
            weight_bits={x.name: _BITS[i % 5] for i, x in enumerate(L)}, activation_bits=8
        )
    ),
    "lowrank-svd": lambda L: CompressionPlan(
        lowrank=LowRankConfig(ranks={x.name: 0.25 for x in L if x.factorizable})
    ),
    "lowrank-spatial": lambda L: CompressionPlan(
        lowrank=LowRankConfig(ranks={x.name: 0.25 for x in L if x.factorizable}, mode="spatial")
    ),
    "mobilenetv2": lambda L: CompressionPlan(
        architecture=ArchitectureConfig("mobilenetv2", 0.1, 1)
    ),
    "shufflenetv2": lambda L: CompressionPlan(
        architecture=ArchitectureConfig("shufflenetv2", 0.1, 1)
    ),
    "distill": lambda L: CompressionPlan(distill=DistillConfig(alpha=0.5, temperature=2.0)),
    "joint": lambda L: CompressionPlan(
        lowrank=LowRankConfig(ranks={x.name: 0.5 for x in L if x.factorizable}),
        prune=PruneConfig(
            ratios={x.name: 0.3 for x in L if x.prunable}, importance="taylor", sparsity=0.5
        ),
        quantize=QuantizeConfig(default_weight_bits=8, activation_bits=8),
    ),
}


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("operator", list(OPERATORS))
def test_operator_on_network(operator: str, net: str) -> None:
    base, x, y = _setup(net)
    before = copy.deepcopy(base.state_dict())
    plan = OPERATORS[operator](compressible_layers(base))
    teacher = base(x)

    out = _compress(plan, base, x, y)
    logits = out.model(x)

    # forward runs, shape unchanged, parameter count does not grow, base untouched
    assert logits.shape == teacher.shape
    assert torch.isfinite(logits).all()
    assert _params(out.model) <= _params(base)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    # the config round-trips through dict and YAML
    assert CompressionPlan.from_dict(plan.to_dict()) == plan
    assert CompressionPlan.from_yaml(plan.to_yaml()) == plan
    # bookkeeping covers the final Conv2d/Linear layers
    finals = {n for n, m in out.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(out.layer_bits) == finals == set(out.layer_density)
    assert all(0 < d <= 1 for d in out.layer_density.values())
    assert out.activation_bits == plan.quantize.activation_bits
    # trainable through the fake quant, with the distillation loss
    out.model.train()
    loss = distillation_loss(out.model(x), teacher.detach(), y, plan.distill)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in out.model.parameters())
    # still traceable by torch.fx (the hardware cost model traces it)
    torch.fx.symbolic_trace(out.model)
    # deterministic: a rebuild from the same plan takes the state_dict (weights_only)
    out.model.eval()
    buf = io.BytesIO()
    torch.save(out.model.state_dict(), buf)
    buf.seek(0)
    again = _compress(plan, base, x, y)
    again.model.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), out.model(x))
    assert again.layer_bits == out.layer_bits and again.skipped == out.skipped


def test_every_structural_config_has_a_handler() -> None:
    plan = CompressionPlan()
    for cfg in plan.operators():
        assert callable(handler_for(cfg))
    with pytest.raises(ValueError, match="already registered"):
        register_handler(QuantizeConfig)(lambda m, c, ctx: m)
    with pytest.raises(TypeError):
        handler_for(object())


# --- compressible_layers -----------------------------------------------------------------------
def test_compressible_layers_marks_the_logits_depthwise_and_attention() -> None:
    info = {x.name: x for x in compressible_layers(ResConcatNet())}
    assert not info["head"].prunable and info["head"].kind == "linear"
    assert info["dw"].kind == "dwconv" and not info["dw"].prunable and not info["dw"].factorizable
    assert info["stem"].prunable and info["stem"].kernel == (3, 3)
    info = {x.name: x for x in compressible_layers(TinyTransformer())}
    out_proj = "encoder.layers.0.self_attn.out_proj"
    assert not info[out_proj].prunable and not info[out_proj].factorizable
    assert info["encoder.layers.0.linear1"].prunable
    assert not info["encoder.layers.0.linear1"].factorizable  # the fast path reads .weight


# --- low-rank ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer, shape, mode",
    [
        (nn.Linear(24, 16), (5, 24), "svd"),
        (nn.Conv2d(6, 10, 3, padding=1), (2, 6, 9, 9), "svd"),
        (nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=1), (2, 6, 9, 9), "spatial"),
        (
            nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
            (2, 4, 9, 11),
            "spatial",
        ),
        (nn.Conv2d(4, 8, 3, dilation=2, padding=2), (2, 4, 9, 9), "spatial"),
    ],
)
def test_lowrank_at_full_rank_reproduces_the_layer(layer, shape, mode) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    pair = factorize(layer, full_rank(layer, mode), mode)
    with torch.no_grad():
        ref, got = layer(x), pair(x)
    assert got.shape == ref.shape
    assert (got - ref).norm() / ref.norm() < 1e-4
    small = factorize(layer, max(1, full_rank(layer, mode) // 3), mode)
    with torch.no_grad():
        assert (small(x) - ref).norm() / ref.norm() > 1e-3  # truncation really drops something


def test_a_large_weight_is_factorized_through_its_gram_matrix() -> None:
    """Above `GRAM_ABOVE` entries the SVD comes from the smaller Gram matrix's eigenvectors:
    the factorized layer is the full SVD's truncation, to float32 rounding, whichever side is
    the wider one."""
    torch.manual_seed(0)
    for layer in (nn.Linear(1536, 768), nn.Linear(768, 1536)):
        w = layer.weight.detach().double()
        assert w.numel() > GRAM_ABOVE
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        for rank in (16, 384):
            pair = factorize(layer, rank)
            got = (pair[1].weight @ pair[0].weight).double()
            want = (u[:, :rank] * s[:rank]) @ vh[:rank]
            assert (got - want).norm() / want.norm() < 1e-6


def test_lowrank_applies_only_where_it_cuts_macs() -> None:
    base, x, y = _setup("cnn")
    # fc: 48 -> 10, full rank 10: 9 * (48 + 10) > 480 MACs, so it stays whole
    out = _compress(
        CompressionPlan(lowrank=LowRankConfig(ranks={"conv3": 0.25, "fc": 0.9})), base, x, y
    )
    assert isinstance(out.model.conv3, nn.Sequential)
    assert isinstance(out.model.fc, nn.Linear) and "would not cut MACs" in out.skipped["fc"]
    # bits of the split layer apply to both halves, keyed by the final names
    plan = CompressionPlan(
        lowrank=LowRankConfig(ranks={"conv3": 0.25}),
        quantize=QuantizeConfig(weight_bits={"conv3": 4}, default_weight_bits=8),
    )
    out = _compress(plan, base, x, y)
    assert out.layer_bits["conv3.0"] == out.layer_bits["conv3.1"] == 4
    assert out.layer_bits["conv1"] == 8 and "conv3" not in out.layer_bits


def test_lowrank_skips_layers_inside_attention() -> None:
    base, x, y = _setup("transformer")
    name = "encoder.layers.0.linear1"
    out = _compress(CompressionPlan(lowrank=LowRankConfig(ranks={name: 0.25})), base, x, y)
    assert isinstance(out.model.get_submodule(name), nn.Linear)
    assert "reads the weight directly" in out.skipped[name]


# --- pruning -----------------------------------------------------------------------------------
def test_pruning_physically_removes_channels_consistently() -> None:
    base, x, y = _setup("resconcat")
    ratios = {"stem": 0.5, "pw": 0.5, "se.fc2": 0.5, "branch_a": 0.5}
    m = _compress(CompressionPlan(prune=PruneConfig(ratios=ratios)), base, x, y).model
    # stem, dw, pw and se.fc2 share the residual channels: one group, which loses the mean of
    # its members' ratios, in every member
    assert m.stem.out_channels == m.dw.out_channels == m.dw.groups == m.pw.out_channels == 16
    assert m.se.fc2.out_channels == 16 and m.branch_b.in_channels == 16
    # the concat: mix sees branch_a's 8 + branch_b's 16 channels
    assert m.branch_a.out_channels == 8 and m.mix.in_channels == 24
    assert m.head.out_features == 7


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_pruning_keeps_the_most_important_channels(importance: str) -> None:
    base, x, y = _setup("mlp")
    with torch.no_grad():
        # units 64.. are nearly silent: least important by every criterion
        base.net[0].weight[64:] *= 1e-3
        base.net[0].bias[64:] *= 1e-3
        base.net[2].weight[:, 64:] *= 1e-3
    plan = CompressionPlan(prune=PruneConfig(ratios={"net.0": 0.5}, importance=importance))
    m = _compress(plan, base, x, y).model
    assert m.net[0].out_features == 64
    torch.testing.assert_close(m.net[0].weight, base.net[0].weight[:64])


def test_global_pruning_never_empties_a_layer() -> None:
    base, x, y = _setup("cnn")
    with torch.no_grad():
        base.conv2.weight *= 1e-3  # global ranking would drop all of conv2
    m = _compress(CompressionPlan(prune=PruneConfig(global_ratio=0.6)), base, x, y).model
    assert m.conv2.out_channels >= 4 and m.fc.out_features == 10
    assert _params(m) < _params(base)


def test_unprunable_layers_are_left_whole_and_reported() -> None:
    base, x, y = _setup("transformer")
    ratios = {"embed": 0.5, "encoder.layers.0.linear1": 0.5, "head": 0.5}
    out = _compress(CompressionPlan(prune=PruneConfig(ratios=ratios)), base, x, y)
    assert out.model.embed.out_features == 32
    assert "attention block" in out.skipped["embed"]
    assert out.model.encoder.layers[0].linear1.out_features == 32
    assert "output layer" in out.skipped["head"]


class ShuffleNet(nn.Module):
    """A channel shuffle the dependency graph cannot map indices through."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        b, c, h, w = x.shape
        x = x.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def test_pruning_leaves_groups_through_a_channel_shuffle_whole() -> None:
    torch.manual_seed(0)
    base, x = ShuffleNet().eval(), torch.randn(8, 1, 8, 8)
    plan = CompressionPlan(prune=PruneConfig(ratios={"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}))
    out = compress(
        plan, base, input_shape=(1, 8, 8), num_classes=3, calib_inputs=x,
        grad_batch=(x, torch.zeros(8, dtype=torch.long)),
    )  # fmt: skip
    m = out.model
    assert m.conv1.out_channels == 8 and m.conv3.out_channels == 8
    assert m.conv2.out_channels == 16 and "reshape" in out.skipped["conv2"]
    assert m(x).shape == (8, 3)


def test_a_group_the_pruner_fails_on_is_left_whole_and_the_rest_pruned(monkeypatch) -> None:
    from torch_pruning.dependency.dependency import Dependency

    real = Dependency.__call__

    def cut(self, idxs):  # stands in for any torch-pruning failure on one layer's channels
        if getattr(self.target.module, "breaks_pruner", False) and "out" in self.handler.__name__:
            raise RuntimeError("cannot prune this")
        return real(self, idxs)

    monkeypatch.setattr(Dependency, "__call__", cut)
    base, x, y = _setup("cnn")
    base.conv2.breaks_pruner = True
    ratios = {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}
    out = _compress(CompressionPlan(prune=PruneConfig(ratios=ratios)), base, x, y)
    m = out.model
    assert m.conv1.out_channels == 8 and m.conv3.out_channels == 24
    assert m.conv2.out_channels == 32 and "cannot prune this" in out.skipped["conv2"]
    assert m(x).shape == (24, 10)


def test_sparsity_masks_survive_fine_tuning() -> None:
    base, x, y = _setup("cnn")
    out = _compress(CompressionPlan(prune=PruneConfig(sparsity=0.75)), base, x, y)
    assert out.layer_density["conv2"] == pytest.approx(0.25, abs=0.01)
    assert out.layer_density["fc"] == 1.0  # the logits layer stays dense
    zeros = out.model.conv2.weight == 0
    opt = torch.optim.SGD(out.model.parameters(), lr=0.5)
    out.model.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(out.model(x), y).backward()
        opt.step()
    assert (out.model.conv2.weight[zeros] == 0).all()


# --- students ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["mobilenetv2", "shufflenetv2"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (3, 64, 64), (6, 8), (20,)])
def test_students_fit_any_input_shape_and_class_count(family: str, shape) -> None:
    arch = ArchitectureConfig(family, 0.25, 2)
    net = build_student(arch, input_shape=shape, num_classes=3)
    twin = build_student(arch, input_shape=shape, num_classes=3)
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), twin.state_dict().values())
    )
    assert net(torch.randn(2, *shape)).shape == (2, 3)
    wider = build_student(ArchitectureConfig(family, 0.5, 2), input_shape=shape, num_classes=3)
    deeper = build_student(ArchitectureConfig(family, 0.25, 3), input_shape=shape, num_classes=3)
    assert _params(wider) > _params(net) and _params(deeper) > _params(net)


def test_student_on_small_input_keeps_a_spatial_map() -> None:
    net = build_student(
        ArchitectureConfig("mobilenetv2", 0.5, 1), input_shape=(1, 8, 8), num_classes=10
    )
    feats = net.features[:-3](torch.zeros(1, 1, 8, 8))
    assert feats.shape[-2:] == (2, 2)


# --- distillation ------------------------------------------------------------------------------
def test_distillation_loss() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5), torch.randint(0, 5, (4,))
    ce = F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, None, y, DistillConfig()), ce)
    torch.testing.assert_close(distillation_loss(s, t, y, DistillConfig(enabled=False)), ce)
    torch.testing.assert_close(distillation_loss(s, t, y, DistillConfig(alpha=0.0)), ce)
    cfg = DistillConfig(alpha=1.0, temperature=4.0)
    assert distillation_loss(t, t, y, cfg).item() == pytest.approx(0.0, abs=1e-6)
    kl = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    mixed = distillation_loss(s, t, y, DistillConfig(alpha=0.7, temperature=4.0))
    torch.testing.assert_close(mixed, 0.7 * kl + 0.3 * ce)
    mixed.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
