"""Search quality and speed: the default sampler vs random, joint vs sequential, manual recipes.

On the built-in digits task, for the `phone` and `mcu` targets, with 3 seeds each:

* the default sampler (`auto`) vs `random`, 40 completed trials each, both through `run_search`
  (the product path: warm start, cheap-first rejection, early stop);
* the joint search (that same `auto` run) vs a sequential one with the same total trials:
  a prune-only search (half the trials), then a quantization-only search on its best result;
* three manual baselines built and evaluated through the real pipeline (`search.pipeline`,
  `search.hardware.estimate_cost`): uniform int8 PTQ, int8 + 50 % L1 structured prune +
  fine-tuning, a width-0.5 MobileNetV2-style student trained with distillation;
* `nsga2` and `gp` on the `mcu` target (the sampler sub-benchmark behind what `auto` means);
* the refine stage on the joint runs (`recovery.refine_top_k`), as the product reports it.

Hypervolume is `search.pareto`'s one definition: each objective becomes a loss normalised by the
base model's value (accuracy `1 - a / a_base`, latency `l / l_base`, size `b / b_base`) and the
reference point is 1.0 on every axis; only feasible trained trials count (val accuracy).
Figures that a user would quote (dominance, speed-up, size at <= 1 point) use TEST accuracy of
the front's saved weights, so they are not the numbers the search selected on.

Run from the repository root (about 12 minutes on the idle 2-core dev machine):
    python experiments/benchmarks/search_quality.py
Smoke run (a few minutes): add `--trials 6 --seeds 0 --sampler-seeds 0`.
Writes experiments/results/search_quality.json, search_quality.md and
search_quality_<target>.svg. Study databases stay under experiments/runs/search_quality/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from html import escape
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from search.config import Experiment, Recovery, parse_experiment  # noqa: E402
from search.errors import ConfigError  # noqa: E402
from search.objective import TrialObjective  # noqa: E402
from search.pareto import RunData, TrialRecord, assemble, load_run  # noqa: E402
from spaces import CompressionPlan  # noqa: E402

# Budgets that make the problem non-trivial (the profiles' defaults are loose for an 8x8 CNN):
# phone: the fp32 model (0.16 ms predicted) is over, uniform int8 (0.095 ms) is just under.
# mcu: quickstart's budget; fp32 (74 ms) and uniform int8 (37 ms) are both far over it.
TARGETS: dict[str, dict[str, float]] = {"phone": {"latency_ms": 0.1}, "mcu": {"latency_ms": 15.0}}
OBJECTIVES = ["accuracy", "latency_ms", "weight_bytes"]
MAX_DROP = 0.03  # quickstart's: a plan losing > 3 points of val accuracy is infeasible
# Recovery while searching: the product's defaults (`search.config.Recovery`).
RECOVERY = {"epochs": Recovery().epochs, "student_epochs": Recovery().student_epochs}
# The refine stage of the joint (auto) runs: the whole front (up to 8 plans) re-trained for the
# product's defaults (8 epochs; students 30). The figures a user quotes
# (dominance, speed-up and size at <= 1 point) use the refined front, as the report does;
# the search-time figures stay beside them. Hypervolumes compare search-time fronts.
REFINE = {
    "refine_top_k": 8,
    "refine_epochs": Recovery().refine_epochs,
    "refine_student_epochs": Recovery().refine_student_epochs,
}
TRIALS = 40
SEEDS = (0, 1, 2)
SAMPLER_SEEDS = (0, 1, 2)
SAMPLER_TARGETS = ("mcu",)
EXTRA_SAMPLERS = ("nsga2", "gp")  # auto (= tpe) and random run for every target anyway
POINT = 0.01  # "within 1 point" of the base accuracy
MCU_BOARD = {"memory_kb": 320.0, "flash_kb": 1024.0}  # STM32F746 SRAM and flash
GOALS = {
    "hv_ratio_vs_random": 1.3,
    "hv_ratio_vs_sequential": 1.1,
    "best_speedup_vs_int8_at_1pt": 1.5,
    "mcu_size_reduction": 10.0,
    "overhead_fraction": 0.05,  # at most
    "rejected_plan_ms": 100.0,  # at most
}
# The sequential baseline's two spaces: the joint space's prune and quantize sections alone.
PRUNE_SPACE = {
    "name": "prune_only",
    "description": "Stage 1 of the sequential baseline: structured pruning only.",
    "prune": {
        "mode": "per_layer",
        "ratio": {"low": 0.0, "high": 0.7, "step": 0.1},
        "importance": ["l1", "l2", "taylor"],
    },
}
QUANT_SPACE = {
    "name": "quantize_only",
    "description": "Stage 2 of the sequential baseline: bit widths on stage 1's best plan.",
    "quantize": {"weight_bits": [2, 4, 8, 16, 32], "activation_bits": [8, 16, 32]},
}
BASELINES = ("int8_ptq", "int8_prune50_l1_ft", "student_w0.5_kd")
BASELINE_LABELS = {
    "int8_ptq": "uniform int8 PTQ",
    "int8_prune50_l1_ft": "int8 + 50% L1 prune + fine-tune",
    "student_w0.5_kd": "MobileNetV2 w0.5 student + KD",
}
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.0f} s] {msg}", file=sys.stderr, flush=True)


# --- experiments and runs ----------------------------------------------------------------------
def experiment(
    name: str,
    target: str,
    *,
    out: Path,
    sampler: str = "auto",
    seed: int = 0,
    trials: int = TRIALS,
    space: str = "joint",
    budgets: Mapping[str, float] | None = None,
    refine: bool = False,
) -> Experiment:
    """An experiment as a user would write it, validated by the real parser."""
    data = {
        "name": name,
        "task": "digits",
        "target": target,
        "space": space,
        "objectives": OBJECTIVES,
        "budgets": dict(TARGETS[target] if budgets is None else budgets),
        "max_accuracy_drop": MAX_DROP,
        "trials": trials,
        "seed": seed,
        "sampler": sampler,
        "out": str(out),
        "recovery": {**RECOVERY, **(REFINE if refine else {})},
    }
    return parse_experiment(data, str(Path(__file__).resolve()))


class StageTwoObjective(TrialObjective):
    """Quantization-only trials applied on top of a fixed stage-1 plan (sequential baseline)."""

    def __init__(self, *args: Any, fixed: CompressionPlan, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fixed = fixed

    def suggest(self, trial: Any) -> CompressionPlan:
        plan = super().suggest(trial)
        return plan.replace(
            architecture=self.fixed.architecture,
            lowrank=self.fixed.lowrank,
            prune=self.fixed.prune,
        )


def stage_one_pick(run: RunData) -> CompressionPlan:
    """Stage 1's "best result": the most compressed plan within the accuracy tolerance.

    That is the feasible front's min-latency pick ("prune as far as accuracy allows, then
    quantize"); the uncompressed plan when nothing was feasible.
    """
    try:
        t = run.pick("min-latency")
    except ConfigError:
        return CompressionPlan()
    return CompressionPlan.from_dict(t.plan or {})


def _unit(spec: dict[str, Any]) -> dict[str, Any]:
    """One independent piece of work, run in a worker process with its own thread budget."""
    import torch

    torch.set_num_threads(spec["threads"])
    os.environ["COMPRESS_SEARCH_CACHE"] = spec["cache"]
    t0 = time.perf_counter()
    kind, work = spec["kind"], Path(spec["workdir"])
    out: dict[str, Any] = {"id": spec["id"], "kind": kind}
    from search.study import run_search

    if kind == "search":
        exp = experiment(
            spec["id"],
            spec["target"],
            out=work / spec["id"],
            sampler=spec["sampler"],
            seed=spec["seed"],
            trials=spec["trials"],
            refine=spec.get("refine", False),
        )
        run_search(exp, progress=False, log=lambda m: None)
        out["runs"] = [[exp.storage_url, exp.name]]
    elif kind == "sequential":
        n1 = spec["trials"] // 2
        s1 = experiment(
            spec["id"] + "-prune",
            spec["target"],
            out=work / (spec["id"] + "-prune"),
            seed=spec["seed"],
            trials=n1,
            space=spec["prune_space"],
            budgets={},
        )
        # Stage 1 ignores the latency budget: it can only be met after quantization, which is
        # stage 2's job. The sequential front is re-scored against the final budgets anyway.
        run_search(s1, progress=False, log=lambda m: None)
        fixed = stage_one_pick(load_run(s1.storage_url, s1.name))
        s2 = experiment(
            spec["id"] + "-quant",
            spec["target"],
            out=work / (spec["id"] + "-quant"),
            seed=spec["seed"],
            trials=spec["trials"] - n1,
            space=spec["quant_space"],
        )
        run_search(
            s2,
            progress=False,
            log=lambda m: None,
            objective_cls=StageTwoObjective,
            objective_kwargs={"fixed": fixed},
        )
        out["runs"] = [[s1.storage_url, s1.name], [s2.storage_url, s2.name]]
        out["stage_one_pick"] = fixed.describe()
    elif kind == "baselines":
        out["baselines"] = build_baselines(spec["targets"], work / "baselines")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def build_baselines(targets: Sequence[str], out: Path) -> dict[str, Any]:
    """The manual recipes (and the fp32 base), built, recovered and costed by the pipeline.

    Each is trained twice, seed 0, with the search's learning rates (students: `student_lr`):
    with the search trials' recovery budget (`RECOVERY`, to compare with search-time fronts)
    and with the refine budget (`REFINE`, to compare with the refined front). PTQ and the fp32
    base are not trained. `latency_floor` is the cost of the
    fastest plan the base network allows (70 % of every prunable layer's channels, int8): the
    most any plan on it can gain; it is costed only.
    """
    from search.compress import compressible_layers
    from search.hardware import estimate_cost, load_profile
    from search.pipeline import build, recover
    from search.tasks import load_task
    from spaces import ArchitectureConfig, PruneConfig, QuantizeConfig

    exp = experiment("baselines", targets[0], out=out)
    task = load_task(exp, log=lambda m: None)
    rec = exp.recovery
    layers = compressible_layers(task.base_model)
    int8 = QuantizeConfig(weight_bits={x.name: 8 for x in layers}, activation_bits=8)

    def pruned(ratio: float) -> PruneConfig:
        return PruneConfig(ratios={x.name: ratio for x in layers if x.prunable}, importance="l1")

    budgets = {
        "search": (rec.epochs, rec.student_epochs),
        "refined": (REFINE["refine_epochs"], REFINE["refine_student_epochs"]),
    }
    recipes = {  # name: (plan, index into a budget: None = not trained, 0 = base, 1 = student)
        "fp32_base": (CompressionPlan(), None),
        "int8_ptq": (CompressionPlan(quantize=int8), None),  # calibrated only
        "int8_prune50_l1_ft": (CompressionPlan(prune=pruned(0.5), quantize=int8), 0),
        "student_w0.5_kd": (
            CompressionPlan(architecture=ArchitectureConfig("mobilenetv2", 0.5)),
            1,
        ),
    }

    def costs_of(plan: CompressionPlan) -> dict[str, Any]:
        compressed = build(plan, task)
        return {
            t: estimate_cost(
                compressed.model,
                task.input_shape,
                load_profile(t),
                layer_bits=compressed.layer_bits,
                activation_bits=compressed.activation_bits,
                layer_density=compressed.layer_density,
            ).metrics()
            for t in targets
        }

    rows: dict[str, Any] = {}
    for name, (plan, which) in recipes.items():
        rows[name] = {"plan": plan.describe(), "cost": costs_of(plan)}
        for budget, epochs in budgets.items():
            n = 0 if which is None else epochs[which]
            if budget == "refined" and which is None:
                rows[name][budget] = rows[name]["search"]
                continue
            compressed = build(plan, task)
            _, lr = rec.schedule(plan.architecture.family != "base")  # as the search trains
            model = recover(
                compressed, plan, task, epochs=n, lr=lr, batch_size=rec.batch_size, seed=0
            )
            rows[name][budget] = {
                "recovery_epochs": n,
                "val_accuracy": task.evaluate(model, "val")["accuracy"],
                "test_accuracy": task.evaluate(model, "test")["accuracy"],
            }
    rows["latency_floor"] = {
        "plan": CompressionPlan(prune=pruned(0.7), quantize=int8).describe(),
        "cost": costs_of(CompressionPlan(prune=pruned(0.7), quantize=int8)),
    }
    return rows


# --- figures (pure functions of plain data; the tests drive these) -----------------------------
def ratio(a: float, b: float) -> float:
    """a / b for hypervolumes: inf when only `b` is 0, 1.0 when both are (nothing to tell)."""
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def weakly_dominates(
    p: Mapping[str, float], q: Mapping[str, float], *, accuracy: str = "test_accuracy"
) -> bool:
    """`p` has <= latency, <= weight bytes and >= accuracy than `q`."""
    return (
        p["latency_ms"] <= q["latency_ms"]
        and p["weight_bytes"] <= q["weight_bytes"]
        and p[accuracy] >= q[accuracy]
    )


def weakly_dominates_any(
    points: Sequence[Mapping[str, Any]], q: Mapping[str, Any], *, accuracy: str = "test_accuracy"
) -> bool:
    return any(
        weakly_dominates(p, q, accuracy=accuracy) for p in points if p.get(accuracy) is not None
    )


def best_speedup(
    int8_latency: float,
    points: Sequence[Mapping[str, float]],
    base_acc: float,
    *,
    tol: float = POINT,
    accuracy: str = "test_accuracy",
) -> float | None:
    """Largest `int8_latency / latency` among points within `tol` of `base_acc` (None: none)."""
    ok = [p["latency_ms"] for p in points if base_acc - p[accuracy] <= tol + 1e-12]
    return int8_latency / min(ok) if ok else None


def smallest_within(
    points: Sequence[Mapping[str, Any]],
    base_acc: float,
    *,
    tol: float = POINT,
    accuracy: str = "test_accuracy",
) -> Mapping[str, Any] | None:
    """The point with the fewest weight bytes within `tol` of `base_acc` (None: none)."""
    ok = [p for p in points if base_acc - p[accuracy] <= tol + 1e-12]
    return min(ok, key=lambda p: (p["weight_bytes"], p["latency_ms"])) if ok else None


def rescore(
    t: TrialRecord, budgets: Mapping[str, float], max_drop: float, base_acc: float, *, number: int
) -> TrialRecord:
    """A trial judged against other budgets (the sequential stage 1 ran without the latency one).

    Constraint values come from the same `search.hardware.constraint_values` on the costs the
    trial recorded, plus the accuracy-drop constraint the objective adds.
    """
    from search.hardware import CostReport, constraint_values

    if t.status in ("failed", None) or t.metrics.get("latency_ms") is None:
        return dataclasses.replace(t, number=number)
    keys = (
        "params",
        "macs",
        "weight_bytes",
        "peak_activation_bytes",
        "memory_bytes",
        "flash_bytes",
        "latency_ms",
    )
    cost = CostReport(**{k: t.metrics[k] for k in keys})
    constraints = dict(constraint_values(cost, budgets))
    if t.trained:
        constraints["accuracy_drop"] = (base_acc - float(t.metrics["accuracy"])) - max_drop
    feasible = t.trained and t.values is not None and all(v <= 0 for v in constraints.values())
    return dataclasses.replace(t, number=number, constraints=constraints, feasible=feasible)


def merged_run(
    runs: Sequence[RunData],
    budgets: Mapping[str, float],
    *,
    max_drop: float = MAX_DROP,
    name: str = "sequential",
) -> RunData:
    """Several studies' trials as one run (renumbered), scored against `budgets`.

    Front and hypervolume come from `search.pareto.assemble` with the last run's objectives
    and base metrics, so the normalisation is the project's one definition.
    """
    last = runs[-1]
    base_acc = float(last.base_metrics[last.primary_metric or "accuracy"])
    records, offset = [], 0
    for run in runs:
        for t in run.trials:
            records.append(rescore(t, budgets, max_drop, base_acc, number=offset + t.number))
        offset += max((t.number for t in run.trials), default=-1) + 1
    names = tuple(dict.fromkeys([*last.constraint_names, "accuracy_drop"]))
    return assemble(
        study_name=name,
        storage=last.storage,
        objectives=last.objectives,
        constraint_names=names,
        budgets=dict(budgets),
        profile=last.profile,
        base_metrics=last.base_metrics,
        task=last.task,
        space=name,
        experiment=last.experiment,
        trials=records,
        primary_metric=last.primary_metric,
    )


def without_recipes(run: RunData, *, only: bool = False) -> RunData:
    """The run without its warm-start recipe trials (what the sampler found by itself), or
    with `only=True` the recipe trials alone (the hypervolume any warm-started run starts at).
    """
    return assemble(
        study_name=run.study_name,
        storage=run.storage,
        objectives=run.objectives,
        constraint_names=run.constraint_names,
        budgets=run.budgets,
        profile=run.profile,
        base_metrics=run.base_metrics,
        task=run.task,
        space=run.space,
        experiment=run.experiment,
        trials=[t for t in run.trials if bool(t.recipe) == only],
        primary_metric=run.primary_metric,
    )


def log_hypervolume(run: RunData, max_drop: float = MAX_DROP) -> float:
    """A second hypervolume, on the scale compression trade-offs live on (an extra figure).

    The project's definition (`RunData.hypervolume`) divides latency and size by the base
    model's and puts the reference at the base: a 10x and a 50x smaller model then differ by
    0.08 of an axis, and every sampler saturates near 1. Here each cost axis is log10 of the
    ratio to the base model (reference 0: one unit per decade saved) and accuracy is the
    drop in units of the allowed drop (reference 1: the accuracy floor). Feasible trained
    trials only, val accuracy.
    """
    import math

    from search.pareto import hypervolume

    a0 = float(run.base_metrics["accuracy"])
    l0 = float(run.base_metrics["latency_ms"])
    b0 = float(run.base_metrics["weight_bytes"])
    points = [
        [
            (a0 - float(t.value("accuracy") or 0.0)) / max_drop,
            math.log10(float(t.value("latency_ms") or l0) / l0),
            math.log10(float(t.value("weight_bytes") or b0) / b0),
        ]
        for t in run.feasible_trials
    ]
    return hypervolume(points, [1.0, 0.0, 0.0])


def sample_seconds(storage_url: str, study_name: str) -> dict[int, float]:
    """Each trial's `sample_s` (the space's suggest calls); RunData does not carry it."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    return {
        t.number: float(t.user_attrs["sample_s"])
        for t in study.get_trials(deepcopy=False)
        if isinstance(t.user_attrs.get("sample_s"), (int, float))
    }


def trial_times(
    run: RunData, sample_s: Mapping[int, float] | None = None
) -> dict[str, list[float]]:
    """Per-trial seconds: the whole trial, recovery+evaluation, and the search's own part.

    `overhead` = trial duration (Optuna's start -> complete, so it holds relative sampling,
    suggest, build, cost and the storage writes) minus `train_s` (recovery and evaluation).
    `outside_build_s` is what is left of it after `sample_s` (suggest) and `build_s` (build
    and cost): relative sampling and the storage writes.
    """
    out: dict[str, list[float]] = {
        "trained_s": [],
        "train_s": [],
        "overhead_s": [],
        "overhead_frac": [],
        "rejected_ms": [],
        "rejected_build_ms": [],
        "outside_build_s": [],
        "sample_s": [],
        "overhead_frac_base": [],  # plans on the user's network (2 recovery epochs)
        "overhead_frac_student": [],  # students (10 epochs from scratch)
        "stopped_s": [],  # stopped at the recovery checkpoint
        "duplicate_ms": [],  # a repeated plan answered from its first trial
    }
    for t in run.trials:
        if t.state != "COMPLETE" or t.duration_s is None:
            continue
        build_s = t.value("build_s")
        suggest = (sample_s or {}).get(t.number, 0.0)
        if build_s is not None:
            build_s += suggest
            out["sample_s"].append(suggest)
        if t.status == "trained" and t.value("train_s") is not None:
            train_s = float(t.value("train_s") or 0.0)
            over = max(0.0, t.duration_s - train_s)
            out["trained_s"].append(t.duration_s)
            out["train_s"].append(train_s)
            out["overhead_s"].append(over)
            frac = over / t.duration_s if t.duration_s > 0 else 0.0
            out["overhead_frac"].append(frac)
            family = ((t.plan or {}).get("architecture") or {}).get("family", "base")
            out["overhead_frac_base" if family == "base" else "overhead_frac_student"].append(frac)
            if build_s is not None:
                out["outside_build_s"].append(max(0.0, over - build_s))
        elif t.status == "stopped_early":
            out["stopped_s"].append(t.duration_s)
        elif t.status == "duplicate":
            out["duplicate_ms"].append(1000 * t.duration_s)
        elif t.status == "over_budget":
            out["rejected_ms"].append(1000 * t.duration_s)
            if build_s is not None:
                out["rejected_build_ms"].append(1000 * build_s)
    return out


def front_points(
    run: RunData, test_accuracy: Callable[[Mapping[str, Any] | None, str | None], float | None]
) -> list[dict[str, Any]]:
    """The feasible front as rows.

    `val_accuracy` is the search's; `test_accuracy` comes from `test_accuracy(plan, weights)`
    on the trial's saved weights. When the refine stage re-trained a trial, `*_refined` hold its
    figures and `*_reported` pick them (the report's front); otherwise `*_reported` are the
    search-time ones.
    """
    rows = []
    for t in run.front_trials:
        ref = t.refined or {}
        row = {
            "trial": t.number,
            "plan": t.plan_text,
            "recipe": t.recipe,
            "val_accuracy": float(t.value("accuracy") or 0.0),
            "test_accuracy": test_accuracy(t.plan, t.weights),
            "val_accuracy_refined": ref.get("accuracy"),
            "test_accuracy_refined": test_accuracy(t.plan, ref["weights"])
            if ref.get("weights")
            else None,
            "refined_epochs": ref.get("epochs"),
            "latency_ms": float(t.value("latency_ms") or 0.0),
            "weight_bytes": float(t.value("weight_bytes") or 0.0),
            "memory_bytes": float(t.value("memory_bytes") or 0.0),
            "flash_bytes": float(t.value("flash_bytes") or 0.0),
        }
        refined = row["test_accuracy_refined"] is not None
        row["val_accuracy_reported"] = (
            row["val_accuracy_refined"] if refined else row["val_accuracy"]
        )
        row["test_accuracy_reported"] = (
            row["test_accuracy_refined"] if refined else row["test_accuracy"]
        )
        rows.append(row)
    return rows


def dominance_margin(
    points: Sequence[Mapping[str, Any]], q: Mapping[str, Any], *, accuracy: str = "test_accuracy"
) -> float | None:
    """Best `accuracy` lead over `q` among points no slower and no bigger than it.

    >= 0: `q` is weakly dominated; < 0: short by that much; None: no point is as cheap.
    """
    leads = [
        p[accuracy] - q[accuracy]
        for p in points
        if p.get(accuracy) is not None
        and p["latency_ms"] <= q["latency_ms"]
        and p["weight_bytes"] <= q["weight_bytes"]
    ]
    return max(leads) if leads else None


def search_wall_s(run: RunData) -> float | None:
    """First trial start to last trial end: the search alone (no refine stage, no set-up)."""
    from datetime import datetime, timedelta

    spans = [
        (
            datetime.fromisoformat(t.datetime_start),
            datetime.fromisoformat(t.datetime_start) + timedelta(seconds=t.duration_s),
        )
        for t in run.trials
        if t.datetime_start and t.duration_s is not None
    ]
    if not spans:
        return None
    return (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()


def fits_board(point: Mapping[str, float]) -> dict[str, bool]:
    """MCU board check with the cost model's own rule (`constraint_values`, kB = 1024 B)."""
    from search.hardware import CostReport, constraint_values

    cost = CostReport(
        params=0,
        macs=0,
        weight_bytes=int(point["weight_bytes"]),
        peak_activation_bytes=0,
        memory_bytes=int(point["memory_bytes"]),
        flash_bytes=int(point["flash_bytes"]),
        latency_ms=0.0,
    )
    c = constraint_values(cost, MCU_BOARD)
    return {"fits_sram_320kB": c["memory_kb"] <= 0, "fits_flash_1MB": c["flash_kb"] <= 0}


# --- plots: small self-contained SVG (no plotting library on the offline machine) -------------
_SERIES_STYLE = {
    "joint (auto)": ("#1f77b4", "circle"),
    "random": ("#ff7f0e", "triangle"),
    "sequential": ("#2ca02c", "square"),
}


def _log_ticks(lo: float, hi: float) -> list[float]:
    for mantissas in ((1, 2, 3, 5), tuple(range(1, 10))):  # finer when the range is narrow
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= m * 10.0**e <= hi
        ]
        if len(ticks) >= 3:
            break
    return ticks or [lo, hi]


def _marker(kind: str, x: float, y: float, color: str, r: float = 4.0) -> str:
    if kind == "triangle":
        pts = f"{x:.1f},{y - r:.1f} {x - r:.1f},{y + r:.1f} {x + r:.1f},{y + r:.1f}"
        return f'<polygon points="{pts}" fill="none" stroke="{color}" stroke-width="1.4"/>'
    if kind == "square":
        return (
            f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
            f'fill="none" stroke="{color}" stroke-width="1.4"/>'
        )
    if kind == "cross":
        return (
            f'<path d="M{x - r - 1:.1f},{y - r - 1:.1f}L{x + r + 1:.1f},{y + r + 1:.1f}'
            f'M{x - r - 1:.1f},{y + r + 1:.1f}L{x + r + 1:.1f},{y - r - 1:.1f}" '
            f'stroke="{color}" stroke-width="2.2"/>'
        )
    return (
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{color}" fill-opacity="0.55" '
        f'stroke="{color}"/>'
    )


def _fmt_tick(v: float, unit: str) -> str:
    if unit == "bytes":
        return f"{v / 1024:g} kB"
    return f"{v:g}"


def pareto_svg(
    title: str,
    series: Mapping[str, Sequence[Mapping[str, float]]],
    baselines: Mapping[str, Mapping[str, float]],
    *,
    latency_budget: float | None,
    accuracy_floor: float | None,
    accuracy: str = "val_accuracy",
) -> str:
    """Two panels (accuracy vs predicted latency, accuracy vs weight bytes), log x axes."""
    W, H, pad_l, pad_r, pad_t, pad_b, gap = 980, 450, 60, 20, 40, 70, 70
    pw = (W - pad_l - pad_r - gap) / 2
    ph = H - pad_t - pad_b - 70  # room for the legend under the panels
    pts = [p for s in series.values() for p in s] + list(baselines.values())
    if not pts:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="60"><text x="10" '
            f'y="30">{escape(title)}: nothing to plot</text></svg>'
        )
    accs = [p[accuracy] for p in pts]
    y_lo = min(accs + ([accuracy_floor] if accuracy_floor else [])) - 0.01
    y_hi = min(1.0, max(accs) + 0.01)
    y_lo = min(y_lo, y_hi - 0.02)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for k, (key, label, unit) in enumerate(
        (
            ("latency_ms", "predicted latency (ms, log)", "ms"),
            ("weight_bytes", "weight bytes (log)", "bytes"),
        )
    ):
        x0 = pad_l + k * (pw + gap)
        xs = [p[key] for p in pts if p[key] > 0]
        if key == "latency_ms" and latency_budget:
            xs.append(latency_budget)
        lo, hi = min(xs) / 1.25, max(xs) * 1.25

        def sx(v: float, x0: float = x0, lo: float = lo, hi: float = hi) -> float:
            return x0 + pw * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

        def sy(v: float) -> float:
            return pad_t + ph * (1 - (v - y_lo) / (y_hi - y_lo))

        out.append(
            f'<rect x="{x0}" y="{pad_t}" width="{pw:.1f}" height="{ph}" fill="none" '
            f'stroke="#888"/>'
        )
        scale = 1024.0 if unit == "bytes" else 1.0  # byte ticks at round kB values
        for t in (scale * v for v in _log_ticks(lo / scale, hi / scale)):
            out.append(
                f'<line x1="{sx(t):.1f}" y1="{pad_t + ph}" x2="{sx(t):.1f}" '
                f'y2="{pad_t + ph + 4}" stroke="#888"/>'
                f'<text x="{sx(t):.1f}" y="{pad_t + ph + 16}" text-anchor="middle">'
                f"{_fmt_tick(t, unit)}</text>"
            )
        step = 0.01 if y_hi - y_lo <= 0.12 else 0.05
        v = math.ceil(y_lo / step) * step
        while v <= y_hi + 1e-9:
            out.append(
                f'<line x1="{x0}" y1="{sy(v):.1f}" x2="{x0 + pw:.1f}" y2="{sy(v):.1f}" '
                f'stroke="#eee"/><text x="{x0 - 4}" y="{sy(v) + 4:.1f}" '
                f'text-anchor="end">{v:.2f}</text>'
            )
            v += step
        out.append(
            f'<text x="{x0 + pw / 2:.1f}" y="{pad_t + ph + 34}" text-anchor="middle">'
            f"{label}</text>"
        )
        out.append(
            f'<text x="{x0 - 42}" y="{pad_t + ph / 2:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 {x0 - 42} {pad_t + ph / 2:.1f})">'
            f"{'val' if accuracy == 'val_accuracy' else 'test'} accuracy</text>"
        )
        if accuracy_floor and y_lo < accuracy_floor < y_hi:
            out.append(
                f'<line x1="{x0}" y1="{sy(accuracy_floor):.1f}" x2="{x0 + pw:.1f}" '
                f'y2="{sy(accuracy_floor):.1f}" stroke="#c00" stroke-dasharray="4 3"/>'
            )
        if key == "latency_ms" and latency_budget:
            out.append(
                f'<line x1="{sx(latency_budget):.1f}" y1="{pad_t}" '
                f'x2="{sx(latency_budget):.1f}" y2="{pad_t + ph}" stroke="#c00" '
                f'stroke-dasharray="4 3"/>'
            )
        for name, points in series.items():
            color, kind = _SERIES_STYLE.get(name, ("#555", "circle"))
            for p in points:
                if p[key] > 0:
                    out.append(
                        _marker(kind, sx(p[key]), sy(min(max(p[accuracy], y_lo), y_hi)), color)
                    )
        for i, p in enumerate(baselines.values()):
            x, y = sx(p[key]), sy(min(max(p[accuracy], y_lo), y_hi))
            out.append(_marker("cross", x, y, "#000"))
            out.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" font-size="10">B{i + 1}</text>')
    # Legend under the panels.
    ly = H - 80
    items = [(name, *_SERIES_STYLE.get(name, ("#555", "circle"))) for name in series]
    x = pad_l
    for name, color, kind in items:
        out.append(_marker(kind, x, ly, color))
        out.append(f'<text x="{x + 10}" y="{ly + 4}">{escape(name)} front</text>')
        x += 150
    out.append(_marker("cross", x, ly, "#000"))
    out.append(f'<text x="{x + 10}" y="{ly + 4}">manual baselines:</text>')
    for i, name in enumerate(baselines):
        out.append(
            f'<text x="{x + 110 + i * 0}" y="{ly + 4 + 14 * i}">B{i + 1} '
            f"{escape(BASELINE_LABELS.get(name, name))}</text>"
        )
    out.append(
        f'<text x="{pad_l}" y="{H - 8}" fill="#c00">dashed: latency budget and the '
        f"{MAX_DROP:.0%} accuracy-drop floor</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


# --- the benchmark -----------------------------------------------------------------------------
def plan_units(args: argparse.Namespace, workdir: Path, cache: Path) -> list[dict[str, Any]]:
    common = {
        "workdir": str(workdir),
        "cache": str(cache),
        "threads": args.threads,
        "trials": args.trials,
    }
    units: list[dict[str, Any]] = [
        {**common, "id": "baselines", "kind": "baselines", "targets": list(args.targets)}
    ]
    for target in args.targets:
        for seed in args.seeds:
            for sampler in ("auto", "random"):
                units.append(
                    {
                        **common,
                        "id": f"{target}-{sampler}-s{seed}",
                        "kind": "search",
                        "target": target,
                        "sampler": sampler,
                        "seed": seed,
                        "refine": sampler == "auto",
                    }
                )
            units.append(
                {
                    **common,
                    "id": f"{target}-sequential-s{seed}",
                    "kind": "sequential",
                    "target": target,
                    "seed": seed,
                    "prune_space": str(workdir / "spaces" / "prune_only.yaml"),
                    "quant_space": str(workdir / "spaces" / "quantize_only.yaml"),
                }
            )
    for target in args.sampler_targets:
        for seed in args.sampler_seeds:
            for sampler in EXTRA_SAMPLERS:
                units.append(
                    {
                        **common,
                        "id": f"{target}-{sampler}-s{seed}",
                        "kind": "search",
                        "target": target,
                        "sampler": sampler,
                        "seed": seed,
                    }
                )

    # Longest first (MCU searches train students; phone plans are mostly rejected or cheap),
    # so two workers finish together.
    def weight(u: dict[str, Any]) -> int:
        return {"baselines": 0}.get(u["kind"], 1 if u.get("target") == "mcu" else 3) + (
            u["kind"] == "sequential"
        )

    return sorted(units, key=weight)


def run_units(units: list[dict[str, Any]], jobs: int) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if jobs <= 1:
        for u in units:
            done[u["id"]] = _unit(u)
            log(f"{u['id']}: done in {done[u['id']]['wall_s']:.0f} s")
        return done
    # spawn: each worker starts torch fresh with its own thread setting.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_unit, u): u["id"] for u in units}
        for f in as_completed(futures):
            r = f.result()
            done[r["id"]] = r
            log(f"{r['id']}: done in {r['wall_s']:.0f} s ({len(done)}/{len(units)})")
    return done


class HeldOutScorer:
    """Test accuracy of a trial's saved weights, rebuilt through `search.pipeline.build`."""

    def __init__(self) -> None:
        from search.tasks import load_task

        exp = experiment("score", "mcu", out=Path("/nonexistent-unused"))
        self.task = load_task(exp, log=lambda m: None)
        self.cache: dict[str, float | None] = {}

    def __call__(self, plan: Mapping[str, Any] | None, weights: str | None) -> float | None:
        from search.pipeline import build
        from search.tasks import load_state_dict_file

        if not weights or not plan or not Path(weights).is_file():
            return None
        if weights not in self.cache:
            compressed = build(CompressionPlan.from_dict(plan), self.task)
            state = load_state_dict_file(Path(weights), file=weights, field_name="weights")
            compressed.model.load_state_dict(state)
            self.cache[weights] = self.task.evaluate(compressed.model.eval(), "test")["accuracy"]
        return self.cache[weights]


def analyse(args: argparse.Namespace, done: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    baselines = done["baselines"]["baselines"]
    scorer = HeldOutScorer()

    def runs_of(uid: str) -> list[RunData]:
        return [load_run(url, name) for url, name in done[uid]["runs"]]

    base_test = baselines["fp32_base"]["search"]["test_accuracy"]
    res: dict[str, Any] = {
        k: {}
        for k in (
            "hv_ratio_vs_random",
            "hv_ratio_vs_sequential",
            "hv_ratio_vs_random_sampler_only",
            "hv_ratio_ceiling_vs_random",
            "hv_log_ratio_vs_random",
            "hv_log_ratio_vs_sequential",
            "baselines_dominated",
            "best_speedup_vs_int8_at_1pt",
            "search_time",
        )
    }
    detail: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    times: dict[str, dict[str, list[float]]] = {}

    def as_(rows: Sequence[Mapping[str, Any]], which: str) -> list[dict[str, Any]]:
        """Front rows with `val/test_accuracy` taken from the `which` figures."""
        key = "" if which == "search" else f"_{which}"
        return [
            {
                **r,
                "val_accuracy": r[f"val_accuracy{key}"],
                "test_accuracy": r[f"test_accuracy{key}"],
            }
            for r in rows
            if r[f"test_accuracy{key}"] is not None
        ]

    for target in args.targets:
        budgets = TARGETS[target]
        int8_latency = baselines["int8_ptq"]["cost"][target]["latency_ms"]
        base_rows = {
            budget: {
                b: {**baselines[b]["cost"][target], **baselines[b][budget]} for b in BASELINES
            }
            for budget in ("search", "refined")
        }
        per_seed: list[dict[str, Any]] = []
        series: dict[str, list[dict[str, Any]]] = {
            "joint (auto)": [],
            "random": [],
            "sequential": [],
        }
        for seed in args.seeds:
            auto = runs_of(f"{target}-auto-s{seed}")[0]
            rnd = runs_of(f"{target}-random-s{seed}")[0]
            seq = merged_run(runs_of(f"{target}-sequential-s{seed}"), budgets)
            for name, run in (("auto", auto), ("random", rnd), ("sequential", seq)):
                uid = f"{target}-{name}-s{seed}"
                tt = trial_times(
                    run, None if name == "sequential" else sample_seconds(*done[uid]["runs"][0])
                )
                for k, v in tt.items():
                    times.setdefault(name, {}).setdefault(k, []).extend(v)
            rows = front_points(auto, scorer)
            series["joint (auto)"] += [{**r, "seed": seed} for r in rows]
            for name, run in (("random", rnd), ("sequential", seq)):
                series[name] += [
                    {**r, "seed": seed} for r in front_points(run, lambda plan, weights: None)
                ]
            figures: dict[str, Any] = {}
            # reported: the refined front vs baselines trained as long; search: both short.
            for which, budget in (("reported", "refined"), ("search", "search")):
                front = as_(rows, which)
                small = smallest_within(front, base_test)
                figures[which] = {
                    "dominated_test": {
                        b: weakly_dominates_any(front, q) for b, q in base_rows[budget].items()
                    },
                    "dominated_val": {
                        b: weakly_dominates_any(front, q, accuracy="val_accuracy")
                        for b, q in base_rows[budget].items()
                    },
                    "test_margin": {
                        b: dominance_margin(front, q) for b, q in base_rows[budget].items()
                    },
                    "speedup_vs_int8_at_1pt": best_speedup(int8_latency, front, base_test),
                    "smallest_within_1pt": small,
                    "size_reduction": (
                        baselines["fp32_base"]["cost"][target]["weight_bytes"]
                        / small["weight_bytes"]
                    )
                    if small
                    else None,
                }
            per_seed.append(
                {
                    "seed": seed,
                    "hv": {
                        "auto": auto.hypervolume,
                        "random": rnd.hypervolume,
                        "sequential": seq.hypervolume,
                    },
                    "counts": {
                        "auto": auto.counts(),
                        "random": rnd.counts(),
                        "sequential": seq.counts(),
                    },
                    "hv_sampler_only": {
                        "auto": without_recipes(auto).hypervolume,
                        "random": without_recipes(rnd).hypervolume,
                        "sequential": without_recipes(seq).hypervolume,
                    },
                    # HV <= 1 and every warm-started run holds the recipes, so no sampler can beat
                    # random by more than 1 / (random's recipes-only HV).
                    "hv_recipes_only": {
                        "auto": without_recipes(auto, only=True).hypervolume,
                        "random": without_recipes(rnd, only=True).hypervolume,
                    },
                    "hv_log": {
                        "auto": log_hypervolume(auto),
                        "random": log_hypervolume(rnd),
                        "sequential": log_hypervolume(seq),
                    },
                    "hv_ratio_vs_random": ratio(auto.hypervolume, rnd.hypervolume),
                    "hv_ratio_vs_sequential": ratio(auto.hypervolume, seq.hypervolume),
                    **figures["reported"],
                    "search_time": figures["search"],
                    "stage_one_pick": done[f"{target}-sequential-s{seed}"].get("stage_one_pick"),
                    "front": rows,
                }
            )
        res["hv_ratio_vs_random"][target] = median(s["hv_ratio_vs_random"] for s in per_seed)
        res["hv_ratio_ceiling_vs_random"][target] = median(
            ratio(1.0, s["hv_recipes_only"]["random"]) for s in per_seed
        )
        res["hv_ratio_vs_random_sampler_only"][target] = median(
            ratio(s["hv_sampler_only"]["auto"], s["hv_sampler_only"]["random"]) for s in per_seed
        )
        res["hv_ratio_vs_sequential"][target] = median(
            s["hv_ratio_vs_sequential"] for s in per_seed
        )
        for other in ("random", "sequential"):
            res[f"hv_log_ratio_vs_{other}"][target] = median(
                ratio(s["hv_log"]["auto"], s["hv_log"][other]) for s in per_seed
            )
        res["baselines_dominated"][target] = {
            b: all(s["dominated_test"][b] for s in per_seed) for b in BASELINES
        }
        res["best_speedup_vs_int8_at_1pt"][target] = median(
            s["speedup_vs_int8_at_1pt"] for s in per_seed
        )
        res["search_time"][target] = {
            "baselines_dominated": {
                b: all(s["search_time"]["dominated_test"][b] for s in per_seed) for b in BASELINES
            },
            "best_speedup_vs_int8_at_1pt": median(
                s["search_time"]["speedup_vs_int8_at_1pt"] for s in per_seed
            ),
            "size_reduction": median(s["search_time"]["size_reduction"] for s in per_seed),
        }
        if target == "mcu":
            red = [s for s in per_seed if s["size_reduction"] is not None]
            fits = [fits_board(s["smallest_within_1pt"]) for s in red]
            res["mcu_size_reduction"] = {
                "ratio": median(s["size_reduction"] for s in red),
                "fits_sram_320kB": bool(fits) and all(f["fits_sram_320kB"] for f in fits),
                "fits_flash_1MB": bool(fits) and all(f["fits_flash_1MB"] for f in fits),
                "fp32_weight_bytes": baselines["fp32_base"]["cost"]["mcu"]["weight_bytes"],
                "per_seed": [s["size_reduction"] for s in per_seed],
                "seeds_with_a_point_within_1pt": len(red),
            }
        floor = baselines["latency_floor"]["cost"][target]["latency_ms"]
        detail[target] = {
            "budgets": budgets,
            "baselines": base_rows,
            "per_seed": per_seed,
            "fp32_base": baselines["fp32_base"]["cost"][target],
            "latency_floor": {
                "plan": baselines["latency_floor"]["plan"],
                "latency_ms": floor,
                "max_speedup_vs_int8": int8_latency / floor,
            },
        }
        plots[target] = {"series": series, "baselines": base_rows["search"]}
        detail[target]["fronts_search_time"] = {
            name: [
                {
                    k: p[k]
                    for k in (
                        "seed",
                        "trial",
                        "plan",
                        "val_accuracy",
                        "latency_ms",
                        "weight_bytes",
                    )
                }
                for p in pts
            ]
            for name, pts in series.items()
        }

    # Samplers: auto (= tpe) and random from the main runs, the others from their own runs.
    samplers: dict[str, Any] = {}
    for target in args.sampler_targets:
        rows: dict[str, Any] = {}
        for sampler in ("auto", "random", *EXTRA_SAMPLERS):
            hvs, outside, counts, walls, suggest = [], [], [], [], []
            for seed in args.sampler_seeds:
                uid = f"{target}-{sampler}-s{seed}"
                if uid not in done:
                    continue
                run = runs_of(uid)[0]
                hvs.append(run.hypervolume)
                walls.append(search_wall_s(run))
                tt = trial_times(run, sample_seconds(*done[uid]["runs"][0]))
                outside += tt["outside_build_s"]
                suggest += tt["sample_s"]
                counts.append(run.counts())
                times.setdefault(sampler, {})
                if sampler in EXTRA_SAMPLERS:
                    for k, v in tt.items():
                        times[sampler].setdefault(k, []).extend(v)
            if hvs:
                rows["tpe (= auto)" if sampler == "auto" else sampler] = {
                    "hv_per_seed": hvs,
                    "hv_median": median(hvs),
                    "hv_mean": statistics.fmean(hvs),
                    "sampling_and_storage_s_median": median(outside),
                    "suggest_s_median": median(suggest),
                    "feasible_per_seed": [c["feasible"] for c in counts],
                    "search_wall_s_per_seed": walls,
                }
        samplers[target] = rows

    auto_t = times.get("auto", {})
    rejected = auto_t.get("rejected_ms", []) + times.get("random", {}).get("rejected_ms", [])
    total_over = sum(auto_t.get("overhead_s", []))
    total_trained = sum(auto_t.get("trained_s", []))
    res["overhead_fraction"] = median(auto_t.get("overhead_frac", []))
    res["rejected_plan_ms"] = median(rejected)
    res["timing"] = {
        "overhead_fraction_definition": "median over trained trials of the auto runs of "
        "(trial duration - train_s) / trial duration; train_s = recovery + evaluation",
        "overhead_fraction_pooled": total_over / total_trained if total_trained else None,
        "overhead_fraction_pooled_definition": "sum over trained trials of the auto runs of "
        "(trial duration - train_s) / sum of their durations: the share of trained-trial time "
        "that is the search's own",
        "overhead_fraction_base_median": median(auto_t.get("overhead_frac_base", [])),
        "overhead_fraction_student_median": median(auto_t.get("overhead_frac_student", [])),
        "trained_trials": len(auto_t.get("trained_s", [])),
        "trained_trials_base": len(auto_t.get("overhead_frac_base", [])),
        "stopped_early": len(auto_t.get("stopped_s", [])),
        "stopped_trial_s_median": median(auto_t.get("stopped_s", [])),
        "duplicates": len(auto_t.get("duplicate_ms", [])),
        "duplicate_ms_median": median(auto_t.get("duplicate_ms", [])),
        "overhead_s_median": median(auto_t.get("overhead_s", [])),
        "overhead_outside_build_s_median": median(auto_t.get("outside_build_s", [])),
        "suggest_s_median": median(auto_t.get("sample_s", [])),
        "trained_trial_s_median": median(auto_t.get("trained_s", [])),
        "rejected_plan_ms_definition": "median Optuna duration of over-budget trials of the "
        "auto and random runs (sample, build, cost, record; never trained)",
        "rejected_build_ms_median": median(
            auto_t.get("rejected_build_ms", [])
            + times.get("random", {}).get("rejected_build_ms", [])
        ),
        "rejected_plan_ms_p90": (
            statistics.quantiles(rejected, n=10)[-1] if len(rejected) >= 2 else None
        ),
        "rejected_plans": len(rejected),
        "per_method_overhead_fraction_median": {
            m: median(v.get("overhead_frac", [])) for m, v in times.items()
        },
    }
    res["samplers"] = samplers
    res["detail"] = detail
    return {"results": res, "plots": plots}


def verdicts(res: Mapping[str, Any]) -> dict[str, Any]:
    """Each figure against its target: value, met, and the shortfall when missed."""
    out: dict[str, Any] = {}

    def judge(key: str, value: float | None, *, at_most: bool = False) -> dict[str, Any]:
        goal = GOALS[key]
        if value is None:
            return {"value": None, "goal": goal, "met": False, "note": "no qualifying point"}
        met = value <= goal if at_most else value >= goal
        return {
            "value": value,
            "goal": ("<= " if at_most else ">= ") + f"{goal:g}",
            "met": met,
            "shortfall": None if met else (value - goal if at_most else goal - value),
        }

    for key in ("hv_ratio_vs_random", "hv_ratio_vs_sequential", "best_speedup_vs_int8_at_1pt"):
        out[key] = {t: judge(key, v) for t, v in res[key].items()}
    if "mcu_size_reduction" in res:
        m = res["mcu_size_reduction"]
        out["mcu_size_reduction"] = {
            **judge("mcu_size_reduction", m["ratio"]),
            "fits_board": m["fits_sram_320kB"] and m["fits_flash_1MB"],
        }
        out["mcu_size_reduction"]["met"] &= out["mcu_size_reduction"]["fits_board"]
    out["baselines_dominated"] = {
        t: {"met": all(v.values()), "not_dominated": [b for b, ok in v.items() if not ok]}
        for t, v in res["baselines_dominated"].items()
    }
    out["overhead_fraction"] = judge("overhead_fraction", res["overhead_fraction"], at_most=True)
    out["rejected_plan_ms"] = judge("rejected_plan_ms", res["rejected_plan_ms"], at_most=True)
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else ("inf" if math.isinf(x) else x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def _pt(v: float | None) -> str:
    """An accuracy difference in points (and test images: 1 of 360 is 0.28 points)."""
    return "-" if v is None else f"{100 * v:+.2f} pt"


def markdown(doc: Mapping[str, Any], svgs: Mapping[str, str]) -> str:
    res, cfg, ver = doc, doc["config"], doc["targets"]
    rec, ref = cfg["recovery"], cfg["refine_joint_runs"]
    lines = [
        "# Search quality and speed",
        "",
        f"Generated by `{cfg['command']}` in {cfg['wall_minutes']:.1f} minutes on "
        f"{cfg['machine']} ({cfg['jobs']} worker processes x {cfg['threads']} torch thread; "
        "other engineers' jobs were running too). Every number below is read from "
        "`search_quality.json`.",
        "",
        f"Task: built-in digits (8x8 images, reference CNN val accuracy "
        f"{cfg['base_val_accuracy']:.4f}, test {cfg['base_test_accuracy']:.4f}; the test split "
        f"has 360 images, so one image is 0.28 points). Space: `joint`. Objectives: val accuracy "
        f"up, predicted latency down, weight bytes down; constraints: the budgets below and at "
        f"most {MAX_DROP:.0%} val accuracy drop. {cfg['trials']} completed trials per search, "
        f"seeds {cfg['seeds']}.",
        "",
        f"Recovery while searching: the product's defaults, {rec['epochs']} epochs for plans "
        f"on the base network, {rec['student_epochs']} for students (from scratch). The "
        f"joint (`auto`) runs end with the refine stage: their front (up to "
        f"{ref['refine_top_k']} plans) re-trained for {ref['refine_epochs']} epochs (students: "
        f"{ref['refine_student_epochs']}). Hypervolumes compare "
        "search-time fronts; dominance, speed-up and size use the refined front's TEST "
        "accuracy against baselines trained as long (the search-time figures are kept beside). "
        "The manual baselines go through the same pipeline (`search.pipeline.build/recover`, "
        "`search.hardware.estimate_cost`), seed 0; PTQ is calibrated, not trained.",
        "",
        "| target | budgets (on top of the profile's defaults) |",
        "|---|---|",
        *[f"| {t} | `{json.dumps(b)}` |" for t, b in cfg["budgets"].items()],
        "",
        "## Figures vs targets",
        "",
        "| figure | target | value | goal | met |",
        "|---|---|---|---|---|",
    ]
    for key in ("hv_ratio_vs_random", "hv_ratio_vs_sequential", "best_speedup_vs_int8_at_1pt"):
        for t, v in ver[key].items():
            lines.append(
                f"| `{key}` (median of seeds) | {t} | {_f(v['value'])} | {v['goal']} | "
                f"{_f(v['met'])} |"
            )
    if "mcu_size_reduction" in ver:
        m, mr = ver["mcu_size_reduction"], res["mcu_size_reduction"]
        lines.append(
            f"| `mcu_size_reduction` (fp32 weight bytes / smallest front point within 1 "
            f"point test accuracy, median) | mcu | {_f(m['value'], 1)}x; fits 320 kB "
            f"SRAM: {_f(mr['fits_sram_320kB'])}, 1 MB flash: "
            f"{_f(mr['fits_flash_1MB'])} | {m['goal']} and fits | {_f(m['met'])} |"
        )
    for t, v in ver["baselines_dominated"].items():
        which = ", ".join(f"{b}: {_f(ok)}" for b, ok in res["baselines_dominated"][t].items())
        lines.append(
            f"| `baselines_dominated` (test accuracy, in every seed) | {t} | {which} | "
            f"all | {_f(v['met'])} |"
        )
    for key, unit in (("overhead_fraction", ""), ("rejected_plan_ms", " ms")):
        v = ver[key]
        lines.append(
            f"| `{key}` | both | {_f(v['value'], 3)}{unit} | {v['goal']}{unit} | {_f(v['met'])} |"
        )
    for t, v in res["hv_ratio_ceiling_vs_random"].items():
        lines.append(
            f"| extra: `hv_ratio_ceiling_vs_random` (1 / random's recipes-only HV: "
            f"the most any sampler could reach) | {t} | {_f(v)} | - | - |"
        )
    for key, what in (("random", "random"), ("sequential", "sequential")):
        for t, v in res[f"hv_log_ratio_vs_{key}"].items():
            lines.append(
                f"| extra: `hv_log_ratio_vs_{key}` (log-scale hypervolume, below; "
                f"auto / {what}) | {t} | {_f(v)} | - | - |"
            )
    for t, v in res["hv_ratio_vs_random_sampler_only"].items():
        lines.append(
            f"| extra: `hv_ratio_vs_random_sampler_only` (recipe trials left out) | "
            f"{t} | {_f(v)} | - | - |"
        )
    for t, st in res["search_time_figures"].items():
        dom = ", ".join(f"{b}: {_f(ok)}" for b, ok in st["baselines_dominated"].items())
        lines.append(
            f"| extra: search-time front (before refine) | {t} | speed-up "
            f"{_f(st['best_speedup_vs_int8_at_1pt'])}, size "
            f"{_x(st['size_reduction'])}; dominated: {dom} | - | - |"
        )
    lines += [
        "",
        "## Hypervolume per seed",
        "",
        "`search.pareto`'s definition: each objective becomes a loss normalised by the "
        "base model's value (accuracy `1 - a/a_base`, latency `l/l_base`, weight bytes "
        "`b/b_base`), reference point (1, 1, 1), feasible trained trials only, val "
        "accuracy. The sequential search's trials (both stages) are re-scored against the "
        "final budgets. The last column leaves out the 4 warm-start recipe trials (what "
        "each sampler found by itself). `log HV` is the extra log-scale definition "
        "(`log_hypervolume`): accuracy drop in units of the allowed 3 points (reference: the "
        "floor), latency and weight bytes as log10 of their ratio to the base model "
        "(reference: the base; one unit per decade saved). Under the first definition a 10x "
        "and a 50x smaller model differ by 0.08 of an axis; under this one by 0.7.",
        "",
        "| target | seed | joint (auto) | random | sequential | auto/random | "
        "auto/sequential | feasible auto/random/seq | stage-1 pick | without recipes: "
        "auto / random / seq | log HV auto / random / seq |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, d in res["detail"].items():
        for s in d["per_seed"]:
            c, h = s["counts"], s["hv_sampler_only"]
            lines.append(
                f"| {t} | {s['seed']} | {s['hv']['auto']:.4f} | {s['hv']['random']:.4f} | "
                f"{s['hv']['sequential']:.4f} | {_f(s['hv_ratio_vs_random'])} | "
                f"{_f(s['hv_ratio_vs_sequential'])} | {c['auto']['feasible']}/"
                f"{c['random']['feasible']}/{c['sequential']['feasible']} | "
                f"{s['stage_one_pick']} | {h['auto']:.4f} / {h['random']:.4f} / "
                f"{h['sequential']:.4f} | {s['hv_log']['auto']:.3f} / "
                f"{s['hv_log']['random']:.3f} / {s['hv_log']['sequential']:.3f} |"
            )
    lines += [
        "",
        "## Manual baselines",
        "",
        "| target | baseline | plan | latency ms | weight bytes | val / test acc (search "
        "budget) | val / test acc (refine budget) | dominated in seeds | best test "
        "lead of a cheaper front point, per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t, d in res["detail"].items():
        for b in BASELINES:
            srow, rrow = d["baselines"]["search"][b], d["baselines"]["refined"][b]
            n = sum(s["dominated_test"][b] for s in d["per_seed"])
            margins = ", ".join(_pt(s["test_margin"][b]) for s in d["per_seed"])
            lines.append(
                f"| {t} | {BASELINE_LABELS[b]} | {doc['baseline_plans'][b]} | "
                f"{srow['latency_ms']:.4g} | {srow['weight_bytes']:.0f} | "
                f"{srow['val_accuracy']:.4f} / {srow['test_accuracy']:.4f} | "
                f"{rrow['val_accuracy']:.4f} / {rrow['test_accuracy']:.4f} | "
                f"{n}/{len(d['per_seed'])} | {margins} |"
            )
        fp, fl = d["fp32_base"], d["latency_floor"]
        lines.append(
            f"| {t} | fp32 reference | base | {fp['latency_ms']:.4g} | "
            f"{fp['weight_bytes']:.0f} | {cfg['base_val_accuracy']:.4f} / "
            f"{cfg['base_test_accuracy']:.4f} | - | - | - |"
        )
        lines.append(
            f"| {t} | latency floor (cost only) | {fl['plan']} | "
            f"{fl['latency_ms']:.4g} | - | - | - | - | at most "
            f"{fl['max_speedup_vs_int8']:.2f}x faster than int8 on the base network |"
        )
    lines += [
        "",
        "## Best front points within 1 point of the base test accuracy",
        "",
        "Refined front (the reported one); `search-time` is the same before refine.",
        "",
        "| target | seed | speed-up vs int8 (search-time) | smallest point within 1 point "
        "| weight bytes | latency ms | test acc | size reduction (search-time) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, d in res["detail"].items():
        for s in d["per_seed"]:
            p, st = s["smallest_within_1pt"], s["search_time"]
            cells = (
                (
                    f"{p['plan']} | {p['weight_bytes']:.0f} | {p['latency_ms']:.4g} | "
                    f"{p['test_accuracy']:.4f}"
                )
                if p
                else "- | - | - | -"
            )
            lines.append(
                f"| {t} | {s['seed']} | {_f(s['speedup_vs_int8_at_1pt'])} "
                f"({_f(st['speedup_vs_int8_at_1pt'])}) | {cells} | "
                f"{_x(s['size_reduction'])} ({_x(st['size_reduction'])}) |"
            )
    lines += [
        "",
        "## Samplers",
        "",
        f"Same experiment, {cfg['trials']} trials, seeds {cfg['sampler_seeds']}; `tpe` is "
        "`auto` (the same sampler settings). `sampling+storage` is a trained trial's time "
        "outside suggest/build/cost and recovery (relative sampling and the storage "
        "writes), median; search wall is the first trial's start to the last one's end.",
        "",
        "| target | sampler | HV median | HV per seed | feasible trials per seed | "
        "sampling+storage s | suggest s | search wall s per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, rows in res["samplers"].items():
        for name, r in rows.items():
            walls = ", ".join(f"{w:.0f}" for w in r["search_wall_s_per_seed"] if w is not None)
            lines.append(
                f"| {t} | {name} | {r['hv_median']:.4f} | "
                f"{', '.join(f'{h:.4f}' for h in r['hv_per_seed'])} | "
                f"{r['feasible_per_seed']} | {_f(r['sampling_and_storage_s_median'], 3)} "
                f"| {_f(r['suggest_s_median'], 4)} | {walls} |"
            )
    tm = res["timing"]
    lines += [
        "",
        "## Search overhead",
        "",
        f"- {tm['overhead_fraction_definition']}: **{_f(res['overhead_fraction'], 3)}** "
        f"(median "
        f"overhead {_f(tm['overhead_s_median'], 3)} s, of which "
        f"{_f(tm['overhead_outside_build_s_median'], 3)} s outside suggest/build/cost, "
        f"i.e. relative sampling and storage writes; suggest alone "
        f"{_f(tm['suggest_s_median'], 4)} s; "
        f"median trained trial {_f(tm['trained_trial_s_median'])} s).",
        f"- By kind of plan (median fraction): on the user's network "
        f"{_f(tm['overhead_fraction_base_median'], 3)} ({tm['trained_trials_base']} trials, "
        f"{RECOVERY['epochs']} recovery epochs of an 8x8 CNN: well under a second), students "
        f"{_f(tm['overhead_fraction_student_median'], 3)} "
        f"({tm['trained_trials'] - tm['trained_trials_base']} trials). "
        f"{tm['overhead_fraction_pooled_definition']}: "
        f"**{_f(tm['overhead_fraction_pooled'], 3)}**.",
        f"- Stopped at the recovery checkpoint: {tm['stopped_early']} trials of the auto runs "
        f"(median {_f(tm['stopped_trial_s_median'])} s each). Repeated plans answered from "
        f"their first trial: {tm['duplicates']} (median {_f(tm['duplicate_ms_median'], 1)} ms "
        f"each; they do not count toward the {cfg['trials']} trials).",
        f"- {tm['rejected_plan_ms_definition']}: **{_f(res['rejected_plan_ms'], 1)} ms** "
        f"(p90 {_f(tm['rejected_plan_ms_p90'], 1)} ms; suggest+build+cost alone, median "
        f"{_f(tm['rejected_build_ms_median'], 1)} ms; {tm['rejected_plans']} plans).",
        "- Median overhead fraction per method (it depends on how long that method's "
        "trained trials recover): "
        + ", ".join(
            f"{m} {_f(v, 3)}" for m, v in tm["per_method_overhead_fraction_median"].items()
        )
        + ".",
        "",
        "## Pareto fronts",
        "",
        "Search-time fronts of every seed (val accuracy, as the search saw it) and the "
        "manual baselines with the search's recovery budget (B1-B3; they are not held to "
        "the budgets). Dashed: the latency budget and the accuracy floor.",
        "",
    ]
    for t, name in svgs.items():
        lines += [f"![{t} Pareto fronts]({name})", ""]
    if doc.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in doc["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--sampler-seeds", type=int, nargs="*", default=list(SAMPLER_SEEDS))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--sampler-targets", nargs="*", default=list(SAMPLER_TARGETS))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (runs in parallel)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "experiments" / "runs" / "search_quality"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--note", action="append", default=[], help="a line for the md's notes")
    args = parser.parse_args()
    args.sampler_targets = [t for t in args.sampler_targets if t in args.targets]
    args.sampler_seeds = [s for s in args.sampler_seeds if s in args.seeds]
    start = time.perf_counter()

    workdir = args.workdir.resolve()
    # A fresh run every time: the studies would otherwise resume and skew the timings.
    if workdir.exists():
        if not (workdir / ".search_quality").is_file():
            sys.exit(f"error: {workdir} exists and was not made by this benchmark")
        shutil.rmtree(workdir)
    (workdir / "spaces").mkdir(parents=True)
    (workdir / ".search_quality").write_text("made by experiments/benchmarks/search_quality.py\n")
    (workdir / "spaces" / "prune_only.yaml").write_text(yaml.safe_dump(PRUNE_SPACE))
    (workdir / "spaces" / "quantize_only.yaml").write_text(yaml.safe_dump(QUANT_SPACE))
    # The base model trains once and is shared by every run (kept across benchmark runs).
    cache = Path(
        os.environ.get("COMPRESS_SEARCH_CACHE")
        or ROOT / "experiments" / "runs" / "search_quality-cache"
    ).resolve()
    os.environ["COMPRESS_SEARCH_CACHE"] = str(cache)
    import torch

    torch.set_num_threads(args.threads)
    from search.tasks import load_task

    load_task(experiment("warmup", args.targets[0], out=workdir / "warmup"), log=log)

    units = plan_units(args, workdir, cache)
    log(f"{len(units)} units, {args.jobs} worker processes")
    done = run_units(units, args.jobs)
    log("analysing")
    out = analyse(args, done)
    res = out["results"]
    b = done["baselines"]["baselines"]
    command = "python experiments/benchmarks/search_quality.py" + (
        "" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:])
    )
    doc: dict[str, Any] = {
        "hv_ratio_vs_random": res["hv_ratio_vs_random"],
        "hv_ratio_vs_sequential": res["hv_ratio_vs_sequential"],
        # Extra (not targets): the same runs without the 4 warm-start recipe trials, and the
        # largest ratio any sampler could reach against a warm-started random (1 / its
        # recipes-only hypervolume, since a hypervolume is at most 1).
        "hv_ratio_vs_random_sampler_only": res["hv_ratio_vs_random_sampler_only"],
        "hv_ratio_ceiling_vs_random": res["hv_ratio_ceiling_vs_random"],
        # Extra: the same ratios under the log-scale definition (`log_hypervolume`).
        "hv_log_ratio_vs_random": res["hv_log_ratio_vs_random"],
        "hv_log_ratio_vs_sequential": res["hv_log_ratio_vs_sequential"],
        "baselines_dominated": res["baselines_dominated"],
        "best_speedup_vs_int8_at_1pt": res["best_speedup_vs_int8_at_1pt"],
        "mcu_size_reduction": res.get("mcu_size_reduction"),
        "overhead_fraction": res["overhead_fraction"],
        "rejected_plan_ms": res["rejected_plan_ms"],
    }
    doc["targets"] = verdicts(doc)
    doc["config"] = {
        "command": command,
        "wall_minutes": (time.perf_counter() - start) / 60,
        "machine": f"{os.cpu_count()} cores (shared)",
        "jobs": args.jobs,
        "threads": args.threads,
        "trials": args.trials,
        "seeds": args.seeds,
        "sampler_seeds": args.sampler_seeds,
        "targets": args.targets,
        "budgets": {t: TARGETS[t] for t in args.targets},
        "max_accuracy_drop": MAX_DROP,
        "recovery": RECOVERY,
        "refine_joint_runs": REFINE,
        "space": "joint",
        "sequential": {
            "stage_1_space": PRUNE_SPACE,
            "stage_2_space": QUANT_SPACE,
            "split": [args.trials // 2, args.trials - args.trials // 2],
            "stage_1_pick": "feasible front's min-latency plan (accuracy-drop "
            "constraint only in stage 1)",
        },
        "hypervolume": {
            "definition": "search.pareto: minimise v/S, maximise 1 - v/S, S = base "
            "model value; reference point 1.0 per axis; feasible trained trials",
            "reference_point": [1.0, 1.0, 1.0],
            "log_definition": "log_hypervolume (extra): accuracy (a_base - a) / 0.03, "
            "latency and weight bytes log10(v / v_base); reference (1, 0, 0)",
        },
        "base_val_accuracy": b["fp32_base"]["search"]["val_accuracy"],
        "base_test_accuracy": b["fp32_base"]["search"]["test_accuracy"],
        "unit_wall_s": {k: v["wall_s"] for k, v in done.items()},
    }
    doc["baseline_plans"] = {k: v["plan"] for k, v in b.items()}
    doc["search_time_figures"] = res["search_time"]
    doc["timing"] = res["timing"]
    doc["samplers"] = res["samplers"]
    doc["detail"] = res["detail"]
    doc["notes"] = args.note

    args.results.mkdir(parents=True, exist_ok=True)
    svgs = {}
    for target, p in out["plots"].items():
        name = f"search_quality_{target}.svg"
        floor = b["fp32_base"]["search"]["val_accuracy"] - MAX_DROP
        svg = pareto_svg(
            f"{target}: fronts of {len(args.seeds)} seeds, {args.trials} trials each",
            p["series"],
            p["baselines"],
            latency_budget=TARGETS[target]["latency_ms"],
            accuracy_floor=floor,
        )
        (args.results / name).write_text(svg + "\n")
        svgs[target] = name
    (args.results / "search_quality.json").write_text(
        json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n"
    )
    (args.results / "search_quality.md").write_text(markdown(doc, svgs) + "\n")
    log(f"wrote {args.results / 'search_quality.json'} in {doc['config']['wall_minutes']:.1f} min")
    print(json.dumps(_jsonable(doc["targets"]), indent=2))


if __name__ == "__main__":
    main()
