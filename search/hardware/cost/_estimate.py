"""The analytic cost model: MACs, bytes, peak activation memory, flash and roofline latency."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ...budgets import BUDGET_METRICS
from .._profile import BUDGET_KEYS, HardwareProfile
from ..graph import COMPUTE_KINDS, GraphSummary, Kernel, summarize
from ..timing import export_fp32_onnx, measure_onnx
from ._tflm import arena_tail, flatbuffer_overhead, full_integer, greedy_plan

_SCALE_BYTES = 4  # one fp32 scale per output channel of a quantized layer
_BIAS_BYTES = 4  # biases stay 32 bit (int32 accumulators or fp32)


@dataclass(frozen=True)
class LayerCost:
    """One kernel's row in a cost report."""

    name: str
    kind: str
    precision: int
    macs: int
    bytes_moved: int
    weight_bytes: int
    compute_ms: float
    memory_ms: float
    latency_ms: float


@dataclass(frozen=True)
class CostReport:
    """What a plan costs on a profile. Bytes are bytes; latency at the profile's batch."""

    params: int
    macs: int
    weight_bytes: int
    peak_activation_bytes: int
    memory_bytes: int
    flash_bytes: int
    latency_ms: float
    layers: tuple[LayerCost, ...] = ()
    traced: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    def metrics(self) -> dict[str, float]:
        """The scalars, as stored in each trial's user attributes."""
        return {
            "params": self.params,
            "macs": self.macs,
            "weight_bytes": self.weight_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "memory_bytes": self.memory_bytes,
            "flash_bytes": self.flash_bytes,
            "latency_ms": self.latency_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.metrics())
        out["traced"] = self.traced
        out["notes"] = list(self.notes)
        out["layers"] = [asdict(row) for row in self.layers]
        return out


def layer_weight_bytes(kernel: Kernel, bits: int, density: float) -> int:
    """Stored bytes of one layer's weights at `bits`, with `density` of them non-zero.

    Quantized weights (< 32 bit) carry one fp32 scale per output channel. An unstructured-sparse
    layer is stored as a one-bit-per-weight mask plus the surviving weights, or dense where that
    is smaller (a runtime would not pick the bigger format).
    """
    n = kernel.weight_numel
    if n == 0:
        return kernel.bias_numel * _BIAS_BYTES
    dense_bits = n * bits
    stored_bits = dense_bits
    if density < 1.0:
        stored_bits = min(dense_bits, n + math.ceil(n * density) * bits)
    scales = kernel.out_channels * _SCALE_BYTES if bits < 32 else 0
    return math.ceil(stored_bits / 8) + scales + kernel.bias_numel * _BIAS_BYTES


def input_bytes(input_elems: int, activation_bits: int) -> int:
    """Bytes of the input a network is handed per inference: an integer network takes 8-bit
    input (1 byte an element), any other a float32 tensor (4), even where the device computes
    in fp16 (Qualcomm AI Hub's TFLite exports: uint8 I/O for w8a8, float32 for float)."""
    return input_elems * (1 if activation_bits <= 8 else 4)


def price_kernels(
    kernels: Sequence[Kernel],
    profile: HardwareProfile,
    *,
    layer_bits: Mapping[str, int],
    activation_bits: int,
    layer_density: Mapping[str, float],
    batch_scale: float = 1.0,
) -> tuple[list[LayerCost], int]:
    """Per-kernel roofline times; returns the rows and the total weight bytes."""
    act_bytes = activation_bits / 8
    bw = profile.bandwidth_bytes_per_s
    rows: list[LayerCost] = []
    total_weight = 0
    for k in kernels:
        if k.kind in COMPUTE_KINDS:
            bits = int(layer_bits.get(k.layer, 32)) if k.layer else 32
            density = float(layer_density.get(k.layer, 1.0)) if k.layer else 1.0
            wbytes = layer_weight_bytes(k, bits, density)
            total_weight += wbytes
            precision = profile.compute_precision(bits, activation_bits)
            macs = k.macs * batch_scale
            if profile.sparse_support and density < 1.0:
                macs *= density  # only a sparse-aware runtime skips the zeros
            moved = (k.in_elems + k.out_elems) * act_bytes * batch_scale + wbytes
            eff = profile.efficiency[k.kind]
            if k.kind != "linear":
                # Channels off the vector width run on the runtime's slow path.
                eff *= profile.unaligned_factor(k.in_channels, k.out_channels, k.groups)
            compute_s = macs / (profile.peak_macs_per_s[precision] * eff)
            compute_s *= profile.occupancy_factor(k.out_elems * batch_scale)  # idle GPU SMs
            memory_s = moved / bw
            t = max(compute_s, memory_s) + profile.layer_overhead_us[k.kind] * 1e-6
            t += wbytes * profile.flash_read_ns_per_byte * 1e-9  # weights read from flash
            # Requantizing and storing each output (an MCU's scalar epilogue) is not MAC work.
            t += k.out_elems * batch_scale * profile.output_overhead_ns * 1e-9
        elif folded(k, profile):
            # Run inside the conv producing its (or an operand's) input: no pass of its own.
            precision, macs, wbytes, moved = activation_bits, 0, 0, 0
            compute_s = memory_s = t = 0.0
        else:
            precision = activation_bits
            macs = 0
            wbytes = 0
            moved = (k.in_elems + k.out_elems) * act_bytes * batch_scale
            compute_s = 0.0
            memory_s = moved / (bw * profile.efficiency["elementwise"])
            t = memory_s + profile.layer_overhead_us["elementwise"] * 1e-6
        rows.append(
            LayerCost(
                name=k.name,
                kind=k.kind,
                precision=precision,
                macs=int(round(k.macs * batch_scale)),
                bytes_moved=int(round(moved)),
                weight_bytes=wbytes,
                compute_ms=compute_s * 1e3,
                memory_ms=memory_s * 1e3,
                latency_ms=t * 1e3,
            )
        )
    return rows, total_weight


def _fusable(k: Kernel, profile: HardwareProfile) -> bool:
    """A residual add folds into its conv only where that conv runs the fast (aligned) path."""
    return profile.channel_block <= 1 or k.out_channels % profile.channel_block == 0


def folded(k: Kernel, profile: HardwareProfile) -> bool:
    """An element-wise kernel the profile's runtime runs inside a conv (`kernel_terms` agrees)."""
    if k.kind in COMPUTE_KINDS:
        return False
    if k.residual and profile.fused_add and _fusable(k, profile):
        return True
    if k.concat and profile.concat_in_place:
        return True
    if k.follows_pointwise and profile.fused_pointwise:
        return True
    return k.fused_activation and profile.fused_activation


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(x) for x in input_shape)
    if not shape or any(x <= 0 for x in shape):
        raise ValueError(
            f"input_shape must be positive sizes without the batch, got {input_shape}"
        )
    return shape


def estimate_cost(
    model: nn.Module,
    input_shape: Sequence[int],
    profile: HardwareProfile,
    *,
    layer_bits: Mapping[str, int] | None = None,
    activation_bits: int = 32,
    layer_density: Mapping[str, float] | None = None,
) -> CostReport:
    """Predict what `model` costs on `profile` for one inference at the profile's batch.

    Args:
        model: the network as deployed (fake quant, parametrizations and low-rank pairs are fine).
        input_shape: one sample's shape without the batch, e.g. (1, 8, 8).
        profile: the target.
        layer_bits: conv/linear module name -> weight bits (default 32).
        activation_bits: bits of every activation tensor.
        layer_density: module name -> fraction of non-zero weights (unstructured sparsity).

    Example::

        cost = estimate_cost(net, (1, 8, 8), load_profile("mcu"), activation_bits=8)
        cost.peak_activation_bytes, cost.latency_ms
    """
    layer_bits = dict(layer_bits or {})
    layer_density = dict(layer_density or {})
    shape = _check_shape(input_shape)
    summary: GraphSummary = summarize(model, (profile.batch, *shape))
    rows, weight_bytes = price_kernels(
        summary.kernels,
        profile,
        layer_bits=layer_bits,
        activation_bits=activation_bits,
        layer_density=layer_density,
    )
    # Norm parameters that were not folded into a conv, and the biases folding adds, stay fp32.
    weight_bytes += (summary.other_param_numel + summary.folded_bias_numel) * 4
    act_bytes = activation_bits / 8
    peak_elems = (
        summary.peak_elems_dw_in_place if profile.depthwise_in_place else summary.peak_elems
    )
    peak = int(math.ceil(peak_elems * act_bytes))
    tail = 0
    stored = weight_bytes
    if profile.memory_planner == "tflm" and summary.tflm_buffers:
        # TFLite Micro runs what `export --format tflite` writes: full-integer int8 when every
        # layer and the activations are at 8 bits, else float32 throughout (its float kernels).
        layers = [k.layer for k in summary.kernels if k.kind in COMPUTE_KINDS and k.layer]
        int8 = full_integer((layer_bits.get(k, 32) for k in layers), activation_bits)
        if not int8:
            act_bytes = 4
        # The flatbuffer stores every weight dense (no sparse format), at 8 bits or float32.
        _, stored = price_kernels(
            summary.kernels,
            profile,
            layer_bits=layer_bits if int8 else {},
            activation_bits=activation_bits if int8 else 32,
            layer_density={},
        )
        stored += (summary.other_param_numel + summary.folded_bias_numel) * 4
        # Its greedy planner's arena head, the persistent tail, the flatbuffer's own tables.
        peak = greedy_plan([(math.ceil(e * act_bytes), s, t) for e, s, t in summary.tflm_buffers])
        tail = arena_tail(summary.tflm_ops, len(summary.tflm_buffers))
        stored += flatbuffer_overhead(summary.tflm_ops, len(summary.tflm_buffers), int8=int8)
    memory = peak + tail + (weight_bytes if profile.weights_in == "ram" else 0)
    flash = stored + int(profile.runtime_flash_kb * 1024)
    latency = sum(r.latency_ms for r in rows) + profile.model_overhead_us * 1e-3
    latency += input_bytes(summary.input_elems, activation_bits) * profile.input_ns_per_byte * 1e-6
    return CostReport(
        params=summary.params,
        macs=sum(k.macs for k in summary.kernels),
        weight_bytes=weight_bytes,
        peak_activation_bytes=peak,
        memory_bytes=memory,
        flash_bytes=flash,
        latency_ms=latency,
        layers=tuple(rows),
        traced=summary.traced,
        notes=summary.notes,
    )


def constraint_values(
    cost: CostReport,
    budgets: Mapping[str, float],
    *,
    profile: HardwareProfile | None = None,
    latency_margin: float = 0.0,
) -> dict[str, float]:
    """`value / budget - 1` per budget key (<= 0 is feasible), in BUDGET_KEYS order.

    With `profile`, a budget above the board's own limit (SRAM, RAM, flash) is cut to that
    limit, so no plan that cannot run on the device is ever feasible. `latency_margin` checks
    the latency budget against the pessimistic bound `latency_ms * (1 + latency_margin)`.
    """
    figures: dict[str, float] = dict(cost.metrics())
    figures["latency_ms"] = cost.latency_ms * (1.0 + latency_margin)
    value = {key: figures[m.metric] / m.scale for key, m in BUDGET_METRICS.items()}
    checked = (
        profile.checked_budgets(budgets)
        if profile is not None
        else {key: float(budgets[key]) for key in BUDGET_KEYS if key in budgets}
    )
    out: dict[str, float] = {}
    for key, budget in checked.items():
        if budget <= 0:
            raise ValueError(f"budget {key} must be > 0, got {budget}")
        out[key] = value[key] / budget - 1.0
    for key in budgets:
        if key not in BUDGET_KEYS:
            raise ValueError(f"unknown budget {key!r}; allowed: {list(BUDGET_KEYS)}")
    return out


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
        with tempfile.TemporaryDirectory() as tmp:
            path = export_fp32_onnx(
                model, input_shape, Path(tmp) / "model.onnx", batch=profile.batch
            )
            m = measure_onnx(path, threads=profile.threads, batch=profile.batch)
        out["measured_latency_ms"] = m.median_ms
        out["measured_iqr_ratio"] = round(m.iqr_ratio, 4)
        out["measured_stable"] = m.stable
    return out
