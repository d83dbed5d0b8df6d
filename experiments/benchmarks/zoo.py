"""The zoo benchmark: one joint plan built and costed on every torchvision classifier up to 60 M
parameters, the segmentation networks, the detection backbones and ViT-B/16.

    python experiments/benchmarks/zoo.py [--timeout 120] [--size 224] [--profile phone]
        [--threads N] [--max-params 60e6] [--models a,b,...] [--quick] [--out DIR]

For each network (random weights, `weights=None`; no download), in a process of its own that
is killed after `--timeout` seconds:
1. builds the torchvision model at `--size` x `--size` (segmentation too; a detection
   network's `.backbone`, its FPN or SSD feature extractor, at the same size, SSD300's at 300);
2. costs it as it is (fp32) on the `--profile` profile (`search.hardware.estimate_cost`);
3. builds one joint plan by hand and applies it (`search.compress.compress`): low-rank (SVD)
   at rank ratio 0.5 on every layer `compressible_layers` marks factorizable, global L1
   structured pruning of 30 % of the channels, and int8 weights and activations;
4. costs the result at its bits on the same profile;
5. runs it forward once and compares the output's shape with the base model's (a dict output:
   its 'out' tensor, else every tensor in it).
Recorded per network: ok flags (built = base model and plan built, costed = both costs,
forward = right shape), parameters and predicted latency before and after, channels the
pruning removed (per layer of the base network, the output channels of the module that ends
it after compression, a low-rank pair's second half, against its own; summed), attention
heads removed (the modules' `num_heads`/`n_heads`), the layers an operator left whole and why
(`Compressed.skipped`), seconds per stage and the error text of any stage that failed.
"Plan seconds" = build (listing the layers, making the plan, `compress`) + cost of the result;
a stage that ran out of time counts as failed and has no figure.

Summary over the classifiers up to `--max-params` (the issue's targets: built_fraction = 1.0,
pruned_fraction >= 0.95, max_plan_seconds <= 10), then the same figures for segmentation,
detection backbones and the larger networks, and per-family lists. Writes
experiments/results/zoo.json and zoo.md (rewritten after each network, so a stopped run keeps
what it measured); progress on stderr. Not a test: it asserts nothing. `--quick` (or
`--models`) runs a few networks, for a smoke run; point `--out` elsewhere then.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _stamp  # this folder is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "experiments" / "results"
MAX_PARAMS = 60e6
EXTRA = ("vit_b_16",)  # named by the issue, 86.6 M parameters: reported beside the summary
# One backbone per distinct feature extractor (Mask R-CNN, Keypoint R-CNN and the 320 px
# Faster R-CNN share one of these; RetinaNet v2's differs from v1 only in its norm and P6 input).
DETECTION = (
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)
BACKBONE = ".backbone"
MIN_SIZE = {"ssd300_vgg16.backbone": 300}  # its extra layers need 300 px (3x3 kernels at 1x1)
NUM_CLASSES = {"classification": 1000, "segmentation": 21, "detection": 91}
QUICK = ("shufflenet_v2_x0_5", "squeezenet1_1", "mobilenet_v3_small", "lraspp_mobilenet_v3_large")
PRUNE_RATIO, RANK_RATIO, BITS = 0.3, 0.5, 8
TARGETS = {"built_fraction": 1.0, "pruned_fraction": 0.95, "max_plan_seconds": 10.0}
STAGES = ("model", "base_cost", "plan", "cost", "forward")


# -- which networks --------------------------------------------------------------------------


def _segmentation() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def kind_of(name: str) -> str:
    if name.endswith(BACKBONE):
        return "detection"
    return "segmentation" if name in _segmentation() else "classification"


def family_of(name: str) -> str:
    """resnet18 -> resnet, efficientnet_v2_s -> efficientnet, fcn_resnet50 -> fcn."""
    head = name.removesuffix(BACKBONE).split("_")[0]
    return head if kind_of(name) != "classification" else re.sub(r"\d.*$", "", head)


def published_params(name: str) -> int | None:
    """torchvision's `num_params` for the network (its smallest weights entry), no download."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name.removesuffix(BACKBONE))
        return min(int(w.meta["num_params"]) for w in weights)
    except (ValueError, KeyError):
        return None


def zoo(max_params: float = MAX_PARAMS) -> list[dict[str, Any]]:
    """Every network the full run measures: name, kind, family, published parameters and
    whether it counts in the summary (a classifier up to `max_params`)."""
    import torchvision

    out = []
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        params = published_params(name)
        small = params is not None and params <= max_params
        if small or name in EXTRA:
            out.append(_entry(name, params, summary=small))
    out += [_entry(n, published_params(n), summary=False) for n in _segmentation()]
    out += [_entry(n + BACKBONE, None, summary=False) for n in DETECTION]
    return out


def _entry(name: str, params: int | None, *, summary: bool) -> dict[str, Any]:
    return {
        "model": name,
        "kind": kind_of(name),
        "family": family_of(name),
        "published_params": params,
        "in_summary": summary,
    }


def select(models: str | None, quick: bool, max_params: float) -> list[dict[str, Any]]:
    if not models and not quick:
        return zoo(max_params)
    names = [n.strip() for n in models.split(",") if n.strip()] if models else list(QUICK)
    out = []
    for n in names:
        params = published_params(n)
        small = kind_of(n) == "classification" and params is not None and params <= max_params
        out.append(_entry(n, params, summary=small))
    return out


def build_model(name: str) -> Any:
    """The torchvision network with random weights (a detection entry: its backbone)."""
    import torchvision

    if name.endswith(BACKBONE):
        det = torchvision.models.get_model(
            name.removesuffix(BACKBONE), weights=None, weights_backbone=None
        )
        return det.backbone.eval()
    extra = {"weights_backbone": None} if kind_of(name) == "segmentation" else {}
    return torchvision.models.get_model(name, weights=None, **extra).eval()


# -- one network, in this process ------------------------------------------------------------


def _shapes(out: Any) -> Any:
    """The output shape to compare: a tensor's, a dict's 'out', else every tensor in the dict."""
    if isinstance(out, dict):
        if "out" in out:
            return list(out["out"].shape)
        return {k: list(v.shape) for k, v in out.items() if hasattr(v, "shape")}
    if isinstance(out, (tuple, list)):
        return [list(v.shape) for v in out if hasattr(v, "shape")]
    return list(out.shape)


def _out_channels(model: Any) -> dict[str, int]:
    """Output channels of every Conv2d / Linear, read from the (unparametrized) weight."""
    from torch import nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            p = getattr(m, "parametrizations", None)
            w = p.weight.original if p is not None and "weight" in p else m.weight
            out[name] = int(w.shape[0])
    return out


def channels_removed(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """Per base layer: its output channels after compression (a low-rank pair: its second
    half's) against before. Rank channels are not counted; a layer not found is listed."""
    removed, pruned, missing = 0, 0, []
    for name, c in before.items():
        c2 = after.get(name, after.get(f"{name}.1"))
        if c2 is None:
            missing.append(name)
            continue
        removed += c - c2
        pruned += c2 < c
    total = sum(before.values())
    return {
        "channels_before": total,
        "channels_removed": removed,
        "channels_removed_fraction": round(removed / total, 4) if total else 0.0,
        "layers_pruned": pruned,
        "layers_not_found": missing,
    }


def attention_heads(model: Any) -> int:
    """Heads of every attention module (`num_heads`, or MaxViT's `n_heads`)."""
    total = 0
    for m in model.modules():
        for attr in ("num_heads", "n_heads"):
            v = getattr(m, attr, None)
            if isinstance(v, int):
                total += v
                break
    return total


def joint_plan(model: Any) -> Any:
    """The issue's joint plan for `model`: low-rank 0.5 where it cuts MACs, 30 % global L1
    channel pruning, int8 weights and activations."""
    from search.compress import compressible_layers
    from spaces import CompressionPlan, LowRankConfig, PruneConfig, QuantizeConfig

    ranks = {x.name: RANK_RATIO for x in compressible_layers(model) if x.factorizable}
    return CompressionPlan(
        lowrank=LowRankConfig(ranks=ranks),
        prune=PruneConfig(global_ratio=PRUNE_RATIO, importance="l1"),
        quantize=QuantizeConfig(default_weight_bits=BITS, activation_bits=BITS),
    )


def measure_here(
    name: str,
    size: int = 224,
    profile: str = "phone",
    emit: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
    """Every stage for one network in this process. Never raises: a stage that fails records
    its error in `errors` and the stages that need it are not run. `emit(row)` is called as
    each stage starts (row["stage"] names it) and at the end (row["stage"] == "done")."""
    import torch

    from search.compress import compress
    from search.hardware import estimate_cost, load_profile

    kind = kind_of(name)
    size = max(size, MIN_SIZE.get(name, 0))
    row: dict[str, Any] = {
        "model": name,
        "kind": kind,
        "family": family_of(name),
        "size": size,
        "profile": profile,
        "threads": torch.get_num_threads(),
        "built": False,
        "costed": False,
        "forward": False,
        "timed_out": False,
        "stage": None,
        "errors": {},
    }
    state: dict[str, Any] = {}

    def stage(key: str, fn: Callable[[], None]) -> bool:
        row["stage"] = key
        emit(row)
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - the benchmark records, never raises
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
            row["errors"][key] = f"{type(exc).__name__}: {exc}"[:600] + where
            return False

    shape = (3, size, size)
    gen = torch.Generator().manual_seed(0)
    x_calib = torch.randn(2, *shape, generator=gen)
    x_one = torch.randn(1, *shape, generator=gen)
    prof = load_profile(profile)

    def base() -> None:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            state["base"] = build_model(name)
        row["model_seconds"] = round(time.perf_counter() - t0, 3)
        row["params_before"] = sum(p.numel() for p in state["base"].parameters())
        row["attention_heads_before"] = attention_heads(state["base"])

    def base_cost() -> None:
        t0 = time.perf_counter()
        cost = estimate_cost(state["base"], shape, prof)
        row["base_cost_seconds"] = round(time.perf_counter() - t0, 3)
        row["latency_ms_before"] = round(float(cost.latency_ms), 4)
        row["macs_before"] = int(cost.macs)

    def plan() -> None:
        t0 = time.perf_counter()
        p = joint_plan(state["base"])
        row["layers_seconds"] = round(time.perf_counter() - t0, 3)
        row["plan"] = p.describe()
        row["lowrank_layers"] = len(p.lowrank.ranks)
        c = compress(
            p,
            state["base"],
            input_shape=shape,
            num_classes=NUM_CLASSES[kind],
            calib_inputs=x_calib,
            grad_batch=(x_calib, torch.zeros(len(x_calib), dtype=torch.long)),
        )
        row["build_seconds"] = round(time.perf_counter() - t0, 3)
        state["c"] = c
        row["built"] = True
        row["params_after"] = sum(p.numel() for p in c.model.parameters())
        row.update(channels_removed(_out_channels(state["base"]), _out_channels(c.model)))
        heads = attention_heads(c.model)
        row["attention_heads_after"] = heads
        row["attention_heads_removed"] = row["attention_heads_before"] - heads
        row["skipped"] = dict(c.skipped)

    def cost() -> None:
        c = state["c"]
        t0 = time.perf_counter()
        r = estimate_cost(
            c.model,
            shape,
            prof,
            layer_bits=c.layer_bits,
            activation_bits=c.activation_bits,
            layer_density=c.layer_density,
        )
        row["cost_seconds"] = round(time.perf_counter() - t0, 3)
        row["latency_ms_after"] = round(float(r.latency_ms), 4)
        row["macs_after"] = int(r.macs)
        row["cost_traced"] = bool(r.traced)
        row["cost_notes"] = list(r.notes)

    def forward() -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            want = _shapes(state["base"](x_one))
            got = _shapes(state["c"].model(x_one))
        row["forward_seconds"] = round(time.perf_counter() - t0, 3)
        row["output_shape_before"], row["output_shape_after"] = want, got
        if got != want:
            raise RuntimeError(f"output shape {got}, the base model's {want}")
        row["forward"] = True

    if stage("model", base):
        base_ok = stage("base_cost", base_cost)
        if stage("plan", plan):
            after_ok = stage("cost", cost)
            row["costed"] = base_ok and after_ok
            if after_ok:
                row["plan_seconds"] = round(row["build_seconds"] + row["cost_seconds"], 3)
            stage("forward", forward)
    row["stage"] = "done"
    emit(row)
    return row


# -- one network, in a child process with a time limit ---------------------------------------


def measure(
    name: str, *, size: int = 224, profile: str = "phone", timeout: float = 120, threads: int = 0
) -> dict[str, Any]:
    """`measure_here` in a fresh Python process, killed after `timeout` seconds. Never raises:
    a timeout or a crash is recorded in the row (with the stage it happened in)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name]
    cmd += ["--size", str(size), "--profile", profile, "--threads", str(threads)]
    t0 = time.perf_counter()
    timed_out, rc, stderr = False, 0, ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        stdout, stderr, rc = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr)
    row = _last_row(stdout) or {
        **_entry(name, None, summary=False),
        "built": False,
        "costed": False,
        "forward": False,
        "stage": "start",
        "errors": {},
    }
    for key in ("published_params", "in_summary"):
        row.pop(key, None)
    row["wall_seconds"] = round(time.perf_counter() - t0, 3)
    row["timed_out"] = timed_out
    if timed_out:
        row["errors"][row["stage"]] = f"timed out after {timeout:g} s"
    elif row.get("stage") != "done":
        tail = stderr.strip().splitlines()[-3:]
        row["errors"][row.get("stage") or "start"] = (
            f"the process ended (rc {rc}) during this stage: " + " | ".join(tail)
        )[:600]
    return row


def _text(v: bytes | str | None) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")


def _last_row(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
    return None


# -- summary and report ----------------------------------------------------------------------


def group_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    plan_s = [r["plan_seconds"] for r in rows if r.get("plan_seconds") is not None]
    return {
        "models": n,
        "built_fraction": round(sum(r["built"] for r in rows) / n, 4) if n else None,
        "pruned_fraction": (
            round(sum(r.get("channels_removed", 0) > 0 for r in rows) / n, 4) if n else None
        ),
        "costed_fraction": round(sum(r["costed"] for r in rows) / n, 4) if n else None,
        "forward_fraction": round(sum(r["forward"] for r in rows) / n, 4) if n else None,
        "max_plan_seconds": max(plan_s) if plan_s else None,
        "median_plan_seconds": round(statistics.median(plan_s), 3) if plan_s else None,
        "plan_seconds_missing": [r["model"] for r in rows if r.get("plan_seconds") is None],
        "timed_out": [r["model"] for r in rows if r.get("timed_out")],
    }


def targets_met(s: dict[str, Any]) -> dict[str, bool]:
    """A network without plan seconds (failed or out of time) misses the time target."""
    max_s = s["max_plan_seconds"]
    return {
        "built_fraction": s["built_fraction"] is not None
        and s["built_fraction"] >= TARGETS["built_fraction"],
        "pruned_fraction": s["pruned_fraction"] is not None
        and s["pruned_fraction"] >= TARGETS["pruned_fraction"],
        "max_plan_seconds": max_s is not None
        and not s["plan_seconds_missing"]
        and max_s <= TARGETS["max_plan_seconds"],
    }


def families(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        f = out.setdefault(
            r["family"],
            {"kind": r["kind"], "models": [], "built": [], "pruned": [], "forward": []},
        )
        f["models"].append(r["model"])
        if r["built"]:
            f["built"].append(r["model"])
        if r.get("channels_removed", 0) > 0:
            f["pruned"].append(r["model"])
        if r["forward"]:
            f["forward"].append(r["model"])
        if r["errors"]:
            f.setdefault("failed", {})[r["model"]] = _first_error(r)
    return dict(sorted(out.items()))


def _first_error(r: dict[str, Any]) -> str:
    for key in STAGES + ("start",):
        if key in r["errors"]:
            return f"{key}: {r['errors'][key]}"
    return ""


def document(
    rows: list[dict[str, Any]], entries: list[dict[str, Any]], setup: dict[str, Any]
) -> dict[str, Any]:
    summary_names = {e["model"] for e in entries if e["in_summary"]}
    small = [r for r in rows if r["model"] in summary_names]
    summary = group_summary(small)
    summary["targets_met"] = targets_met(summary)
    others = {
        "segmentation": [r for r in rows if r["kind"] == "segmentation"],
        "detection_backbones": [r for r in rows if r["kind"] == "detection"],
        # above --max-params (ViT-B/16), or a name with no published count (--models)
        "other_classifiers": [
            r for r in rows if r["kind"] == "classification" and r["model"] not in summary_names
        ],
    }
    return {
        "setup": setup,
        "targets": TARGETS,
        "summary": summary,
        "other_groups": {k: group_summary(v) for k, v in others.items() if v},
        "families": families(rows),
        "models": rows,
    }


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ok(v: bool) -> str:
    return "yes" if v else "**no**"


def markdown(doc: dict[str, Any]) -> str:
    s, setup = doc["summary"], doc["setup"]
    met = s["targets_met"]
    lines = [
        "# Zoo benchmark: one joint plan on torchvision's networks",
        "",
        _stamp.line(doc["stamp"]) + f" {doc['stamp']['seconds']:.0f} s in all.",
        "",
        f"Plan: low-rank (SVD) at rank ratio {RANK_RATIO} on every factorizable layer, global "
        f"L1 structured pruning {PRUNE_RATIO:.0%}, int8 weights and activations "
        f"(`compress`); costed on `{setup['profile']}` at {setup['size']} x {setup['size']} "
        f"(SSD300's backbone at 300), random weights. Each network in its own process, "
        f"{setup['timeout_s']:g} s at most; torch threads: {setup['threads'] or 'default'}. "
        "Plan seconds = build (layers, plan, `compress`) + cost of the result.",
        "",
        f"## Summary: the {s['models']} classifiers up to {setup['max_params'] / 1e6:g} M "
        "parameters",
        "",
        "| figure | value | target | |",
        "|---|---:|---:|---|",
        f"| built_fraction | {_num(s['built_fraction'], '.3f')} | = 1.0 | "
        f"{'met' if met['built_fraction'] else 'missed'} |",
        f"| pruned_fraction | {_num(s['pruned_fraction'], '.3f')} | >= 0.95 | "
        f"{'met' if met['pruned_fraction'] else 'missed'} |",
        f"| max_plan_seconds | {_num(s['max_plan_seconds'], '.1f')} | <= 10 | "
        f"{'met' if met['max_plan_seconds'] else 'missed'} |",
        f"| median_plan_seconds | {_num(s['median_plan_seconds'], '.1f')} | | |",
        f"| costed / forward fraction | {_num(s['costed_fraction'], '.3f')} / "
        f"{_num(s['forward_fraction'], '.3f')} | | |",
        "",
    ]
    if s["plan_seconds_missing"]:
        lines += [
            "Without plan seconds (failed or out of time, so max_plan_seconds is missed): "
            + ", ".join(s["plan_seconds_missing"])
            + ".",
            "",
        ]
    if doc["other_groups"]:
        lines += [
            "| group | models | built | pruned | costed | forward | max plan s | median plan s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k, g in doc["other_groups"].items():
            lines.append(
                f"| {k} | {g['models']} | {_num(g['built_fraction'], '.2f')} | "
                f"{_num(g['pruned_fraction'], '.2f')} | {_num(g['costed_fraction'], '.2f')} | "
                f"{_num(g['forward_fraction'], '.2f')} | {_num(g['max_plan_seconds'], '.1f')} | "
                f"{_num(g['median_plan_seconds'], '.1f')} |"
            )
        lines.append("")
    lines += [
        "## Per network",
        "",
        "Models in *italics* are not in the summary.",
        "",
        "| model | kind | params M (before -> after) | built | costed | forward | channels "
        f"removed | heads removed | layers skipped | {setup['profile']} ms (before -> after) | "
        "build s | cost s | error |",
        "|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in doc["models"]:
        pb, pa = r.get("params_before"), r.get("params_after")
        removed = r.get("channels_removed")
        ch = "-" if removed is None else f"{removed} ({r['channels_removed_fraction']:.0%})"
        err = _first_error(r).replace("|", "/").replace("\n", " ")
        model = r["model"] if r.get("in_summary") else f"*{r['model']}*"
        lines.append(
            f"| {model} | {r['kind']} | {_num(pb and pb / 1e6, '.2f')} -> "
            f"{_num(pa and pa / 1e6, '.2f')} | {_ok(r['built'])} | {_ok(r['costed'])} | "
            f"{_ok(r['forward'])} | {ch} | {_num(r.get('attention_heads_removed'), 'd')} | "
            f"{len(r.get('skipped') or {})} | {_num(r.get('latency_ms_before'), '.3g')} -> "
            f"{_num(r.get('latency_ms_after'), '.3g')} | {_num(r.get('build_seconds'), '.1f')} "
            f"| {_num(r.get('cost_seconds'), '.1f')} | {err[:160]} |"
        )
    reasons: dict[str, int] = {}
    for r in doc["models"]:
        for why in (r.get("skipped") or {}).values():
            key = re.sub(r"\d+", "N", why)[:140]
            reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        lines += ["", "## Why layers were left whole (all networks, numbers as N)", ""]
        lines += ["| layers | reason |", "|---:|---|"]
        for why, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:25]:
            lines.append(f"| {count} | {why.replace('|', '/')} |")
    lines += ["", "## Per family", ""]
    lines += [
        "| family | kind | models | built | pruned | forward |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, f in doc["families"].items():
        lines.append(
            f"| {name} | {f['kind']} | {len(f['models'])} | {len(f['built'])} | "
            f"{len(f['pruned'])} | {len(f['forward'])} |"
        )
    return "\n".join(lines) + "\n"


def write(out: Path, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _stamp.write_text(out / "zoo.json", json.dumps(doc, indent=1) + "\n")
    _stamp.write_text(out / "zoo.md", markdown(doc))


def _progress(i: int, n: int, r: dict[str, Any]) -> str:
    head = f"[{i}/{n}] {r['model']}:"
    if r["errors"]:
        return f"{head} {_first_error(r)[:200]} ({r['wall_seconds']:.0f} s)"
    return (
        f"{head} {r.get('channels_removed', 0)} channels removed, "
        f"{r.get('latency_ms_before', math.nan):.3g} -> {r.get('latency_ms_after', math.nan):.3g} "
        f"ms, plan {r.get('plan_seconds', math.nan):.1f} s ({r['wall_seconds']:.0f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per network")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--profile", default="phone")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--max-params", type=float, default=MAX_PARAMS)
    ap.add_argument("--models", help="comma-separated names (a detection backbone: NAME.backbone)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child: one network, rows on stdout
    args = ap.parse_args(argv)

    if args.one:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

        def emit(row: dict[str, Any]) -> None:
            print(json.dumps(row), flush=True)

        measure_here(args.one, args.size, args.profile, emit)
        return

    stamp = _stamp.start()
    started = time.perf_counter()
    import torch
    import torchvision

    entries = select(args.models, args.quick, args.max_params)
    setup = {
        "size": args.size,
        "profile": args.profile,
        "timeout_s": args.timeout,
        "threads": args.threads,
        "max_params": args.max_params,
        "plan": {
            "lowrank": {"rank_ratio": RANK_RATIO, "layers": "every factorizable layer"},
            "prune": {"global_ratio": PRUNE_RATIO, "importance": "l1"},
            "quantize": {"weight_bits": BITS, "activation_bits": BITS},
        },
        "subset": bool(args.models or args.quick),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    print(f"{len(entries)} networks, {args.timeout:g} s each at most", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for i, e in enumerate(entries, 1):
        r = measure(
            e["model"],
            size=args.size,
            profile=args.profile,
            timeout=args.timeout,
            threads=args.threads,
        )
        r["published_params"] = e["published_params"]
        r["in_summary"] = e["in_summary"]
        rows.append(r)
        print(_progress(i, len(entries), r), file=sys.stderr, flush=True)
        doc = document(rows, entries, setup)
        doc["stamp"] = {
            **_stamp.finish(stamp),
            "seconds": round(time.perf_counter() - started, 1),
            "networks_done": f"{i} of {len(entries)}",
        }
        write(args.out, doc)
    if not rows:
        doc = document(rows, entries, setup)
        doc["stamp"] = {**_stamp.finish(stamp), "seconds": 0.0, "networks_done": "0 of 0"}
        write(args.out, doc)
    print(f"wrote {args.out / 'zoo.json'} and zoo.md", file=sys.stderr)


if __name__ == "__main__":
    main()
