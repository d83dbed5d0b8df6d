"""The CUDA path end to end, timed against the CPU: run it whenever a GPU is available.

    python experiments/benchmarks/gpu_check.py [--quick-trials 6] [--resnet-trials 3]
    python experiments/benchmarks/gpu_check.py --engines-only   # the quickstart + point 4

1. The quickstart (digits) with `device: cuda`: base training, recovery with mixed precision,
   calibration, evaluation, then `export` of the knee on the GPU; the same search on the CPU.
2. torchvision ResNet-18 at 3x224x224 on synthetic images made per index (a map-style
   `Dataset`, 4 loader workers, pinned memory): recovery budgeted in steps
   (`recovery.steps`), `task.val_subset`, on the GPU; one trial on the CPU for the rate.
3. With 2 or more GPUs, the ResNet-18 search again with `--jobs <GPUs>` (one worker per GPU).
4. Inference engines, measured against predicted: zoo networks (`--networks`; absent keys of
   `REFERENCE_NETWORKS` are skipped and listed) and the quickstart's front plans, each
   exported to ONNX at batch 1 by the project's own export (fp16: float16 ONNX, as
   `export --format onnx-fp16`; int8: QDQ with symmetric int8 activations, as the export for a
   TensorRT profile), built into an engine (TensorRT from pip when importable, else ONNX
   Runtime's TensorRT provider, else its CUDA provider, fp16 only) and timed: median, p10 and
   p90 of `--engine-runs` synchronized runs after a warm-up, the input already on the GPU.
   Each is costed on the profile of the GPU found (`GPU_PROFILES`; cloud_gpu, said so, when
   that profile does not exist) at the engine's precision. Rows: engine, measured, predicted,
   predicted/measured; the share within +-25 % and Spearman. TensorRT is never a project
   dependency: `pip install tensorrt` on the GPU machine first (or onnxruntime-gpu).

Writes experiments/results/gpu_check.json and gpu_check.md (trials/min on GPU and CPU, the
GPU's name, commit, date, load average, this command). Takes under five minutes on one
data-centre GPU, plus the engine builds. Without a GPU it says so and writes nothing: figures
are never made up. `--smoke` runs every stage on the CPU into a temp folder; the engine stage
then exports and costs the ONNX files and times nothing ("no GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results"

TASK_PY = '''\
"""ResNet-18 at 224 px on synthetic images: image i is made from i (nothing stored)."""
import torch
import torchvision
from torch.utils.data import Dataset


class Synthetic(Dataset):
    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.offset + int(i))
        y = int(torch.randint(0, 10, (1,), generator=g))
        x = torch.randn(3, 224, 224, generator=g) * 0.5
        x[y % 3, : 112 if y < 5 else 224] += 1.0  # the class shows: learnable
        return x, y


def resnet18():
    return torchvision.models.resnet18(num_classes=10)


def data():
    return Synthetic(20_000, 0), Synthetic(1_000, 10**6), Synthetic(1_000, 2 * 10**6)
'''

SPACE = {
    "name": "gpu-check",
    "prune": {"mode": ["per_layer"], "ratio": {"low": 0.0, "high": 0.5, "step": 0.25}},
    "quantize": {"weight_bits": [8, 32], "activation_bits": [8, 32]},
    "distill": {"alpha": [0.5], "temperature": [4.0]},
}


def resnet_experiment(folder: Path, trials: int, steps: int) -> Path:
    (folder / "gputask.py").write_text(TASK_PY)
    (folder / "gpu_space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    import torch

    torch.manual_seed(0)
    # Not the repository: the user's own task module, just written, imported as a user would
    # to save its base weights. The task loader imports it by name from the experiment's folder
    # too, but only inside load_task, which needs the weights written here.
    sys.path.insert(0, str(folder))
    import gputask  # the module just written

    torch.save(gputask.resnet18().state_dict(), folder / "resnet18.pt")
    exp = {
        "name": "gpu-resnet18",
        "task": {
            "model": "gputask:resnet18",
            "data": "gputask:data",
            "input_shape": [3, 224, 224],
            "num_classes": 10,
            "weights": "resnet18.pt",
            "workers": 4,
            "val_subset": 256,
        },
        "target": "host",
        "budgets": {"latency_ms": 1e6, "memory_kb": 1e8},
        "space": "gpu_space.yaml",
        "max_accuracy_drop": None,
        "device": "cuda",
        "trials": trials,
        "recovery": {"steps": steps, "batch_size": 64, "early_stop": False},
    }
    path = folder / "gpu_resnet18.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def attempt(stage: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A stage's figures, or the error it ended with: the results are written either way."""
    try:
        return stage(*args, **kwargs)
    except Exception as exc:  # recorded: finding this is what the check is for
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]}


def timed_search(exp: Any, device: str, out: Path) -> dict[str, Any]:
    """Run the search in this process; trials/min over the trials it trained."""
    from search.record import TrialAttr, TrialStatus, metric_of, status_of, trial_attr
    from search.study import run_search

    exp = replace(exp, device=device, out=str(out))
    t0 = time.perf_counter()
    result = run_search(exp, progress=False, log=lambda _m: None)
    wall = time.perf_counter() - t0
    # Repeats of a plan are answered from the first trial in milliseconds: not counted; nor
    # are the enqueued plans left WAITING when the budget ran out.
    trials = [
        t
        for t in result.study.get_trials(deepcopy=False)
        if t.state.is_finished() and status_of(t) is not TrialStatus.DUPLICATE
    ]
    trained = [t for t in trials if status_of(t) is TrialStatus.TRAINED]
    train_s = sum(trial_attr(t, TrialAttr.TRAIN_S, 0.0) for t in trained)
    return {
        "device": device,
        "trials": len(trials),
        "trained": len(trained),
        "failed": result.failed,
        "fail_reasons": [
            trial_attr(t, TrialAttr.FAIL_REASON) for t in trials if t.state.name == "FAIL"
        ],
        "wall_s": round(wall, 1),
        "trials_per_min": round(len(trials) / wall * 60, 2),
        "recovery_s_per_trained_trial": round(train_s / max(len(trained), 1), 2),
        "best_accuracy": max((metric_of(t, "accuracy") or 0.0 for t in trained), default=None),
        "run_dir": str(out),
    }


def export_knee(run_dir: Path) -> dict[str, Any]:
    """`export` of the knee of the search in `run_dir` (on the device it ran on)."""
    from search.export import export_winner

    exported = export_winner(run_dir, pick="knee", allow_infeasible=True)
    return {"ok": True, "result": str(exported)[:500]}


def resnet_stage(args: argparse.Namespace, work: Path, gpu: str, gpus: int) -> dict[str, Any]:
    """ResNet-18 at 224 px: trials/min on the GPU and the CPU, and `--jobs` with 2+ GPUs."""
    from search.config import load_experiment

    print(f"ResNet-18 at 224 px, {args.resnet_trials} trials on cuda, 1 on cpu", flush=True)
    exp_path = resnet_experiment(work, args.resnet_trials, args.steps)
    resnet = load_experiment(exp_path)
    out: dict[str, Any] = {
        "steps": args.steps,
        "batch_size": 64,
        "cuda": attempt(timed_search, resnet, gpu, work / "resnet-cuda"),
        "cpu": attempt(timed_search, replace(resnet, trials=1), "cpu", work / "resnet-cpu"),
    }
    if gpus >= 2:
        print(f"ResNet-18 with --jobs {gpus}: one worker per GPU", flush=True)
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "search", "run", str(exp_path), "--jobs", str(gpus),
             "--trials", str(2 * gpus), "--out", str(work / "resnet-jobs"), "--no-progress"],
            cwd=work, capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        wall = time.perf_counter() - t
        out["jobs"] = {
            "jobs": gpus,
            "exit": done.returncode,
            "wall_s": round(wall, 1),
            "trials_per_min": round(2 * gpus / wall * 60, 2),
            "stderr_tail": done.stderr[-800:],
        }
    return out


# -- 4. Inference engines: fp16 and int8 engines timed against the cost model -------------------

ENGINE_NETWORKS = (
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "shufflenet_v2_x1_0",
    "densenet121",
    "vgg16",
)
SMOKE_NETWORKS = ("resnet18", "mobilenet_v2")
# torch.cuda.get_device_name -> hardware_profiles/<name>.yaml; the first match wins.
GPU_PROFILES = (
    (r"\bT4\b", "cloud_gpu"),
    (r"\bA100\b", "a100"),
    (r"\bA10G?\b", "a10"),
    (r"\bL4\b", "l4"),
    (r"\bH100\b", "h100"),
    (r"\bH200\b", "h200"),
    (r"\bV100\b", "v100"),
    (r"Jetson AGX Xavier|\bXavier\b", "jetson_xavier"),
    (r"Jetson Nano|Tegra X1", "jetson_nano"),
    (r"\bOrin\b", "jetson_orin"),
)
FALLBACK_PROFILE = "cloud_gpu"
# ONNX Runtime engines, after TensorRT itself: best first.
ENGINE_PROVIDERS = {
    "onnxruntime-trt": "TensorrtExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
}
CALIB_ROWS = 16  # synthetic images: the zoo networks' int8 activation ranges
NO_GPU = "not measured: no GPU (--smoke or no CUDA device)"
NO_ENGINE = (
    "not measured: no engine here (pip install tensorrt, its CUDA major matching torch's, "
    "or onnxruntime-gpu)"
)
CUDA_INT8 = (
    "not measured: ONNX Runtime's CUDA provider builds no int8 engine for a QDQ model "
    "(it dequantizes and runs float kernels)"
)
ALL_FAILED = "not measured: every engine failed (engine_errors)"


def gpu_profile(gpu_name: str) -> tuple[Any, str | None]:
    """The profile (at batch 1) that costs this GPU, and a note when it is not its own."""
    from search.errors import ConfigError
    from search.hardware import load_profile

    mapped = next((p for pattern, p in GPU_PROFILES if re.search(pattern, gpu_name)), None)
    if mapped is not None:
        try:
            return load_profile(mapped).with_updates(batch=1), None
        except ConfigError:
            why = f"{gpu_name!r} maps to profile {mapped!r}, which hardware_profiles/ lacks"
    else:
        why = f"no profile is mapped to {gpu_name!r}"
    note = (
        f"{why}: costed on {FALLBACK_PROFILE} (a T4), so predicted and measured are for "
        "different GPUs"
    )
    return load_profile(FALLBACK_PROFILE).with_updates(batch=1), note


def engine_bits(layer_bits: dict[str, int], precision: str) -> tuple[dict[str, int], int]:
    """(layer bits, activation bits) an engine runs at: fp16 throughout; or int8 for the
    layers at 8 bits (the int8 ONNX quantizes only those) and fp32 for the others."""
    if precision == "fp16":
        return dict.fromkeys(layer_bits, 16), 16
    return {k: 8 if b == 8 else 32 for k, b in layer_bits.items()}, 8


def predicted_ms(compressed: Any, shape: tuple[int, ...], profile: Any, precision: str) -> float:
    """The cost model's latency of `compressed` on `profile` at the engine's precision."""
    from search.hardware import estimate_cost

    bits, activation_bits = engine_bits(compressed.layer_bits, precision)
    cost = estimate_cost(
        compressed.model,
        shape,
        profile,
        layer_bits=bits,
        activation_bits=activation_bits,
        layer_density=compressed.layer_density,
    )
    return round(cost.latency_ms, 4)


def int8_layers(path: Path, at_8_bits: int) -> dict[str, int]:
    """How many Conv/Gemm/MatMul nodes of an ONNX file are int8 (input and weight both
    dequantized), beside the layers at 8 bits (fewer in the file: the export left some float)."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    qdq = sum(all(made_by.get(x) == "DequantizeLinear" for x in n.input[:2]) for n in layers)
    return {"in_onnx": qdq, "at_8_bits": at_8_bits, "layers": len(layers)}


def fp16_onnx(model: Any, shape: tuple[int, ...], path: Path) -> Path:
    """A float16 ONNX file, written as `export --format onnx-fp16` writes one."""
    from search.compress import export_onnx
    from search.export import to_float16

    export_onnx(model, path, input_shape=shape)
    to_float16(path)
    return path


def int8_onnx(model: Any, shape: tuple[int, ...], calib: Any, path: Path) -> Path:
    """An int8 QDQ ONNX file with symmetric int8 activations, written as the export writes one
    for a TensorRT profile (the layers at 8 bits quantized, the rest fp32)."""
    from search.compress import export_onnx

    return export_onnx(
        model, path, input_shape=shape, int8=True, calib_inputs=calib, symmetric=True
    )


def make_row(network: str, kind: str, precision: str, export: Any, cost: Any) -> dict[str, Any]:
    """One (network, precision) row: its ONNX file and predicted latency, or each stage's error."""
    row: dict[str, Any] = {"network": network, "kind": kind, "precision": precision}
    for key, stage in (("export", export), ("cost", cost)):
        out = attempt(stage)
        row.update({f"{key}_error": out["error"]} if "error" in out else out)
    return row


def zoo_rows(name: str, folder: Path, profile: Any) -> list[dict[str, Any]]:
    """The fp16 and int8 rows of one zoo network (random weights, synthetic calibration)."""
    import torch

    from search.compress import compress
    from search.hardware import REFERENCE_NETWORKS
    from spaces import CompressionPlan, QuantizeConfig

    entry = REFERENCE_NETWORKS[name]
    shape = tuple(entry.input_shape)
    calib = torch.randn(CALIB_ROWS, *shape, generator=torch.Generator().manual_seed(0))
    # Every conv/linear at 8 bits: the project's quantize operator marks them for the export.
    quantized = compress(
        CompressionPlan(quantize=QuantizeConfig(default_weight_bits=8, activation_bits=8)),
        entry.build(),
        input_shape=shape,
        num_classes=1,  # read by the architecture operator only; this plan just quantizes
        calib_inputs=calib,
        grad_batch=(calib[:2], torch.zeros(2, dtype=torch.long)),
        calibrate=False,
    )
    n8 = sum(b == 8 for b in quantized.layer_bits.values())
    fp16_path, int8_path = folder / f"{name}-fp16.onnx", folder / f"{name}-int8.onnx"

    def export_int8() -> dict[str, Any]:
        path = int8_onnx(quantized.model, shape, calib, int8_path)
        return {"onnx": str(path), "int8_layers": int8_layers(path, n8)}

    rows = [
        make_row(
            name,
            "zoo",
            "fp16",
            lambda: {"onnx": str(fp16_onnx(entry.build(), shape, fp16_path))},
            lambda: {"predicted_ms": predicted_ms(quantized, shape, profile, "fp16")},
        ),
        make_row(
            name,
            "zoo",
            "int8",
            export_int8,
            lambda: {"predicted_ms": predicted_ms(quantized, shape, profile, "int8")},
        ),
    ]
    for row in rows:
        row["input_shape"] = list(shape)
    return rows


def _quiet(_message: str) -> None:
    """A log that prints nothing."""


def rebuilt(winner_dir: Path) -> tuple[Any, Any]:
    """An exported plan rebuilt from its winner folder (plan, base model, model.pt) and its
    task: what the int8 export and the cost model need."""
    from search.export import load_state, stored_experiment
    from search.pipeline import build
    from search.tasks import load_task
    from spaces import CompressionPlan

    where = str(winner_dir / "winner.yaml")
    data = yaml.safe_load((winner_dir / "winner.yaml").read_text())
    task = load_task(stored_experiment(data["experiment"], where=where, run_dir=None), log=_quiet)
    compressed = build(CompressionPlan.from_dict(data["plan"]), task)
    load_state(compressed.model, winner_dir / "model.pt", where=where, field_name="model.pt")
    compressed.model.cpu().eval()
    return compressed, task


def plan_rows(run_dir: Path, trial: int, name: str, folder: Path, profile: Any) -> list[dict]:
    """The fp16 and int8 rows of one plan of a finished search. fp16: the file of
    `export --format onnx-fp16`; int8: the symmetric int8 QDQ file of its 8-bit layers."""
    from search.export import export_winner
    from search.pipeline import CALIBRATION_ROWS

    got: dict[str, Any] = {}

    def export_fp16() -> dict[str, Any]:
        export_winner(
            run_dir,
            trial=trial,
            out=folder,
            fmt="onnx-fp16",
            allow_infeasible=True,
            measure_latency=False,
            log=_quiet,
        )
        got["compressed"], got["task"] = rebuilt(folder)
        return {"onnx": str(folder / "model.onnx")}

    def export_int8() -> dict[str, Any]:
        compressed, task = got["compressed"], got["task"]
        n8 = sum(b == 8 for b in compressed.layer_bits.values())
        if not n8:
            raise ValueError("the plan has no layer at 8 bits: no int8 engine to build")
        calib = task.calibration_inputs(CALIBRATION_ROWS)
        path = int8_onnx(compressed.model, shape(), calib, folder / "model-int8.onnx")
        return {"onnx": str(path), "int8_layers": int8_layers(path, n8)}

    def shape() -> tuple[int, ...]:
        return tuple(int(x) for x in got["task"].input_shape)

    def cost(precision: str) -> dict[str, Any]:
        return {"predicted_ms": predicted_ms(got["compressed"], shape(), profile, precision)}

    rows = [
        make_row(name, "plan", "fp16", export_fp16, lambda: cost("fp16")),
        make_row(name, "plan", "int8", export_int8, lambda: cost("int8")),
    ]
    for row in rows:
        if "task" in got:
            row["input_shape"] = list(shape())
    return rows


def front_plans(run_dir: Path, limit: int) -> list[tuple[int, str]]:
    """(trial, label) of up to `limit` front plans of a finished search, the knee among them
    (the least violating plan when nothing is feasible)."""
    from search.review import load_run_dir

    run = load_run_dir(run_dir)
    numbers = list(run.front)[:limit] or [run.pick("knee", allow_infeasible=True).number]
    if run.knee is not None and run.knee not in numbers:
        numbers[-1] = run.knee
    return [(n, f"quickstart trial {n}" + (" (knee)" if n == run.knee else "")) for n in numbers]


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


def comparable(row: dict[str, Any]) -> bool:
    """Measured and predicted, and (int8) every layer at 8 bits quantized in the ONNX file."""
    counts = row.get("int8_layers")
    full = counts is None or counts["in_onnx"] >= counts["at_8_bits"]
    return "ratio" in row and full


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Share within +-25 % and Spearman of predicted against measured, over the comparable
    rows: all of them, and each precision on its own."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    for which in ("all", "fp16", "int8"):
        pairs = [
            (r["predicted_ms"], r["median_ms"])
            for r in rows
            if comparable(r) and which in ("all", r["precision"])
        ]
        within = [abs(p / m - 1) <= 0.25 for p, m in pairs]
        rho = spearmanr(*zip(*pairs)).statistic if len(pairs) >= 3 else float("nan")
        out[which] = {
            "rows": len(pairs),
            "within_25pct": round(sum(within) / len(within), 3) if within else None,
            "spearman": None if rho != rho else round(float(rho), 3),  # NaN: too few or ties
        }
    out["measured_not_comparable"] = sum("ratio" in r and not comparable(r) for r in rows)
    return out


def engine_section(
    networks: list[str],
    run_dir: Path | None,
    folder: Path,
    gpu_name: str,
    *,
    gpu: bool,
    runs: int = 200,
    warmup: int = 50,
    max_plans: int = 4,
) -> dict[str, Any]:
    """Export and cost every (network, precision), then time each on this GPU's best engine.

    Without a GPU (`gpu=False`) nothing is timed and each row says so: no figure is made up.
    """
    from search.hardware import REFERENCE_NETWORKS

    folder.mkdir(parents=True, exist_ok=True)
    profile, note = gpu_profile(gpu_name)
    engines, missing = available_engines() if gpu else ([], {})
    section: dict[str, Any] = {
        "profile": profile.name,
        "profile_note": note,
        "engines": engines,
        "engines_missing": missing,
        "timing": f"Batch 1, {warmup} warm-up runs, then median/p10/p90 of {runs} "
        "synchronized runs; input on the GPU",
        "skipped": {},
        "rows": [],
    }
    for name in networks:
        if name not in REFERENCE_NETWORKS:
            section["skipped"][name] = "not in REFERENCE_NETWORKS"
            continue
        print(f"engines: exporting and costing {name}", flush=True)
        got = attempt(lambda n=name: {"rows": zoo_rows(n, folder, profile)})
        section["rows"] += got.get("rows", [{"network": name, "build_error": got.get("error")}])
    if run_dir is not None:
        plans = attempt(lambda: {"plans": front_plans(run_dir, max_plans)})
        section["plans_error"] = plans.get("error")
        for trial, label in plans.get("plans", []):
            print(f"engines: exporting and costing {label}", flush=True)
            section["rows"] += plan_rows(run_dir, trial, label, folder / f"trial-{trial}", profile)
    for row in section["rows"]:
        if not gpu:
            row["not_measured"] = NO_GPU
            continue
        print(f"engines: timing {row['network']} {row.get('precision')}", flush=True)
        time_row(row, engines, runs=runs, warmup=warmup)
    section["agreement"] = agreement(section["rows"])
    return section


def engine_markdown(e: dict[str, Any]) -> list[str]:
    """The engine section of gpu_check.md: one row per (network, precision)."""
    lines = [
        "",
        "## Inference engines: measured against predicted",
        "",
        f"Predicted on profile `{e['profile']}` at batch 1"
        + (f" ({e['profile_note']})" if e["profile_note"] else "")
        + f". Engines tried, best first: {', '.join(e['engines']) or 'none'}. {e['timing']}.",
        "",
        "| network | precision | engine | int8 layers in ONNX | median ms | p10 ms | p90 ms | "
        "predicted ms | predicted/measured | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in e["rows"]:
        counts = r.get("int8_layers")
        int8 = f"{counts['in_onnx']} of {counts['at_8_bits']}" if counts else ""
        errors = [f"{k}: {r[k]}" for k in ("build_error", "export_error", "cost_error") if k in r]
        errors += [f"{k}: {v}" for k, v in r.get("engine_errors", {}).items()]
        note = "; ".join([r.get("not_measured", ""), *errors]).strip("; ")
        cells = [r.get(k, "") for k in ("median_ms", "p10_ms", "p90_ms", "predicted_ms", "ratio")]
        lines.append(
            f"| {r['network']} | {r.get('precision', '')} | {r.get('engine', '')} | {int8} | "
            + " | ".join(str(c) for c in cells)
            + f" | {note} |"
        )
    a = e["agreement"]
    lines += [
        "",
        "Agreement over the rows measured and predicted (an int8 row only when its ONNX file "
        "quantizes every layer at 8 bits): "
        + "; ".join(
            f"{k} {v['rows']} rows, within +-25 % {v['within_25pct']}, Spearman {v['spearman']}"
            for k, v in a.items()
            if isinstance(v, dict)
        )
        + f"; measured but not comparable: {a['measured_not_comparable']}.",
    ]
    if e["skipped"]:
        lines.append(f"Skipped: {e['skipped']}.")
    if e.get("plans_error"):
        lines.append(f"Front plans: {e['plans_error']}.")
    if e["engines_missing"]:
        lines.append(f"Engines missing: {e['engines_missing']}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick-trials", type=int, default=6)
    parser.add_argument("--resnet-trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="recovery.steps for ResNet-18")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check this script without a GPU: tiny runs with 'cuda' replaced by 'cpu', "
        "results to a temp folder (never experiments/results)",
    )
    parser.add_argument(
        "--engines-only",
        action="store_true",
        help="only the quickstart on cuda (for its front plans) and the engine stage",
    )
    parser.add_argument(
        "--networks",
        default=None,
        help=f"zoo networks for the engine stage, comma-separated (default: "
        f"{','.join(ENGINE_NETWORKS)}; --smoke: {','.join(SMOKE_NETWORKS)})",
    )
    parser.add_argument("--engine-runs", type=int, default=200, help="timed runs per engine")
    parser.add_argument("--engine-warmup", type=int, default=50, help="warm-up runs per engine")
    parser.add_argument("--max-plans", type=int, default=4, help="front plans given engines")
    args = parser.parse_args()
    import torch

    gpu = "cuda"
    if args.smoke:
        gpu, args.quick_trials, args.resnet_trials, args.steps = "cpu", 2, 1, 1
        args.out = Path(tempfile.mkdtemp(prefix="gpu-check-smoke-"))
    elif not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
            "nothing measured, nothing written. Run it on a machine with a GPU.",
            file=sys.stderr,
        )
        raise SystemExit(0)

    from search.config import load_experiment

    load_before = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ["COMPRESS_SEARCH_CACHE"] = str(work / "cache")  # base model trained once
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    gpus = torch.cuda.device_count() if gpu == "cuda" else 0
    result: dict[str, Any] = {
        "command": " ".join(["python experiments/benchmarks/gpu_check.py", *sys.argv[1:]]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": torch.cuda.get_device_name(0) if gpu == "cuda" else "none (--smoke)",
        "gpus": gpus,
        "bf16": torch.cuda.is_bf16_supported() if gpu == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_before": load_before,
    }
    t0 = time.perf_counter()
    quick = replace(load_experiment("quickstart"), trials=args.quick_trials)
    devices = "cuda" if args.engines_only else "cuda then cpu"
    print(f"quickstart, {args.quick_trials} trials: {devices}", flush=True)
    result["quickstart"] = {"cuda": attempt(timed_search, quick, gpu, work / "quick-cuda")}
    if not args.engines_only:
        result["quickstart"]["cpu"] = attempt(timed_search, quick, "cpu", work / "quick-cpu")
        result["quickstart"]["export_on_cuda"] = attempt(export_knee, work / "quick-cuda")
        result["resnet18"] = resnet_stage(args, work, gpu, gpus)
    default = SMOKE_NETWORKS if args.smoke else ENGINE_NETWORKS
    networks = args.networks.split(",") if args.networks else list(default)
    print(f"engines: {', '.join(networks)} and the quickstart's front plans", flush=True)
    result["engines"] = engine_section(
        networks,
        None if "error" in result["quickstart"]["cuda"] else work / "quick-cuda",
        work / "engines",
        result["gpu"],
        gpu=gpu == "cuda",
        runs=args.engine_runs,
        warmup=args.engine_warmup,
        max_plans=args.max_plans,
    )
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    """gpu_check.md: the stages that ran (`--engines-only` skips the CPU and ResNet-18 ones)."""
    lines = [
        "# GPU check: the CUDA path against the CPU",
        "",
        f"{r['gpu']} ({r['gpus']} GPU(s), bf16 {r['bf16']}), torch {r['torch']}, "
        f"{r['cores']} cores ({r['torch_threads']} torch threads). {r['when']}, commit "
        f"{r['commit']}, load average {r['load_avg_before']} before, {r['load_avg_after']} "
        f"after. Command: `{r['command']}`. Total {r['total_s']} s.",
        "",
        "| workload | device | trials (repeats not counted) | trained | failed | wall s | "
        "trials/min | recovery s "
        "per trained trial | best accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ran = [(name, dev) for name in ("quickstart", "resnet18") for dev in r.get(name, {})]
    ran = [(name, dev) for name, dev in ran if dev in ("cuda", "cpu")]
    for name, dev in ran:
        x = r[name][dev]
        if "error" in x:
            lines.append(f"| {name} | {dev} | failed: {x['error']} |||||||")
            continue
        lines.append(
            f"| {name} | {dev} | {x['trials']} | {x['trained']} | {x['failed']} | "
            f"{x['wall_s']} | {x['trials_per_min']} | {x['recovery_s_per_trained_trial']} | "
            f"{x['best_accuracy']} |"
        )
    if "export_on_cuda" in r["quickstart"]:
        knee = r["quickstart"]["export_on_cuda"]
        lines += ["", f"Export of the quickstart's knee on cuda: {knee}."]
    if "jobs" in r.get("resnet18", {}):
        j = r["resnet18"]["jobs"]
        lines.append(
            f"`--jobs {j['jobs']}` (one worker per GPU): exit {j['exit']}, "
            f"{j['trials_per_min']} trials/min."
        )
    failures = [reason for name, dev in ran for reason in r[name][dev].get("fail_reasons", [])]
    if failures:
        lines += ["", "Failed trials:", *[f"- {f}" for f in failures]]
    if "engines" in r:
        lines += engine_markdown(r["engines"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
