"""A winner's deployed file, written and checked in the runtime that will run it.

`onnx_into` writes `model.onnx` (int8 QDQ for the plan's 8-bit layers, or float16 for GPUs) and
runs the test split in ONNX Runtime; `tflite_into` writes `model.tflite` and its C array, runs
the test split in TFLite Micro, reads its arena and times the file in LiteRT here. Each warns
when the runtime's test figure is more than `ONNX_TOLERANCE` from PyTorch's, and returns the
figures `winner.yaml` records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ONNX_TOLERANCE", "onnx_into", "tflite_into", "to_float16"]

ONNX_TOLERANCE = 0.01  # a runtime vs PyTorch test accuracy: within 1 point


class _OnnxModel:
    """An ONNX Runtime session that `Task.evaluate` can call like a torch module."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def to(self, *_: Any, **__: Any) -> _OnnxModel:
        return self

    def eval(self) -> _OnnxModel:
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(None, {self.input: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


def to_float16(path: Path) -> None:
    """Rewrite an fp32 ONNX file as float16 (its input and output stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def symmetric_int8(profile: Any) -> bool:
    """TensorRT's QDQ import refuses uint8: its profiles get int8 activations (zero point 0)."""
    return "tensorrt" in str((profile.runtime or {}).get("name", "")).lower()


def onnx_into(
    tmp: Path,
    model: Any,
    task: Any,
    profile: Any,
    log: Callable[[str], None],
    *,
    int8: bool,
    float16: bool,
    primary: str,
    torch_test: Mapping[str, Any],
) -> dict[str, Any]:
    """`model.onnx` in `tmp`; its test metrics in ONNX Runtime and their gap to PyTorch's."""
    from ..compress import export_onnx
    from ..pipeline import CALIBRATION_ROWS

    export_onnx(
        model,
        tmp / "model.onnx",
        input_shape=tuple(task.input_shape),
        int8=int8,
        calib_inputs=task.calibration_inputs(CALIBRATION_ROWS),
        symmetric=symmetric_int8(profile),
    )
    if float16:
        to_float16(tmp / "model.onnx")
    onnx_test = task.evaluate(_OnnxModel(tmp / "model.onnx"), "test")
    onnx_gap = abs(float(onnx_test[primary]) - float(torch_test[primary]))
    if onnx_gap > ONNX_TOLERANCE:
        log(
            f"warning: ONNX Runtime test {primary} {onnx_test[primary]:.4f} is "
            f"{onnx_gap * 100:.2f} points from PyTorch's {torch_test[primary]:.4f} (limit 1 point)"
        )
    return {
        "onnx_test": onnx_test,
        "onnx_vs_torch_points": round(onnx_gap * 100, 4),
        "onnx_within_1_point": onnx_gap <= ONNX_TOLERANCE,
    }


def tflite_into(
    tmp: Path,
    model: Any,
    task: Any,
    compressed: Any,
    cost: Any,
    profile: Any,
    where: str,
    log: Callable[[str], None],
    *,
    primary: str,
    torch_test: Mapping[str, Any],
) -> dict[str, Any]:
    """`model.tflite` + C array in `tmp`; its test metrics in TFLite Micro and its arena."""
    from ..pipeline import CALIBRATION_ROWS
    from ._tflite import LiteRtModel, TflmModel, convert, operators, write_c_array

    bits = dict(compressed.layer_bits)
    wider = sorted(k for k, b in bits.items() if b != 8)
    # TFLM has int8 kernels (weights and activations) and float ones; a plan with any wider
    # layer or activation runs as float32 there (its card says so).
    int8 = bool(bits) and not wider and compressed.activation_bits == 8
    convert(
        model,
        tmp / "model.tflite",
        input_shape=tuple(task.input_shape),
        calib_inputs=task.calibration_inputs(CALIBRATION_ROWS) if int8 else None,
        int8=int8,
        where=where,
    )
    size = write_c_array(tmp / "model.tflite", tmp)
    tflm = TflmModel(tmp / "model.tflite", where=where)
    tflm_test = task.evaluate(tflm, "test")
    gap = abs(float(tflm_test[primary]) - float(torch_test[primary]))
    if gap > ONNX_TOLERANCE:
        log(
            f"warning: TFLite Micro test {primary} {tflm_test[primary]:.4f} is "
            f"{gap * 100:.2f} points from PyTorch's {torch_test[primary]:.4f} (limit 1 point)"
        )
    arena = tflm.arena()
    litert_ms = LiteRtModel(tmp / "model.tflite").latency_ms()  # what a phone's runtime does
    runtime_flash = int(profile.runtime_flash_kb * 1024)
    why = ""
    if not int8:
        parts = [f"{len(wider)} layer(s) wider than 8 bits"] if wider else []
        if compressed.activation_bits != 8:
            parts.append(f"activations at {compressed.activation_bits} bits")
        why = (", ".join(parts) or "no quantized layer") + (
            ": TFLite Micro runs them on its float32 kernels"
        )
    return {
        "tflm_test": tflm_test,
        "tflm_vs_torch_points": round(gap * 100, 4),
        "tflm_within_1_point": gap <= ONNX_TOLERANCE,
        "tflite": {
            "kind": "int8" if int8 else "float32",
            "why_float": why or None,
            "bytes": size,
            "operators": operators(tmp / "model.tflite"),
            "arena": arena.as_dict(),
            "predicted_peak_activation_bytes": int(cost.peak_activation_bytes),
            "predicted_memory_bytes": int(cost.memory_bytes),
            "arena_vs_predicted": round(arena.total / max(cost.memory_bytes, 1) - 1, 4),
            "flash_bytes": size + runtime_flash,
            "runtime_flash_bytes": runtime_flash,
            "predicted_flash_bytes": int(cost.flash_bytes),
            "flash_vs_predicted": round((size + runtime_flash) / max(cost.flash_bytes, 1) - 1, 4),
            "litert_host_latency_ms": round(litert_ms, 4),
        },
    }
