"""The device fit (few free parameters) and its leave-one-network-out evaluation.

Published rows of one device often come from several sources that time different things (the
engine call alone, an MLPerf query with its host copy, a Python loop with its call overhead):
each source's `metric_kind` other than the reference one gets one fixed offset in milliseconds,
fitted with the rest, so the profile's figures are those of the reference metric.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._profile import OP_KINDS, HardwareProfile, profile_from_dict
from ._solve import Sample, kernel_terms, predict_s, predicted_ms

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
    "saturation": 0.3,
    "flash_read": 0.3,
    "input_transfer": 0.3,
    "metric_offset": 0.3,  # on an offset as a share of its metric's median row
}


def metric_of(sample: Sample) -> str:
    """What a measurement times (`metric_kind` of its CSV row; "" when it says nothing)."""
    return sample.row.get("metric_kind", "")


def reference_metric(samples: Sequence[Sample]) -> str:
    """The metric with the most rows (the first one read on a tie): what the profile predicts."""
    counts = Counter(metric_of(s) for s in samples)
    return max(counts, key=lambda m: (counts[m], -[metric_of(s) for s in samples].index(m)))


@dataclass(frozen=True)
class DeviceFit:
    """A fitted profile (its figures are the reference metric's) and the other metrics' offsets."""

    profile: HardwareProfile
    offsets_ms: Mapping[str, float] = field(default_factory=dict)

    def predict_ms(self, sample: Sample) -> float:
        """The sample's latency as its own source measures it."""
        return predicted_ms(sample, self.profile) + self.offsets_ms.get(metric_of(sample), 0.0)


def fit_device(
    samples: Sequence[Sample],
    base: HardwareProfile,
    *,
    priors: Mapping[str, float] | None = None,
    reference: str | None = None,
) -> DeviceFit:
    """Fit `base` to a handful of whole-network measurements with few free parameters.

    Free: one MAC-rate scale (the conv efficiency). Pulled towards the base profile's value
    by a prior (`DEVICE_PRIORS`): the depthwise and linear efficiencies as ratios to it, the
    element-wise efficiency, one multiplier on every layer overhead, the per-inference
    overhead, the bandwidth (held nearly fixed), and the per-output overhead, a GPU's
    `saturation_outputs`, an MCU's `flash_read_ns_per_byte` and a delegate's
    `input_ns_per_byte` (each only where the base has one). A device measured on three or
    four networks cannot support per-kind overheads, and the base profile's ratios (depthwise
    slower per MAC than dense) are the physics it falls back on. Least squares on log
    latency, so every network weighs the same whatever its size. Samples whose metric is not
    `reference` (default: `reference_metric`) share one additive offset per metric, pulled
    towards 0.
    """
    from scipy.optimize import least_squares

    if not samples:
        raise ValueError("fit_device needs at least one measured sample")
    w = {**DEVICE_PRIORS, **(priors or {})}
    terms = [kernel_terms(s, base) for s in samples]
    measured = np.asarray([s.measured_ms * 1e-3 for s in samples])
    inv0 = {k: 1.0 / base.efficiency[k] for k in OP_KINDS}
    over0 = {k: base.layer_overhead_us[k] + 1e-3 for k in OP_KINDS}
    inv_un = (1.0 / base.unaligned_efficiency["conv"], 1.0 / base.unaligned_efficiency["dwconv"])
    # x: log conv scale, log dw ratio, log linear ratio, log elementwise scale,
    #    log overhead multiplier, log model overhead (us), log bandwidth multiplier,
    #    log output-overhead multiplier, log saturation multiplier, log flash-read multiplier,
    #    log input-transfer multiplier (these four move only where the base has one), then one
    #    offset per metric other than the reference
    if reference is None:
        reference = reference_metric(samples)
    others = sorted({metric_of(s) for s in samples} - {reference})
    which = np.asarray(
        [others.index(metric_of(s)) if metric_of(s) in others else -1 for s in samples]
    )
    # Offsets are fitted in units of their metric's median row (a prior that means the same
    # on an MCU's 50 ms as on a GPU's 1 ms), never taking more than 90 % off its fastest row.
    rows_ms = [[s.measured_ms for s in samples if metric_of(s) == m] for m in others]
    unit_ms = np.asarray([float(np.median(v)) for v in rows_ms])
    lowest = [min(v) / u for v, u in zip(rows_ms, unit_ms)]
    x0 = np.asarray(
        [0.0, 0.0, 0.0, 0.0, 0.0, math.log(base.model_overhead_us + 1.0), 0.0, 0.0, 0.0, 0.0, 0.0]
        + [0.0] * len(others)
    )
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
            w["saturation"],
            w["flash_read"],
            w["input_transfer"],
        ]
        + [w["metric_offset"]] * len(others)
    )
    out0 = base.output_overhead_ns * 1e-9
    sat0 = base.saturation_outputs
    flash0 = base.flash_read_ns_per_byte * 1e-9
    input0 = base.input_ns_per_byte * 1e-9
    in_bytes = [s.input_bytes for s in samples]

    def unpack(
        x: np.ndarray,
    ) -> tuple[dict[str, float], dict[str, float], float, float, float, float, float, float]:
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
        return (
            inv,
            over,
            model,
            bw,
            out0 * math.exp(x[7]),
            sat0 * math.exp(x[8]),
            flash0 * math.exp(x[9]),
            input0 * math.exp(x[10]),
        )

    def residuals(x: np.ndarray) -> np.ndarray:
        inv, over, model, bw, out_s, sat, flash, per_in = unpack(x)
        pred = np.asarray(
            [
                predict_s(t, inv, over, model, bw, inv_un, out_s, sat, flash, b * per_in)
                for t, b in zip(terms, in_bytes)
            ]
        )
        offsets = np.append(x[11:] * unit_ms, 0.0)[which] * 1e-3  # -1: the reference, none
        r = np.log(np.maximum(pred + offsets, 1e-12) / measured)
        return np.concatenate([r, weights * (x - x0)])

    lo = np.asarray(
        [-12.0, -5.0, -5.0, -5.0, -8.0, 0.0, -5.0, -5.0, -5.0, -5.0, -5.0]
        + [-0.9 * v for v in lowest]
    )
    hi = np.asarray(
        [12.0, 5.0, 5.0, 5.0, 8.0, math.log(1e7), 5.0, 5.0, 5.0, 5.0, 5.0] + [10.0] * len(others)
    )
    result = least_squares(residuals, np.clip(x0, lo, hi), bounds=(lo, hi))
    inv, over, model, bw, out_s, sat, flash, per_in = unpack(result.x)
    data = base.to_dict()
    data.update(
        efficiency={k: float(f"{min(1.0, 1.0 / inv[k]):.4g}") for k in OP_KINDS},
        layer_overhead_us={k: round(over[k] * 1e6, 3) for k in OP_KINDS},
        model_overhead_us=round(model * 1e6, 3),
        bandwidth_bytes_per_s=float(f"{bw:.4g}"),
        output_overhead_ns=float(f"{out_s * 1e9:.4g}"),
        saturation_outputs=float(f"{sat:.4g}"),
        flash_read_ns_per_byte=float(f"{flash * 1e9:.4g}"),
        input_ns_per_byte=float(f"{per_in * 1e9:.4g}"),
    )
    offsets = {m: round(float(v), 4) for m, v in zip(others, result.x[11:] * unit_ms)}
    return DeviceFit(profile_from_dict(data, file=base.file), offsets)


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
    reference: str | None = None,
) -> list[LooRow]:
    """Predict each sample with `fit_device` on the samples of every other network.

    Samples of one network (say int8 and fp16 rows of ResNet-50) leave together. A network
    that is the only one measured has nothing to be fitted on: it is predicted by `base`.
    `reference` (default: `reference_metric` of all samples) stays the same in every fold.
    """
    if reference is None:
        reference = reference_metric(samples)
    out: list[LooRow] = []
    fits: dict[str, DeviceFit] = {}
    for s in samples:
        if s.group not in fits:
            rest = [o for o in samples if o.group != s.group]
            fits[s.group] = (
                fit_device(rest, base, priors=priors, reference=reference)
                if rest
                else DeviceFit(base)
            )
        out.append(LooRow(s, fits[s.group].predict_ms(s)))
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
