"""The exported winner's model card (`card.md`): what was done, the metrics, the budget check.

`render(record, run, trial, layer_bits)` reads the record `search.export` writes to
`winner.yaml` (its `metrics`, `plan`, `profile`...), the run it came from and the trial; each
section is one small function returning its lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces import is_student

from .._format import number
from ..budgets import BUDGET_METRICS, budget_for_metric
from ..record import ACCURACY_DROP, COST_KEYS
from ..review import (
    RunData,
    TrialRecord,
    latency_error,
    latency_note,
    latency_text,
    layer_rows,
    why_infeasible,
)

__all__ = ["render"]


def _pct(measured: float, predicted: float) -> str:
    return f"{measured / predicted - 1:+.1%}" if predicted else "-"


def render(
    r: Mapping[str, Any], run: RunData, t: TrialRecord, layer_bits: Mapping[str, int]
) -> str:
    """The card's markdown."""
    lines = [
        *_header(r),
        *_what_was_done(r, layer_bits),
        *_metrics(r),
        *_tflite_memory(r["metrics"].get("tflite")),
        *_budget_check(r, run, t),
        *_measured_latency(r),
        *_per_layer(r["plan"]),
        *_files(bool(r["metrics"].get("tflite"))),
    ]
    return "\n".join(lines)


def _header(r: Mapping[str, Any]) -> list[str]:
    prof = r["profile"]
    return [
        f"# Model card: {r['study']}, trial {r['trial']}"
        + (f" ({r['pick']})" if r["pick"] else ""),
        "",
        f"{'**Infeasible** (exported on request): ' if not r['feasible'] else ''}"
        f"A compressed version of the `{r['task']['name']}` base model (sha256 "
        f"`{r['base_model']['sha256'][:16]}...`), found by a joint compression search for the "
        f"`{prof.get('name')}` profile. Weights: {r['weights_from']}.",
        "",
        "## What was done",
        "",
        f"Plan: {r['plan_text']}",
        "",
    ]


def _what_was_done(r: Mapping[str, Any], layer_bits: Mapping[str, int]) -> list[str]:
    """One bullet per operator of the plan, then the exported file's format."""
    plan = r["plan"]
    return [
        *_structure(plan),
        *_precision(plan, layer_bits),
        *_file_format(r),
        *(
            ["- Left whole: " + "; ".join(f"{k} ({v})" for k, v in r["skipped_layers"].items())]
            if r["skipped_layers"]
            else []
        ),
    ]


def _structure(plan: Mapping[str, Any]) -> list[str]:
    """Architecture, low-rank and pruning bullets."""
    a, lr_, pr = (plan.get(k, {}) for k in ("architecture", "lowrank", "prune"))
    lines = []
    if is_student(plan):
        lines.append(
            f"- Architecture: a `{a['family']}` student, width {a.get('width')}, "
            f"depth {a.get('depth')}, trained by distillation from the base model."
        )
    else:
        lines.append("- Architecture: the base model's own.")
    ranks = {k: v for k, v in (lr_.get("ranks") or {}).items() if v < 1}
    lines.append(
        f"- Low-rank ({lr_.get('mode', 'svd')}): "
        + (", ".join(f"{k} keeps {v:.0%}" for k, v in ranks.items()) or "none")
        + "."
    )
    if pr.get("global_ratio") is not None:
        lines.append(
            f"- Structured pruning: {pr['global_ratio']:.0%} of channels, ranked "
            f"globally by {pr.get('importance')} importance."
        )
    else:
        ratios = {k: v for k, v in (pr.get("ratios") or {}).items() if v > 0}
        lines.append(
            "- Structured pruning (channels physically removed): "
            + (", ".join(f"{k} {v:.0%}" for k, v in ratios.items()) or "none")
            + f" ({pr.get('importance', 'l1')} importance)."
        )
    if pr.get("sparsity"):
        lines.append(f"- Unstructured sparsity: {pr['sparsity']:.0%} of the remaining weights.")
    return lines


def _precision(plan: Mapping[str, Any], layer_bits: Mapping[str, int]) -> list[str]:
    """Bit widths and the recovery's distillation."""
    q, d = plan.get("quantize", {}), plan.get("distill", {})
    bits_count: dict[int, int] = {}
    for b in layer_bits.values():
        bits_count[b] = bits_count.get(b, 0) + 1
    lines = [
        "- Weights: "
        + ", ".join(f"{n} layer(s) at {b} bits" for b, n in sorted(bits_count.items()))
        + f"; activations at {q.get('activation_bits', 32)} bits."
    ]
    if d.get("enabled"):
        lines.append(
            f"- Recovery: fine-tuned with distillation (alpha {d.get('alpha')}, "
            f"temperature {d.get('temperature')})."
        )
    return lines


def _file_format(r: Mapping[str, Any]) -> list[str]:
    tfl = r["metrics"].get("tflite")
    if tfl:
        return [
            f"- TFLite: a {'full-integer int8' if tfl['kind'] == 'int8' else 'float32'} "
            f"`.tflite` ({tfl['bytes']:,} bytes, {len(tfl['operators'])} operators)"
            + (f"; float32 because of {tfl['why_float']}." if tfl.get("why_float") else ".")
        ]
    if r["onnx"].get("float16"):
        return [
            "- ONNX: float16 weights and compute, for GPUs (TensorRT, ONNX Runtime's CUDA and "
            "TensorRT providers); input and output stay float32."
        ]
    o = r["onnx"]
    lines = [
        f"- ONNX: {len(o['int8_qdq_layers'])} layer(s) as int8 QDQ "
        f"({', '.join(o['int8_qdq_layers']) or 'none'}), the rest fp32."
    ]
    if o.get("int8_weight_bits") == 7:
        lines.append(
            "- int8 weights use 7 bits of their range: the exporting CPU (x86, no VNNI) runs "
            "ONNX Runtime's uint8 x int8 kernels with int16 sums that would saturate."
        )
    return lines


def _metrics(r: Mapping[str, Any]) -> list[str]:
    """Validation and test metrics in PyTorch and in the runtime the file is for."""
    m, base = r["metrics"], r["base_metrics"]
    runtime, key = ("TFLite Micro", "tflm") if m.get("tflite") else ("ONNX Runtime", "onnx")
    lines = [
        "",
        "## Metrics",
        "",
        "| metric | base model (val) | search (val) | exported (val) | test, PyTorch "
        f"| test, {runtime} |",
        "|---|---|---|---|---|---|",
    ]
    for k in m["test"]:
        lines.append(
            f"| {k} | {number(base.get(k))} | {number(m['validation_at_search'].get(k))} | "
            f"{number(m['validation'].get(k))} | {number(m['test'].get(k))} | "
            f"{number(m[f'{key}_test'].get(k))} |"
        )
    return [
        *lines,
        "",
        f"{runtime} vs PyTorch on test {m['primary_metric']}: "
        f"{m[f'{key}_vs_torch_points']:.2f} points "
        f"({'within' if m[f'{key}_within_1_point'] else 'OUTSIDE'} the 1-point limit).",
        "",
    ]


def _tflite_memory(tfl: Mapping[str, Any] | None) -> list[str]:
    """The TFLite Micro arena and flash beside the cost model's predictions."""
    if not tfl:
        return []
    a = tfl["arena"]
    lines = [
        "## Memory in TFLite Micro",
        "",
        "The arena is what the board reserves for the interpreter (`print_allocations()` "
        "after `invoke()`): head = activations placed by TFLM's memory planner, tail = "
        "persistent data (tensor structs, per-channel quantization, operator state).",
        "",
        "| figure | predicted (cost model) | TFLite Micro | difference |",
        "|---|---|---|---|",
        f"| activations (arena head) | {tfl['predicted_peak_activation_bytes']:,} B | "
        f"{a['head']:,} B | {_pct(a['head'], tfl['predicted_peak_activation_bytes'])} |",
        f"| SRAM (arena total) | {tfl['predicted_memory_bytes']:,} B | {a['total']:,} B | "
        f"{_pct(a['total'], tfl['predicted_memory_bytes'])} |",
        f"| flash (.tflite + {tfl['runtime_flash_bytes']:,} B runtime) | "
        f"{tfl['predicted_flash_bytes']:,} B | {tfl['flash_bytes']:,} B | "
        f"{_pct(tfl['flash_bytes'], tfl['predicted_flash_bytes'])} |",
        "",
        f"The same `.tflite` in LiteRT (XNNPACK, one thread) on the exporting machine: "
        f"{number(tfl['litert_host_latency_ms'])} ms per inference (this host, not the board).",
        "",
    ]
    if tfl.get("why_float"):
        lines += [
            f"This plan runs in float32 on the board ({tfl['why_float']}): four bytes per "
            "activation and weight, and float kernels far slower than the int8 ones the "
            "cost model's 8-bit rates describe.",
            "",
        ]
    return lines


def _budget_check(r: Mapping[str, Any], run: RunData, t: TrialRecord) -> list[str]:
    """Each cost figure of the base model and the winner against its budget, then the drop."""
    m, base = r["metrics"], r["base_metrics"]
    lines = [
        "## Cost and budget check",
        "",
        f"Predicted by the cost model for `{r['profile'].get('name')}`."
        + latency_note(run, m.get("latency_ms")),
        "",
        "| figure | base model | winner | budget | check |",
        "|---|---|---|---|---|",
    ]
    for k in COST_KEYS:
        bk = budget_for_metric(k)
        c = r["constraints"].get(bk) if bk else None
        budget = r["budgets"].get(bk) if bk else None
        shown = f"{number(budget)} {BUDGET_METRICS[bk].unit}" if bk and budget is not None else "-"
        check = "-" if c is None else ("ok" if c <= 0 else f"OVER by {c:.0%}")
        won = number(m.get(k))
        if k == "latency_ms" and m.get(k) is not None and latency_error(run) is not None:
            won = latency_text(m[k], latency_error(run))  # with the profile's p90 band
        lines.append(f"| {k} | {number(base.get(k))} | {won} | {shown} | {check} |")
    c_drop, drop = r["constraints"].get(ACCURACY_DROP), t.metrics.get(ACCURACY_DROP)
    if c_drop is not None and drop is not None:
        # The constraint is `drop - max_drop`, so the allowed drop is `drop - c`.
        lines.append(
            f"| {m['primary_metric']} drop (val) | | {number(drop)} | "
            f"at most {number(drop - c_drop)} | {'ok' if c_drop <= 0 else 'OVER'} |"
        )
    verdict = "meets every budget" if r["feasible"] else f"is INFEASIBLE ({why_infeasible(t)})"
    return [*lines, "", f"The plan {verdict}.", ""]


def _measured_latency(r: Mapping[str, Any]) -> list[str]:
    m, prof, tfl = r["metrics"], r["profile"], r["metrics"].get("tflite")
    lines = ["## Latency measured on this machine", ""]
    if m.get("measured_latency_ms") is not None:
        return [
            *lines,
            "| predicted (cost model) | measured (ONNX Runtime, median) | threads |",
            "|---|---|---|",
            f"| {number(m.get('latency_ms'))} ms | {number(m['measured_latency_ms'])} ms | "
            f"{prof.get('threads', 1)} |",
        ]
    if tfl:
        return [
            *lines,
            f"Not measured on the board: `{prof.get('name')}` is not this machine. The "
            f"`.tflite` ran in LiteRT here in {number(tfl['litert_host_latency_ms'])} ms "
            "(see above).",
        ]
    return [
        *lines,
        f"Not measured: `{prof.get('name')}` is not this machine (the host "
        "profile measures the exported ONNX model here).",
    ]


def _per_layer(plan: Mapping[str, Any]) -> list[str]:
    rows = layer_rows(plan)
    if not rows:
        return []
    lines = [
        "",
        "## Per-layer plan",
        "",
        "| layer | weight bits | prune ratio | kept rank |",
        "|---|---|---|---|",
    ]
    for row in rows:
        glob = " (global)" if row["prune_global"] else ""
        lines.append(
            f"| {row['layer']} | {row['bits']} | {row['prune_ratio']:.0%}{glob} | "
            f"{row['rank']:.2f} |"
        )
    return lines


def _files(tflite: bool) -> list[str]:
    runtime_files = (
        [
            "- `model.tflite`: runs in TFLite Micro / LiteRT (batch 1)",
            "- `model_data.cc`, `model_data.h`: the flatbuffer as a C array "
            "(`g_model_data`, `g_model_data_len`)",
        ]
        if tflite
        else ["- `model.onnx`: runs in ONNX Runtime (input `input`, output `logits`)"]
    )
    return [
        "",
        "## Files",
        "",
        "- `winner.yaml`: plan, metrics, profile, versions, hashes",
        "- `model.pt`: compressed state_dict (`torch.load(..., weights_only=True)`)",
        *runtime_files,
        "",
        "Rebuild and check: `python -m search apply winner.yaml`",
        "",
    ]
