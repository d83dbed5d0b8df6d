"""How long the budget-aware start takes, against one training, on the search-quality task.

The start (search/start.py) is timed in its parts: the sensitivities (`allocate.measure`), the
rest of the network's plans (the allocation checked on the real cost model, the uniform plans,
and the accuracy before training that picks between them), and the students; then each of the
network's start plans is readied and trained once with the recovery search_quality.py gives
every arm, timed the same way, in the same process, one torch thread. Issue 21's target: the
whole start under 10 % of one training. Repeated `--repeats` times, side by side, each from cold
caches (a new objective, no cached graph summary or SVD); medians reported.

Run from the repository root:
    python experiments/benchmarks/start_time.py
Writes experiments/results/start_time.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import search_quality  # this folder is on sys.path when run as a script
import torch

from search import start
from search.compress import clear_svd_cache
from search.config import parse_experiment
from search.hardware.graph import clear_cache
from search.objective import TrialObjective
from search.pipeline import build, prepare, train
from search.study import load_space, load_target
from search.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]

BUDGETS, RECOVERY = search_quality.BUDGETS, search_quality.RECOVERY  # the task it times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    exp = parse_experiment(
        {
            "name": "start-time",
            "task": "gratings",
            "target": "mcu",
            "space": "joint",
            "objectives": ["accuracy", "latency_ms", "weight_bytes"],
            "budgets": dict(BUDGETS),
            "max_accuracy_drop": 0.06,
            "trials": 16,
            "out": str(ROOT / "experiments" / "runs" / "start-time"),
            "recovery": RECOVERY,
        },
        str(Path(__file__).resolve()),
    )
    task = load_task(exp, log=print)
    rows = []
    for r in range(args.repeats):
        # Each repeat is a new study's start: nothing built, costed or factorised before.
        clear_cache()
        clear_svd_cache()
        objective = TrialObjective(exp, task, load_space(exp), load_target(exp))
        t0 = time.perf_counter()
        plans, sens = start.network_plans(objective, log=lambda _m: None)
        t1 = time.perf_counter()
        students = start.student_plans(objective)
        t2 = time.perf_counter()
        trainings = []
        for p in plans:
            t3 = time.perf_counter()
            compressed = build(p.plan, task)
            prepare(compressed, p.plan, task)
            train(compressed, p.plan, task, exp.recovery, seed=r)
            trainings.append(time.perf_counter() - t3)
        row = {
            "sensitivities_s": sens.seconds,
            "network_plans_s": t1 - t0 - sens.seconds,
            "students_s": t2 - t1,
            "start_s": t2 - t0,
            "training_s": statistics.median(trainings),
            "plans": [f"{p.name}: {p.plan.describe()}" for p in [*plans, *students]],
        }
        row["start_over_training"] = row["start_s"] / row["training_s"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "plans"}), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "plans"}
    doc = {
        "stamp": {
            "commit": commit,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
            "command": " ".join(["python", *sys.argv]),
        },
        "median": med,
        "target_start_over_training": 0.1,
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "start_time.json").write_text(json.dumps(doc, indent=1) + "\n")
    st = doc["stamp"]
    md = [
        f"# The budget-aware start against one training (`gratings`, `mcu`, "
        f"{BUDGETS['latency_ms']:g} ms)",
        "",
        f"`{st['command']}` at commit {st['commit']}, {st['date']}; load average "
        f"{st['load_before'][0]} before, {st['load_after'][0]} after; one torch thread.",
        "",
        "| part | median s |",
        "|---|---:|",
        f"| sensitivities (`allocate.measure`) | {med['sensitivities_s']:.2f} |",
        f"| the network's plans: allocated and uniform, picked by accuracy before training | "
        f"{med['network_plans_s']:.2f} |",
        f"| the students (`start.student_plans`) | {med['students_s']:.2f} |",
        f"| the whole start | {med['start_s']:.2f} |",
        f"| one training of a start plan of the network ({RECOVERY['steps']} steps, "
        "search_quality.py's) | "
        f"{med['training_s']:.2f} |",
        f"| **start / training** (target < 0.1) | **{med['start_over_training']:.2f}** |",
        "",
        f"Plans: {'; '.join(rows[0]['plans'])}. {len(rows)} repeats, side by side.",
    ]
    (args.results / "start_time.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
