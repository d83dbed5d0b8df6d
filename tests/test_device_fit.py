"""The device fit with rows from several sources: each other metric gets one fixed offset."""

from __future__ import annotations

from dataclasses import replace

import pytest

from search.hardware import profile_from_dict
from search.hardware.fit import calibrate, fit_device, predicted_ms, reference_metric, zoo_sample

DEVICE = profile_from_dict(
    {
        "name": "board",
        "sources": ["test"],
        "peak_macs_per_s": {8: 4e8, 32: 2e8},
        "native_precisions": [8, 32],
        "fallback_precision": 32,
        "bandwidth_bytes_per_s": 8e8,
        "efficiency": {"conv": 0.5, "dwconv": 0.17, "linear": 0.4, "elementwise": 0.5},
        "layer_overhead_us": {"conv": 20, "dwconv": 20, "linear": 10, "elementwise": 5},
        "model_overhead_us": 100,
        "memory": {"ram_kb": 512},
    }
)
NETS = ("resnet8", "ds_cnn", "mobilenet_v1_025", "fc_autoencoder")
HARNESS_MS = 3.0  # what the second source's harness adds to every row


def _rows(offset_ms: float) -> list:
    """Each network timed by an engine-only source and by a harness that adds `offset_ms`."""
    out = []
    for net in NETS:
        s = zoo_sample(net, 8, 1.0)
        ms = predicted_ms(s, DEVICE)
        out.append(replace(s, measured_ms=ms, row={"metric_kind": "engine"}))
        out.append(replace(s, measured_ms=ms + offset_ms, row={"metric_kind": "harness"}))
    return out


def test_the_reference_metric_is_the_one_with_most_rows() -> None:
    rows = _rows(HARNESS_MS)
    assert reference_metric(rows) == "engine"  # a tie: the first read
    assert reference_metric(rows[1:]) == "harness"
    assert reference_metric([zoo_sample("resnet8", 8, 1.0)]) == ""


def test_a_second_source_gets_its_offset_and_the_profile_stays_the_reference_one() -> None:
    rows = _rows(HARNESS_MS)
    fit = fit_device(rows, DEVICE, reference="engine")
    assert set(fit.offsets_ms) == {"harness"}
    assert fit.offsets_ms["harness"] == pytest.approx(HARNESS_MS, rel=0.05)
    for s in rows:  # the true device, every row as its own source times it
        assert fit.predict_ms(s) == pytest.approx(s.measured_ms, rel=0.05)
    engine = [s for s in rows if s.row["metric_kind"] == "engine"]
    for s in engine:
        assert predicted_ms(s, fit.profile) == pytest.approx(s.measured_ms, rel=0.05)


def test_without_offsets_the_harness_rows_bend_the_fit() -> None:
    """The same rows under one metric: the fit must absorb 3 ms into the device's figures."""
    one_metric = [replace(s, row={}) for s in _rows(HARNESS_MS)]
    fit = fit_device(one_metric, DEVICE)
    assert fit.offsets_ms == {}
    worst = max(abs(fit.predict_ms(s) / s.measured_ms - 1) for s in one_metric)
    assert worst > 0.2


def test_leave_one_network_out_keeps_the_offset_and_the_reference() -> None:
    cal = calibrate(_rows(HARNESS_MS), DEVICE)
    assert cal.reference == "engine"
    assert cal.fit is not None and cal.fit.offsets_ms["harness"] == pytest.approx(3.0, rel=0.05)
    assert all(abs(r.ratio - 1) < 0.1 for r in cal.loo)
    harness = next(s for s in _rows(HARNESS_MS) if s.row["metric_kind"] == "harness")
    assert cal.predict_ms(harness) == pytest.approx(harness.measured_ms, rel=0.05)


def test_readme_hardware_table_is_the_results_file() -> None:
    """The README's hardware table is devices.json rendered (`devices.py --update-readme`), and
    every TensorRT profile's figures are in that file with the keys the issue names."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bench = repo / "experiments" / "benchmarks"
    if str(bench) not in sys.path:  # it imports its siblings, as a script run from there does
        sys.path.append(str(bench))
    spec = importlib.util.spec_from_file_location("devices_bench", bench / "devices.py")
    assert spec and spec.loader
    devices = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(devices)
    result = json.loads((repo / "experiments" / "results" / "devices.json").read_text())
    assert devices.readme_section(result) in (repo / "README.md").read_text()
    for name in devices.TENSORRT:
        section = result["profiles"][name]
        assert {"within_25pct_loo", "spearman_loo"} <= set(section)
        assert section["rows"] and all(r["source"] for r in section["rows"])
