"""What a runtime runs for free or pays extra for: TensorRT's concatenation elimination and
pointwise fusion, and STM32Cube.AI's weight reads from flash. The search (`estimate_cost`) and
the device fit (`predicted_ms`) price them alike, from either view of the graph."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from search.hardware import HardwareProfile, estimate_cost, load_profile
from search.hardware.fit import Sample, fit_device, predicted_ms
from search.hardware.graph import onnx_kernels, summarize
from search.hardware.timing import export_fp32_onnx

SHAPE = (3, 12, 12)


class DenseBlock(nn.Module):
    """DenseNet's pattern: a concat, then a batch norm no conv absorbs, then its ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        y = torch.cat([x, self.conv1(x)], 1)
        return self.conv2(torch.relu(self.norm(y)))


def _tensorrt(fused: bool):
    return load_profile("jetson_nano").with_updates(concat_in_place=fused, fused_pointwise=fused)


def test_both_views_mark_the_concat_and_the_relu_after_a_norm(tmp_path: Path) -> None:
    net = DenseBlock().eval()
    fx_view = summarize(net, (1, *SHAPE)).kernels
    onnx_view = onnx_kernels(export_fp32_onnx(net, SHAPE, tmp_path / "d.onnx")).kernels
    for view in (fx_view, onnx_view):
        assert sum(k.concat for k in view) == 1, view
        assert sum(k.follows_pointwise for k in view) == 1, view
    trt = _tensorrt(True)
    on_fx, on_onnx = (predicted_ms(Sample("d", v, 1.0), trt) for v in (fx_view, onnx_view))
    assert on_onnx == pytest.approx(on_fx, rel=1e-9)


def test_tensorrt_runs_the_concat_and_the_relu_in_other_kernels() -> None:
    """On: those two kernels cost nothing and the rest is unchanged; off: each is a pass."""
    net = DenseBlock().eval()
    off = estimate_cost(net, SHAPE, _tensorrt(False))
    on = estimate_cost(net, SHAPE, _tensorrt(True))
    kernels = summarize(net, (1, *SHAPE)).kernels
    freed = {k.name for k in kernels if k.concat or k.follows_pointwise}
    assert len(freed) == 2
    assert all(r.latency_ms == 0 for r in on.layers if r.name in freed)
    assert all(r.latency_ms > 0 for r in off.layers if r.name in freed)
    saved = sum(r.latency_ms for r in off.layers if r.name in freed)
    assert off.latency_ms - on.latency_ms == pytest.approx(saved, rel=1e-9)
    for fused in (False, True):  # the fit sees what the search sees
        sample = Sample("d", tuple(kernels), 1.0)
        cost = estimate_cost(net, SHAPE, _tensorrt(fused))
        assert predicted_ms(sample, _tensorrt(fused)) == pytest.approx(cost.latency_ms, rel=1e-9)


def _classifier(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


def test_weights_read_from_flash_cost_their_bytes() -> None:
    """`flash_read_ns_per_byte`: each int8 weight byte adds its read time, in the search and in
    the fit alike."""
    base = load_profile("mcu_h7").with_updates(flash_read_ns_per_byte=0.0)
    slow = base.with_updates(flash_read_ns_per_byte=10.0)
    net = _classifier(1000)
    bits = {"0": 8, "4": 8}
    plain = estimate_cost(net, SHAPE, base, layer_bits=bits, activation_bits=8)
    cost = estimate_cost(net, SHAPE, slow, layer_bits=bits, activation_bits=8)
    assert cost.latency_ms - plain.latency_ms == pytest.approx(cost.weight_bytes * 1e-5)
    kernels = summarize(net, (1, *SHAPE)).kernels
    sample = Sample("c", kernels, 1.0, layer_bits=bits, activation_bits=8)
    assert predicted_ms(sample, slow) == pytest.approx(cost.latency_ms, rel=1e-9)


def _worst_error(
    samples: list[Sample], truth: HardwareProfile, term: str, start: float
) -> tuple[float, float]:
    """The worst relative error of a fit started with `term` at `start`, and the fitted term."""
    fit = fit_device(samples, truth.with_updates(**{term: start}))
    worst = max(abs(fit.predict_ms(s) / s.measured_ms - 1) for s in samples)
    return worst, getattr(fit.profile, term)


def test_the_fit_frees_the_flash_cost_only_where_the_base_has_one() -> None:
    """Heads of 10 to 2,000 classes measured on a device that pays 10 ns per weight byte: from a
    start of 2 ns the fit raises the term and fits better than a base without it, which the
    fit leaves at 0."""
    truth = load_profile("mcu_h7").with_updates(flash_read_ns_per_byte=10.0)
    bits = {"0": 8, "4": 8}
    samples = []
    for classes in (10, 250, 500, 1000, 2000):
        kernels = summarize(_classifier(classes), (1, *SHAPE)).kernels
        s = Sample(f"c{classes}", kernels, 1.0, layer_bits=bits, activation_bits=8)
        samples.append(Sample(s.name, kernels, predicted_ms(s, truth), bits, 8))

    with_term, fitted = _worst_error(samples, truth, "flash_read_ns_per_byte", 2.0)
    without, kept = _worst_error(samples, truth, "flash_read_ns_per_byte", 0.0)
    assert kept == 0.0
    assert fitted > 2.0
    assert with_term < without


def test_a_delegate_pays_for_the_input_it_is_handed(tmp_path: Path) -> None:
    """`input_ns_per_byte`: an int8 network is handed 1 byte an input element, any other a
    float32 tensor (4 bytes, even computed in fp16); the search and the fit price it alike, and
    both views of the graph count the same input."""
    base = load_profile("phone_npu").with_updates(input_ns_per_byte=0.0)
    slow = base.with_updates(input_ns_per_byte=0.5)
    net = _classifier(10)
    elems = 3 * 12 * 12
    kernels = summarize(net, (1, *SHAPE)).kernels
    onnx_view = onnx_kernels(export_fp32_onnx(net, SHAPE, tmp_path / "c.onnx"))
    assert onnx_view.input_elems == elems
    for act, width in ((8, 1), (16, 4), (32, 4)):
        bits = {"0": act, "4": act}
        plain = estimate_cost(net, SHAPE, base, layer_bits=bits, activation_bits=act)
        cost = estimate_cost(net, SHAPE, slow, layer_bits=bits, activation_bits=act)
        assert cost.latency_ms - plain.latency_ms == pytest.approx(elems * width * 0.5e-6)
        sample = Sample("c", kernels, 1.0, bits, act, input_elems=elems)
        assert predicted_ms(sample, slow) == pytest.approx(cost.latency_ms, rel=1e-9)


def test_the_fit_frees_the_input_cost_only_where_the_base_has_one() -> None:
    """Networks measured as int8 and as float on a delegate that pays 0.5 ns per input byte: from
    a start of 0.1 ns the fit raises the term and fits better than a base without it, which
    the fit leaves at 0."""
    truth = load_profile("phone_npu").with_updates(input_ns_per_byte=0.5)
    samples = []
    for side, classes in ((8, 10), (16, 10), (32, 100)):
        shape = (3, side, side)
        kernels = summarize(_classifier(classes), (1, *shape)).kernels
        for act in (8, 16):
            bits = {"0": act, "4": act}
            s = Sample(f"c{side} {act}", kernels, 1.0, bits, act, input_elems=3 * side * side)
            samples.append(replace(s, measured_ms=predicted_ms(s, truth)))

    with_term, fitted = _worst_error(samples, truth, "input_ns_per_byte", 0.1)
    without, kept = _worst_error(samples, truth, "input_ns_per_byte", 0.0)
    assert kept == 0.0
    assert fitted > 0.1
    assert with_term < without
