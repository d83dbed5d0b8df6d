"""The search-quality benchmark's runs: the experiments as a user would write them, the `auto`,
`random` and `sequential` arms (the last through `StageObjective`, one stage at a time), the
hand-made baselines, and `unit`, one (space, seed, arm) in a worker process."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _search_quality_settings as settings
import yaml
from _search_quality_settings import (
    BUDGETS,
    MAX_DROP,
    OBJECTIVES,
    RANDOM_SEED_OFFSET,
    RECOVERY,
    RELAXED,
    ROOT,
    SCRIPT,
    STAGES,
    TARGET,
    TRAININGS,
)
from _search_quality_stats import bisect_ratio, pareto_rows

from search.config import Experiment, parse_experiment
from search.objective import TrialObjective
from search.record import (
    COST_KEYS,
    COUNTED,
    StudyAttr,
    TrialAttr,
    TrialStatus,
    metric_of,
    status_of,
    study_attr,
    trial_attr,
    within_limits,
)
from spaces import CompressionPlan


# --- runs --------------------------------------------------------------------------------------
def space_file(space: str, work: Path, sections: Sequence[str] | None = None) -> str:
    """The benchmark's space `space` (or its `sections` only) as a file a user would write."""
    joint = yaml.safe_load((ROOT / "spaces" / "joint.yaml").read_text())
    if space == "no_students":
        joint.pop("architecture")
    keep = {k: v for k, v in joint.items() if k in ("name", "distill", *(sections or joint))}
    path = work / f"space-{space}-{'-'.join(sections or ['all'])}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(keep))
    return str(path)


def experiment(
    name: str,
    out: Path,
    *,
    space: str,
    sampler: str = "auto",
    seed: int = 0,
    trainings: int = TRAININGS,
    budgets: Mapping[str, float] = BUDGETS,
) -> Experiment:
    """An experiment as a user would write it, validated by the real parser."""
    data = {
        "name": name,
        "task": settings.TASK,
        "target": TARGET,
        "space": space,
        "objectives": OBJECTIVES,
        "budgets": dict(budgets),
        "max_accuracy_drop": MAX_DROP,
        "trials": trainings,
        "seed": seed,
        "sampler": sampler,
        "out": str(out),
        "recovery": dict(RECOVERY),
    }
    return parse_experiment(data, str(SCRIPT))


class StageObjective(TrialObjective):
    """A sequential stage: only `stage`'s section is searched, the rest is `fixed`. Before the
    last stage no budget applies, not even the board's flash and SRAM: an engineer prunes a
    float network on a workstation and quantizes it for the board at the end."""

    def __init__(
        self, *args: Any, fixed: CompressionPlan, stage: str, last: bool, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fixed, self.stage, self.last = fixed, stage, last

    def suggest(self, trial: Any) -> CompressionPlan:
        plan = super().suggest(trial)
        kept = {s: getattr(self.fixed, s) for s in STAGES[1:] if s != self.stage}
        return plan.replace(**kept)

    def cost_figures(self, trial: Any, compressed: Any, cost: Any) -> tuple[dict, dict]:
        from search.hardware import constraint_values

        constraints, metrics = super().cost_figures(trial, compressed, cost)
        if not self.last:
            constraints = constraint_values(cost, RELAXED)  # no profile: no board limits
        return constraints, metrics


def trial_rows(
    storage: str, name: str, budgets: Mapping[str, float], *, board: bool = True
) -> list[dict[str, Any]]:
    """Every costed trial, judged against `budgets` with the cost model's own rule (and the
    board's own flash and SRAM unless `board` is False)."""
    import optuna

    from search.hardware import CostReport, constraint_values, load_profile

    profile = load_profile(TARGET)
    study = optuna.load_study(study_name=name, storage=storage)
    base_acc = float(study_attr(study, StudyAttr.BASE_METRICS)["accuracy"])
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        status = status_of(t)
        if metric_of(t, "latency_ms") is None or status == TrialStatus.DUPLICATE:
            continue
        cost = CostReport(**{k: trial_attr(t, k) for k in COST_KEYS})
        limits = constraint_values(cost, budgets, profile=profile if board else None)
        within = within_limits(limits)
        acc = metric_of(t, "accuracy")
        trained = status == TrialStatus.TRAINED
        rows.append(
            {
                "number": t.number,
                "status": str(status),
                "counted": status in COUNTED,
                "recipe": trial_attr(t, TrialAttr.RECIPE),
                "accuracy": acc,
                "latency_ms": cost.latency_ms,
                "weight_bytes": cost.weight_bytes,
                "feasible": trained and within and base_acc - acc <= MAX_DROP + 1e-12,
                "plan": trial_attr(t, TrialAttr.PLAN),
                "plan_text": trial_attr(t, TrialAttr.PLAN_TEXT),
                "weights": trial_attr(t, TrialAttr.WEIGHTS),
            }
        )
    return rows


def _search(exp: Experiment, *, warm: bool = True, **kwargs: Any) -> dict[str, Any]:
    import search.study as study_mod

    keep = study_mod.warm_start
    if not warm:  # the arms compared must not start from the product's start plans
        study_mod.warm_start = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        result = study_mod.run_search(exp, progress=False, log=lambda m: None, **kwargs)
    finally:
        study_mod.warm_start = keep
    return {
        "rows": trial_rows(exp.storage_url, exp.name, BUDGETS),
        "proposals": len(result.study.trials),
        "sensitivity_s": study_attr(result.study, StudyAttr.SENSITIVITY_S),
    }


def stage_pick(rows: Sequence[Mapping[str, Any]], fixed: CompressionPlan) -> CompressionPlan:
    """A stage's pick: the fastest trained plan within the accuracy tolerance (or `fixed`)."""
    ok = [r for r in rows if r["status"] == TrialStatus.TRAINED and r["relaxed_ok"]]
    if not ok:
        return fixed
    best = min(ok, key=lambda r: (r["latency_ms"], -r["accuracy"]))
    return CompressionPlan.from_dict(best["plan"])


def sequential(space: str, seed: int, trainings: int, work: Path) -> dict[str, Any]:
    """The same operators one stage at a time, an equal share of the trainings each."""
    stages = STAGES if space == "full" else STAGES[1:]
    fixed, rows, picks, proposals = CompressionPlan(), [], [], 0
    for k, stage in enumerate(stages):
        a = fixed.architecture
        sections = [stage] if stage == "architecture" else ["architecture", stage]
        path = space_file("full" if stage == "architecture" else space, work, sections)
        if stage != "architecture" and space == "full":  # the network is stage 1's pick
            data = yaml.safe_load(Path(path).read_text())
            data["architecture"] = {"family": a.family, "width": a.width, "depth": a.depth}
            path = str(work / f"seq-{space}-s{seed}-{stage}.yaml")
            Path(path).write_text(yaml.safe_dump(data))
        last = k == len(stages) - 1
        share = trainings // len(stages)
        n = trainings - share * (len(stages) - 1) if last else share
        name = f"seq-{space}-s{seed}-{stage}"
        exp = experiment(
            name,
            work / name,
            space=path,
            seed=seed,
            trainings=n,
            budgets=BUDGETS if last else RELAXED,
        )
        got = _search(
            exp,
            warm=False,
            objective_cls=StageObjective,
            objective_kwargs={"fixed": fixed, "stage": stage, "last": last},
        )
        relaxed = trial_rows(exp.storage_url, exp.name, RELAXED, board=False)
        for r, q in zip(got["rows"], relaxed):
            r["relaxed_ok"] = q["feasible"]
        rows += [{**r, "stage": stage, "number": r["number"] + 1000 * k} for r in got["rows"]]
        proposals += got["proposals"]
        fixed = stage_pick(got["rows"], fixed)
        picks.append(fixed.describe())
    return {"rows": rows, "picks": picks, "proposals": proposals}


def baselines(seed: int) -> dict[str, Any]:
    """The hand-made plans, built, trained once with the search's recovery, costed, scored."""
    from search.compress import build_student, compressible_layers
    from search.hardware import estimate_cost, load_profile
    from search.pipeline import build, cost_of, prepare, train
    from search.tasks import load_task
    from spaces import ArchitectureConfig, PruneConfig, QuantizeConfig

    exp = experiment(
        "baselines",
        ROOT / "experiments" / "runs" / "unused",
        space=str(ROOT / "spaces/joint.yaml"),
    )
    task = load_task(exp, log=lambda m: None)
    profile = load_profile(TARGET)
    layers = compressible_layers(task.base_model)
    int8 = QuantizeConfig(weight_bits={x.name: 8 for x in layers}, activation_bits=8)

    def pruned(r: float) -> CompressionPlan:
        ratios = {x.name: r for x in layers if x.prunable}
        return CompressionPlan(prune=PruneConfig(ratios=ratios, importance="l1"), quantize=int8)

    def latency_at(r: float) -> float:
        return cost_of(build(pruned(r), task, calibrate=False), task, profile).latency_ms

    ratio_ = bisect_ratio(latency_at, BUDGETS["latency_ms"])
    student = ArchitectureConfig("mobilenetv2", 0.5)
    s_net = build_student(student, input_shape=task.input_shape, num_classes=task.num_classes)
    s_layers = compressible_layers(s_net)
    plans = {
        "int8_qat": CompressionPlan(quantize=int8),
        "int8_prune_bisected": pruned(ratio_),
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
        },
        "bisected_ratio": ratio_,
    }
    for name, plan in plans.items():
        compressed = build(plan, task)
        cost = cost_of(compressed, task, profile)
        prepare(compressed, plan, task)
        model = train(compressed, plan, task, exp.recovery, seed=seed)
        out[name] = {
            **cost.metrics(),
            "plan": plan.describe(),
            "val_accuracy": task.evaluate(model, "val")["accuracy"],
            "test_accuracy": task.evaluate(model, "test")["accuracy"],
        }
    return out


def test_scores(rows: list[dict[str, Any]]) -> None:
    """Adds val and test accuracy of each row's trained weights."""
    from search.pipeline import build
    from search.tasks import load_state_dict_file, load_task

    exp = experiment(
        "score", ROOT / "experiments/runs/unused", space=str(ROOT / "spaces/joint.yaml")
    )
    task = load_task(exp, log=lambda m: None)
    for r in rows:
        compressed = build(CompressionPlan.from_dict(r["plan"]), task)
        weights = r["weights"]
        state = load_state_dict_file(Path(weights), file=weights, field_name="weights")
        compressed.model.load_state_dict(state)
        model = compressed.model.eval()
        r["val_accuracy"] = task.evaluate(model, "val")["accuracy"]
        r["test_accuracy"] = task.evaluate(model, "test")["accuracy"]


def unit(spec: dict[str, Any]) -> dict[str, Any]:
    """One (space, seed, arm) in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    os.environ["COMPRESS_SEARCH_CACHE"] = spec["cache"]
    settings.TASK = spec["task"]
    t0 = time.perf_counter()
    kind, space, seed, n = spec["kind"], spec["space"], spec["seed"], spec["trainings"]
    work = Path(spec["work"])
    out: dict[str, Any] = {"kind": kind, "space": space, "seed": seed}
    name = f"{kind}-{space}-s{seed}"
    if kind == "auto":
        exp = experiment(name, work / name, space=space_file(space, work), seed=seed, trainings=n)
        out |= _search(exp)
        out["front"] = pareto_rows(out["rows"])
        test_scores(out["front"])
    elif kind == "random":
        # Its own stream: on the same seed, TPE's random start-up trials would be these.
        exp = experiment(
            name,
            work / name,
            space=space_file(space, work),
            sampler="random",
            seed=seed + RANDOM_SEED_OFFSET,
            trainings=n,
        )
        out |= _search(exp, warm=False)
    elif kind == "sequential":
        out |= sequential(space, seed, n, work)
    elif kind == "baselines":
        out["baselines"] = baselines(seed)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out
