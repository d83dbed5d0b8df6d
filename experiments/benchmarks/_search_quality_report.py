"""The search-quality benchmark's pages: search_quality.md (`markdown`) and the README's block
(`readme_section`, rewritten in place by `update_readme`), each figure against issue 21's
target (`target_rows`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _search_quality_settings import ARMS, ROOT, SPACES, TARGET, TARGETS


# --- output ------------------------------------------------------------------------------------
def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    return "inf" if v in (math.inf, "inf") else f"{v:.{nd}f}"


def _ci(m: Mapping[str, Any], nd: int = 2) -> str:
    key = "median" if "median" in m else "mean"
    if m[key] is None:
        return "-"
    return f"{_f(m[key], nd)} [{_f(m['ci90'][0], nd)}, {_f(m['ci90'][1], nd)}]"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def target_rows(doc: Mapping[str, Any], space: str) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, met or missed) for one space."""
    s, n = doc[space], len(doc["seeds"])
    trainings = doc["trainings"]
    rows = []
    for other in ("random", "sequential"):
        d = s[f"hv_diff_vs_{other}"]
        won = s[f"seeds_won_vs_{other}"]
        rows.append(
            (
                f"HV auto - {other}: mean paired difference [90 % CI]; seeds won",
                f"{_ci(d)}; {won}/{n}",
                f">= {TARGETS['seeds_won']}/10 won, interval above 0",
                _met(won >= TARGETS["seeds_won"] * n / 10 and d["ci90"][0] > 0),
            )
        )
        r = s[f"hv_ratio_of_means_vs_{other}"]
        goal = TARGETS[f"hv_ratio_of_means_vs_{other}"]
        rows.append((f"HV ratio of means, auto / {other}", _f(r), f">= {goal}", _met(r >= goal)))
    for b, k in s["baselines_dominated"].items():
        goal = TARGETS["baselines_dominated"]
        rows.append(
            (
                f"front dominates `{b}` on test (seeds)",
                f"{k}/{n}",
                f">= {goal}/10",
                _met(k >= goal * n / 10),
            )
        )
    t = s["trainings_to_random_hv"]
    rows.append(
        (
            "trainings auto needs to reach random's final HV (median)",
            f"{_f(t, 1)} of {trainings}",
            f"<= {trainings * TARGETS['trainings_to_random_hv']:.0f}",
            _met(t <= trainings * TARGETS["trainings_to_random_hv"]),
        )
    )
    sp = s["best_speedup_vs_int8_at_1pt"]
    rows.append(
        (
            "speed-up over uniform int8 of the fastest plan within 1 point (val)",
            f"{_ci(sp)}x ({s['seeds_with_pick_at_1pt']}/{n} seeds have one)",
            ">= 2x",
            _met(
                sp["median"] is not None and sp["median"] >= TARGETS["best_speedup_vs_int8_at_1pt"]
            ),
        )
    )
    drop = s["pick_test_drop_pts"]
    rows.append(
        (
            "that plan's test drop (points)",
            _ci(drop),
            "<= 1",
            _met(drop["median"] is not None and drop["median"] <= 1.0),
        )
    )
    return rows


def markdown(doc: Mapping[str, Any]) -> str:
    st, t = doc["stamp"], doc["task"]
    lines = [
        f"# Search quality on the `{t['name']}` task, `{TARGET}` target",
        "",
        f"Commit `{st['commit']}`, {st['date']}; load average before {st['load_before']}, "
        f"after {st['load_after']} ({st['cores']} cores); wall {st['wall_s']:.0f} s.",
        f"Command: `{st['command']}`",
        "",
        f"Task: base {100 * t['base_val_accuracy']:.1f} % val / "
        f"{100 * t['base_test_accuracy']:.1f} % "
        f"test; {t['base_cost']['latency_ms']:.1f} ms ({t['latency_over_budget']:.1f}x the "
        f"{t['budgets']['latency_ms']:g} ms budget), flash {t['flash_over_budget']:.2f}x and SRAM "
        f"{t['sram_over_budget']:.2f}x the board's. Recovery: {t['recovery']}.",
        f"{doc['trainings']} trainings per search; seeds {doc['seeds']}; selection on "
        f"{doc['selection_split']}, figures on test.",
        "",
        "Baselines (one training each; test accuracy median over seeds [90 % CI]): "
        + "; ".join(
            f"`{b}` {v['plan']}: {v['latency_ms']:.2f} ms, {v['weight_bytes'] / 1024:.0f} kB, "
            f"{_ci(doc['baselines_test_accuracy'][b], 3)}"
            for b, v in doc["baselines"].items()
        )
        + f" (bisected prune ratio {doc['baselines']['int8_prune_bisected']['ratio']:.3f}).",
    ]
    for space in SPACES:
        s = doc[space]
        lines += [
            "",
            f"## Space `{space}`",
            "",
            "| figure | value | target | |",
            "|---|---|---|---|",
            *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in target_rows(doc, space)),
            "",
            "Hypervolume per arm, median [90 % CI] (mean): "
            + ", ".join(f"{a} {_ci(s['hv_median'][a])} ({s['hv_mean'][a]:.2f})" for a in ARMS)
            + ".",
            "",
            "| seed | HV auto | HV random | HV sequential | trainings a/r/s | proposals a/r/s | "
            "feasible a/r/s | start plans feasible | trainings to random's HV | "
            "pick (ms, kB, test drop) | "
            + " | ".join(f"{b} margin" for b in s["baselines_dominated"])
            + " |",
            "|---" * (10 + len(s["baselines_dominated"])) + "|",
        ]
        for p in s["per_seed"]:
            hv, pk = p["hv"], p["pick_at_1pt"]
            pick = (
                f"{pk['latency_ms']:.2f}, {pk['weight_bytes'] / 1024:.0f}, "
                f"{p['pick_test_drop_pts']:+.1f}"
                if pk
                else "-"
            )
            margins = " | ".join(
                "-" if v is None else f"{100 * v:+.1f} pt" for v in p["margins"].values()
            )
            tri = "/".join(str(p["trainings"][a]) for a in ARMS)
            pro = "/".join(str(p["proposals"][a]) for a in ARMS)
            fea = "/".join(str(p["feasible"][a]) for a in ARMS)
            lines.append(
                f"| {p['seed']} | {hv['auto']:.2f} | {hv['random']:.2f} | "
                f"{hv['sequential']:.2f} | {tri} | {pro} | {fea} | {p['start_plans_feasible']} | "
                f"{_f(p['trainings_to_random_hv'], 0)} | "
                f"{pick} | {margins} |"
            )
    sens = [p["sensitivity_s"] for p in doc["full"]["per_seed"] if p["sensitivity_s"] is not None]
    if sens:
        lines += [
            "",
            f"Budget-aware start: sensitivities measured in {statistics.median(sens):.1f} s "
            "(median over searches).",
        ]
    lines += ["", *(f"- {n}" for n in doc.get("notes", []))]
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- search_quality: generated by experiments/benchmarks/search_quality.py -->"


README_END = "<!-- /search_quality -->"


def readme_section(doc: Mapping[str, Any]) -> str:
    """The README's figures, rendered from the results file (`--update-readme`)."""
    t, st = doc["task"], doc["stamp"]
    lines = [
        README_BEGIN,
        "`experiments/benchmarks/search_quality.py` compares the joint search with random search,",
        "with the same operators searched one stage at a time, and with hand-made baselines, all",
        f"at {doc['trainings']} trainings, on the hard built-in task (`python -m search run "
        "experiments/gratings_mcu.yaml`): noisy oriented gratings and a filter-bank CNN "
        f"{t['latency_over_budget']:.1f}x the {t['budgets']['latency_ms']:g} ms `{TARGET}` "
        "budget, "
        f"{t['flash_over_budget']:.2f}x its flash and {t['sram_over_budget']:.2f}x its SRAM. "
        f"{len(doc['seeds'])} seeds, selection on validation, figures on test "
        f"([search_quality.md](experiments/results/search_quality.md), commit `{st['commit']}`, "
        f"{st['date']}):",
        "",
        "| figure | full space | without students | target |",
        "|---|---|---|---|",
    ]
    full, nost = target_rows(doc, "full"), target_rows(doc, "no_students")
    by_name = {r[0]: r for r in nost}
    for name, value, goal, met in full:
        other = by_name.get(name)
        lines.append(
            f"| {name} | {value} ({met}) | "
            f"{f'{other[1]} ({other[3]})' if other else '-'} | {goal} |"
        )
    lines += [README_END]
    return "\n".join(lines)


def update_readme(doc: Mapping[str, Any], readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_section(doc) + text[end:])
