"""Fit a profile's efficiencies and overheads to measured latencies.

Two sources of measurements share one fit:
- `calibrate_host` micro-benchmarks this machine with ONNX Runtime (conv, depthwise, linear,
  element-wise at several sizes) and writes a `host` profile;
- `calibrate_from_measurements` reads latencies a user measured on their own device
  (a CSV of ONNX files and milliseconds) and refits a base profile.

The fit keeps the peaks and the bandwidth (theoretical figures, or on the host the best rates
measured) and solves for the per-kind efficiencies, per-kind layer overheads and the
per-inference overhead that minimise the squared log error of the predicted latencies.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import ConfigError
from ._cost import estimate_cost, layer_weight_bytes
from ._graph import COMPUTE_KINDS, Kernel
from ._profile import OP_KINDS, HardwareProfile, profile_from_dict, write_profile


@dataclass(frozen=True)
class Sample:
    """One measured model: its kernels (as the cost model sees them) and its latency."""

    name: str
    kernels: tuple[Kernel, ...]
    measured_ms: float
    layer_bits: Mapping[str, int] = field(default_factory=dict)
    activation_bits: int = 32
    layer_density: Mapping[str, float] = field(default_factory=dict)
    batch_scale: float = 1.0
    network: str = ""  # the measured network (default: the name)
    # Networks with one backbone leave together in leave-one-network-out (ReferenceNetwork).
    backbone: str = ""
    # The measurements-CSV row it was read from (provenance: board, runtime, source, ...).
    row: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def group(self) -> str:
        """What leave-one-network-out leaves out together."""
        return self.backbone or self.network or self.name


# ------------------------------------------------------------------------------------------------
# The fit
# ------------------------------------------------------------------------------------------------


def _terms(sample: Sample, profile: HardwareProfile) -> dict[str, tuple[np.ndarray, ...]]:
    """Per op kind: compute seconds at efficiency 1, bytes moved, and an unaligned-conv mask."""
    act = sample.activation_bits / 8
    rows: dict[str, tuple[list[float], list[float], list[int], list[float]]] = {
        k: ([], [], [], []) for k in OP_KINDS
    }
    s = sample.batch_scale
    block = profile.channel_block
    for k in sample.kernels:
        if k.kind in COMPUTE_KINDS:
            bits = int(sample.layer_bits.get(k.layer or "", 32))
            density = float(sample.layer_density.get(k.layer or "", 1.0))
            wbytes = layer_weight_bytes(k, bits, density)
            precision = profile.compute_precision(bits, sample.activation_bits)
            macs = k.macs * s * (density if profile.sparse_support else 1.0)
            rows[k.kind][0].append(macs / profile.peak_macs_per_s[precision])
            rows[k.kind][1].append((k.in_elems + k.out_elems) * act * s + wbytes)
            # 0 aligned, 1 unaligned dense conv, 2 unaligned grouped/depthwise conv
            off = k.kind != "linear" and not profile.aligned(
                k.in_channels, k.out_channels, k.groups
            )
            rows[k.kind][2].append(0 if not off else (1 if k.groups <= 1 else 2))
            rows[k.kind][3].append(k.out_elems * s)
        elif k.residual and profile.fused_add and (block <= 1 or k.out_channels % block == 0):
            continue
        else:
            rows["elementwise"][0].append(0.0)
            rows["elementwise"][1].append((k.in_elems + k.out_elems) * act * s)
            rows["elementwise"][2].append(0)
            rows["elementwise"][3].append(0.0)
    return {
        k: (np.asarray(c), np.asarray(m), np.asarray(u, dtype=int), np.asarray(o))
        for k, (c, m, u, o) in rows.items()
    }


def _predict(
    terms: dict[str, tuple[np.ndarray, ...]],
    inv_eff: Mapping[str, float],
    over_s: Mapping[str, float],
    model_s: float,
    bandwidth: float,
    inv_unaligned: tuple[float, float] = (1.0, 1.0),
    output_s: float = 0.0,
) -> float:
    total = model_s
    for kind, (c, b, unaligned, outs) in terms.items():
        if not len(c):
            continue
        if kind == "elementwise":
            total += float(b.sum()) / bandwidth * inv_eff[kind]
        else:
            factor = np.choose(unaligned, (1.0, inv_unaligned[0], inv_unaligned[1]))
            scale = inv_eff[kind] * factor
            total += float(np.maximum(c * scale, b / bandwidth).sum())
            total += float(outs.sum()) * output_s
        total += len(c) * over_s[kind]
    return total


def fit_profile(
    samples: Sequence[Sample],
    base: HardwareProfile,
    *,
    name: str | None = None,
    description: str | None = None,
    sources: Sequence[str] | None = None,
    fit_overheads: bool = True,
    fit_bandwidth: bool = False,
    prior_weight: float = 0.05,
) -> HardwareProfile:
    """Refit `base`'s efficiencies and overheads to `samples` (least squares on log latency).

    The peaks stay; the bandwidth too unless `fit_bandwidth` (then it is the rate that weights
    and activations actually stream at, which cache-resident micro-benchmarks overstate).
    A weak prior (`prior_weight`) pulls each parameter towards the base value, so a kind that
    few samples exercise keeps a sensible figure instead of drifting.
    """
    from scipy.optimize import least_squares

    if not samples:
        raise ValueError("fit_profile needs at least one measured sample")
    terms = [_terms(s, base) for s in samples]
    measured = np.asarray([s.measured_ms * 1e-3 for s in samples])
    kinds = list(OP_KINDS)
    nk = len(kinds)
    used = {k for t in terms for k in kinds if len(t[k][0])}

    un_dense = any(bool((t[k][2] == 1).any()) for t in terms for k in kinds)
    un_grouped = any(bool((t[k][2] == 2).any()) for t in terms for k in kinds)
    # Parameters: log(1/efficiency) per kind, log(overhead_us + 1e-3) per kind and per model,
    # log(bandwidth), log(1/unaligned_efficiency) for dense and grouped convs.
    x0 = [math.log(1.0 / base.efficiency[k]) for k in kinds]
    x0 += [math.log(base.layer_overhead_us[k] + 1e-3) for k in kinds]
    x0 += [math.log(base.model_overhead_us + 1e-3), math.log(base.bandwidth_bytes_per_s)]
    x0 += [math.log(1.0 / base.unaligned_efficiency[k]) for k in ("conv", "dwconv")]
    x0_arr = np.asarray(x0)
    free = np.ones(len(x0), dtype=bool)
    if not fit_overheads:
        free[nk : 2 * nk + 1] = False
    if not fit_bandwidth:
        free[-3] = False
    if not un_dense:
        free[-2] = False
    if not un_grouped:
        free[-1] = False

    def unpack(
        x: np.ndarray,
    ) -> tuple[dict[str, float], dict[str, float], float, float, tuple[float, float]]:
        inv = {k: math.exp(x[i]) for i, k in enumerate(kinds)}
        over = {k: max(math.exp(x[nk + i]) - 1e-3, 0.0) * 1e-6 for i, k in enumerate(kinds)}
        model = max(math.exp(x[2 * nk]) - 1e-3, 0.0) * 1e-6
        return inv, over, model, math.exp(x[-3]), (math.exp(x[-2]), math.exp(x[-1]))

    def full(z: np.ndarray) -> np.ndarray:
        x = x0_arr.copy()
        x[free] = z
        return x

    def residuals(z: np.ndarray) -> np.ndarray:
        x = full(z)
        inv, over, model, bw, inv_un = unpack(x)
        out_s = base.output_overhead_ns * 1e-9
        pred = np.asarray([_predict(t, inv, over, model, bw, inv_un, out_s) for t in terms])
        r = np.log(np.maximum(pred, 1e-12) / measured)
        return np.concatenate([r, prior_weight * (z - x0_arr[free])])

    lo = np.asarray(
        [0.0] * nk + [math.log(1e-3)] * (nk + 1) + [x0_arr[-3] - math.log(1e3), 0.0, 0.0]
    )
    hi = np.asarray(
        [math.log(1e6)] * nk
        + [math.log(1e6)] * (nk + 1)
        + [x0_arr[-3] + math.log(1e3), math.log(1e3), math.log(1e3)]
    )
    z0 = np.clip(x0_arr, lo + 1e-9, hi - 1e-9)[free]
    result = least_squares(residuals, z0, bounds=(lo[free], hi[free]), loss="soft_l1", f_scale=0.1)
    inv, over, model, bw, inv_un = unpack(full(result.x))
    eff = {
        k: (round(min(1.0, 1.0 / inv[k]), 6) if k in used else base.efficiency[k]) for k in kinds
    }
    over_us = {
        k: (round(over[k] * 1e6, 3) if k in used else base.layer_overhead_us[k]) for k in kinds
    }
    data = base.to_dict()
    data.update(
        efficiency=eff,
        layer_overhead_us=over_us,
        model_overhead_us=round(model * 1e6, 3),
        bandwidth_bytes_per_s=float(f"{bw:.4g}"),
        unaligned_efficiency={
            "conv": round(min(1.0, 1.0 / inv_un[0]), 6),
            "dwconv": round(min(1.0, 1.0 / inv_un[1]), 6),
        },
    )
    if name is not None:
        data["name"] = name
    if description is not None:
        data["description"] = description
    if sources is not None:
        data["sources"] = list(sources)
    return profile_from_dict(data, file=base.file)


def predicted_ms(sample: Sample, profile: HardwareProfile) -> float:
    """What `profile` predicts for one sample, in milliseconds (the cost model's roofline)."""
    pred = _predict(
        _terms(sample, profile),
        {k: 1.0 / profile.efficiency[k] for k in OP_KINDS},
        {k: profile.layer_overhead_us[k] * 1e-6 for k in OP_KINDS},
        profile.model_overhead_us * 1e-6,
        profile.bandwidth_bytes_per_s,
        (
            1.0 / profile.unaligned_efficiency["conv"],
            1.0 / profile.unaligned_efficiency["dwconv"],
        ),
        profile.output_overhead_ns * 1e-9,
    )
    return pred * 1e3


def prediction_errors(samples: Sequence[Sample], profile: HardwareProfile) -> list[float]:
    """Relative error (predicted / measured - 1) of `profile` on each sample."""
    return [predicted_ms(s, profile) / s.measured_ms - 1.0 for s in samples]


# Where the device fit of each built-in profile starts, stated before looking at the published
# rows (not fitted). A built-in YAML holds the figures fitted to all of its rows: a fit, and
# above all a leave-one-network-out, that leaned on those would let each held-out network
# inform its own prediction. MCUs run dense int8 convs near 1 cycle/MAC (efficiency 0.5 of
# SMLAD's 2 MACs/cycle) and depthwise ones near 2.5, and pay ~10 cycles per conv/linear output
# (requantize, clamp, store); phone CPUs lose more on depthwise (load/store bound); GPUs and
# NPUs pay a fixed launch per layer.
MCU_CLOCK_MHZ = {"mcu": 216.0, "mcu_h7": 400.0, "mcu_m4": 120.0, "mcu_m33": 200.0}


def _mcu_start(mhz: float) -> dict[str, Any]:
    return {
        "efficiency": {"conv": 0.5, "dwconv": 0.2, "linear": 0.5, "elementwise": 0.5},
        "layer_overhead_us": {"conv": 20, "dwconv": 20, "linear": 10, "elementwise": 5},
        "model_overhead_us": 100.0,
        "output_overhead_ns": round(10 / mhz * 1e3, 2),
    }


FIT_STARTS: dict[str, dict[str, Any]] = {
    **{name: _mcu_start(mhz) for name, mhz in MCU_CLOCK_MHZ.items()},
    "phone": {
        "efficiency": {"conv": 0.5, "dwconv": 0.15, "linear": 0.4, "elementwise": 0.2},
        "layer_overhead_us": {"conv": 5, "dwconv": 5, "linear": 3, "elementwise": 2},
        "model_overhead_us": 50.0,
    },
    "phone_npu": {
        "efficiency": {"conv": 0.3, "dwconv": 0.1, "linear": 0.2, "elementwise": 0.3},
        "layer_overhead_us": {"conv": 3, "dwconv": 3, "linear": 3, "elementwise": 2},
        "model_overhead_us": 100.0,
    },
    "cloud_gpu": {
        "efficiency": {"conv": 0.3, "dwconv": 0.05, "linear": 0.2, "elementwise": 0.6},
        "layer_overhead_us": {"conv": 8, "dwconv": 8, "linear": 8, "elementwise": 5},
        "model_overhead_us": 50.0,
    },
}


def fit_start(base: HardwareProfile) -> HardwareProfile:
    """`base` with its stated starting figures (FIT_STARTS) when it is a built-in device profile.

    Any other base (a user's own profile) is its own start.
    """
    start = FIT_STARTS.get(base.name)
    return base if start is None else base.with_updates(latency_error=None, **start)


# Prior weights of the device fit (residual units: log latency of one measurement). The overall
# MAC rate is free; the per-kind ratios and the overheads lean on the base profile, so a kind
# that the measurements barely exercise keeps the base's ratio to the others.
DEVICE_PRIORS = {
    "ratio": 0.3,
    "elementwise": 0.3,
    "layer_overhead": 0.3,
    "model_overhead": 0.3,
    "bandwidth": 1.0,
    "output_overhead": 0.3,
}


def fit_device(
    samples: Sequence[Sample],
    base: HardwareProfile,
    *,
    priors: Mapping[str, float] | None = None,
) -> HardwareProfile:
    """Fit `base` to a handful of whole-network measurements with few free parameters.

    Free: one MAC-rate scale (the conv efficiency). Pulled towards the base profile's value
    by a prior (`DEVICE_PRIORS`): the depthwise and linear efficiencies as ratios to it, the
    element-wise efficiency, one multiplier on every layer overhead, the per-inference
    overhead, the bandwidth (held nearly fixed) and the per-output overhead (only where the
    base has one). A device measured on three or four networks cannot support per-kind
    overheads, and the base profile's ratios (depthwise slower per MAC than dense) are the
    physics it falls back on. Least squares on log latency, so every network weighs the same
    whatever its size.
    """
    from scipy.optimize import least_squares

    if not samples:
        raise ValueError("fit_device needs at least one measured sample")
    w = {**DEVICE_PRIORS, **(priors or {})}
    terms = [_terms(s, base) for s in samples]
    measured = np.asarray([s.measured_ms * 1e-3 for s in samples])
    inv0 = {k: 1.0 / base.efficiency[k] for k in OP_KINDS}
    over0 = {k: base.layer_overhead_us[k] + 1e-3 for k in OP_KINDS}
    inv_un = (1.0 / base.unaligned_efficiency["conv"], 1.0 / base.unaligned_efficiency["dwconv"])
    # x: log conv scale, log dw ratio, log linear ratio, log elementwise scale,
    #    log overhead multiplier, log model overhead (us), log bandwidth multiplier,
    #    log output-overhead multiplier (moves only where the base has one)
    x0 = np.asarray([0.0, 0.0, 0.0, 0.0, 0.0, math.log(base.model_overhead_us + 1.0), 0.0, 0.0])
    weights = np.asarray(
        [
            0.0,
            w["ratio"],
            w["ratio"],
            w["elementwise"],
            w["layer_overhead"],
            w["model_overhead"],
            w["bandwidth"],
            w["output_overhead"],
        ]
    )
    out0 = base.output_overhead_ns * 1e-9

    def unpack(
        x: np.ndarray,
    ) -> tuple[dict[str, float], dict[str, float], float, float, float]:
        g = math.exp(x[0])
        inv = {
            "conv": inv0["conv"] * g,
            "dwconv": inv0["dwconv"] * g * math.exp(x[1]),
            "linear": inv0["linear"] * g * math.exp(x[2]),
            "elementwise": inv0["elementwise"] * math.exp(x[3]),
        }
        # Efficiencies cannot pass 1 (the peak): clip the inverse at 1.
        inv = {k: max(v, 1.0) for k, v in inv.items()}
        over = {k: over0[k] * math.exp(x[4]) * 1e-6 for k in OP_KINDS}
        model = max(math.exp(x[5]) - 1.0, 0.0) * 1e-6
        bw = base.bandwidth_bytes_per_s * math.exp(x[6])
        return inv, over, model, bw, out0 * math.exp(x[7])

    def residuals(x: np.ndarray) -> np.ndarray:
        inv, over, model, bw, out_s = unpack(x)
        pred = np.asarray([_predict(t, inv, over, model, bw, inv_un, out_s) for t in terms])
        r = np.log(np.maximum(pred, 1e-12) / measured)
        return np.concatenate([r, weights * (x - x0)])

    lo = np.asarray([-12.0, -5.0, -5.0, -5.0, -8.0, 0.0, -5.0, -5.0])
    hi = np.asarray([12.0, 5.0, 5.0, 5.0, 8.0, math.log(1e7), 5.0, 5.0])
    result = least_squares(residuals, np.clip(x0, lo, hi), bounds=(lo, hi))
    inv, over, model, bw, out_s = unpack(result.x)
    data = base.to_dict()
    data.update(
        efficiency={k: float(f"{min(1.0, 1.0 / inv[k]):.4g}") for k in OP_KINDS},
        layer_overhead_us={k: round(over[k] * 1e6, 3) for k in OP_KINDS},
        model_overhead_us=round(model * 1e6, 3),
        bandwidth_bytes_per_s=float(f"{bw:.4g}"),
        output_overhead_ns=float(f"{out_s * 1e9:.4g}"),
    )
    return profile_from_dict(data, file=base.file)


@dataclass(frozen=True)
class LooRow:
    """One measurement predicted by a fit that never saw its network."""

    sample: Sample
    predicted_ms: float

    @property
    def ratio(self) -> float:
        return self.predicted_ms / self.sample.measured_ms


def leave_one_network_out(
    samples: Sequence[Sample],
    base: HardwareProfile,
    *,
    priors: Mapping[str, float] | None = None,
) -> list[LooRow]:
    """Predict each sample with `fit_device` on the samples of every other network.

    Samples of one network (say int8 and fp16 rows of ResNet-50) leave together. A network
    that is the only one measured has nothing to be fitted on: it is predicted by `base`.
    """
    out: list[LooRow] = []
    for s in samples:
        rest = [o for o in samples if o.group != s.group]
        profile = fit_device(rest, base, priors=priors) if rest else base
        out.append(LooRow(s, predicted_ms(s, profile)))
    return out


def error_summary(rows: Sequence[LooRow]) -> dict[str, float | None]:
    """Shares within +-20/25/30 %, MAPE, 90th percentile |error| and Spearman of LOO rows."""
    if not rows:
        return {}
    err = np.asarray([abs(r.ratio - 1.0) for r in rows])
    out: dict[str, float | None] = {
        "within_20pct_loo": float(np.mean(err <= 0.20)),
        "within_25pct_loo": float(np.mean(err <= 0.25)),
        "within_30pct_loo": float(np.mean(err <= 0.30)),
        "mape_loo": float(np.mean(err)),
        "p90_abs_error_loo": float(np.quantile(err, 0.9)),
        "spearman_loo": None,
    }
    if len(rows) >= 3:
        from scipy.stats import spearmanr

        rho = spearmanr(
            [r.predicted_ms for r in rows], [r.sample.measured_ms for r in rows]
        ).statistic
        out["spearman_loo"] = None if math.isnan(rho) else float(rho)
    return out


# ------------------------------------------------------------------------------------------------
# Measurements a user brings: a CSV of ONNX files or zoo networks, and latencies
# ------------------------------------------------------------------------------------------------

CSV_PRECISIONS = {"int8": 8, "fp16": 16, "fp32": 32, "8": 8, "16": 16, "32": 32}


def zoo_sample(network: str, precision: int, latency_ms: float, *, batch: int = 1) -> Sample:
    """A measured reference network (search.hardware.REFERENCE_NETWORKS) as a fit sample.

    Every conv/linear runs at `precision` bits, and so do the activations (int8 rows are
    full-integer, fp16 rows fp16 throughout).
    """
    from ._graph import summarize
    from ._zoo import REFERENCE_NETWORKS

    entry = REFERENCE_NETWORKS[network]
    summary = summarize(entry.build(), (batch, *entry.input_shape))
    bits = {k.layer: precision for k in summary.kernels if k.layer}
    return Sample(
        name=f"{network} {precision}-bit",
        kernels=summary.kernels,
        measured_ms=latency_ms,
        layer_bits=bits,
        activation_bits=precision,
        network=network,
        backbone=entry.backbone,
    )


CSV_COLUMNS = ("latency_ms",)
CSV_MODEL_COLUMNS = ("onnx", "network")  # at least one; each row fills exactly one
CSV_OPTIONAL = ("batch", "precision", "profile", "use", "why")
# Provenance a published-measurements file keeps beside each row; the fit ignores it.
CSV_PROVENANCE = (
    "source",
    "source_repo",
    "source_path",
    "board",
    "device",
    "core",
    "processor",
    "mhz",
    "unit",
    "threads",
    "stack",
    "runtime",
    "model",
    "input_shape",
    "published_precision",
    "peak_ram_kb",
    "flash_kb",
    "notes",
)


def csv_rows(csv_path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a measurements CSV (header checked; `#` lines skipped), with row numbers.

    Raises:
        ConfigError: no such file, or a header without the needed columns or with unknown ones.
    """
    path = Path(csv_path)
    file = str(path)
    if not path.is_file():
        raise ConfigError(file, "<file>", "no measurements CSV at this path")
    with path.open(newline="") as fh:
        lines = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    allowed = CSV_COLUMNS + CSV_MODEL_COLUMNS + CSV_OPTIONAL + CSV_PROVENANCE
    if any(c not in header for c in CSV_COLUMNS) or not any(
        c in header for c in CSV_MODEL_COLUMNS
    ):
        raise ConfigError(
            file,
            "header",
            "needs columns latency_ms and onnx or network "
            f"(optional {list(CSV_OPTIONAL)} and provenance)",
        )
    extra = [h for h in header if h not in allowed]
    if extra:
        raise ConfigError(file, "header", f"unknown columns {extra}; allowed: {list(allowed)}")
    return [
        (i, {k.strip(): (v or "").strip() for k, v in raw.items() if k})
        for i, raw in enumerate(reader, start=2)
    ]


def read_measurements(
    csv_path: str | Path, *, profile: str | None = None, use: str = "fit"
) -> list[Sample]:
    """Parse a measurements CSV: one measured model per row.

    Columns: `latency_ms` and, per row, either `onnx` (a file, relative to the CSV) or
    `network` (a name from search.hardware.REFERENCE_NETWORKS, with `precision` int8, fp16 or
    fp32); optional `batch`. A file of published rows may carry `profile` and `use` columns:
    then only rows for `profile` (when given) whose `use` is `use` are read. Provenance columns
    (CSV_PROVENANCE) are allowed and ignored.
    """
    from ._zoo import REFERENCE_NETWORKS

    path = Path(csv_path)
    file = str(path)
    samples: list[Sample] = []
    for i, row in csv_rows(path):
        if profile is not None and "profile" in row and row["profile"] != profile:
            continue
        if "use" in row and row["use"] != use:
            continue
        try:
            ms = float(row["latency_ms"])
        except ValueError:
            raise ConfigError(file, f"row {i}: latency_ms", "must be a number > 0") from None
        if not ms > 0 or math.isinf(ms):
            raise ConfigError(file, f"row {i}: latency_ms", "must be a number > 0")
        batch = 1
        if row.get("batch"):
            try:
                batch = int(row["batch"])
            except ValueError:
                raise ConfigError(file, f"row {i}: batch", "must be an integer >= 1") from None
            if batch < 1:
                raise ConfigError(file, f"row {i}: batch", "must be an integer >= 1")
        onnx_name, network = row.get("onnx", ""), row.get("network", "")
        if bool(onnx_name) == bool(network):
            raise ConfigError(
                file, f"row {i}: onnx/network", "give exactly one: an ONNX file or a network"
            )
        if network:
            if network not in REFERENCE_NETWORKS:
                raise ConfigError(
                    file, f"row {i}: network", f"one of {sorted(REFERENCE_NETWORKS)}"
                )
            bits = CSV_PRECISIONS.get(row.get("precision", "").lower())
            if bits is None:
                raise ConfigError(file, f"row {i}: precision", "int8, fp16 or fp32")
            sample = zoo_sample(network, bits, ms, batch=batch)
        else:
            sample = _onnx_sample(file, i, path.parent / onnx_name, ms, batch)
        samples.append(replace(sample, row=row))
    if not samples:
        raise ConfigError(file, "rows", "no measurements (one row per measured model is needed)")
    return samples


def _onnx_sample(file: str, i: int, onnx_file: Path, ms: float, batch: int) -> Sample:
    from ._onnx import onnx_kernels

    if not onnx_file.is_file():
        raise ConfigError(file, f"row {i}: onnx", f"no ONNX file at {onnx_file}")
    try:
        ok = onnx_kernels(onnx_file, batch=batch)
    except Exception as exc:  # noqa: BLE001 - any unreadable model is the user's input
        raise ConfigError(file, f"row {i}: onnx", f"cannot read {onnx_file}: {exc}") from None
    return Sample(
        name=str(onnx_file),
        kernels=ok.kernels,
        measured_ms=ms,
        layer_bits=ok.layer_bits,
        activation_bits=ok.activation_bits,
        network=onnx_file.stem,
    )


@dataclass(frozen=True)
class Calibration:
    """A fitted profile, its leave-one-network-out rows and their error summary."""

    profile: HardwareProfile
    loo: tuple[LooRow, ...]
    errors: Mapping[str, float | None]

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
    profile = fit_device(samples, base, priors=priors)
    loo: list[LooRow] = []
    if len({s.group for s in samples}) >= 2:
        loo = leave_one_network_out(samples, base, priors=priors)
    errors = error_summary(loo)
    if loo:
        p90 = errors["p90_abs_error_loo"]
        assert p90 is not None
        latency_error = {"p90": round(p90, 4), "source": source, "rows": len(loo)}
        profile = profile.with_updates(latency_error=latency_error)
    return Calibration(profile, tuple(loo), errors)


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
        from ._profile import load_profile

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
    return Calibration(profile, result.loo, result.errors)


# ------------------------------------------------------------------------------------------------
# Host calibration: micro-benchmarks with ONNX Runtime
# ------------------------------------------------------------------------------------------------


def _onnx_model(
    nodes: list[Any],
    inputs: list[tuple[str, list[int]]],
    output: tuple[str, list[int]],
    inits: list[Any],
) -> Any:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "micro",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _micro_suite(quick: bool) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, kind, model builder) for each micro-benchmark."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def conv(
        cin: int, cout: int, hw: int, k: int, stride: int, groups: int = 1
    ) -> Callable[[], Any]:
        def build() -> Any:
            out_hw = (hw + 2 * (k // 2) - k) // stride + 1
            node = helper.make_node(
                "Conv",
                ["x", "w", "b"],
                ["y"],
                kernel_shape=[k, k],
                pads=[k // 2] * 4,
                strides=[stride, stride],
                group=groups,
            )
            inits = [
                numpy_helper.from_array(w(cout, cin // groups, k, k), "w"),
                numpy_helper.from_array(w(cout), "b"),
            ]
            return _onnx_model(
                [node], [("x", [1, cin, hw, hw])], ("y", [1, cout, out_hw, out_hw]), inits
            )

        return build

    def gemm(m: int, k: int, n: int) -> Callable[[], Any]:
        def build() -> Any:
            node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
            inits = [numpy_helper.from_array(w(k, n), "w"), numpy_helper.from_array(w(n), "b")]
            return _onnx_model([node], [("x", [m, k])], ("y", [m, n]), inits)

        return build

    def eltwise(op: str, c: int, hw: int) -> Callable[[], Any]:
        def build() -> Any:
            shape = [1, c, hw, hw]
            if op == "Add":
                return _onnx_model(
                    [helper.make_node("Add", ["x", "z"], ["y"])],
                    [("x", shape), ("z", shape)],
                    ("y", shape),
                    [],
                )
            if op == "Concat":
                return _onnx_model(
                    [helper.make_node("Concat", ["x", "z"], ["y"], axis=1)],
                    [("x", shape), ("z", shape)],
                    ("y", [1, 2 * c, hw, hw]),
                    [],
                )
            if op == "MaxPool":
                out = (hw + 2 - 3) // 2 + 1
                node = helper.make_node(
                    "MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]
                )
                return _onnx_model([node], [("x", shape)], ("y", [1, c, out, out]), [])
            if op == "GlobalAveragePool":
                node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
                return _onnx_model([node], [("x", shape)], ("y", [1, c, 1, 1]), [])
            if op == "SiLU":
                nodes = [
                    helper.make_node("Sigmoid", ["x"], ["s"]),
                    helper.make_node("Mul", ["x", "s"], ["y"]),
                ]
                return _onnx_model(nodes, [("x", shape)], ("y", shape), [])
            raise ValueError(op)

        return build

    suite: list[tuple[str, str, Callable[[], Any]]] = []
    convs = [
        (3, 32, 112, 3, 2),
        (16, 16, 56, 3, 1),
        (32, 32, 56, 3, 1),
        (64, 64, 28, 3, 1),
        (128, 128, 14, 3, 1),
        (256, 256, 7, 3, 1),
        (64, 128, 28, 3, 2),
        (32, 192, 56, 1, 1),
        (64, 256, 28, 1, 1),
        (256, 64, 28, 1, 1),
        (512, 512, 7, 1, 1),
        (960, 160, 7, 1, 1),
        # Small layers pin down the per-layer overhead.
        (16, 16, 14, 1, 1),
        (32, 32, 7, 3, 1),
        (64, 64, 7, 1, 1),
        # Channels off the vector width (a pruned layer) take the slow path.
        (60, 60, 28, 3, 1),
        (100, 100, 14, 1, 1),
        (24, 40, 56, 1, 1),
    ]
    dws = [
        (32, 112, 3, 1),
        (96, 112, 3, 2),
        (144, 56, 3, 1),
        (192, 28, 3, 1),
        (384, 14, 3, 1),
        (960, 7, 3, 1),
        (240, 28, 5, 1),
        (64, 7, 3, 1),
        (32, 14, 3, 1),
        (90, 28, 3, 1),
    ]
    gemms = [
        (1, 512, 1000),
        (1, 1280, 1000),
        (1, 4096, 1024),
        (197, 768, 768),
        (49, 512, 2048),
        (1, 4096, 2048),
        (1, 128, 64),
    ]
    elts = [
        ("Add", 64, 256),  # 16 MB operands: streams from memory, not cache
        ("Add", 64, 56),
        ("Add", 256, 14),
        ("Add", 32, 112),
        ("Concat", 128, 28),
        ("MaxPool", 64, 112),
        ("GlobalAveragePool", 1280, 7),
        ("SiLU", 96, 56),
        ("SiLU", 32, 112),
        ("Add", 16, 7),
    ]
    if quick:
        convs, dws, gemms, elts = convs[1:4], dws[:2], gemms[:2], elts[:3]
    for ci, co, hw, k, s in convs:
        suite.append((f"conv{k}x{k}_{ci}x{co}_{hw}_s{s}", "conv", conv(ci, co, hw, k, s)))
    for c, hw, k, s in dws:
        suite.append((f"dw{k}x{k}_{c}_{hw}_s{s}", "dwconv", conv(c, c, hw, k, s, groups=c)))
    for m, k, n in gemms:
        suite.append((f"gemm_{m}x{k}x{n}", "linear", gemm(m, k, n)))
    for op, c, hw in elts:
        suite.append((f"{op.lower()}_{c}_{hw}", "elementwise", eltwise(op, c, hw)))
    suite.append(("null_add_8", "null", eltwise("Add", 1, 1)))
    return suite


def _host_channel_block() -> int:
    """ONNX Runtime's NCHWc block on this CPU: 16 channels with AVX-512F, 8 with AVX2."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 1
    if " avx512f" in flags:
        return 16
    if " avx2" in flags:
        return 8
    return 1


def _onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _host_ram_kb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 8 * 1024 * 1024.0


def calibrate_host(
    out_path: str | Path | None = None,
    *,
    threads: int = 1,
    quick: bool = False,
    target_s: float = 0.3,
    max_iqr: float = 0.10,
    budget_s: float = 150.0,
    log: Callable[[str], None] | None = None,
) -> HardwareProfile:
    """Micro-benchmark this machine with ONNX Runtime and fit a `host` profile.

    Conv, depthwise, linear and element-wise ops at several sizes, each in its own one-op ONNX
    model, timed with a fixed thread count, warm-up, the median of many runs, and any attempt
    with IQR/median above `max_iqr` rejected and repeated. The peak MAC rate and the bandwidth
    are the best rates measured; efficiencies and overheads are then fitted. Writes the profile
    to `out_path` when given. `quick` runs a reduced suite (tests). Repeats of noisy
    measurements stop once 80 % of `budget_s` has passed, so a busy machine still finishes.
    """
    import onnx

    from ._measure import measure_onnx
    from ._onnx import onnx_kernels

    say = log or (lambda _msg: None)
    started = time.perf_counter()
    suite = _micro_suite(quick)
    rows: list[tuple[str, str, Any, float, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, build in suite:
            path = os.path.join(tmp, f"{name}.onnx")
            onnx.save(build(), path)
            # Keep the whole calibration under `budget_s`: past 80 % of it, no more repeats.
            late = time.perf_counter() - started > 0.8 * budget_s
            m = measure_onnx(
                path,
                threads=threads,
                target_s=target_s,
                max_iqr=max_iqr,
                min_runs=15,
                attempts=1 if late else 4,
            )
            kernels = onnx_kernels(path)
            rows.append((name, kind, kernels, m.median_ms, m.stable))
            say(
                f"  {name:28s} {m.median_ms:8.3f} ms  iqr/median {m.iqr_ratio:.3f}"
                + ("" if m.stable else "  (noisy: kept the least noisy attempt)")
            )
    null_ms = next(ms for name, kind, _, ms, _ in rows if kind == "null")
    # The best rates seen stand for the peak and the bandwidth (efficiency 1.0 = the best op).
    # Only ops that take well over the per-inference overhead say anything about a rate.
    big = [(kind, ok, ms - null_ms) for _, kind, ok, ms, _ in rows if ms > 10 * null_ms]
    peak = max(
        (
            sum(k.macs for k in ok.kernels) / (t * 1e-3)
            for kind, ok, t in big
            if kind in ("conv", "linear")
        ),
        default=1e10,
    )
    bw = max(
        (
            sum((k.in_elems + k.out_elems) * 4 for k in ok.kernels) / (t * 1e-3)
            for kind, ok, t in big
            if kind == "elementwise"
        ),
        default=1e10,
    )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    cpu = platform.processor() or platform.machine()
    base = profile_from_dict(
        {
            "name": "host",
            "description": f"this machine ({cpu}, {os.cpu_count()} cores), ONNX Runtime CPU, "
            f"{threads} thread(s); calibrated {stamp}",
            "sources": [
                f"measured by `profiles calibrate-host` on {stamp}: {len(rows)} ONNX Runtime "
                f"micro-benchmarks, median of many runs, IQR/median <= {max_iqr}",
                "peak_macs_per_s: the best conv/GEMM rate measured; bandwidth: the best "
                "element-wise rate measured (so efficiency 1.0 = the best op seen)",
                "memory.ram_kb: MemTotal from /proc/meminfo",
                "channel_block: ONNX Runtime's NCHWc block for the CPU flags in /proc/cpuinfo "
                "(16 with AVX-512F, 8 with AVX2); unaligned_efficiency fitted",
            ],
            "peak_macs_per_s": {32: float(f"{peak:.4g}")},
            "native_precisions": [32],
            "fallback_precision": 32,
            "bandwidth_bytes_per_s": float(f"{bw:.4g}"),
            "efficiency": {"conv": 0.5, "dwconv": 0.2, "linear": 0.7, "elementwise": 0.7},
            "layer_overhead_us": {"conv": 5, "dwconv": 5, "linear": 5, "elementwise": 3},
            "model_overhead_us": max(null_ms * 1e3, 1.0),
            "threads": threads,
            "batch": 1,
            "memory": {"ram_kb": _host_ram_kb()},
            "weights_in": "ram",
            "runtime_flash_kb": 0,
            "budgets": {"latency_ms": 100.0, "memory_kb": min(1048576.0, _host_ram_kb())},
            # ONNX Runtime's NCHWc transformer folds a residual Add (+ReLU) into the conv, and
            # runs convs whose channels are multiples of its block on its fast kernels.
            "fused_add": True,
            "channel_block": _host_channel_block(),
            "unaligned_efficiency": {"conv": 0.7, "dwconv": 0.3},
            "runtime": {
                "name": "ONNX Runtime (CPU execution provider)",
                "version": _onnxruntime_version(),
                "note": f"fp32, sequential, ORT_ENABLE_ALL, {threads} thread(s)",
            },
        },
        file=str(out_path or "<host>"),
    )
    samples = [
        Sample(name=name, kernels=ok.kernels, measured_ms=ms, layer_bits=ok.layer_bits)
        for name, kind, ok, ms, _ in rows
    ]
    profile = fit_profile(samples, base, prior_weight=0.01, fit_bandwidth=True)
    say(f"calibrated in {time.perf_counter() - started:.0f} s")
    if out_path is not None:
        write_profile(
            profile,
            out_path,
            header=f"written by `python -m search profiles "
            f"calibrate-host` on {stamp}; every figure measured on this machine",
        )
    return profile


# ------------------------------------------------------------------------------------------------
# The `cost` command
# ------------------------------------------------------------------------------------------------


def cost_summary(
    model: nn.Module,
    input_shape: Sequence[int],
    profile: HardwareProfile,
    measure: bool = False,
    *,
    layer_bits: Mapping[str, int] | None = None,
    activation_bits: int = 32,
    layer_density: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What `python -m search cost` prints: the predicted figures (and the measured latency).

    Returns a flat JSON-ready dict: profile, input_shape, params, macs, weight_bytes,
    peak_activation_bytes, memory_bytes, flash_bytes, latency_ms (predicted), traced, notes,
    and with `measure=True` measured_latency_ms (fp32 ONNX Runtime on this machine, with the
    profile's thread count) and measured_iqr_ratio.
    """
    cost = estimate_cost(
        model,
        input_shape,
        profile,
        layer_bits=layer_bits,
        activation_bits=activation_bits,
        layer_density=layer_density,
    )
    out: dict[str, Any] = {"profile": profile.name, "input_shape": list(input_shape)}
    out.update(cost.metrics())
    out["traced"] = cost.traced
    out["notes"] = list(cost.notes)
    if measure:
        from ._measure import export_fp32_onnx, measure_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = export_fp32_onnx(
                model, input_shape, Path(tmp) / "model.onnx", batch=profile.batch
            )
            m = measure_onnx(path, threads=profile.threads, batch=profile.batch)
        out["measured_latency_ms"] = m.median_ms
        out["measured_iqr_ratio"] = round(m.iqr_ratio, 4)
        out["measured_stable"] = m.stable
    return out
