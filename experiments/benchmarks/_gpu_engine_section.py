"""Stage 4 of gpu_check: inference engines, measured against predicted.

Zoo networks and the quickstart's front plans, each exported to ONNX at batch 1 by the
project's own export (fp16, and int8 QDQ with symmetric activations), costed on the profile of
the GPU found at the engine's precision, then timed on the best engine there (`_gpu_engines`):
`engine_section` makes the rows, `agreement` scores them, `engine_markdown` is the page's part.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from _gpu_engines import attempt, available_engines, time_row

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
CALIB_ROWS = 16  # synthetic images: the zoo networks' int8 activation ranges
NO_GPU = "not measured: no GPU (--smoke or no CUDA device)"


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
