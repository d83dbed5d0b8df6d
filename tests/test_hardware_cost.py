"""The cost model against hand-computed MACs, bytes, peak memory and roofline latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from search.hardware import constraint_values, estimate_cost, load_profile, profile_from_dict
from search.hardware.graph import summarize

# Round numbers so every expectation below can be worked out by hand.
TOY = profile_from_dict(
    {
        "name": "toy",
        "sources": ["test"],
        "peak_macs_per_s": {8: 4e9, 32: 1e9},
        "native_precisions": [8, 32],
        "fallback_precision": 32,
        "bandwidth_bytes_per_s": 1e9,
        "efficiency": {"conv": 0.5, "dwconv": 0.25, "linear": 1.0, "elementwise": 0.5},
        "layer_overhead_us": 1,
        "model_overhead_us": 10,
        "memory": {"sram_kb": 64, "flash_kb": 256},
        "weights_in": "flash",
        "runtime_flash_kb": 1,
        "budgets": {"latency_ms": 1, "memory_kb": 64, "flash_kb": 256},
    }
)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.c2(self.relu(self.c1(x)))), 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(torch.relu(self.a(x))) + x)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Conv2d(3, 4, 1, bias=False)
        self.q = nn.Conv2d(3, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.p(x), self.q(x)], dim=1)


class Swishy(nn.Module):
    """Activations an NPU compiler folds into the conv/linear before them, and one it cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1, bias=False)
        self.silu = nn.SiLU()
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.c = nn.Conv2d(8, 8, 1, bias=False)
        self.hswish = nn.Hardswish()
        self.fc = nn.Linear(8 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.silu(self.a(x)))
        z = self.c(y * torch.sigmoid(y))  # SiLU written out
        u = self.hswish(z) + z  # z has two readers: the hardswish cannot run inside c
        return nn.functional.gelu(self.fc(torch.flatten(u, 1)))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.act = nn.SiLU()
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.proj = nn.Conv2d(8, 4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        s = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.proj(y * s)


ALL8 = {"c1": 8, "c2": 8, "fc": 8}


def test_plain_chain_fp32() -> None:
    cost = estimate_cost(Chain(), (1, 8, 8), TOY)
    # MACs: c1 64 px * 4 out * 1 in * 9 = 2304; c2 64 * 8 * 4 * 9 = 18432; fc 512 * 10 = 5120.
    assert cost.macs == 2304 + 18432 + 5120
    assert [r.name for r in cost.layers] == ["c1", "c2", "fc"]  # relu and bn fused, flatten free
    # Params: c1 36+4, c2 288, bn 8+8, fc 5120+10.
    assert cost.params == 40 + 288 + 16 + 5130
    # fp32 bytes: c1 (36+4)*4, c2 288*4 + 8*4 bias from the folded bn, fc 5130*4.
    assert cost.weight_bytes == 160 + 1152 + 32 + 20520
    # Peak at c2: its input (4*64) and output (8*64) elements, 4 bytes each.
    assert cost.peak_activation_bytes == (256 + 512) * 4
    assert cost.memory_bytes == cost.peak_activation_bytes  # weights sit in flash
    assert cost.flash_bytes == cost.weight_bytes + 1024
    # Roofline, us: c1 max(2304/0.5e9, (64+256)*4+160 B / 1e9) + 1 = 4.608 + 1;
    # c2 max(36.864, 4.224) + 1; fc max(5.12, ((512+10)*4 + 20520)/1e9 = 22.608) + 1; + 10.
    assert cost.latency_ms == pytest.approx((5.608 + 37.864 + 23.608 + 10) / 1e3)
    assert cost.layers[2].memory_ms > cost.layers[2].compute_ms  # fc is memory-bound


def test_plain_chain_int8() -> None:
    cost = estimate_cost(Chain(), (1, 8, 8), TOY, layer_bits=ALL8, activation_bits=8)
    # int8 weights + one fp32 scale per output channel + fp32 bias:
    # c1 36 + 16 + 16, c2 288 + 32 (+ 32 folded bias), fc 5120 + 40 + 40.
    assert cost.weight_bytes == 68 + 320 + 32 + 5200
    assert cost.peak_activation_bytes == 256 + 512
    assert {r.precision for r in cost.layers} == {8}
    # c1 max(2304/2e9, 388 B) = 1.152; c2 max(9.216, 1088 B); fc max(1.28, 5722 B) = 5.722.
    assert cost.latency_ms == pytest.approx((2.152 + 10.216 + 6.722 + 10) / 1e3)


def test_residual_block_keeps_the_skip_tensor_alive() -> None:
    cost = estimate_cost(Residual(), (4, 4, 4), TOY)
    assert cost.macs == 2 * 16 * 4 * 4
    # While b runs, x (64, kept for the add), a's output (64) and b's output (64) are live.
    assert cost.peak_activation_bytes == 192 * 4
    kinds = [r.kind for r in cost.layers]
    assert kinds == ["conv", "conv", "elementwise", "elementwise"]  # the add and the last relu
    add = cost.layers[2]
    assert add.bytes_moved == (64 + 64 + 64) * 4 and add.macs == 0
    # a, b: memory-bound (64*2*4 + 64 weights*4 = 576 B); add 768 B at 0.5 GB/s; relu 512 B.
    assert cost.latency_ms == pytest.approx((1.576 + 1.576 + 2.536 + 2.024 + 10) / 1e3)


def test_concat_counts_both_branches_and_the_result() -> None:
    cost = estimate_cost(Concat(), (3, 4, 4), TOY, activation_bits=8)
    assert cost.macs == 16 * 4 * 3 + 16 * 2 * 3
    # Peak at the concat: both branch outputs (64 + 32) and the result (96), 1 byte each.
    assert cost.peak_activation_bytes == 192
    cat = cost.layers[-1]
    assert cat.kind == "elementwise" and cat.bytes_moved == 64 + 32 + 96


def test_depthwise_in_place_is_a_profile_option() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False))
    normal = estimate_cost(model, (4, 4, 4), TOY, activation_bits=8)
    in_place = estimate_cost(
        model, (4, 4, 4), TOY.with_updates(depthwise_in_place=True), activation_bits=8
    )
    assert normal.layers[0].kind == "dwconv" and normal.macs == 64 * 9
    assert normal.peak_activation_bytes == 64 + 64
    assert in_place.peak_activation_bytes == 64 + 16  # input + a one-channel buffer


def test_unstructured_sparsity_bytes_and_latency() -> None:
    dense = estimate_cost(Chain(), (1, 8, 8), TOY, layer_bits=ALL8, activation_bits=8)
    sparse = estimate_cost(
        Chain(), (1, 8, 8), TOY, layer_bits=ALL8, activation_bits=8, layer_density={"c2": 0.25}
    )
    # c2: a 288-bit mask + 72 surviving int8 weights = 36 + 72 bytes instead of 288.
    assert dense.weight_bytes - sparse.weight_bytes == 288 - (36 + 72)
    assert sparse.latency_ms == pytest.approx(dense.latency_ms, rel=1e-2)  # no sparse kernels
    fast = estimate_cost(
        Chain(),
        (1, 8, 8),
        TOY.with_updates(sparse_support=True),
        layer_bits=ALL8,
        activation_bits=8,
        layer_density={"c2": 0.25},
    )
    assert fast.layers[1].compute_ms == pytest.approx(dense.layers[1].compute_ms * 0.25)
    # Very low bits: the mask would cost more than it saves, so the layer stays dense.
    two = estimate_cost(Chain(), (1, 8, 8), TOY, layer_bits={"c2": 2}, layer_density={"c2": 0.9})
    two_dense = estimate_cost(Chain(), (1, 8, 8), TOY, layer_bits={"c2": 2})
    assert two.weight_bytes == two_dense.weight_bytes


def test_unsupported_precision_is_charged_at_the_fallback() -> None:
    c16 = estimate_cost(Chain(), (1, 8, 8), TOY, layer_bits={"c2": 16}, activation_bits=16)
    assert c16.layers[1].precision == 32
    assert c16.layers[1].compute_ms == pytest.approx(18432 / 0.5e9 * 1e3)
    assert c16.weight_bytes < estimate_cost(Chain(), (1, 8, 8), TOY).weight_bytes  # stored at 16


class FakeQuant(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (torch.round(w * 8) / 8 - w).detach()


def _compressed_like() -> nn.Module:
    """Low-rank pairs in nn.Sequential, a parametrized weight and output hooks (fake quant)."""
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(
            nn.Conv2d(8, 3, (3, 1), padding=(1, 0), bias=False),
            nn.Conv2d(3, 16, (1, 3), padding=(0, 1)),
        ),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Sequential(nn.Linear(256, 4, bias=False), nn.Linear(4, 10)),
    )
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", FakeQuant())
            m.register_forward_hook(lambda _m, _i, o: o + (torch.round(o * 16) / 16 - o).detach())
    return model


def _flop_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def test_fake_quant_and_lowrank_model_traces() -> None:
    model = _compressed_like()
    cost = estimate_cost(model, (1, 8, 8), TOY, layer_bits={"3.0": 8, "3.1": 4}, activation_bits=8)
    assert cost.traced and not cost.notes
    # 64 px * 8 * 1 * 9 + 64 * 3 * 8 * 3 + 64 * 16 * 3 * 3 + 256 * 4 + 4 * 10 (FlopCounterMode / 2)
    assert cost.macs == 4608 + 4608 + 9216 + 1024 + 40
    names = [r.name for r in cost.layers if r.kind != "elementwise"]
    assert names == ["0", "3.0", "3.1", "7.0", "7.1"]
    assert cost.params == sum(p.numel() for p in _plain_twin().parameters())


def _plain_twin() -> nn.Module:
    model = _compressed_like()
    for m in model.modules():
        if parametrize.is_parametrized(m):
            parametrize.remove_parametrizations(m, "weight")
    return model


@pytest.mark.slow  # FlopCounterMode's first use imports torch._dynamo (seconds)
def test_macs_agree_with_flop_counter() -> None:
    model = _compressed_like()
    assert estimate_cost(model, (1, 8, 8), TOY).macs == _flop_macs(model, (1, 8, 8))
    from torchvision.models import mobilenet_v2, shufflenet_v2_x0_5

    for ctor in (mobilenet_v2, shufflenet_v2_x0_5):
        model = ctor(weights=None, num_classes=10).eval()
        cost = estimate_cost(model, (3, 32, 32), TOY)
        assert cost.macs == _flop_macs(model, (3, 32, 32))
        assert cost.params == sum(p.numel() for p in model.parameters())


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)
        self.d = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 2
        return self.d(x)


def test_untraceable_model_falls_back_to_hooks_and_says_so() -> None:
    cost = estimate_cost(Untraceable(), (1, 8, 8), TOY)
    assert not cost.traced
    assert cost.notes and "hooks" in cost.notes[0]
    assert cost.macs == 36 * 4 * 9 + 16 * 4 * 36


def test_the_trace_is_cached_per_structure() -> None:
    a, b = Chain(), Chain()
    assert summarize(a, (1, 1, 8, 8)) is summarize(b, (1, 1, 8, 8))
    b.c2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)  # a pruned twin is a different structure
    b.bn = nn.BatchNorm2d(6)
    b.fc = nn.Linear(6 * 64, 10)
    assert summarize(a, (1, 1, 8, 8)) is not summarize(b, (1, 1, 8, 8))


def test_constraint_values() -> None:
    cost = estimate_cost(Chain(), (1, 8, 8), TOY, layer_bits=ALL8, activation_bits=8)
    values = constraint_values(cost, {"latency_ms": cost.latency_ms * 2, "memory_kb": 0.5})
    assert values["latency_ms"] == pytest.approx(-0.5)
    assert values["memory_kb"] == pytest.approx(768 / 1024 / 0.5 - 1)
    assert list(values) == ["latency_ms", "memory_kb"]
    # With the profile, the board's own limits apply even above a generous budget.
    capped = constraint_values(cost, {"memory_kb": 10_000}, profile=TOY)
    assert capped["memory_kb"] == pytest.approx(768 / 1024 / 64 - 1)
    assert capped["flash_kb"] == pytest.approx(cost.flash_bytes / 1024 / 256 - 1)
    with pytest.raises(ValueError, match="unknown budget"):
        constraint_values(cost, {"energy": 1})


def test_mcu_never_accepts_a_model_over_its_sram() -> None:
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    mcu = load_profile("mcu")
    cost = estimate_cost(big, (3, 64, 64), mcu, layer_bits={"0": 8, "1": 8}, activation_bits=8)
    assert cost.peak_activation_bytes == 2 * 64 * 64 * 64  # both 64-channel maps at once
    assert constraint_values(cost, {"memory_kb": 1e9}, profile=mcu)["memory_kb"] > 0


def test_a_runtime_that_fuses_the_residual_add_charges_nothing_for_it() -> None:
    plain = estimate_cost(Residual(), (4, 4, 4), TOY)
    fused = estimate_cost(Residual(), (4, 4, 4), TOY.with_updates(fused_add=True))
    assert [r.latency_ms == 0 for r in fused.layers] == [False, False, True, True]
    # The add (2.536 us) and the relu after it (2.024 us) fold into conv b.
    assert plain.latency_ms - fused.latency_ms == pytest.approx((2.536 + 2.024) / 1e3)
    # A concat is not an add: nothing folds.
    cat = estimate_cost(Concat(), (3, 4, 4), TOY.with_updates(fused_add=True))
    assert cat.layers[-1].latency_ms > 0


def test_channels_off_the_vector_width_take_the_slow_path() -> None:
    blocked = TOY.with_updates(
        channel_block=16, unaligned_efficiency={"conv": 0.5, "dwconv": 0.25}
    )
    assert blocked.aligned(3, 32, 1)  # an RGB stem feeds the fast kernels directly
    assert blocked.aligned(32, 64, 1) and not blocked.aligned(32, 60, 1)
    assert blocked.aligned(64, 64, 64) and not blocked.aligned(90, 90, 90)  # depthwise
    assert not blocked.aligned(64, 64, 8)  # grouped, 8 channels per group
    pruned = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False))
    aligned = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False))
    slow = estimate_cost(pruned, (16, 32, 32), blocked).layers[0]
    fast = estimate_cost(aligned, (16, 32, 32), blocked).layers[0]
    # 1024 px * 12 * 16 MACs at half the efficiency vs 1024 * 16 * 16 at full.
    assert slow.compute_ms == pytest.approx(1024 * 12 * 16 / (1e9 * 0.5 * 0.5) * 1e3)
    assert fast.compute_ms == pytest.approx(1024 * 16 * 16 / (1e9 * 0.5) * 1e3)
    assert slow.compute_ms > fast.compute_ms
    dw = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False))
    slow_dw = estimate_cost(dw, (12, 8, 8), blocked).layers[0]
    assert slow_dw.compute_ms == pytest.approx(64 * 12 * 9 / (1e9 * 0.25 * 0.25) * 1e3)


def test_output_overhead_charges_each_conv_output() -> None:
    """An MCU's per-output epilogue makes a depthwise layer cost more per MAC than a dense one."""
    from torch import nn

    from search.hardware import estimate_cost, load_profile

    base = load_profile("mcu").with_updates(output_overhead_ns=0.0)
    slow = base.with_updates(output_overhead_ns=100.0)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    a = estimate_cost(net, (8, 16, 16), base, activation_bits=8).latency_ms
    b = estimate_cost(net, (8, 16, 16), slow, activation_bits=8).latency_ms
    assert b - a == pytest.approx(8 * 16 * 16 * 100e-9 * 1e3, rel=1e-6)


def test_a_graph_the_tflm_memory_model_cannot_follow_falls_back_to_liveness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The TFLM arena model never takes the cost estimate down; the report says what it used."""
    from torch import nn

    from search.hardware import estimate_cost, load_profile
    from search.hardware.graph import _fx_summary, clear_cache

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    mcu = load_profile("mcu")
    tflm = estimate_cost(net, (3, 16, 16), mcu, activation_bits=8)
    assert not tflm.notes

    def broken(*_: object) -> None:
        raise KeyError("an op it does not know")

    monkeypatch.setattr(_fx_summary, "tflm_graph", broken)
    clear_cache()  # summaries are cached per model structure
    try:
        cost = estimate_cost(net, (3, 16, 16), mcu, activation_bits=8)
        live = mcu.with_updates(memory_planner="liveness")
        liveness = estimate_cost(net, (3, 16, 16), live, activation_bits=8)
    finally:
        clear_cache()
    assert cost.memory_bytes == liveness.memory_bytes != tflm.memory_bytes
    assert any("TFLite Micro memory model" in n and "KeyError" in n for n in cost.notes)


def test_a_runtime_that_fuses_activations_runs_them_inside_the_conv() -> None:
    """SiLU, hardswish, GELU and x * sigmoid(x) on a conv/linear output nothing else reads cost
    nothing on a `fused_activation` profile (an NPU compiler), a full pass everywhere else."""
    kernels = summarize(Swishy(), (1, 4, 4, 4)).kernels
    flags = [(k.kind, k.fused_activation) for k in kernels]
    assert flags == [
        ("conv", False),
        ("elementwise", True),  # silu after a
        ("conv", False),
        ("elementwise", True),  # sigmoid(y) ...
        ("elementwise", True),  # ... and y * sigmoid(y)
        ("conv", False),
        ("elementwise", False),  # hardswish on z, which the add reads too
        ("elementwise", False),  # the add
        ("linear", False),
        ("elementwise", True),  # gelu after fc
    ]
    plain = estimate_cost(Swishy(), (4, 4, 4), TOY)
    fused = estimate_cost(Swishy(), (4, 4, 4), TOY.with_updates(fused_activation=True))
    folded = [k.fused_activation for k in kernels]
    assert [r.latency_ms == 0 for r in fused.layers] == folded
    for p, f, fold in zip(plain.layers, fused.layers, folded):
        assert fold or p == f  # everything else costs what it did
    # Without the flag the SiLU is a pass: 128 elements in and out at 4 bytes, 0.5 GB/s, + 1 us.
    assert plain.layers[1].latency_ms == pytest.approx((1024 / 0.5e9 + 1e-6) * 1e3)
    saved = sum(p.latency_ms for p, fold in zip(plain.layers, folded) if fold)
    assert plain.latency_ms - fused.latency_ms == pytest.approx(saved)
    # A network without such activations costs the same either way.
    relu = TOY.with_updates(fused_activation=True)
    assert estimate_cost(Chain(), (1, 8, 8), relu) == estimate_cost(Chain(), (1, 8, 8), TOY)


def test_a_squeeze_excite_scale_is_not_an_activation() -> None:
    """Its multiply needs the pooled scale, so it cannot run in the conv producing y."""
    kernels = summarize(SqueezeExcite(), (1, 8, 6, 6)).kernels
    named = {k.name: k.fused_activation for k in kernels if k.kind == "elementwise"}
    assert named == {"act": True, "mean": False, "silu": True, "mul": False}
