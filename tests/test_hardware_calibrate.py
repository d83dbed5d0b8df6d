"""Calibration: the fit recovers a known profile; the CSV format; measurement hygiene."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from search.errors import ConfigError
from search.hardware import (
    calibrate_from_measurements,
    cost_summary,
    estimate_cost,
    export_fp32_onnx,
    load_profile,
    measure_latency_ms,
    profile_from_dict,
    time_callable,
)
from search.hardware.fit import Sample, fit_profile, prediction_errors
from search.hardware.graph import onnx_kernels, summarize

TRUE = profile_from_dict(
    {
        "name": "dev",
        "sources": ["test"],
        "peak_macs_per_s": {32: 1e9},
        "native_precisions": [32],
        "fallback_precision": 32,
        "bandwidth_bytes_per_s": 1e9,
        "efficiency": {"conv": 0.4, "dwconv": 0.1, "linear": 0.6, "elementwise": 0.5},
        "layer_overhead_us": {"conv": 5, "dwconv": 3, "linear": 2, "elementwise": 1},
        "model_overhead_us": 20,
        "memory": {"ram_kb": 1024},
    }
)
START = TRUE.with_updates(
    efficiency={"conv": 0.9, "dwconv": 0.9, "linear": 0.9, "elementwise": 0.9},
    layer_overhead_us={"conv": 1, "dwconv": 1, "linear": 1, "elementwise": 1},
    model_overhead_us=1.0,
)


def _net(width: int, depth: int, k: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, k, padding=k // 2), nn.ReLU()]
    for _ in range(depth):
        layers += [
            nn.Conv2d(width, width, 3, padding=1, groups=width),
            nn.Conv2d(width, width, 1),
            nn.MaxPool2d(1),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def _samples(profile, sizes=((4, 1, 3), (8, 2, 3), (16, 1, 5), (32, 3, 3), (8, 4, 1), (24, 2, 3))):
    out = []
    for i, (width, depth, k) in enumerate(sizes):
        for res in (8, 16):
            net = _net(width, depth, k)
            truth = estimate_cost(net, (3, res, res), profile).latency_ms
            summary = summarize(net, (1, 3, res, res))
            out.append(Sample(f"net{i}@{res}", summary.kernels, truth))
    return out


def test_fit_recovers_a_known_profile() -> None:
    samples = _samples(TRUE)
    fitted = fit_profile(samples, START, prior_weight=1e-4)
    assert max(abs(e) for e in prediction_errors(samples, fitted)) < 0.02
    assert fitted.efficiency["conv"] == pytest.approx(0.4, rel=0.15)
    assert fitted.efficiency["dwconv"] == pytest.approx(0.1, rel=0.15)
    assert fitted.peak_macs_per_s == TRUE.peak_macs_per_s  # peaks are not refitted
    # The start profile is clearly wrong on the same samples.
    assert max(abs(e) for e in prediction_errors(samples, START)) > 0.3


def _write_csv(
    tmp_path: Path, rows: list[tuple[str, str]], header: str = "onnx,latency_ms"
) -> Path:
    path = tmp_path / "measured.csv"
    path.write_text(header + "\n" + "\n".join(f"{a},{b}" for a, b in rows) + "\n")
    return path


def test_calibrate_from_a_measurements_csv(tmp_path: Path) -> None:
    rows = []
    for i, (width, depth, k) in enumerate(((4, 1, 3), (16, 2, 3), (32, 1, 5), (8, 3, 1))):
        net = _net(width, depth, k)
        onnx_path = export_fp32_onnx(net, (3, 16, 16), tmp_path / f"m{i}.onnx")
        kernels = onnx_kernels(onnx_path)
        # The fx and ONNX views of the same model agree on the work.
        assert sum(x.macs for x in kernels.kernels) == estimate_cost(net, (3, 16, 16), TRUE).macs
        truth = Sample("x", kernels.kernels, 1.0)
        ms = (1 + prediction_errors([truth], TRUE)[0]) * 1.0
        rows.append((onnx_path.name, f"{ms:.6f}"))
    csv_path = _write_csv(tmp_path, rows)
    csv_path.write_text("# measured on the dev board\n" + csv_path.read_text())
    # A base with the device's kind ratios and overheads but a 3x wrong MAC rate: the fit (one
    # free rate; ratios and overheads leaning on the base) recovers the device.
    base = TRUE.with_updates(
        efficiency={k: v * 0.3 for k, v in TRUE.efficiency.items() if k != "elementwise"}
        | {"elementwise": 0.5},
    )
    fitted = calibrate_from_measurements(
        csv_path, base, name="myboard", out_path=tmp_path / "p.yaml"
    )
    assert fitted.name == "myboard"
    assert any("measured.csv" in s for s in fitted.sources)
    assert load_profile(str(tmp_path / "p.yaml")) == fitted
    samples = [Sample(r[0], onnx_kernels(tmp_path / r[0]).kernels, float(r[1])) for r in rows]
    assert max(abs(e) for e in prediction_errors(samples, base)) > 0.5
    assert max(abs(e) for e in prediction_errors(samples, fitted)) < 0.05
    assert fitted.efficiency["conv"] == pytest.approx(0.4, rel=0.1)
    # The stored error is measured leave-one-network-out on the same rows.
    assert fitted.latency_error is not None and fitted.latency_error["rows"] == 4
    assert fitted.latency_error_p90 is not None and fitted.latency_error_p90 < 0.1


def test_base_profile_by_name(tmp_path: Path) -> None:
    path = export_fp32_onnx(_net(8, 1, 3), (3, 16, 16), tmp_path / "m.onnx")
    csv_path = _write_csv(tmp_path, [(path.name, "2.5")])
    fitted = calibrate_from_measurements(csv_path, "phone")
    assert (
        fitted.name == "phone" and fitted.peak_macs_per_s == load_profile("phone").peak_macs_per_s
    )
    with pytest.raises(ConfigError) as info:
        calibrate_from_measurements(csv_path, "toaster")
    assert info.value.field == "--base"


@pytest.mark.parametrize(
    ("header", "rows", "field", "words"),
    [
        ("onnx,ms", [("a.onnx", "1")], "header", "needs columns"),
        ("onnx,latency_ms,colour", [("a.onnx", "1,x")], "header", "unknown columns"),
        ("onnx,latency_ms", [("missing.onnx", "1")], "row 2: onnx", "no ONNX file"),
        ("onnx,latency_ms", [("m.onnx", "fast")], "row 2: latency_ms", "> 0"),
        ("onnx,latency_ms", [("m.onnx", "-3")], "row 2: latency_ms", "> 0"),
        ("onnx,latency_ms", [], "rows", "no measurements"),
    ],
)
def test_bad_measurements_csv(tmp_path: Path, header, rows, field, words) -> None:
    export_fp32_onnx(_net(4, 1, 3), (3, 8, 8), tmp_path / "m.onnx")
    csv_path = _write_csv(tmp_path, rows, header)
    with pytest.raises(ConfigError) as info:
        calibrate_from_measurements(csv_path, START)
    assert info.value.file == str(csv_path)
    assert info.value.field == field
    assert words in info.value.message


def test_noisy_measurements_are_repeated_then_flagged() -> None:
    waits = itertools.cycle([0.0005, 0.0005, 0.003, 0.003])

    def noisy() -> None:
        time.sleep(next(waits))

    m = time_callable(noisy, warmup=1, min_runs=8, max_runs=8, target_s=0.0, attempts=3)
    assert m.attempts == 3 and not m.stable and m.iqr_ratio > 0.10

    def steady() -> None:
        sum(range(2000))

    m = time_callable(steady, warmup=2, min_runs=30, max_runs=30, target_s=0.0, attempts=10)
    assert m.median_ms > 0 and m.attempts <= 10


def test_measure_latency_ms_runs_an_onnx_file(tmp_path: Path) -> None:
    path = export_fp32_onnx(_net(4, 1, 3), (3, 8, 8), tmp_path / "m.onnx")
    ms = measure_latency_ms(path, threads=1, target_s=0.05, min_runs=5, attempts=2)
    assert 0 < ms < 1000


def test_cost_summary_prints_the_cost_command_fields(tmp_path: Path) -> None:
    out = cost_summary(_net(8, 1, 3), (3, 16, 16), load_profile("phone"))
    for key in ("params", "macs", "weight_bytes", "peak_activation_bytes", "latency_ms"):
        assert out[key] > 0
    assert out["profile"] == "phone" and "measured_latency_ms" not in out


@pytest.mark.slow
def test_cost_summary_measures_on_the_host() -> None:
    out = cost_summary(_net(8, 1, 3), (3, 16, 16), load_profile("phone"), measure=True)
    assert out["measured_latency_ms"] > 0


@pytest.mark.slow
def test_calibrate_host_quick_writes_a_loadable_profile(tmp_path: Path) -> None:
    from search.hardware import calibrate_host

    torch.set_num_threads(1)
    profile = calibrate_host(tmp_path / "host.yaml", quick=True, target_s=0.05)
    assert profile.name == "host"
    assert load_profile(str(tmp_path / "host.yaml")) == profile
    assert 0 < profile.efficiency["conv"] <= 1


def test_onnx_and_fx_views_agree_on_a_residual_block(tmp_path: Path) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(torch.relu(self.bn(self.a(x))))
            return torch.relu(y + x)

    net = Block().eval()
    fx_kernels = summarize(net, (1, 8, 8, 8)).kernels
    onnx_view = onnx_kernels(export_fp32_onnx(net, (8, 8, 8), tmp_path / "b.onnx")).kernels
    for view in (fx_kernels, onnx_view):
        assert [k.kind for k in view] == ["conv", "conv", "elementwise", "elementwise"]
        assert [k.residual for k in view] == [False, False, True, True]
    assert [(k.macs, k.in_elems, k.out_elems) for k in fx_kernels] == [
        (k.macs, k.in_elems, k.out_elems) for k in onnx_view
    ]


@pytest.mark.slow
def test_with_measured_latency_replaces_the_prediction(tmp_path: Path) -> None:
    from search.hardware import with_measured_latency

    net = _net(4, 1, 3)
    cost = estimate_cost(net, (3, 8, 8), load_profile("phone"))
    measured = with_measured_latency(cost, net, (3, 8, 8))
    assert measured.latency_ms != cost.latency_ms and measured.macs == cost.macs
    assert "measured" in measured.notes[-1]


# -- Zoo rows and leave-one-network-out ----------------------------------------------------------

ZOO = ("resnet8", "ds_cnn", "mobilenet_v1_025", "fc_autoencoder")
MCU_TRUE = profile_from_dict(
    {
        "name": "board",
        "sources": ["test"],
        "peak_macs_per_s": {8: 4e8, 32: 2e8},
        "native_precisions": [8, 32],
        "fallback_precision": 32,
        "bandwidth_bytes_per_s": 8e8,
        # dense ~1 cycle/MAC, depthwise ~3: what the device fit must carry
        "efficiency": {"conv": 0.5, "dwconv": 0.17, "linear": 0.4, "elementwise": 0.5},
        "layer_overhead_us": {"conv": 20, "dwconv": 20, "linear": 10, "elementwise": 5},
        "model_overhead_us": 100,
        "output_overhead_ns": 50,  # ~10 cycles per output element
        "memory": {"sram_kb": 320},
    }
)


def _zoo_csv(tmp_path: Path, profile) -> Path:
    from search.hardware.fit import predicted_ms, zoo_sample

    lines = ["network,precision,latency_ms,source"]
    for net in ZOO:
        ms = predicted_ms(zoo_sample(net, 8, 1.0), profile)
        lines.append(f"{net},int8,{ms:.6f},made up for the test")
    path = tmp_path / "board.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_zoo_rows_fit_and_leave_one_network_out_recovers_the_device(tmp_path: Path) -> None:
    from search.hardware import calibration_from_csv

    csv_path = _zoo_csv(tmp_path, MCU_TRUE)
    # Right kind ratios, 2.5x wrong MAC rate: the one free rate recovers the device, and each
    # network is predicted within 5 % by a fit that never saw it.
    base = MCU_TRUE.with_updates(
        efficiency={"conv": 0.2, "dwconv": 0.068, "linear": 0.16, "elementwise": 0.5}
    )
    cal = calibration_from_csv(csv_path, base, name="myboard", out_path=tmp_path / "b.yaml")
    assert [r.sample.network for r in cal.loo] == list(ZOO)
    assert all(abs(r.ratio - 1) < 0.05 for r in cal.loo)
    assert cal.errors["within_20pct_loo"] == 1.0 and cal.errors["spearman_loo"] == 1.0
    assert cal.profile.efficiency["conv"] == pytest.approx(0.5, rel=0.05)
    assert cal.profile.efficiency["dwconv"] == pytest.approx(0.17, rel=0.1)
    assert cal.profile.latency_error_p90 is not None and cal.profile.latency_error_p90 < 0.05
    assert load_profile(str(tmp_path / "b.yaml")) == cal.profile
    # The base is clearly off on the same rows.
    from search.hardware.fit import read_measurements

    assert max(abs(e) for e in prediction_errors(read_measurements(csv_path), base)) > 0.5


def test_published_rows_are_read_for_the_base_profile_only(tmp_path: Path) -> None:
    from search.hardware.fit import read_measurements

    path = tmp_path / "published.csv"
    path.write_text(
        "network,precision,profile,use,board,latency_ms\n"
        "resnet8,int8,mcu,fit,DISCO-F746NG,62.6\n"
        "ds_cnn,int8,mcu,check,DISCO-F746NG,17.7\n"
        "ds_cnn,int8,mcu_h7,fit,H747,11.3\n"
    )
    assert [s.network for s in read_measurements(path, profile="mcu")] == ["resnet8"]
    assert [s.network for s in read_measurements(path, profile="mcu", use="check")] == ["ds_cnn"]
    with pytest.raises(ConfigError, match="no measurements"):
        read_measurements(path, profile="phone")


@pytest.mark.parametrize(
    ("rows", "field", "words"),
    [
        ("resnet9,int8,1", "row 2: network", "one of"),
        ("resnet8,int3,1", "row 2: precision", "int8, fp16 or fp32"),
        ("resnet8,int8,0", "row 2: latency_ms", "> 0"),
    ],
)
def test_bad_zoo_rows(tmp_path: Path, rows: str, field: str, words: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text("network,precision,latency_ms\n" + rows + "\n")
    with pytest.raises(ConfigError) as info:
        calibrate_from_measurements(path, START)
    assert info.value.field == field and words in info.value.message


def test_calibrate_cli_prints_the_leave_one_network_out_error(tmp_path: Path, capsys) -> None:
    from search.cli import main

    base = tmp_path / "base.yaml"
    from search.hardware import write_profile

    write_profile(MCU_TRUE.with_updates(name="board"), base)
    csv_path = _zoo_csv(tmp_path, MCU_TRUE)
    out = tmp_path / "fitted.yaml"
    rc = main(
        ["profiles", "calibrate", "--base", str(base), "--measurements", str(csv_path),
         "--out", str(out)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "leave-one-network-out" in text and "fc_autoencoder" in text
    assert "within +-20 %: 100%" in text and "p90 |error|" in text
    # A bad CSV: exit 2, one line on stderr naming the file and the field, nothing written.
    bad = tmp_path / "bad.csv"
    bad.write_text("network,latency_ms,colour\nresnet8,1,red\n")
    rc = main(
        ["profiles", "calibrate", "--base", str(base), "--measurements", str(bad),
         "--out", str(tmp_path / "never.yaml")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {bad}: header:") and "unknown columns" in err[0]
    assert not (tmp_path / "never.yaml").exists()


def test_a_builtin_base_starts_from_its_stated_figures_not_its_fitted_ones(tmp_path: Path) -> None:
    """The built-in YAML holds figures fitted to all published rows; a leave-one-network-out
    that leaned on them would let each held-out network inform its own prediction."""
    from search.hardware.fit import calibrate, read_measurements

    samples = read_measurements(_zoo_csv(tmp_path, MCU_TRUE))
    fitted = load_profile("mcu")
    other = fitted.with_updates(
        efficiency={"conv": 0.9, "dwconv": 0.9, "linear": 0.9, "elementwise": 0.9},
        model_overhead_us=5000.0,
    )
    a, b = calibrate(samples, fitted), calibrate(samples, other)
    assert [r.predicted_ms for r in a.loo] == [r.predicted_ms for r in b.loo]
    assert a.profile == b.profile
    # A profile of the user's own (any other name) is its own start.
    mine = calibrate(samples, other.with_updates(name="myboard"))
    assert [r.predicted_ms for r in mine.loo] != [r.predicted_ms for r in a.loo]


def test_networks_of_one_backbone_leave_together() -> None:
    """The ST zoo's MobileNetV2 0.35 at 128 px with 1000 or 5 classes is one network: a fit
    that saw the 5-class row would know the 1000-class one."""
    from search.hardware.fit import fit_device, leave_one_network_out, predicted_ms, zoo_sample

    a = zoo_sample("st_mobilenet_v2_035_128", 8, 100.0)
    b = zoo_sample("st_mobilenet_v2_035_128_c5", 8, 80.0)
    others = [zoo_sample("resnet8", 8, 30.0), zoo_sample("ds_cnn", 8, 10.0)]
    assert a.group == b.group != others[0].group
    rows = leave_one_network_out([a, b, *others], MCU_TRUE)
    alone = fit_device(others, MCU_TRUE).profile
    assert rows[0].predicted_ms == pytest.approx(predicted_ms(a, alone))
    assert rows[1].predicted_ms == pytest.approx(predicted_ms(b, alone))


@pytest.mark.parametrize("fused", [False, True])
def test_the_fit_prices_fused_activations_as_the_cost_model_does(fused: bool) -> None:
    """`kernel_terms` (what the fit sees) and `estimate_cost` (what the search sees) agree."""
    from search.hardware.fit import predicted_ms

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 16, 3, padding=1)
            self.act = nn.SiLU()
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.hardswish(self.dw(self.act(self.conv(x))))
            y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))  # squeeze-excite: a pass
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    profile = TRUE.with_updates(fused_activation=fused)
    net = Block().eval()
    sample = Sample("block", summarize(net, (1, 8, 12, 12)).kernels, 1.0)
    cost = estimate_cost(net, (8, 12, 12), profile)
    assert predicted_ms(sample, profile) == pytest.approx(cost.latency_ms, rel=1e-9)
    assert sum(k.fused_activation for k in sample.kernels) == 2  # the silu and the hardswish


@pytest.mark.parametrize("saturation", [0.0, 5_000.0])
def test_the_fit_prices_idle_gpu_sms_as_the_cost_model_does(saturation: float) -> None:
    """A GPU profile's `saturation_outputs`: small layers run as long per MAC as a saturating
    one, in the fit (`predicted_ms`) exactly as in the search (`estimate_cost`)."""
    from search.hardware.fit import predicted_ms

    net = _net(16, 2, 3).eval()  # 16 x 12 x 12 = 2,304 outputs per conv, a 10-output linear
    profile = TRUE.with_updates(saturation_outputs=saturation)
    sample = Sample("net", summarize(net, (1, 3, 12, 12)).kernels, 1.0)
    cost = estimate_cost(net, (3, 12, 12), profile)
    assert predicted_ms(sample, profile) == pytest.approx(cost.latency_ms, rel=1e-9)
    if saturation:  # every layer is below saturation: compute time grows, overheads do not
        plain = estimate_cost(net, (3, 12, 12), TRUE)
        assert cost.latency_ms > plain.latency_ms


def test_onnx_and_fx_views_agree_on_fused_activations(tmp_path: Path) -> None:
    """A profile calibrated from ONNX files folds the SiLU and hardswish the search folds."""

    class Block(nn.Module):
        def __init__(self, tail: bool) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 8, 1)
            self.tail = tail

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.silu(self.a(x))
            z = self.c(nn.functional.hardswish(self.b(y)))
            return nn.functional.hardswish(z) + z if self.tail else z  # z read twice: a pass

    from search.hardware.fit import predicted_ms

    npu = TRUE.with_updates(fused_activation=True)
    for tail in (False, True):
        net = Block(tail).eval()
        fx_view = summarize(net, (1, 8, 8, 8)).kernels
        onnx_view = onnx_kernels(export_fp32_onnx(net, (8, 8, 8), tmp_path / "f.onnx")).kernels
        for view in (fx_view, onnx_view):
            assert sum(k.fused_activation for k in view) == 2, view
        if not tail:
            on_fx, on_onnx = (predicted_ms(Sample("b", v, 1.0), npu) for v in (fx_view, onnx_view))
            assert on_onnx == pytest.approx(on_fx, rel=1e-9)
