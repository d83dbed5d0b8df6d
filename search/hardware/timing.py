"""Measure latency on this machine with ONNX Runtime, with the hygiene a shared machine needs.

Fixed thread count, warm-up, the median of many runs, and any measurement whose spread
(IQR / median) exceeds `max_iqr` is thrown away and taken again.

Clock: with one thread ONNX Runtime computes on the calling thread, so by default (`clock=
"auto"`) a single-thread run is timed with that thread's CPU time. On a machine other people
load, wall time counts the milliseconds the OS hands to their processes (seen here: ResNet-18
at 128 px, wall 30-39 ms, CPU time 13.2-14.2 ms); CPU time is what the run itself costs and
equals wall time on an idle machine. Several threads are timed by the wall clock.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Measurement:
    """One accepted (or best rejected) latency measurement."""

    median_ms: float
    iqr_ratio: float  # IQR / median of the accepted attempt
    runs: int
    attempts: int
    stable: bool  # False when every attempt was above max_iqr (the least noisy one is kept)
    clock: str = "wall"  # wall | cpu (the calling thread's CPU time)


def _quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    q = np.percentile(np.asarray(values), [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def make_session(onnx_path: str | Path, *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimization."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Spinning threads steal the other cores on a shared machine and make timings noisier.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def _feeds(session: Any, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    rng = np.random.default_rng(0)
    types = {
        "tensor(float)": np.float32,
        "tensor(uint8)": np.uint8,
        "tensor(int8)": np.int8,
        "tensor(int64)": np.int64,
        "tensor(float16)": np.float16,
    }
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in inp.shape]
        dtype = types.get(inp.type, np.float32)
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def time_callable(
    fn: Any,
    *,
    warmup: int = 5,
    min_runs: int = 20,
    max_runs: int = 500,
    target_s: float = 1.0,
    max_iqr: float = 0.10,
    attempts: int = 5,
    clock: str = "wall",
) -> Measurement:
    """Median time of `fn()` in ms, rejecting attempts whose IQR/median > max_iqr.

    `clock`: "wall" (perf_counter) or "cpu" (the calling thread's CPU time).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.thread_time
    for _ in range(warmup):
        fn()
    # Size the runs from one timed call, so tiny and large models both get enough samples.
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    runs = int(min(max(min_runs, target_s / one), max_runs))
    best: tuple[float, float, int] | None = None
    attempt = 0
    for attempt in range(1, attempts + 1):
        samples = []
        for _ in range(runs):
            t0 = now()
            fn()
            samples.append((now() - t0) * 1e3)
        q1, med, q3 = _quantiles(samples)
        ratio = (q3 - q1) / med if med > 0 else 0.0
        if best is None or ratio < best[1]:
            best = (med, ratio, runs)
        if ratio <= max_iqr:
            return Measurement(med, ratio, runs, attempt, True, clock)
        time.sleep(0.05 * attempt)  # let a burst of other work on the machine pass
    assert best is not None
    return Measurement(best[0], best[1], best[2], attempt, False, clock)


def _clock(clock: str, threads: int) -> str:
    if clock == "auto":
        return "cpu" if threads == 1 else "wall"
    return clock


def measure_onnx(
    onnx_path: str | Path,
    *,
    threads: int = 1,
    batch: int = 1,
    warmup: int = 5,
    min_runs: int = 20,
    max_runs: int = 500,
    target_s: float = 1.0,
    max_iqr: float = 0.10,
    attempts: int = 5,
    clock: str = "auto",
) -> Measurement:
    """Measure an ONNX model with ONNX Runtime; see `measure_latency_ms`."""
    session = make_session(onnx_path, threads=threads)
    feeds = _feeds(session, batch)
    names = [o.name for o in session.get_outputs()]

    def run() -> None:
        session.run(names, feeds)

    return time_callable(
        run,
        warmup=warmup,
        min_runs=min_runs,
        max_runs=max_runs,
        target_s=target_s,
        max_iqr=max_iqr,
        attempts=attempts,
        clock=_clock(clock, threads),
    )


def measure_latency_ms(
    onnx_path: str | Path,
    *,
    threads: int = 1,
    batch: int = 1,
    warmup: int = 5,
    min_runs: int = 20,
    max_runs: int = 500,
    target_s: float = 1.0,
    max_iqr: float = 0.10,
    attempts: int = 5,
    clock: str = "auto",
) -> float:
    """Median ONNX Runtime latency (ms) of one inference on this machine.

    Fixed `threads`, `warmup` untimed runs, then at least `min_runs` timed runs (more for fast
    models, up to `target_s` seconds). An attempt whose IQR/median exceeds `max_iqr` is
    rejected and repeated, up to `attempts` times; if all are noisy the least noisy is kept.
    `clock="auto"` times one thread by its CPU time and several by the wall clock (see the
    module docstring); "wall" or "cpu" force one.
    """
    return measure_onnx(
        onnx_path,
        threads=threads,
        batch=batch,
        warmup=warmup,
        min_runs=min_runs,
        max_runs=max_runs,
        target_s=target_s,
        max_iqr=max_iqr,
        attempts=attempts,
        clock=clock,
    ).median_ms


def export_fp32_onnx(
    model: nn.Module, input_shape: Sequence[int], path: str | Path, *, batch: int = 1
) -> Path:
    """Export `model` as fp32 ONNX (the legacy exporter, which handles torchvision CNNs)."""
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros((batch, *input_shape))
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter warns that it is legacy; it is the one that handles these CNNs.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                opset_version=17,
            )
    finally:
        model.train(was_training)
    return path


def spread(values: Sequence[float]) -> float:
    """IQR / median of a sample (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, med, q3 = _quantiles(values)
    return (q3 - q1) / med if med else 0.0


def with_measured_latency(
    cost: Any,
    model_or_onnx: nn.Module | str | Path,
    input_shape: Sequence[int],
    *,
    threads: int = 1,
    batch: int = 1,
    max_iqr: float = 0.10,
    attempts: int = 5,
) -> Any:
    """`cost` (a CostReport) with its latency replaced by one measured on this machine.

    For `latency: measured` on the host target. Pass the deployed ONNX file (an int8 export
    for a quantized plan) or a torch model, which is exported as fp32. Same hygiene as
    calibration: fixed threads, warm-up, median, IQR rule; a measurement that stayed noisy is
    kept and said so in the report's notes.
    """
    if isinstance(model_or_onnx, nn.Module):
        with tempfile.TemporaryDirectory() as tmp:
            path = export_fp32_onnx(model_or_onnx, input_shape, Path(tmp) / "m.onnx", batch=batch)
            m = measure_onnx(
                path, threads=threads, batch=batch, max_iqr=max_iqr, attempts=attempts
            )
    else:
        m = measure_onnx(
            model_or_onnx, threads=threads, batch=batch, max_iqr=max_iqr, attempts=attempts
        )
    note = (
        f"latency measured with ONNX Runtime ({threads} thread(s)), IQR/median {m.iqr_ratio:.3f}"
    )
    if not m.stable:
        note += f" (above {max_iqr} after {m.attempts} attempts: noisy machine)"
    return replace(cost, latency_ms=m.median_ms, notes=(*cost.notes, note))
