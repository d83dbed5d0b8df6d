"""The zoo benchmark's figures and page: the summary over a group of rows against the issue's
targets (`group_summary`, `targets_met`), per family, the results document and zoo.md."""

from __future__ import annotations

import re
import statistics
from typing import Any

import _stamp
from _zoo_networks import HEAD_RATIO, NEXT_PRUNE_RATIO, PRUNE_RATIO, RANK_RATIO, SQUARE_RANK_RATIO

TARGETS = {
    "built_fraction": 1.0,
    "pruned_fraction": 0.95,
    "max_plan_seconds": 10.0,
    "median_plan_seconds": 3.0,
}
STAGES = ("model", "base_cost", "plan", "cost", "forward", "next_plan")


def group_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    plan_s = [r["plan_seconds"] for r in rows if r.get("plan_seconds") is not None]
    first_s = [r["first_plan_seconds"] for r in rows if r.get("first_plan_seconds") is not None]
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
        "max_first_plan_seconds": max(first_s) if first_s else None,
        "median_first_plan_seconds": round(statistics.median(first_s), 3) if first_s else None,
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
        "median_plan_seconds": s["median_plan_seconds"] is not None
        and s["median_plan_seconds"] <= TARGETS["median_plan_seconds"],
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
            f.setdefault("failed", {})[r["model"]] = first_error(r)
    return dict(sorted(out.items()))


def first_error(r: dict[str, Any]) -> str:
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
        f"Plan: low-rank (SVD) at rank ratio {RANK_RATIO} on every factorizable layer "
        f"({SQUARE_RANK_RATIO} on an attention block's square q/k/v/out projections), global "
        f"L1 structured pruning {PRUNE_RATIO:.0%}, {HEAD_RATIO:.0%} of each attention block's "
        "heads, int8 weights and activations "
        f"(`compress`); costed on `{setup['profile']}` at {setup['size']} x {setup['size']} "
        f"(SSD300's backbone at 300), random weights. Each network in its own process, "
        f"{setup['timeout_s']:g} s at most; torch threads: {setup['threads'] or 'default'}. "
        "Plan seconds = build (layers, plan, `compress`) + cost of the result, for a study's "
        f"next plan: the same plan at {NEXT_PRUNE_RATIO:.0%} pruning, built in the same "
        "process after the first, so it finds the SVDs the first computed (a study computes "
        "them once). First plan seconds include them.",
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
        f"| median_plan_seconds | {_num(s['median_plan_seconds'], '.1f')} | <= 3 | "
        f"{'met' if met['median_plan_seconds'] else 'missed'} |",
        f"| first plan: max / median seconds | {_num(s['max_first_plan_seconds'], '.1f')} / "
        f"{_num(s['median_first_plan_seconds'], '.1f')} | | |",
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
        "first plan s | plan s (build + cost) | error |",
        "|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in doc["models"]:
        pb, pa = r.get("params_before"), r.get("params_after")
        removed = r.get("channels_removed")
        ch = "-" if removed is None else f"{removed} ({r['channels_removed_fraction']:.0%})"
        err = first_error(r).replace("|", "/").replace("\n", " ")
        model = r["model"] if r.get("in_summary") else f"*{r['model']}*"
        lines.append(
            f"| {model} | {r['kind']} | {_num(pb and pb / 1e6, '.2f')} -> "
            f"{_num(pa and pa / 1e6, '.2f')} | {_ok(r['built'])} | {_ok(r['costed'])} | "
            f"{_ok(r['forward'])} | {ch} | {_num(r.get('attention_heads_removed'), 'd')} | "
            f"{len(r.get('skipped') or {})} | {_num(r.get('latency_ms_before'), '.3g')} -> "
            f"{_num(r.get('latency_ms_after'), '.3g')} | "
            f"{_num(r.get('first_plan_seconds'), '.1f')} | {_num(r.get('plan_seconds'), '.1f')} "
            f"({_num(r.get('build_seconds'), '.1f')} + {_num(r.get('cost_seconds'), '.1f')}) | "
            f"{err[:160]} |"
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
