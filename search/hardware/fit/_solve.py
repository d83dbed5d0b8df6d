"""Fit a profile's efficiencies and overheads to measured latencies.

The fit keeps the peaks and the bandwidth (theoretical figures, or on the host the best rates
measured) and solves for the per-kind efficiencies, per-kind layer overheads and the
per-inference overhead that minimise the squared log error of the predicted latencies.
`fit_profile` frees every figure (many micro-benchmarks on the host); `fit_device` in
`_device` frees a few (a handful of whole networks measured on a device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._profile import OP_KINDS, HardwareProfile, profile_from_dict
from ..cost import folded, input_bytes, layer_weight_bytes
from ..graph import COMPUTE_KINDS, Kernel


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
    input_elems: int = 0  # elements of the input tensor (the batch included)
    # The measurements-CSV row it was read from (provenance: board, runtime, source, ...).
    row: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def group(self) -> str:
        """What leave-one-network-out leaves out together."""
        return self.backbone or self.network or self.name

    @property
    def input_bytes(self) -> float:
        """Bytes of its input handed over per inference (`input_ns_per_byte`)."""
        return input_bytes(self.input_elems, self.activation_bits) * self.batch_scale


def kernel_terms(sample: Sample, profile: HardwareProfile) -> dict[str, tuple[np.ndarray, ...]]:
    """Per op kind: compute seconds at efficiency 1, bytes moved, an unaligned-conv mask, output
    elements and weight bytes."""
    act = sample.activation_bits / 8
    rows: dict[str, tuple[list[float], list[float], list[int], list[float], list[float]]] = {
        k: ([], [], [], [], []) for k in OP_KINDS
    }
    s = sample.batch_scale
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
            rows[k.kind][4].append(wbytes)
        elif folded(k, profile):
            continue  # run inside a conv: no pass of its own (as price_kernels prices it)
        else:
            rows["elementwise"][0].append(0.0)
            rows["elementwise"][1].append((k.in_elems + k.out_elems) * act * s)
            rows["elementwise"][2].append(0)
            rows["elementwise"][3].append(0.0)
            rows["elementwise"][4].append(0.0)
    return {
        k: (np.asarray(c), np.asarray(m), np.asarray(u, dtype=int), np.asarray(o), np.asarray(w))
        for k, (c, m, u, o, w) in rows.items()
    }


def predict_s(
    terms: dict[str, tuple[np.ndarray, ...]],
    inv_eff: Mapping[str, float],
    over_s: Mapping[str, float],
    model_s: float,
    bandwidth: float,
    inv_unaligned: tuple[float, float] = (1.0, 1.0),
    output_s: float = 0.0,
    saturation: float = 0.0,
    flash_s: float = 0.0,
    input_s: float = 0.0,
) -> float:
    """The latency in seconds of one sample's `kernel_terms` under the given figures (what
    `price_kernels` and `estimate_cost` price; `saturation` is `saturation_outputs`, `flash_s`
    the seconds per weight byte of `flash_read_ns_per_byte`, `input_s` the seconds of handing
    over the sample's input at `input_ns_per_byte`)."""
    total = model_s + input_s
    for kind, (c, b, unaligned, outs, wbytes) in terms.items():
        if not len(c):
            continue
        if kind == "elementwise":
            total += float(b.sum()) / bandwidth * inv_eff[kind]
        else:
            factor = np.choose(unaligned, (1.0, inv_unaligned[0], inv_unaligned[1]))
            if saturation > 0:  # HardwareProfile.occupancy_factor
                factor = factor * np.maximum(1.0, saturation / np.maximum(outs, 1e-9))
            scale = inv_eff[kind] * factor
            total += float(np.maximum(c * scale, b / bandwidth).sum())
            total += float(outs.sum()) * output_s
            total += float(wbytes.sum()) * flash_s
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
    terms = [kernel_terms(s, base) for s in samples]
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
        pred = np.asarray(
            [
                predict_s(
                    t,
                    inv,
                    over,
                    model,
                    bw,
                    inv_un,
                    out_s,
                    base.saturation_outputs,
                    base.flash_read_ns_per_byte * 1e-9,
                    s.input_bytes * base.input_ns_per_byte * 1e-9,
                )
                for t, s in zip(terms, samples)
            ]
        )
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
    return (
        predict_s(
            kernel_terms(sample, profile),
            {k: 1.0 / profile.efficiency[k] for k in OP_KINDS},
            {k: profile.layer_overhead_us[k] * 1e-6 for k in OP_KINDS},
            profile.model_overhead_us * 1e-6,
            profile.bandwidth_bytes_per_s,
            (
                1.0 / profile.unaligned_efficiency["conv"],
                1.0 / profile.unaligned_efficiency["dwconv"],
            ),
            profile.output_overhead_ns * 1e-9,
            profile.saturation_outputs,
            profile.flash_read_ns_per_byte * 1e-9,
            sample.input_bytes * profile.input_ns_per_byte * 1e-9,
        )
        * 1e3
    )


def prediction_errors(samples: Sequence[Sample], profile: HardwareProfile) -> list[float]:
    """Relative error (predicted / measured - 1) of `profile` on each sample."""
    return [predicted_ms(s, profile) / s.measured_ms - 1.0 for s in samples]
