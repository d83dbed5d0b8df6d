"""Host calibration: micro-benchmark this machine with ONNX Runtime and fit a `host` profile."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._profile import HardwareProfile, profile_from_dict, write_profile
from ..graph import onnx_kernels
from ..timing import measure_onnx
from ._solve import Sample, fit_profile


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
