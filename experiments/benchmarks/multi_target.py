"""One study for several devices vs one study per device: trainings saved at equal quality.

On the digits quickstart (its space, objectives, recovery and accuracy floor; each target's own
profile budgets, since an experiment-level budget would apply to every device alike) it runs,
per seed:

* **separate**: one single-target study per device (`--target mcu`, `--target phone`,
  `--target cloud_gpu`), each with `--trials N`;
* **multi**: one study for all three (`--targets mcu,phone,cloud_gpu`), run to `--multi-trials
  M` (default 2N). Its hypervolume per device is read at trial N (every device has then seen N
  costed plans, as in its own study) and at M.

For each device it compares the hypervolume of that device's front (`search.review`'s
definition, the same scales and reference in both arms) and counts training runs (trials
trained or stopped early: the expensive part). It also reads the multi study's hypervolume
history to find how many of its trials (and trainings) it needed to reach each separate
study's final hypervolume ("never" if it did not within M), and counts per device the trained
plans that are infeasible there because they use a bit width the device has no kernel for.

Run from the repository root:
    python experiments/benchmarks/multi_target.py [--trials 16] [--multi-trials 32]
        [--seeds 0 1]
Writes experiments/results/multi_target.json and multi_target.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from search.config import load_experiment
from search.record import TrialStatus
from search.review import RunData, load_run
from search.study import run_search
from search.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]

TARGETS = ("mcu", "phone", "cloud_gpu")
RESULTS = ROOT / "experiments" / "results"
TRAINED = (TrialStatus.TRAINED, TrialStatus.STOPPED_EARLY)  # statuses that cost a training run


def _git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def _study(root: Path, label: str, seed: int, trials: int, **target: str) -> tuple[RunData, float]:
    exp = load_experiment("quickstart").with_overrides(
        trials=trials, seed=seed, out=str(root / f"{label}-s{seed}"), **target
    )
    exp = replace(exp, name=f"{label}-s{seed}", budgets={})  # each profile's own budgets
    started = time.perf_counter()
    result = run_search(exp, progress=False, log=lambda _m: None)
    return load_run(result.storage_url, exp.name), time.perf_counter() - started


def _trainings(run: RunData, upto: int | None = None) -> int:
    return sum(t.status in TRAINED for t in run.trials if upto is None or t.number <= upto)


def _nth_plan(run: RunData, n: int) -> int:
    """The number of the trial that completed the study's n-th evaluated plan (repeats and
    enqueued recipes still waiting do not count, as in `--trials`)."""
    done = [
        t.number for t in run.trials if t.state == "COMPLETE" and t.status != TrialStatus.DUPLICATE
    ]
    return done[min(n, len(done)) - 1]


def _hv_at(view: RunData, upto: int) -> float:
    """The hypervolume of the trials numbered up to `upto`."""
    return max((hv for n, hv in view.hypervolume_history if n <= upto), default=0.0)


def one_seed(root: Path, seed: int, trials: int, multi_trials: int) -> dict[str, Any]:
    separate: dict[str, Any] = {}
    for target in TARGETS:
        run, wall = _study(root, target, seed, trials, target=target)
        separate[target] = {
            "hypervolume": run.hypervolume,
            "trainings": _trainings(run),
            "trials": sum(t.state == "COMPLETE" for t in run.trials),
            "wall_s": round(wall, 1),
        }
    multi, wall = _study(root, "multi", seed, multi_trials, targets=",".join(TARGETS))
    per_target = {}
    for target, view in multi.views.items():
        goal = separate[target]["hypervolume"]
        reached = next((n for n, hv in view.hypervolume_history if hv >= goal * (1 - 1e-9)), None)
        at_n = _hv_at(view, _nth_plan(multi, trials))  # as many plans as its own study
        per_target[target] = {
            "hypervolume_at_n": at_n,
            "hv_ratio_vs_separate": at_n / goal if goal > 0 else None,
            "hypervolume": view.hypervolume,
            "hv_ratio_vs_separate_at_m": view.hypervolume / goal if goal > 0 else None,
            "trained_infeasible_bits": sum(
                t.trained and t.constraints.get("bits", 0) > 0 for t in view.trials
            ),
            "feasible": view.counts()["feasible"],
            "trials_to_separate_hv": None if reached is None else reached + 1,
            "trainings_to_separate_hv": None if reached is None else _trainings(multi, reached),
            "front": len(view.front),
        }
    sep_trainings = sum(s["trainings"] for s in separate.values())
    return {
        "seed": seed,
        "separate": separate,
        "separate_trainings": sep_trainings,
        "separate_wall_s": round(sum(s["wall_s"] for s in separate.values()), 1),
        "multi": per_target,
        "multi_trainings_at_n": _trainings(multi, _nth_plan(multi, trials)),
        "multi_trainings": _trainings(multi),
        "multi_trials": sum(t.state == "COMPLETE" for t in multi.trials),
        "multi_wall_s": round(wall, 1),
        "trainings_saved_at_n": sep_trainings - _trainings(multi, _nth_plan(multi, trials)),
    }


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "separate_trainings": _median([s["separate_trainings"] for s in seeds]),
        "multi_trainings_at_n": _median([s["multi_trainings_at_n"] for s in seeds]),
        "multi_trainings": _median([s["multi_trainings"] for s in seeds]),
        "trainings_ratio_separate_over_multi_at_n": _median(
            [s["separate_trainings"] / max(1, s["multi_trainings_at_n"]) for s in seeds]
        ),
        "separate_wall_s": _median([s["separate_wall_s"] for s in seeds]),
        "multi_wall_s_at_m": _median([s["multi_wall_s"] for s in seeds]),
        "per_target": {},
    }
    for target in TARGETS:
        rows = [s["multi"][target] for s in seeds]
        out["per_target"][target] = {
            "separate_hypervolume": _median([s["separate"][target]["hypervolume"] for s in seeds]),
            "multi_hypervolume_at_n": _median([r["hypervolume_at_n"] for r in rows]),
            "hv_ratio_vs_separate": _median([r["hv_ratio_vs_separate"] for r in rows]),
            "hv_ratio_vs_separate_at_m": _median([r["hv_ratio_vs_separate_at_m"] for r in rows]),
            "trained_infeasible_bits": _median([r["trained_infeasible_bits"] for r in rows]),
            "reached_separate_hv": sum(r["trials_to_separate_hv"] is not None for r in rows),
            "trainings_to_separate_hv": _median([r["trainings_to_separate_hv"] for r in rows]),
            "separate_trainings": _median([s["separate"][target]["trainings"] for s in seeds]),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    s, m = result["setup"], result["median"]
    n = len(result["seeds"])
    lines = [
        "# One study for several devices vs one study per device",
        "",
        f"`{s['command']}` at commit {s['git_commit']}, {s['date']}; load average "
        f"{s['load_avg_before']} before, {s['load_avg_after']} after; {s['cpu_count']} cores, "
        f"torch threads {s['torch_threads']}.",
        "",
        f"Digits quickstart, N = {s['trials']} trials per single-target study, the multi-target "
        f"study run to M = {s['multi_trials']}; targets {', '.join(TARGETS)}, each with its "
        f"profile's budgets; medians over {n} seed(s) {s['seeds']}.",
        "",
        f"- Training runs: three separate studies {_f(m['separate_trainings'])} in all; the "
        f"multi-target study {_f(m['multi_trainings_at_n'])} at N trials "
        f"({_f(m['trainings_ratio_separate_over_multi_at_n'])}x fewer), {_f(m['multi_trainings'])}"
        f" at M. Wall time: separate {_f(m['separate_wall_s'])} s, multi to M "
        f"{_f(m['multi_wall_s_at_m'])} s.",
        "",
        "| target | separate HV (N) | multi HV at N | multi / separate at N | at M | seeds where "
        "multi reached separate HV | multi trainings to reach it | separate study's trainings "
        "| multi: trained plans with bits the target lacks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, r in m["per_target"].items():
        lines.append(
            f"| {target} | {_f(r['separate_hypervolume'])} | {_f(r['multi_hypervolume_at_n'])} | "
            f"{_f(r['hv_ratio_vs_separate'])} | {_f(r['hv_ratio_vs_separate_at_m'])} | "
            f"{r['reached_separate_hv']}/{n} | {_f(r['trainings_to_separate_hv'])} | "
            f"{_f(r['separate_trainings'])} | {_f(r['trained_infeasible_bits'])} |"
        )
    lines += [
        "",
        "HV: the report's hypervolume of that target's feasible front (objectives normalised "
        'by the base model on that target, reference 1.0). "trainings to reach it": training '
        "runs the multi-target study had spent when its front on that target first reached the "
        "separate study's final HV (median over the seeds that reached it).",
        "",
    ]
    return "\n".join(lines)


def _f(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--multi-trials", type=int, help="default: 2 x --trials")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=str(RESULTS / "multi_target"))
    args = ap.parse_args()
    multi_trials = args.multi_trials or 2 * args.trials
    torch.set_num_threads(1)
    load_before = round(os.getloadavg()[0], 2)
    command = "python experiments/benchmarks/multi_target.py " + " ".join(sys.argv[1:])
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("COMPRESS_SEARCH_CACHE", str(Path(tmp) / "cache"))
        # The base model trains once, here, outside every study's wall time.
        load_task(load_experiment("quickstart").with_overrides(out=tmp), log=lambda _m: None)
        for seed in args.seeds:
            seeds.append(one_seed(Path(tmp), seed, args.trials, multi_trials))
            print(json.dumps(seeds[-1]), flush=True)
    result = {
        "setup": {
            "command": command.strip(),
            "git_commit": _git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_avg_before": load_before,
            "load_avg_after": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "trials": args.trials,
            "multi_trials": multi_trials,
            "seeds": args.seeds,
            "targets": list(TARGETS),
        },
        "median": summarise(seeds),
        "seeds": seeds,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
