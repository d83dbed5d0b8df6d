"""The device benchmark's pages: devices.md (`markdown`) and the README's hardware table
(`readme_section`, rewritten in place by `update_readme`), both rendered from devices.json."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from search.hardware import load_profile

REPO = Path(__file__).resolve().parents[2]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def markdown(result: dict[str, Any]) -> list[str]:
    md = [
        "# Device benchmark: predicted vs published latency",
        "",
        f"`{result['setup']['command']}` at commit {result['setup']['git_commit']}, "
        f"{result['setup']['date']}; load average {result['setup']['load_avg_before']} before, "
        f"{result['setup']['load_avg_after']} after.",
        "",
        "Each profile is fitted (`fit_device`: one free MAC rate; depthwise and linear ratios, "
        "overheads and, on MCUs, the per-output overhead pulled towards the starting figures "
        "in `search.hardware.fit.FIT_STARTS`) to the published rows of its own "
        "runtime, read through `read_measurements`. LOO: each row is predicted by a fit "
        "without its network.",
        "",
        "| profile | runtime | rows | networks | within 20 % | within 25 % | within 30 % | "
        "MAPE | p90 error | Spearman |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sec in result["profiles"].items():
        rho = sec.get("spearman_loo")
        md.append(
            f"| {name} | {sec['runtime'].get('name', '')} | {len(sec['rows'])} | "
            f"{sec['networks']} | {_pct(sec['within_20pct_loo'])} | "
            f"{_pct(sec['within_25pct_loo'])} | {_pct(sec['within_30pct_loo'])} | "
            f"{_pct(sec['mape_loo'])} | {_pct(sec['p90_abs_error_loo'])} | "
            f"{'-' if rho is None else f'{rho:.2f}'} |"
        )
    host = result["host"]
    if "p90_abs_error" in host:
        md.append(
            f"| host | ONNX Runtime CPU | {host['rows']} | {host['rows']} | "
            f"{_pct(host['within_20pct'])} | | | {_pct(host['mape'])} | "
            f"{_pct(host['p90_abs_error'])} | (predictor.md) |"
        )
    md += ["", "Targets: MCU profiles >= 80 % within +-20 %; phone, phone_npu and the TensorRT"]
    md += ["profiles >= 70 % within +-25 % and Spearman >= 0.9 (all leave-one-network-out).", ""]
    for name, sec in result["profiles"].items():
        f = sec["fitted"]
        md += [f"## {name}: {sec['runtime'].get('name', '')} {sec['runtime'].get('version', '')}"]
        md += [""]
        if sec.get("note"):
            md += [f"Note: {sec['note']}.", ""]
        eff = ", ".join(f"{k} {v:.3g}" for k, v in f["efficiency"].items())
        md += [
            f"Fitted: efficiency {eff}; layer overhead {f['layer_overhead_us']['conv']:g} us "
            f"(conv); per inference {f['model_overhead_us']:g} us"
            + (
                f"; cycles/MAC conv {f['cycles_per_mac']['conv']}, dwconv "
                f"{f['cycles_per_mac']['dwconv']}, linear {f['cycles_per_mac']['linear']}"
                if f.get("cycles_per_mac")
                else ""
            )
            + ".",
            "",
        ]
        if sec["metric_offsets_ms"]:
            offsets = ", ".join(f"{m}: {v:+.3g} ms" for m, v in sec["metric_offsets_ms"].items())
            md += [
                f"Figures are those of `{sec['reference_metric']}` (the metric with most rows); "
                f"the other sources' fitted offsets: {offsets}.",
                "",
            ]
        md += [
            "| network | bits | board | metric | published ms | predicted ms (LOO) | ratio "
            "| source |",
            "|---|---:|---|---|---:|---:|---:|---|",
        ]
        for r in sec["rows"]:
            pred = (
                r["predicted_loo"] if r["predicted_loo"] is not None else r["predicted_full_fit"]
            )
            ratio = r["ratio"] if r["ratio"] is not None else pred / r["published"]
            md.append(
                f"| {r['network']} | {r['precision_bits']} | {r['board'][:28]} | "
                f"{r['metric_kind'] or '-'} | {r['published']:g} | {pred:.4g} | {ratio:.2f} | "
                f"{r['source']} |"
            )
        if sec["checks"]:
            md += ["", "Checks (not fitted; predicted by the full fit):", ""]
            md += [
                "| network | bits | board | runtime | published ms | predicted ms | ratio | "
                "why not fitted | source |"
            ]
            md += ["|---|---:|---|---|---:|---:|---:|---|---|"]
            for r in sec["checks"]:
                md.append(
                    f"| {r['network']} | {r['precision_bits']} | {r['board'][:28]} | "
                    f"{r['runtime'][:40]} | {r['published']:g} | {r['predicted']:.4g} | "
                    f"{r['ratio']:.2f} | {r['why_not_fitted']} | {r['source']} |"
                )
        if sec["excluded"]:
            md += [
                "",
                "Left out: " + "; ".join(f"{e['model']} ({e['why']})" for e in sec["excluded"]),
            ]
        md += [""]
    md += ["## Published rows no profile models", ""]
    md += ["| model | board | runtime | published ms | why | source |"]
    md += ["|---|---|---|---:|---|---|"]
    for r in result["unassigned"]:
        md.append(
            f"| {r['model'][:40]} | {r['board'][:32]} | {r['runtime'][:40]} | "
            f"{r['published']:g} | {r['why']} | {r['source']} |"
        )
    md += [""]
    return md


README_BEGIN = "<!-- devices: generated by experiments/benchmarks/devices.py -->"


README_END = "<!-- /devices -->"


def _short(text: str) -> str:
    """A profile's device or runtime in a few words: its text up to the first '(' or ','."""
    return re.split(r" \(|, ", text.strip())[0]


def readme_section(result: dict[str, Any]) -> str:
    """The README's hardware table, rendered from the results file (`--update-readme`)."""
    setup = result["setup"]
    lines = [
        README_BEGIN,
        f"[devices.md](experiments/results/devices.md) at commit `{setup['git_commit']}`:",
        "",
        "<!-- profiles -->",
        "| profile | device | runtime | rows (networks) | within 20 % | within 25 % | Spearman |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    host = result["host"]
    sections = {**result["profiles"], "host": host}
    for name in sorted(sections):
        sec = sections[name]
        if name == "host":
            device, runtime = "this machine", "ONNX Runtime (CPU)"
            count, w20, w25, rho = (
                f"{host['rows']} ({host['rows']})",
                host["within_20pct"],
                host["within_25pct"],
                None,
            )
        else:
            profile = load_profile(name)
            device, runtime = profile.description, (profile.runtime or {}).get("name", "")
            count = f"{len(sec['rows'])} ({sec['networks']})"
            w20, w25, rho = sec["within_20pct_loo"], sec["within_25pct_loo"], sec["spearman_loo"]
        lines.append(
            f"| `{name}` | {_short(device)} | {_short(runtime)} | {count} | {_pct(w20)} | "
            f"{_pct(w25)} | {'-' if rho is None else f'{rho:.2f}'} |"
        )
    lines += ["<!-- /profiles -->", README_END]
    return "\n".join(lines)


def update_readme(result: dict[str, Any], readme: Path = REPO / "README.md") -> None:
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_section(result) + text[end:])
