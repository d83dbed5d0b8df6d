"""gpu_check's inference engines: which ones this machine can try, best first (TensorRT from
pip, then ONNX Runtime's TensorRT and CUDA providers), and one ONNX file timed on the first that
builds it (`time_row`). TensorRT is imported inside the functions only: on a GPU machine, never
a project dependency. `attempt` runs any stage of the check, keeping the error it ended with."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

# ONNX Runtime engines, after TensorRT itself: best first.
ENGINE_PROVIDERS = {
    "onnxruntime-trt": "TensorrtExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
}
NO_ENGINE = (
    "not measured: no engine here (pip install tensorrt, its CUDA major matching torch's, "
    "or onnxruntime-gpu)"
)
CUDA_INT8 = (
    "not measured: ONNX Runtime's CUDA provider builds no int8 engine for a QDQ model "
    "(it dequantizes and runs float kernels)"
)
ALL_FAILED = "not measured: every engine failed (engine_errors)"


def attempt(stage: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A stage's figures, or the error it ended with: the results are written either way."""
    try:
        return stage(*args, **kwargs)
    except Exception as exc:  # recorded: finding this is what the check is for
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]}


def available_engines() -> tuple[list[str], dict[str, str]]:
    """The engines this machine can try, best first, and why each other one is missing."""
    import onnxruntime as ort

    engines: list[str] = []
    missing: dict[str, str] = {}
    try:
        import tensorrt  # noqa: F401 - on a GPU machine only; never a project dependency

        engines.append("tensorrt")
    except Exception as exc:  # ImportError, or OSError for a missing CUDA library
        missing["tensorrt"] = f"{type(exc).__name__}: {exc}"[:200]
    for engine, provider in ENGINE_PROVIDERS.items():
        if provider in ort.get_available_providers():
            engines.append(engine)
        else:
            missing[engine] = f"onnxruntime {ort.__version__} has no {provider}"
    return engines, missing


def timed(run: Any, *, runs: int, warmup: int) -> dict[str, Any]:
    """Median, p10 and p90 of `runs` calls of `run` (each synchronized) after `warmup` calls."""
    import numpy as np

    for _ in range(warmup):
        run()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
    p10, p50, p90 = np.percentile(ms, [10, 50, 90])
    return {
        "median_ms": round(float(p50), 4),
        "p10_ms": round(float(p10), 4),
        "p90_ms": round(float(p90), 4),
        "runs": runs,
        "warmup": warmup,
    }


def time_tensorrt(path: Path, shape: Any, precision: str, *, runs: int, warmup: int) -> dict:
    """Build a TensorRT engine from the ONNX file at batch 1 and time `execute_async_v3` on
    device buffers (torch CUDA tensors): engine time with the input already on the GPU."""
    import numpy as np
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])  # 10 and later: always explicit batch
    explicit = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    # int8: the QDQ layers run int8, the others fp32 (no FP16 flag), as the prediction assumes.
    config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.INT8)
    one = (1, *shape)
    batch1 = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        batch1.set_shape(network.get_input(i).name, one, one, one)
    config.add_optimization_profile(batch1)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT built no engine")
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    for name in inputs:
        context.set_input_shape(name, one)  # before the output shapes are read
    buffers = {}  # device memory, kept alive while the engine runs
    for name in names:
        dtype = getattr(torch, np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name)
        buffers[name] = torch.zeros(
            tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda"
        )
        context.set_tensor_address(name, buffers[name].data_ptr())
    for name in inputs:
        buffers[name].normal_()
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()

    def run() -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("execute_async_v3 returned False")
        stream.synchronize()

    return {"engine": f"TensorRT {trt.__version__}", **timed(run, runs=runs, warmup=warmup)}


def time_onnxruntime(
    path: Path, shape: Any, precision: str, *, provider: str, runs: int, warmup: int
) -> dict:
    """Time an ONNX Runtime session on `provider` at batch 1 through IOBinding: the input a
    torch CUDA tensor, the output left on the GPU."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options: dict[str, Any] = {}
    if provider == "TensorrtExecutionProvider":
        options = {"trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}
    session = ort.InferenceSession(
        str(path), providers=[(provider, options), "CUDAExecutionProvider"]
    )
    if provider not in session.get_providers():
        raise RuntimeError(
            f"{provider} did not load; the session runs on {session.get_providers()}"
        )
    inp = session.get_inputs()[0]
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}[inp.type]
    x = torch.randn(1, *shape, device="cuda").to(getattr(torch, np.dtype(dtype).name))
    binding = session.io_binding()
    device = torch.cuda.current_device()
    binding.bind_input(inp.name, "cuda", device, dtype, list(x.shape), x.data_ptr())
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", device)
    torch.cuda.synchronize()

    def run() -> None:
        session.run_with_iobinding(binding)
        torch.cuda.synchronize()

    label = f"ONNX Runtime {ort.__version__} {provider}"
    return {"engine": label, **timed(run, runs=runs, warmup=warmup)}


def time_row(row: dict[str, Any], engines: list[str], *, runs: int, warmup: int) -> None:
    """Time the row's ONNX file on the first engine that builds it, best first; each failure
    is kept in `engine_errors`, and a row no engine timed says why in `not_measured`."""
    if "onnx" not in row:
        return
    errors: dict[str, str] = {}
    for engine in engines:
        if engine == "onnxruntime-cuda" and row["precision"] == "int8":
            row["not_measured"] = CUDA_INT8
            break
        if engine == "tensorrt":
            timer = time_tensorrt
        else:
            timer = partial(time_onnxruntime, provider=ENGINE_PROVIDERS[engine])
        got = attempt(
            timer,
            Path(row["onnx"]),
            row["input_shape"],
            row["precision"],
            runs=runs,
            warmup=warmup,
        )
        if "error" not in got:
            row.update(got)
            break
        errors[engine] = got["error"]
    else:
        row["not_measured"] = ALL_FAILED if engines else NO_ENGINE
    if errors:
        row["engine_errors"] = errors
    if "median_ms" in row and row.get("predicted_ms"):
        row["ratio"] = round(row["predicted_ms"] / row["median_ms"], 4)
