"""The device fit (few free parameters) and its leave-one-network-out evaluation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._fit import Sample, kernel_terms, predict_s, predicted_ms
from ._profile import OP_KINDS, HardwareProfile, profile_from_dict

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
    terms = [kernel_terms(s, base) for s in samples]
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
        pred = np.asarray([predict_s(t, inv, over, model, bw, inv_un, out_s) for t in terms])
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
