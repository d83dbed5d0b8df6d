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
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from _gpu_engine_section import ENGINE_NETWORKS, SMOKE_NETWORKS, engine_markdown, engine_section
from _gpu_engines import attempt

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
