"""Does the search pay off? The joint search against random search, a staged search and an
engineer's recipes, at the same number of trainings.

The task: `gratings` (search/tasks/_gratings.py), built in and generated in code: ten classes
of oriented gratings under heavy pixel noise, where a network that loses channels, rank or bits
loses accuracy gradually (the digits task is saturated). The base network is a filter-bank CNN:
66 ms on the calibrated `mcu` profile (STM32F746), 1.7 MB of float32 weights (the board has
1 MB of flash) and 369 kB of activations (it has 320 kB of SRAM). The budget is 20 ms, so even
uniform int8 (35 ms) is far over: a plan must also shed half the network's work. (In a
one-seed trial run at 10 ms no plan of the network itself stayed within 6 points after a
short recovery: every arm scored 0 without students.)

Method (issue 21), per space and seed, every arm on the same space and the same number of
trainings (`--trainings`, 16): a training is a plan trained (or stopped early); a proposal the
cost model puts over budget is never trained and never counted (search/study.py).
* `auto`: the product default: the budget-aware start (search/allocate.py), then the `auto`
  sampler.
* `random`: random proposals, the same rejection, no start plans (its own seed stream).
* `sequential`: the same operators one stage at a time (architecture, then low-rank, then
  pruning, then bit widths; without students the first is left out), each stage an equal share
  of the trainings on the previous stage's pick: the fastest trained plan within the accuracy
  tolerance. Budgets other than accuracy apply at the last stage only.
* hand baselines, each one training with the search's own recovery: uniform int8 with QAT;
  int8 with one uniform L1 prune ratio bisected on the cost model to meet the latency budget
  (what an engineer would do); a hand-picked int8 MobileNetV2 w0.5 student with distillation.
Two spaces: `full` (spaces/joint.yaml) and `no_students` (the same without the architecture
section: compressing the given network only). Recovery is short (step budgets below) so that
the whole run fits the 2-core machine in under 100 minutes; every arm gets the same.

Hypervolume (HV): each feasible trained plan (validation accuracy) is the point (accuracy drop
in points, log2(latency / latency budget), log2(weight bytes / flash left for weights)), the
reference at the budget corner (max drop, 0, 0): a plan exactly at the budgets adds nothing.
Selection is on validation; the front's plans are then scored on test for the figures a user
would quote (dominance of the baselines, the pick's test drop). Statistics over seeds: the
paired HV difference auto minus each other arm, its mean with a 90 % bootstrap interval
(seeds resampled), the seeds auto won, the ratio of mean HVs, and per seed the trainings auto
needed to reach the other arm's final HV.

Run from the repository root (the results file says how long it took):
    nice python experiments/benchmarks/search_quality.py
Smoke run (minutes): `--task digits --trainings 4 --seeds 0 --results /tmp/x`.
Writes experiments/results/search_quality.{json,md}; studies stay in experiments/runs/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import _search_quality_settings as settings  # this folder is on sys.path when run as a script
from _search_quality_arms import experiment, unit
from _search_quality_report import markdown, readme_section, update_readme
from _search_quality_settings import (
    ARMS,
    BASELINES,
    BUDGETS,
    MAX_DROP,
    RECOVERY,
    ROOT,
    SEEDS,
    SPACES,
    STAGES,
    TARGET,
    TRAININGS,
)
from _search_quality_stats import (
    bisect_ratio,
    budget_hypervolume,
    dominance_margin,
    hv_curve,
    hv_point,
    median_ci,
    paired,
    pareto_rows,
    pick_on_val,
    ratio,
    trainings_to_reach,
)

from search.files import jsonable

# What other code reads as search_quality.<name>: early_stop.py and start_time.py the
# settings, the tests the figures.
__all__ = [
    "BUDGETS",
    "MAX_DROP",
    "RECOVERY",
    "bisect_ratio",
    "budget_hypervolume",
    "dominance_margin",
    "hv_curve",
    "hv_point",
    "main",
    "median_ci",
    "paired",
    "pareto_rows",
    "pick_on_val",
    "ratio",
    "readme_section",
    "trainings_to_reach",
]

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


# --- analysis ----------------------------------------------------------------------------------
def analyse(done: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    from search.hardware import load_profile

    by = {(d["kind"], d["space"], d["seed"]): d for d in done}
    base = by[("baselines", "-", seeds[0])]["baselines"]["fp32_base"]
    prof = load_profile(TARGET)
    budgets = {
        "latency_ms": BUDGETS["latency_ms"],
        "weight_bytes": (prof.budgets["flash_kb"] - prof.runtime_flash_kb) * 1024,
    }
    # The searches' base accuracy: the whole validation split.
    base_val, base_test = base["val_accuracy"], base["test_accuracy"]
    doc: dict[str, Any] = {"selection_split": "val", "seeds": list(seeds)}
    for space in SPACES:
        in_space = BASELINES if space == "full" else BASELINES[:2]
        per_seed = []
        for s in seeds:
            arms = {a: by[(a, space, s)] for a in ARMS}
            hv = {a: budget_hypervolume(arms[a]["rows"], base_val, budgets) for a in ARMS}
            curve = hv_curve(arms["auto"]["rows"], base_val, budgets)
            bl = by[("baselines", "-", s)]["baselines"]
            front = arms["auto"]["front"]
            pick = pick_on_val(front, base_val)
            per_seed.append(
                {
                    "seed": s,
                    "hv": hv,
                    "trainings": {a: sum(r["counted"] for r in arms[a]["rows"]) for a in ARMS},
                    "proposals": {a: arms[a]["proposals"] for a in ARMS},
                    "feasible": {a: sum(r["feasible"] for r in arms[a]["rows"]) for a in ARMS},
                    "auto_hv_curve": curve,
                    "trainings_to_random_hv": trainings_to_reach(curve, hv["random"]),
                    "trainings_to_sequential_hv": trainings_to_reach(curve, hv["sequential"]),
                    "sensitivity_s": arms["auto"].get("sensitivity_s"),
                    "start_plans_feasible": sum(
                        r["feasible"]
                        for r in arms["auto"]["rows"]
                        if (r["recipe"] or "").startswith("budget fit")
                    ),
                    "margins": {b: dominance_margin(front, bl[b]) for b in in_space},
                    "pick_at_1pt": pick and {k: pick[k] for k in _PICK_KEYS},
                    "pick_test_drop_pts": pick and 100 * (base_test - pick["test_accuracy"]),
                    "speedup_vs_int8_at_1pt": pick
                    and bl["int8_qat"]["latency_ms"] / pick["latency_ms"],
                    "sequential_picks": arms["sequential"]["picks"],
                    "front": [{k: r[k] for k in _PICK_KEYS} for r in front],
                    "wall_s": {a: arms[a]["wall_s"] for a in ARMS},
                }
            )
        hvs = {a: [p["hv"][a] for p in per_seed] for a in ARMS}
        vs_r, vs_s = paired(hvs["auto"], hvs["random"]), paired(hvs["auto"], hvs["sequential"])
        to_random = [p["trainings_to_random_hv"] for p in per_seed]
        doc[space] = {
            "hv_median": {a: median_ci(hvs[a]) for a in ARMS},
            "hv_mean": {a: statistics.fmean(hvs[a]) for a in ARMS},
            "hv_diff_vs_random": vs_r["hv_diff"],
            "hv_diff_vs_sequential": vs_s["hv_diff"],
            "seeds_won_vs_random": vs_r["seeds_won"],
            "seeds_won_vs_sequential": vs_s["seeds_won"],
            "seeds_lost_vs_random": vs_r["seeds_lost"],
            "seeds_lost_vs_sequential": vs_s["seeds_lost"],
            "hv_ratio_of_means_vs_random": vs_r["hv_ratio_of_means"],
            "hv_ratio_of_means_vs_sequential": vs_s["hv_ratio_of_means"],
            "baselines_dominated": {
                b: sum(p["margins"][b] is not None and p["margins"][b] >= 0 for p in per_seed)
                for b in in_space
            },
            "trainings_to_random_hv": statistics.median(to_random),
            "best_speedup_vs_int8_at_1pt": median_ci(
                [p["speedup_vs_int8_at_1pt"] for p in per_seed]
            ),
            "pick_test_drop_pts": median_ci([p["pick_test_drop_pts"] for p in per_seed]),
            "seeds_with_pick_at_1pt": sum(p["pick_at_1pt"] is not None for p in per_seed),
            "per_seed": per_seed,
        }
    first = by[("baselines", "-", seeds[0])]["baselines"]
    doc["baselines"] = {
        b: {k: first[b][k] for k in ("plan", "latency_ms", "weight_bytes")} for b in BASELINES
    }
    doc["baselines"]["int8_prune_bisected"]["ratio"] = first["bisected_ratio"]
    doc["baselines_test_accuracy"] = {
        b: median_ci([by[("baselines", "-", s)]["baselines"][b]["test_accuracy"] for s in seeds])
        for b in BASELINES
    }
    doc["trainings"] = max(p["trainings"]["auto"] for p in doc["full"]["per_seed"])
    doc["task"] = {
        "name": settings.TASK,
        "base_val_accuracy": base_val,
        "base_test_accuracy": base_test,
        "base_cost": {
            k: base[k]
            for k in ("latency_ms", "weight_bytes", "memory_bytes", "flash_bytes", "macs")
        },
        "budgets": {
            **BUDGETS,
            "memory_kb": prof.budgets["memory_kb"],
            "flash_kb": prof.budgets["flash_kb"],
        },
        "latency_over_budget": base["latency_ms"] / BUDGETS["latency_ms"],
        "flash_over_budget": base["flash_bytes"] / 1024 / prof.budgets["flash_kb"],
        "sram_over_budget": base["memory_bytes"] / 1024 / prof.budgets["memory_kb"],
        "recovery": RECOVERY,
    }
    return doc


_PICK_KEYS = (
    "number",
    "plan_text",
    "latency_ms",
    "weight_bytes",
    "accuracy",
    "val_accuracy",
    "test_accuracy",
)


def git_commit() -> str:
    """HEAD when the run started, marked dirty when the code it runs differs from it."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--",
            "search",
            "spaces",
            "experiments/benchmarks",
            "hardware_profiles",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def stamp(commit: str, load_before: Sequence[float], wall: float) -> dict[str, Any]:
    return {
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "cores": os.cpu_count(),
        "wall_s": wall,
        "command": " ".join(["python", *sys.argv]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainings", type=int, default=TRAININGS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--task", default=settings.TASK, help="smoke runs may use `digits`")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "experiments" / "runs" / "sq")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--cache", type=Path, default=None, help="base-model cache folder")
    parser.add_argument("--reanalyse", action="store_true", help="figures from the last raw.json")
    parser.add_argument(
        "--update-readme", action="store_true", help="rewrite README's block from the results"
    )
    args = parser.parse_args()
    if args.trainings < len(STAGES):  # the sequential arm trains at least once per stage
        parser.error(f"--trainings must be at least {len(STAGES)}, got {args.trainings}")
    raw = args.work / "raw.json"
    settings.TASK = args.task
    if args.update_readme:
        update_readme(json.loads((args.results / "search_quality.json").read_text()))
        return
    if args.reanalyse:
        saved = json.loads(raw.read_text())
        write(args, saved["done"], saved["stamp"])
        return
    load_before = os.getloadavg()
    commit = git_commit()
    shutil.rmtree(args.work / "runs", ignore_errors=True)
    common = {
        "work": str(args.work / "runs"),
        "cache": str(args.cache or args.work / "cache"),
        "trainings": args.trainings,
        "task": args.task,
    }
    # Train the base model once, before the workers share its cache.
    os.environ["COMPRESS_SEARCH_CACHE"] = common["cache"]
    import torch

    from search.tasks import load_task

    torch.set_num_threads(1)  # two threads on a shared machine spin far more than they gain
    load_task(
        experiment("base", args.work / "base", space=str(ROOT / "spaces/joint.yaml")), log=log
    )
    # Seed by seed, so that whole seeds are done early (--reanalyse uses complete seeds).
    units = [
        u
        for s in args.seeds
        for u in (
            {**common, "kind": "baselines", "space": "-", "seed": s},
            *({**common, "kind": k, "space": sp, "seed": s} for sp in SPACES for k in ARMS),
        )
    ]
    done: list[dict[str, Any]] = []
    st = stamp(commit, load_before, 0.0)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(unit, u) for u in units]
        for f in as_completed(futures):
            r = f.result()
            done.append(r)
            log(
                f"{r['kind']} {r['space']} s{r['seed']}: {r['wall_s']:.0f} s "
                f"({len(done)}/{len(units)})"
            )
            st = stamp(commit, load_before, time.perf_counter() - _T0)
            raw.write_text(json.dumps(jsonable({"done": done, "stamp": st}, inf="inf")))
    write(args, done, st)


def write(args: argparse.Namespace, done: list[dict[str, Any]], st: dict[str, Any]) -> None:
    have = {(d["kind"], d["space"], d["seed"]) for d in done}
    need = [("baselines", "-")] + [(k, sp) for sp in SPACES for k in ARMS]
    seeds = [s for s in args.seeds if all((k, sp, s) in have for k, sp in need)]  # complete seeds
    doc = {**analyse(done, seeds), "stamp": st, "notes": args.note}
    args.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(doc, inf="inf"), indent=1) + "\n"
    (args.results / "search_quality.json").write_text(text)
    (args.results / "search_quality.md").write_text(markdown(doc))
    log(f"wrote {args.results}/search_quality.{{json,md}}")


if __name__ == "__main__":
    main()
