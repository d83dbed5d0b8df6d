"""Does the search pay off? Joint auto search vs random, vs sequential, vs hand-made baselines.

The task: `gratings` (search/tasks/_gratings.py), built in and generated in code. Ten classes
of oriented gratings (five orientations x two frequencies) under heavy pixel noise, a weaker
distractor grating of another class, random phase, contrast and tint, and 6 % label noise in
every split: telling neighbouring orientations apart needs many oriented filters and averaging
over the whole image, so a network that loses channels, rank or bits loses accuracy
gradually instead of all at once (the digits task is saturated: almost every plan scores
0.97-0.99). Fresh random draws per sample are the augmentation; 4,000 training images of
3x16x16 keep a recovery epoch near a second on one core. The base network is a filter-bank
CNN: 288 3x3 filters at full resolution, ReLU and 2x2 max-pool (the front end of texture and
orientation classifiers), a 1x1 conv down to 32 channels, six 3x3 conv blocks and a
1024-256-10 head: 6.3 M MACs, 66 ms on the calibrated `mcu` profile (STM32F746), 1.7 MB of
float32 weights (the board has 1 MB of flash) and 369 kB of float32 activations at the
max-pool (the bank's map and its pooled copy; the board has 320 kB of SRAM, and TFLite Micro's
arena for it is checked in devices.md). The bank has no norm layer: its full-size map is what
training spends most on. The benchmark's budget is 10 ms (100 fps), so uniform int8 (~35 ms)
is still far over and a plan must shed most of its work; the spaces' per-layer choices on its
ten layers are 29 decisions (bits on 10 layers, rank on 10, prune on 9) besides the shared ones.

Method (issue 15), per seed (5 seeds, 40 trials per search; recovery 2 epochs, students 3):
* `auto`: the default sampler, no warm start, then the refine stage (top 2 of the front
  re-trained for the refine budget: 6 epochs, students 9); `random`: the same, random
  sampler, no refine. Warm-started `auto` (the product's default) is an optional arm
  (`--warm-seeds`), reported apart.
* `sequential`: the same operators one stage at a time (architecture, then low-rank, then
  pruning, then bit widths), each stage a quarter of the trial budget on the previous stage's
  pick (the fastest plan within the accuracy tolerance; budgets other than accuracy apply at
  the last stage), all its trials judged against the final budgets.
* baselines, trained on their own for the refine budget and never enqueued in any search:
  uniform int8 with quantization-aware training, int8 + 50 % L1 channel pruning, and a
  hand-picked int8 MobileNetV2 student (width 0.5) with distillation.
* `halving`: successive halving of recovery inside the study (`HalvingObjective`): every
  plan gets half its recovery, and only those in the top third of the half-way accuracies
  seen so far get the rest; run for the same wall time as `auto`'s search.
Hypervolume: each feasible trial (validation accuracy) is the point (accuracy drop in
points, log2(latency / latency budget), log2(weight bytes / flash left for weights)) with the
reference at the budget corner (max drop, 0, 0): a plan exactly at the budgets adds nothing.
Selection is on validation, figures a user would quote are on test: the front's points
(refined weights where refined) are scored on the test split. Ratios are medians over seeds
with a 90 % bootstrap interval (seeds resampled).

Run from the repository root (about an hour on the 2 cores; the results file says how long):
    nice python experiments/benchmarks/search_quality.py
Smoke run (minutes): `--trials 4 --seeds 0 --warm-seeds --refine-epochs 1 1 --results /tmp/x`.
Writes experiments/results/search_quality.{json,md}; studies stay in experiments/runs/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from search._io import jsonable  # noqa: E402
from search.config import Experiment, parse_experiment  # noqa: E402
from search.objective import EARLY_STOP_MARGIN, TrialObjective  # noqa: E402
from search.record import TrialStatus, status_of  # noqa: E402
from spaces import CompressionPlan  # noqa: E402

TASK, TARGET = "gratings", "mcu"
BUDGETS = {"latency_ms": 10.0}  # the board's SRAM and flash budgets apply as they are
OBJECTIVES = ["accuracy", "latency_ms", "weight_bytes"]
MAX_DROP = 0.06
POINT = 0.01
TRIALS, SEEDS = 40, (0, 1, 2, 3, 4)
WARM_SEEDS = SEEDS  # the warm-started arm, reported apart
RECOVERY = {"epochs": 2, "student_epochs": 3}
REFINE = {"top_k": 2, "epochs": 6, "student_epochs": 9}
RANDOM_SEED_OFFSET = 1000
BASELINES = ("int8_qat", "int8_prune50_l1", "student_w0.5_int8_kd")
STAGES = ("architecture", "lowrank", "prune", "quantize")
RELAXED = {"latency_ms": 1e9, "memory_kb": 1e9, "flash_kb": 1e9}  # stages before the last
TARGETS = {  # issue 15's targets
    "hv_ratio_vs_random": 1.2,
    "hv_ratio_vs_sequential": 1.15,
    "best_speedup_vs_int8_at_1pt": 2.0,
}
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


# --- pure figures (the tests drive these) ------------------------------------------------------
def hv_point(row: Mapping[str, Any], base_acc: float, budgets: Mapping[str, float]) -> list[float]:
    """(accuracy drop in points, log2 latency / budget, log2 weight bytes / budget)."""
    return [
        100 * (base_acc - row["accuracy"]),
        math.log2(row["latency_ms"] / budgets["latency_ms"]),
        math.log2(row["weight_bytes"] / budgets["weight_bytes"]),
    ]


def budget_hypervolume(
    rows: Sequence[Mapping[str, Any]],
    base_acc: float,
    budgets: Mapping[str, float],
    max_drop: float = MAX_DROP,
) -> float:
    """Hypervolume of the feasible rows with the reference at the budget corner."""
    from search.review import hypervolume

    points = [hv_point(r, base_acc, budgets) for r in rows if r["feasible"]]
    return hypervolume(points, [100 * max_drop, 0.0, 0.0])


def ratio(a: float, b: float) -> float:
    """a / b: inf when only `b` is 0, 1.0 when both are (nothing to tell apart)."""
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def median_ci(
    values: Sequence[float | None], *, n: int = 4000, level: float = 0.9, seed: int = 0
) -> dict[str, Any]:
    """Median and a percentile-bootstrap interval of the median (values resampled)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": None, "ci90": [None, None], "n": 0}
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(vals, k=len(vals))) for _ in range(n))
    lo = meds[int(math.floor((1 - level) / 2 * (n - 1)))]
    hi = meds[int(math.ceil((1 + level) / 2 * (n - 1)))]
    return {"median": statistics.median(vals), "ci90": [lo, hi], "n": len(vals)}


def pick_on_val(
    rows: Sequence[Mapping[str, Any]], base_val: float, tol: float = POINT
) -> Mapping[str, Any] | None:
    """The fastest row whose VALIDATION accuracy is within `tol` of the base model's."""
    ok = [r for r in rows if base_val - r["val_accuracy"] <= tol + 1e-12]
    return min(ok, key=lambda r: (r["latency_ms"], -r["val_accuracy"])) if ok else None


def dominance_margin(
    front: Sequence[Mapping[str, Any]], q: Mapping[str, Any], key: str = "test_accuracy"
) -> float | None:
    """Best `key` lead over `q` among front points no slower and no bigger than it.

    >= 0: `q` is weakly dominated; < 0: short by that much; None: no point is as cheap.
    """
    leads = [
        p[key] - q[key]
        for p in front
        if p["latency_ms"] <= q["latency_ms"] and p["weight_bytes"] <= q["weight_bytes"]
    ]
    return max(leads) if leads else None


def pareto_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The feasible rows no other feasible row dominates (val accuracy, latency, bytes)."""
    from search.review import pareto_indices

    ok = [r for r in rows if r["feasible"]]
    losses = [[-r["accuracy"], r["latency_ms"], r["weight_bytes"]] for r in ok]
    return [ok[i] for i in pareto_indices(losses)]


# --- runs --------------------------------------------------------------------------------------
def experiment(
    name: str,
    out: Path,
    *,
    sampler: str = "auto",
    seed: int = 0,
    trials: int = TRIALS,
    space: str = "joint",
    budgets: Mapping[str, float] = BUDGETS,
    refine: Mapping[str, int] | None = None,
) -> Experiment:
    """An experiment as a user would write it, validated by the real parser."""
    recovery: dict[str, Any] = dict(RECOVERY)
    if refine:
        recovery |= {
            "refine_top_k": refine["top_k"],
            "refine_epochs": refine["epochs"],
            "refine_student_epochs": refine["student_epochs"],
        }
    data = {
        "name": name,
        "task": TASK,
        "target": TARGET,
        "space": space,
        "objectives": OBJECTIVES,
        "budgets": dict(budgets),
        "max_accuracy_drop": MAX_DROP,
        "trials": trials,
        "seed": seed,
        "sampler": sampler,
        "out": str(out),
        "recovery": recovery,
    }
    return parse_experiment(data, str(Path(__file__).resolve()))


class StageObjective(TrialObjective):
    """A sequential stage: only `stage`'s section is searched, the rest is `fixed`."""

    def __init__(self, *args: Any, fixed: CompressionPlan, stage: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fixed, self.stage = fixed, stage

    def suggest(self, trial: Any) -> CompressionPlan:
        plan = super().suggest(trial)
        kept = {s: getattr(self.fixed, s) for s in STAGES[1:] if s != self.stage}
        return plan.replace(**kept)


class HalvingObjective(TrialObjective):
    """Successive halving of recovery inside the study, stopped at a wall-time budget.

    Every plan is judged at the recovery checkpoint (half its epochs): it goes on only when
    its accuracy there is in the top `1 / eta` of the checkpoint accuracies seen so far (and
    the usual early stop lets it). Implemented through `needed_accuracy`, which the
    checkpoint compares against with `EARLY_STOP_MARGIN`. Trials after `wall_s` are pruned.
    """

    def __init__(self, *args: Any, wall_s: float, eta: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wall_s, self.eta, self.t0 = wall_s, eta, None

    def __call__(self, trial: Any) -> tuple[float, ...]:
        import optuna

        self.t0 = self.t0 or time.perf_counter()
        if time.perf_counter() - self.t0 > self.wall_s:
            trial.study.stop()
            raise optuna.TrialPruned()
        return super().__call__(trial)

    def needed_accuracy(self, study: Any, cost: Any) -> float | None:
        needed = super().needed_accuracy(study, cost)
        seen = sorted(
            (
                float(t.user_attrs["checkpoint_accuracy"])
                for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("checkpoint_accuracy") is not None
            ),
            reverse=True,
        )
        if len(seen) < self.eta:
            return needed
        bar = seen[math.ceil(len(seen) / self.eta) - 1] + EARLY_STOP_MARGIN
        return bar if needed is None else max(needed, bar)


def trial_rows(storage: str, name: str, budgets: Mapping[str, float]) -> list[dict[str, Any]]:
    """Every completed trial, judged against `budgets` with the cost model's own rule."""
    import optuna

    from search.hardware import CostReport, constraint_values, load_profile

    profile = load_profile(TARGET)
    study = optuna.load_study(study_name=name, storage=storage)
    base_acc = float(study.user_attrs["base_metrics"]["accuracy"])
    refined = study.user_attrs.get("refined", {})
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        ua = t.user_attrs
        status = status_of(t)
        if ua.get("latency_ms") is None or status == TrialStatus.DUPLICATE:
            continue
        keys = ("params", "macs", "weight_bytes", "peak_activation_bytes")
        keys += ("memory_bytes", "flash_bytes", "latency_ms")
        cost = CostReport(**{k: ua[k] for k in keys})
        within = all(v <= 0 for v in constraint_values(cost, budgets, profile=profile).values())
        acc = ua.get("accuracy")
        trained = status == TrialStatus.TRAINED
        rows.append(
            {
                "number": t.number,
                "status": str(status),
                "accuracy": acc,
                "latency_ms": ua["latency_ms"],
                "weight_bytes": ua["weight_bytes"],
                "feasible": trained and within and base_acc - acc <= MAX_DROP + 1e-12,
                "plan": ua.get("plan"),
                "plan_text": ua.get("plan_text"),
                "weights": ua.get("weights"),
                "refined": refined.get(str(t.number)),
                "train_s": ua.get("train_s"),
                "start": t.datetime_start.isoformat() if t.datetime_start else None,
                "end": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    return rows


def search_wall_s(rows: Sequence[Mapping[str, Any]]) -> float:
    """First trial start to last trial end (the search alone: no set-up, no refine)."""
    spans = [(r["start"], r["end"]) for r in rows if r["start"] and r["end"]]
    if not spans:
        return 0.0
    first = min(datetime.datetime.fromisoformat(s) for s, _ in spans)
    last = max(datetime.datetime.fromisoformat(e) for _, e in spans)
    return (last - first).total_seconds()


def _search(exp: Experiment, *, warm: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
    import search.study as study_mod

    keep = study_mod.warm_start
    if not warm:  # the arms compared must not start from the manual recipes
        study_mod.warm_start = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        study_mod.run_search(exp, progress=False, log=lambda m: None, **kwargs)
    finally:
        study_mod.warm_start = keep
    return trial_rows(exp.storage_url, exp.name, BUDGETS)


def stage_pick(rows: Sequence[Mapping[str, Any]], fixed: CompressionPlan) -> CompressionPlan:
    """A stage's pick: the fastest trained plan within the accuracy tolerance (or `fixed`)."""
    ok = [r for r in rows if r["status"] == TrialStatus.TRAINED and r["relaxed_ok"]]
    if not ok:
        return fixed
    best = min(ok, key=lambda r: (r["latency_ms"], -r["accuracy"]))
    return CompressionPlan.from_dict(best["plan"])


def sequential(seed: int, trials: int, work: Path) -> dict[str, Any]:
    """The same operators one stage at a time, `trials / 4` each, rows judged at the end."""
    joint = yaml.safe_load((ROOT / "spaces" / "joint.yaml").read_text())
    fixed, rows, picks = CompressionPlan(), [], []
    for k, stage in enumerate(STAGES):
        a = fixed.architecture
        space = {"name": f"stage_{stage}", "distill": joint["distill"], stage: joint[stage]}
        if stage != "architecture":  # the network is stage 1's pick
            space["architecture"] = {"family": a.family, "width": a.width, "depth": a.depth}
        path = work / f"seq-s{seed}-{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(space))
        last = k == len(STAGES) - 1
        n = trials - (trials // len(STAGES)) * (len(STAGES) - 1) if last else trials // 4
        exp = experiment(
            f"seq-s{seed}-{stage}",
            work / f"seq-s{seed}-{stage}",
            seed=seed,
            trials=n,
            space=str(path),
            budgets=BUDGETS if last else RELAXED,
        )
        stage_rows = _search(
            exp,
            warm=False,
            objective_cls=StageObjective,
            objective_kwargs={"fixed": fixed, "stage": stage},
        )
        relaxed = trial_rows(exp.storage_url, exp.name, RELAXED)
        for r, q in zip(stage_rows, relaxed):
            r["relaxed_ok"] = q["feasible"]
        rows += [{**r, "stage": stage} for r in stage_rows]
        fixed = stage_pick(stage_rows, fixed)
        picks.append(fixed.describe())
    return {"rows": rows, "picks": picks}


def baselines(seed: int, refine: Mapping[str, int] = REFINE) -> dict[str, Any]:
    """The hand-made plans, built, trained for the refine budget, costed, scored."""
    from search.compress import build_student, compressible_layers
    from search.hardware import estimate_cost, load_profile
    from search.pipeline import build, cost_of, prepare, recovery_schedule, train
    from search.tasks import load_task
    from spaces import ArchitectureConfig, PruneConfig, QuantizeConfig

    # The refine budget's recovery: the baselines train exactly as the refined front does.
    exp = experiment("baselines", ROOT / "experiments" / "runs" / "unused", refine=refine)
    task = load_task(exp, log=lambda m: None)
    profile = load_profile(TARGET)
    layers = compressible_layers(task.base_model)
    int8 = QuantizeConfig(weight_bits={x.name: 8 for x in layers}, activation_bits=8)
    student = ArchitectureConfig("mobilenetv2", 0.5)
    s_net = build_student(student, input_shape=task.input_shape, num_classes=task.num_classes)
    s_layers = compressible_layers(s_net)
    plans = {
        "int8_qat": CompressionPlan(quantize=int8),
        "int8_prune50_l1": CompressionPlan(
            prune=PruneConfig(ratios={x.name: 0.5 for x in layers if x.prunable}, importance="l1"),
            quantize=int8,
        ),
        "student_w0.5_int8_kd": CompressionPlan(
            architecture=student,
            quantize=QuantizeConfig(weight_bits={x.name: 8 for x in s_layers}, activation_bits=8),
        ),
    }
    out: dict[str, Any] = {
        "fp32_base": {
            **estimate_cost(task.base_model, task.input_shape, profile).metrics(),
            "val_accuracy": task.evaluate(task.base_model, "val")["accuracy"],
            "test_accuracy": task.evaluate(task.base_model, "test")["accuracy"],
        }
    }
    for name, plan in plans.items():
        compressed = build(plan, task)
        cost = cost_of(compressed, task, profile)
        prepare(compressed, plan, task)
        model = train(compressed, plan, task, exp.recovery, seed=seed, refine=True)
        out[name] = {
            **cost.metrics(),
            "plan": plan.describe(),
            "epochs": recovery_schedule(exp.recovery, plan, refine=True).epochs,
            "val_accuracy": task.evaluate(model, "val")["accuracy"],
            "test_accuracy": task.evaluate(model, "test")["accuracy"],
        }
    return out


def test_scores(rows: list[dict[str, Any]]) -> None:
    """Adds val and test accuracy of each row's reported weights (refined where refined)."""
    from search.pipeline import build
    from search.tasks import load_state_dict_file, load_task

    task = load_task(experiment("score", ROOT / "experiments" / "runs" / "unused"), log=print)
    for r in rows:
        ref = r.get("refined") or {}
        weights = ref.get("weights") or r.get("weights")
        compressed = build(CompressionPlan.from_dict(r["plan"]), task)
        state = load_state_dict_file(Path(weights), file=weights, field_name="weights")
        compressed.model.load_state_dict(state)
        model = compressed.model.eval()
        r["val_accuracy"] = task.evaluate(model, "val")["accuracy"]
        r["test_accuracy"] = task.evaluate(model, "test")["accuracy"]
        r["refined_used"] = bool(ref.get("weights"))


def unit(spec: dict[str, Any]) -> dict[str, Any]:
    """One seed's piece of work in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    os.environ["COMPRESS_SEARCH_CACHE"] = spec["cache"]
    global TASK
    TASK = spec["task"]
    t0 = time.perf_counter()
    kind, seed, n, work = spec["kind"], spec["seed"], spec["trials"], Path(spec["work"])
    out: dict[str, Any] = {"kind": kind, "seed": seed}
    if kind == "auto":  # then halving, for the same search wall time
        refine = {**REFINE, **spec["refine"]}
        exp = experiment(
            f"auto-s{seed}", work / f"auto-s{seed}", seed=seed, refine=refine, trials=n
        )
        out["auto"] = _search(exp, warm=False)
        wall = search_wall_s(out["auto"])
        exp = experiment(f"halving-s{seed}", work / f"halving-s{seed}", seed=seed, trials=50 * n)
        out["halving"] = _search(
            exp, warm=False, objective_cls=HalvingObjective, objective_kwargs={"wall_s": wall}
        )
        front = pareto_rows(out["auto"])
        test_scores(front)
        out["front"] = front
    elif kind in ("random", "warm"):
        sampler = "random" if kind == "random" else "auto"
        # Its own stream: on the same seed, TPE's 10 random start-up trials would be these.
        own = seed + RANDOM_SEED_OFFSET if kind == "random" else seed
        exp = experiment(
            f"{kind}-s{seed}", work / f"{kind}-s{seed}", sampler=sampler, seed=own, trials=n
        )
        out[kind] = _search(exp, warm=kind == "warm")
    elif kind == "sequential":
        out |= sequential(seed, n, work)
    elif kind == "baselines":
        out["baselines"] = baselines(seed, {**REFINE, **spec["refine"]})
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


# --- analysis ----------------------------------------------------------------------------------
def analyse(done: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    by = {(d["kind"], d["seed"]): d for d in done}
    base = by[("baselines", seeds[0])]["baselines"]["fp32_base"]
    from search.hardware import load_profile

    prof = load_profile(TARGET)
    budgets = {
        "latency_ms": BUDGETS["latency_ms"],
        "weight_bytes": (prof.budgets["flash_kb"] - prof.runtime_flash_kb) * 1024,
    }
    # The searches' base accuracy: the whole validation split (no val_subset).
    base_val, base_test = base["val_accuracy"], base["test_accuracy"]
    per_seed = []
    for s in seeds:
        auto = by[("auto", s)]
        hv = {
            "auto": budget_hypervolume(auto["auto"], base_val, budgets),
            "random": budget_hypervolume(by[("random", s)]["random"], base_val, budgets),
            "sequential": budget_hypervolume(by[("sequential", s)]["rows"], base_val, budgets),
            "halving": budget_hypervolume(auto["halving"], base_val, budgets),
        }
        if ("warm", s) in by:
            hv["warm_auto"] = budget_hypervolume(by[("warm", s)]["warm"], base_val, budgets)
        bl = by[("baselines", s)]["baselines"]
        front = auto["front"]
        int8 = bl["int8_qat"]
        pick = pick_on_val(front, base_val)
        per_seed.append(
            {
                "seed": s,
                "hv": hv,
                "hv_ratio_vs_random": ratio(hv["auto"], hv["random"]),
                "hv_ratio_vs_sequential": ratio(hv["auto"], hv["sequential"]),
                "hv_ratio_halving_vs_fixed": ratio(hv["halving"], hv["auto"]),
                "feasible": {
                    k: sum(r["feasible"] for r in rows)
                    for k, rows in (
                        ("auto", auto["auto"]),
                        ("random", by[("random", s)]["random"]),
                        ("sequential", by[("sequential", s)]["rows"]),
                        ("halving", auto["halving"]),
                    )
                },
                "trials": {
                    "auto": len(auto["auto"]),
                    "halving": len(auto["halving"]),
                    "halving_promoted": sum(
                        r["status"] == TrialStatus.TRAINED for r in auto["halving"]
                    ),
                    "auto_trained": sum(r["status"] == TrialStatus.TRAINED for r in auto["auto"]),
                },
                "search_wall_s": {
                    "auto": search_wall_s(auto["auto"]),
                    "halving": search_wall_s(auto["halving"]),
                },
                "feasible_val_spread_pts": _spread([*auto["auto"], *by[("random", s)]["random"]]),
                "margins": {b: dominance_margin(front, bl[b]) for b in bl if b != "fp32_base"},
                "pick_at_1pt": pick and {k: pick[k] for k in _PICK_KEYS},
                "pick_test_drop_pts": pick and 100 * (base_test - pick["test_accuracy"]),
                "speedup_vs_int8_at_1pt": pick and int8["latency_ms"] / pick["latency_ms"],
                "baselines": bl,
                "sequential_picks": by[("sequential", s)]["picks"],
                "front": [{k: r[k] for k in _PICK_KEYS} for r in front],
            }
        )
    ok_picks = [p for p in per_seed if p["pick_at_1pt"]]
    res: dict[str, Any] = {
        "selection_split": "val",
        "hv_ratio_vs_random": median_ci([p["hv_ratio_vs_random"] for p in per_seed]),
        "hv_ratio_vs_sequential": median_ci([p["hv_ratio_vs_sequential"] for p in per_seed]),
        "hv_ratio_halving_vs_fixed": median_ci([p["hv_ratio_halving_vs_fixed"] for p in per_seed]),
        "baselines_dominated": {
            b: all(p["margins"][b] is not None and p["margins"][b] >= 0 for p in per_seed)
            for b in BASELINES
        },
        "baselines_dominated_seeds": {
            b: sum(p["margins"][b] is not None and p["margins"][b] >= 0 for p in per_seed)
            for b in BASELINES
        },
        "best_speedup_vs_int8_at_1pt": median_ci([p["speedup_vs_int8_at_1pt"] for p in per_seed]),
        "pick_test_drop_pts": median_ci([p["pick_test_drop_pts"] for p in per_seed]),
        "seeds_with_pick_within_1pt_on_test": sum(
            p["pick_test_drop_pts"] <= 100 * POINT + 1e-9 for p in ok_picks
        ),
        "feasible_val_spread_pts": median_ci([p["feasible_val_spread_pts"] for p in per_seed]),
        # The task's property rather than one search's: every feasible plan any arm trained.
        "feasible_val_spread_pooled": _pooled_spread(done, seeds),
        "seeds": list(seeds),
        # Each arm's hypervolume itself: finite where a per-seed ratio is not (an arm with no
        # feasible plan in a seed has hypervolume 0).
        "hv_median": {
            arm: median_ci([p["hv"][arm] for p in per_seed if arm in p["hv"]])
            for arm in ("auto", "random", "sequential", "halving", "warm_auto")
            if any(arm in p["hv"] for p in per_seed)
        },
    }
    warm = [p for p in per_seed if "warm_auto" in p["hv"]]
    res["warm_started_auto_hv_vs_random"] = median_ci(
        [ratio(p["hv"]["warm_auto"], p["hv"]["random"]) for p in warm]
    )
    res["task"] = {
        "name": TASK,
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
    }
    return {"summary": res, "per_seed": per_seed}


_PICK_KEYS = (
    "number",
    "plan_text",
    "latency_ms",
    "weight_bytes",
    "accuracy",
    "val_accuracy",
    "test_accuracy",
    "refined_used",
)


def _spread(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Range of validation accuracy over feasible plans, in points."""
    accs = [r["accuracy"] for r in rows if r["feasible"]]
    return 100 * (max(accs) - min(accs)) if len(accs) > 1 else None


def _spread_text(points: float | None) -> str:
    return "-" if points is None else f"{points:.2f}"


def _pooled_spread(done: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """`_spread` over the feasible trials of every arm and seed, and how many there were."""
    arms = ("auto", "halving", "random", "rows", "warm")  # `rows`: the sequential arm
    rows = [r for d in done if d["seed"] in seeds for a in arms for r in d.get(a, ())]
    return {"points": _spread(rows), "plans": sum(r["feasible"] for r in rows)}


# --- output ------------------------------------------------------------------------------------
def _ci(m: Mapping[str, Any], unit: str = "", nd: int = 2) -> str:
    if m["median"] is None:
        return "-"

    def f(v: Any) -> str:
        return "inf" if v == math.inf or v == "inf" else f"{v:.{nd}f}"

    return f"{f(m['median'])}{unit} [{f(m['ci90'][0])}, {f(m['ci90'][1])}]"


def verdict(key: str, m: Mapping[str, Any]) -> str:
    goal = TARGETS[key]
    med, low = (math.inf if v == "inf" else v for v in (m["median"], m["ci90"][0]))
    if med is None:
        return "missed (no value)"
    hit = med >= goal and (key.startswith("best") or (low is not None and low > 1.0))
    return "met" if hit else f"missed (goal {goal})"


def markdown(doc: Mapping[str, Any]) -> str:
    s, st = doc, doc["stamp"]
    t = s["task"]
    lines = [
        f"# Search quality on the `{t['name']}` task, `{TARGET}` target",
        "",
        f"Commit `{st['commit']}`, {st['date']}; load average before {st['load_before']}, "
        f"after {st['load_after']} ({st['cores']} cores); wall {st['wall_s']:.0f} s.",
        f"Command: `{st['command']}`"
        + (f"; figures re-analysed at `{st['analysed_at']}`." if st.get("analysed_at") else ""),
        "",
        f"Task: base {100 * t['base_val_accuracy']:.1f} % val / "
        f"{100 * t['base_test_accuracy']:.1f} % test; {t['base_cost']['latency_ms']:.1f} ms "
        f"({t['latency_over_budget']:.1f}x the {t['budgets']['latency_ms']:g} ms budget), "
        f"flash {t['flash_over_budget']:.2f}x and SRAM {t['sram_over_budget']:.2f}x the board's.",
        f"Seeds {s['seeds']}; medians over seeds with 90 % bootstrap intervals; selection on "
        f"{s['selection_split']}, figures on test.",
        "",
        "| figure | value [90 % interval] | target |",
        "|---|---|---|",
    ]
    for key in TARGETS:
        lines.append(f"| {key} | {_ci(s[key])} | {verdict(key, s[key])} |")
    n, seeds = len(s["seeds"]), s["baselines_dominated_seeds"]
    dom = ", ".join(
        f"{b}: {'yes' if v else 'no'} ({seeds[b]}/{n} seeds)"
        for b, v in s["baselines_dominated"].items()
    )
    pooled = s["feasible_val_spread_pooled"]
    pooled_pts = _spread_text(pooled["points"])
    lines += [
        f"| baselines_dominated (test, every seed) | {dom} | all yes |",
        f"| pick's test drop (points) | {_ci(s['pick_test_drop_pts'])} | <= 1 |",
        f"| feasible plans' val accuracy spread, auto + random (points) | "
        f"{_ci(s['feasible_val_spread_pts'])} | >= 5 |",
        f"| the same, every arm and seed pooled ({pooled['plans']} plans) | {pooled_pts} | >= 5 |",
        f"| hv halving / fixed epochs (equal wall time) | {_ci(s['hv_ratio_halving_vs_fixed'])}"
        " | > 1 to adopt |",
        f"| hv warm-started auto / random (apart) | "
        f"{_ci(s['warm_started_auto_hv_vs_random'])} | - |",
        "",
        "Median hypervolume per arm [90 % interval]: "
        + ", ".join(f"{arm} {_ci(v)}" for arm, v in s.get("hv_median", {}).items())
        + ".",
        "",
        "Per seed (hypervolume; feasible trials; the pick within 1 point on val):",
        "",
        "| seed | auto | random | sequential | halving | warm auto | feasible a/r/s/h | "
        "pick (ms, kB, test drop) | int8 margin | prune margin | student margin |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in doc["per_seed"]:
        hv, f, pk, m = p["hv"], p["feasible"], p["pick_at_1pt"], p["margins"]
        pick = (
            f"{pk['latency_ms']:.2f}, {pk['weight_bytes'] / 1024:.0f}, "
            f"{p['pick_test_drop_pts']:+.1f}"
            if pk
            else "-"
        )

        def mg(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:+.1f} pt"

        lines.append(
            f"| {p['seed']} | {hv['auto']:.2f} | {hv['random']:.2f} | {hv['sequential']:.2f} "
            f"| {hv['halving']:.2f} | {hv.get('warm_auto', float('nan')):.2f} | "
            f"{f['auto']}/{f['random']}/{f['sequential']}/{f['halving']} | {pick} | "
            f"{mg(m['int8_qat'])} | {mg(m['int8_prune50_l1'])} | "
            f"{mg(m['student_w0.5_int8_kd'])} |"
        )
    lines += ["", *(f"- {n}" for n in doc.get("notes", []))]
    return "\n".join(lines) + "\n"


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


README_BEGIN = "<!-- search_quality: generated by experiments/benchmarks/search_quality.py -->"
README_END = "<!-- /search_quality -->"


def readme_section(doc: Mapping[str, Any]) -> str:
    """The README's figures, rendered from the results file (`--update-readme`)."""
    t, st = doc["task"], doc["stamp"]
    dom = doc["baselines_dominated"]
    lines = [
        README_BEGIN,
        "`python -m search run experiments/gratings_mcu.yaml` runs the hard built-in task: noisy",
        "oriented gratings generated in code, and a filter-bank CNN too slow and too big for the",
        "`mcu` budgets. `experiments/benchmarks/search_quality.py` compares the joint search",
        "with random search, with the same operators searched one stage at a time, and with",
        "hand-made baselines trained on their own (method in its docstring).",
        "",
        f"On `{t['name']}` (the base CNN is "
        f"{t['latency_over_budget']:.1f}x the {t['budgets']['latency_ms']:g} ms `{TARGET}` "
        f"budget, {t['flash_over_budget']:.2f}x its flash and {t['sram_over_budget']:.2f}x its "
        f"SRAM), {len(doc['seeds'])} seeds, "
        f"selection on {doc['selection_split']}idation, figures on test "
        f"([search_quality.md](experiments/results/search_quality.md), commit "
        f"`{st['commit']}`, {st['date']}):",
        "",
        "| figure | median [90 % interval] | target |",
        "|---|---|---|",
    ]
    for key in TARGETS:
        lines.append(f"| {key} | {_ci(doc[key])} | {verdict(key, doc[key])} |")
    lines += [
        "| baselines_dominated (int8 QAT / int8 + 50 % prune / student; seeds) | "
        + " / ".join(
            f"{'yes' if v else 'no'} ({doc['baselines_dominated_seeds'][b]}/{len(doc['seeds'])})"
            for b, v in dom.items()
        )
        + " | all yes |",
        f"| successive halving / fixed epochs, equal wall time | "
        f"{_ci(doc['hv_ratio_halving_vs_fixed'])} | - |",
        "",
        "Median hypervolume per arm: "
        + ", ".join(f"{arm} {_ci(v)}" for arm, v in doc.get("hv_median", {}).items())
        + " (a per-seed ratio is `inf` where the compared arm found no feasible plan).",
        "",
        "Feasible plans' validation accuracy spans "
        + _spread_text(doc["feasible_val_spread_pooled"]["points"])
        + f" points over the {doc['feasible_val_spread_pooled']['plans']} feasible plans of "
        "every arm and seed (target >= 5); within one seed's auto and random searches, "
        + _ci(doc["feasible_val_spread_pts"])
        + ".",
        README_END,
    ]
    return "\n".join(lines)


def update_readme(doc: Mapping[str, Any], readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_section(doc) + text[end:])


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
    global TASK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--warm-seeds", type=int, nargs="*", default=list(WARM_SEEDS))
    parser.add_argument(
        "--refine-epochs",
        type=int,
        nargs=2,
        default=[REFINE["epochs"], REFINE["student_epochs"]],
        help="refine (and baseline) epochs: base-network plans, students",
    )
    parser.add_argument("--task", default=TASK, help="smoke runs may use `digits`")
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
    raw = args.work / "raw.json"
    TASK = args.task
    if args.update_readme:
        update_readme(json.loads((args.results / "search_quality.json").read_text()))
        return
    if args.reanalyse:
        saved = json.loads(raw.read_text())
        write(args, saved["done"], {**saved["stamp"], "analysed_at": git_commit()})
        return
    load_before = os.getloadavg()
    commit = git_commit()
    shutil.rmtree(args.work / "runs", ignore_errors=True)
    common = {
        "work": str(args.work / "runs"),
        "cache": str(args.cache or args.work / "cache"),
        "trials": args.trials,
        "refine": dict(zip(("epochs", "student_epochs"), args.refine_epochs)),
        "task": args.task,
    }
    # Train the base model once, before the workers share its cache.
    os.environ["COMPRESS_SEARCH_CACHE"] = common["cache"]
    import torch

    from search.tasks import load_task

    torch.set_num_threads(1)  # two threads on a shared machine spin far more than they gain

    load_task(experiment("base", args.work / "base"), log=log)
    # Seed by seed, so that whole seeds are done early (--reanalyse uses complete seeds).
    kinds = ("auto", "sequential", "random", "baselines", "warm")
    units = [
        {**common, "kind": k, "seed": s}
        for s in args.seeds
        for k in kinds
        if k != "warm" or s in args.warm_seeds
    ]
    done = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(unit, u) for u in units]
        for f in as_completed(futures):
            r = f.result()
            done.append(r)
            log(f"{r['kind']} s{r['seed']}: {r['wall_s']:.0f} s ({len(done)}/{len(units)})")
            st = stamp(commit, load_before, time.perf_counter() - _T0)
            saved = {"done": done, "stamp": st}  # for --reanalyse
            raw.write_text(json.dumps(jsonable(saved, inf="inf")))
    write(args, done, st)


def write(args: argparse.Namespace, done: list[dict[str, Any]], st: dict[str, Any]) -> None:
    kinds = ("auto", "random", "sequential", "baselines")
    have = {(d["kind"], d["seed"]) for d in done}
    seeds = [s for s in args.seeds if all((k, s) in have for k in kinds)]  # complete seeds
    figures = analyse(done, seeds)
    doc = {**figures["summary"], "stamp": st, "notes": args.note, "per_seed": figures["per_seed"]}
    args.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(doc, inf="inf"), indent=1) + "\n"
    (args.results / "search_quality.json").write_text(text)
    (args.results / "search_quality.md").write_text(markdown(doc))
    log(f"wrote {args.results}/search_quality.{{json,md}}")


if __name__ == "__main__":
    main()
