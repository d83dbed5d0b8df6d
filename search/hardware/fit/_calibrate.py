"""Calibrate a profile to latencies measured on a device (`profiles calibrate`).

Two sources of measurements share one fit (`_solve`):
- `calibrate_host` (`_host`) micro-benchmarks this machine with ONNX Runtime (conv,
  depthwise, linear, element-wise at several sizes) and writes a `host` profile;
- `calibrate_from_measurements` reads latencies a user measured on their own device
  (a CSV of ONNX files or zoo networks and milliseconds, `_rows`) and refits a base
  profile from its stated starting figures (`FIT_STARTS`), checked leave-one-network-out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._profile import HardwareProfile, load_profile, profile_from_dict, write_profile
from ._device import (
    DeviceFit,
    LooRow,
    error_summary,
    fit_device,
    leave_one_network_out,
    reference_metric,
)
from ._rows import read_measurements
from ._solve import Sample

# Where the device fit of each built-in profile starts, stated before looking at the published
# rows (not fitted). A built-in YAML holds the figures fitted to all of its rows: a fit, and
# above all a leave-one-network-out, that leaned on those would let each held-out network
# inform its own prediction. MCUs run dense int8 convs near 1 cycle/MAC (efficiency 0.5 of
# SMLAD's 2 MACs/cycle) and depthwise ones near 2.5, and pay ~10 cycles per conv/linear output
# (requantize, clamp, store); phone CPUs lose more on depthwise (load/store bound); GPUs and
# NPUs pay a fixed launch per layer.
MCU_CLOCK_MHZ = {"mcu": 216.0, "mcu_h7": 400.0, "mcu_m4": 120.0, "mcu_m33": 200.0}


# STM32Cube.AI's kernels read each weight from flash as they go: a cache-missing read stalls the
# core for the flash's wait states. Starting cost per weight byte: one 32-byte cache line per
# ~8 bus cycles on the STM32H7 (AXI at 200 MHz, 2 wait states: 40 ns a line) and per ~6
# cycles of 8 bytes on the STM32L4R5 (120 MHz, 5 wait states, 64-bit reads: 50 ns per 8 B).
# The other MCU runtimes' rows show no such cost (the Bosch and TFLM auto-encoders, all
# weights read once, fit without it), so their start is 0 and the fit keeps it there.
FLASH_READ_NS = {"mcu_h7": 40 / 32, "mcu_m4": 50 / 8}


def _mcu_start(name: str, mhz: float) -> dict[str, Any]:
    return {
        "efficiency": {"conv": 0.5, "dwconv": 0.2, "linear": 0.5, "elementwise": 0.5},
        "layer_overhead_us": {"conv": 20, "dwconv": 20, "linear": 10, "elementwise": 5},
        "model_overhead_us": 100.0,
        "output_overhead_ns": round(10 / mhz * 1e3, 2),
        "flash_read_ns_per_byte": FLASH_READ_NS.get(name, 0.0),
    }


# Streaming multiprocessors of each GPU (datasheets): T4 40, AGX Xavier 8, Nano 1, A100 108.
GPU_SMS = {"cloud_gpu": 40, "jetson_xavier": 8, "jetson_nano": 1, "a100": 108}


def _tensorrt_start(sms: int) -> dict[str, Any]:
    # TensorRT at batch 1: dense convs well below the tensor-core peak, depthwise far below it
    # (no tensor cores), one kernel launch (~5-10 us) per fused layer, a fixed cost per call;
    # a layer needs about one 64x64 output tile per SM to keep every SM busy.
    return {
        "efficiency": {"conv": 0.3, "dwconv": 0.05, "linear": 0.2, "elementwise": 0.6},
        "layer_overhead_us": {"conv": 8, "dwconv": 8, "linear": 8, "elementwise": 5},
        "model_overhead_us": 50.0,
        "saturation_outputs": sms * 64 * 64,
    }


FIT_STARTS: dict[str, dict[str, Any]] = {
    **{name: _mcu_start(name, mhz) for name, mhz in MCU_CLOCK_MHZ.items()},
    "phone": {
        "efficiency": {"conv": 0.5, "dwconv": 0.15, "linear": 0.4, "elementwise": 0.2},
        "layer_overhead_us": {"conv": 5, "dwconv": 5, "linear": 3, "elementwise": 2},
        "model_overhead_us": 50.0,
    },
    "phone_npu": {
        "efficiency": {"conv": 0.3, "dwconv": 0.1, "linear": 0.2, "elementwise": 0.3},
        "layer_overhead_us": {"conv": 3, "dwconv": 3, "linear": 3, "elementwise": 2},
        "model_overhead_us": 100.0,
        # The input copied through the CPU into the NPU's shared buffer: ~4 GB/s.
        "input_ns_per_byte": 0.25,
    },
    **{name: _tensorrt_start(sms) for name, sms in GPU_SMS.items()},
}


def fit_start(base: HardwareProfile) -> HardwareProfile:
    """`base` with its stated starting figures (FIT_STARTS) when it is a built-in device profile.

    Any other base (a user's own profile) is its own start.
    """
    start = FIT_STARTS.get(base.name)
    return base if start is None else base.with_updates(latency_error=None, **start)


@dataclass(frozen=True)
class Calibration:
    """A fitted profile, its leave-one-network-out rows and their error summary.

    `fit` holds the offsets of metrics other than `reference` (the one the profile predicts).
    """

    profile: HardwareProfile
    loo: tuple[LooRow, ...]
    errors: Mapping[str, float | None]
    fit: DeviceFit | None = None
    reference: str = ""

    def predict_ms(self, sample: Sample) -> float:
        """The sample's latency as its own source measures it (the offset of its metric)."""
        return DeviceFit(self.profile, self.fit.offsets_ms if self.fit else {}).predict_ms(sample)

    def report(self) -> str:
        """Lines a person reads after `profiles calibrate`: the fit and how far to trust it."""
        p = self.profile
        lines = [
            f"fitted {p.name}: efficiency "
            + ", ".join(f"{k} {v:.3g}" for k, v in p.efficiency.items())
            + f"; layer overhead {p.layer_overhead_us['conv']:.3g} us (conv); "
            f"per inference {p.model_overhead_us:.3g} us"
        ]
        if not self.loo:
            lines.append("leave-one-network-out: needs measurements of at least 2 networks")
            return "\n".join(lines)
        lines.append("leave-one-network-out (each network predicted by a fit without it):")
        for r in self.loo:
            lines.append(
                f"  {r.sample.name:<40} measured {r.sample.measured_ms:10.4g} ms  "
                f"predicted {r.predicted_ms:10.4g} ms  ({r.ratio - 1:+.0%})"
            )
        e = self.errors
        rho = e.get("spearman_loo")
        lines.append(
            f"  within +-20 %: {e['within_20pct_loo']:.0%}, +-30 %: {e['within_30pct_loo']:.0%}; "
            f"MAPE {e['mape_loo']:.1%}; p90 |error| {e['p90_abs_error_loo']:.1%}"
            + ("" if rho is None else f"; Spearman {rho:.3f}")
        )
        return "\n".join(lines)


def calibrate(
    samples: Sequence[Sample],
    base: HardwareProfile,
    *,
    source: str = "",
    priors: Mapping[str, float] | None = None,
) -> Calibration:
    """Fit `base` to `samples` and measure the fit leave-one-network-out.

    A built-in device profile starts from its stated figures (`fit_start`), never from the
    figures already fitted into its YAML. The returned profile stores the error as
    `latency_error` (p90 of |predicted/measured - 1|) when at least two networks were measured.
    """
    base = fit_start(base)
    reference = reference_metric(samples)
    fit = fit_device(samples, base, priors=priors, reference=reference)
    profile = fit.profile
    loo: list[LooRow] = []
    if len({s.group for s in samples}) >= 2:
        loo = leave_one_network_out(samples, base, priors=priors, reference=reference)
    errors = error_summary(loo)
    if loo:
        p90 = errors["p90_abs_error_loo"]
        assert p90 is not None
        latency_error = {"p90": round(p90, 4), "source": source, "rows": len(loo)}
        profile = profile.with_updates(latency_error=latency_error)
    return Calibration(profile, tuple(loo), errors, fit, reference)


def calibrate_from_measurements(
    csv_path: str | Path,
    base_profile: HardwareProfile | str | Path,
    *,
    name: str | None = None,
    out_path: str | Path | None = None,
) -> HardwareProfile:
    """`calibration_from_csv(...).profile`: the fitted profile alone."""
    return calibration_from_csv(csv_path, base_profile, name=name, out_path=out_path).profile


def calibration_from_csv(
    csv_path: str | Path,
    base_profile: HardwareProfile | str | Path,
    *,
    name: str | None = None,
    out_path: str | Path | None = None,
) -> Calibration:
    """Fit `base_profile` to latencies measured on a real device (`profiles calibrate`).

    The CSV (see `read_measurements`) has one row per measured model: an ONNX file or a zoo
    network with its precision, and the median latency in milliseconds. Rows of a published
    file that name a `profile` are read for the base profile's name only. Peaks stay those of
    the base profile (a HardwareProfile, or a built-in name or YAML path); the MAC rate, the
    depthwise and linear ratios and the overheads are fitted (`fit_device`; a built-in base
    starts from `FIT_STARTS`, not from its already fitted figures), and each network is
    predicted by a fit without it. Writes the profile to `out_path` if given.
    """
    if not isinstance(base_profile, HardwareProfile):
        base_profile = load_profile(base_profile, file="<command line>", field="--base")
    samples = read_measurements(csv_path, profile=base_profile.name)
    result = calibrate(samples, base_profile, source=str(csv_path))
    n = len({s.group for s in samples})
    profile = result.profile.with_updates(
        name=name or base_profile.name,
        sources=(
            *base_profile.sources,
            f"MAC rate, depthwise/linear ratios and overheads fitted to {len(samples)} "
            f"measurements of {n} networks in {Path(csv_path).name}",
        ),
    )
    profile = profile_from_dict(profile.to_dict(), file=base_profile.file)
    if out_path is not None:
        write_profile(
            profile, out_path, header=f"fitted from {csv_path} on {time.strftime('%Y-%m-%d')}"
        )
    return Calibration(profile, result.loo, result.errors, result.fit, result.reference)
