"""Recovery: does fine-tuning keep what compression kept, and does accuracy before it predict it?

Per task (the built-in digits and `gratings` tasks, and torchvision's MobileNetV2 at 96x96 as a
user brings it, `_mobilenet_task.py`) and per hand-made plan (uniform int8; int8 with 30 % and
50 % L1 channel pruning; int8 at rank 0.5; an int8 MobileNetV2 w0.5 student), it measures the
validation and test accuracy

* raw: right after build (activation ranges from the 64 build rows, trained BatchNorm);
* before: after `pipeline.prepare` (ranges on the calibration rows; a pruned or factorised
  network's BatchNorm statistics re-estimated): what the search records as
  `accuracy_before_recovery`;
* old_default: after recovery as it was before this benchmark (Adam at 0.005, students 0.01,
  cosine, no warm-up, BatchNorm statistics updating throughout, from the raw build);
* new_default: after `pipeline.train` with the product's defaults (`search.config.Recovery`);
* no_bn_freeze: the new defaults with BatchNorm statistics updating throughout;
* no_warmup: the new defaults without the learning-rate warm-up;
* steps_3x: the new defaults with 3x the steps;
* lr_sweep: the new schedule at each learning rate of a small grid.

Each task trains with the recovery budget of the runs it stands for: digits the quickstart's
(3 epochs, students 10), `gratings` the search benchmark's (2, students 3), MobileNetV2 the
issue's microcontroller case (1, students 2). Then `--random-plans` plans of the trained network
drawn from the `joint` space add their accuracy before and after the default recovery, and the
Spearman correlation of the two is reported per task and pooled (as accuracy drops). Defaults
are chosen on validation; the figures quoted are on test.

Run from the repository root (about 40 minutes on the 2-core dev machine, tasks in parallel):
    python experiments/benchmarks/recovery.py [--tasks digits gratings mobilenetv2]
        [--random-plans 8] [--jobs 2]
Writes experiments/results/recovery.json and recovery.md (`--render` rewrites the .md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _mobilenet_task
import _stamp

# Everything a task runs is imported here, before the worker processes fork: a worker then runs
# the code as it was when the benchmark started, whatever is edited while it runs.
import search.objective  # noqa: F401
import search.pipeline  # noqa: F401
import search.study  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

OLD_DEFAULT = {"lr": 0.005, "student_lr": 0.01, "warmup": 0.0, "freeze_bn": None}
BASE_LRS = (1e-5, 1e-4, 1e-3, 3e-3, 1e-2)  # plans of the trained network
STUDENT_LRS = (1e-2, 3e-2, 1e-1)
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"task": "digits", "recovery": {"epochs": 3}, "max_accuracy_drop": 0.03},
    "gratings": {
        "task": "gratings",
        "recovery": {"epochs": 2, "student_epochs": 3},
        "max_accuracy_drop": 0.06,
    },
    "mobilenetv2": {
        "task": _mobilenet_task.TASK,
        "recovery": {"epochs": 1, "student_epochs": 2},
        "max_accuracy_drop": 0.03,
    },
}
PLANS = ("int8", "int8_prune30", "int8_prune50", "int8_rank50", "student_w0.5_int8")


def experiment(task_name: str) -> Any:
    from search.config import parse_experiment

    settings = TASKS[task_name]
    return parse_experiment(
        {"name": f"recovery-{task_name}", "target": "mcu", **settings}, str(HERE / "recovery.py")
    )


def hand_plans(task: Any) -> dict[str, Any]:
    from search.compress import build_student, compressible_layers
    from spaces import (
        ArchitectureConfig,
        CompressionPlan,
        LowRankConfig,
        PruneConfig,
        QuantizeConfig,
    )

    layers = compressible_layers(task.base_model)
    int8 = QuantizeConfig(weight_bits={x.name: 8 for x in layers}, activation_bits=8)

    def pruned(ratio: float) -> PruneConfig:
        return PruneConfig(ratios={x.name: ratio for x in layers if x.prunable}, importance="l1")

    student = ArchitectureConfig("mobilenetv2", 0.5)
    s_net = build_student(student, input_shape=task.input_shape, num_classes=task.num_classes)
    s_int8 = {x.name: 8 for x in compressible_layers(s_net)}
    plans = {
        "int8": CompressionPlan(quantize=int8),
        "int8_prune30": CompressionPlan(prune=pruned(0.3), quantize=int8),
        "int8_prune50": CompressionPlan(prune=pruned(0.5), quantize=int8),
        "int8_rank50": CompressionPlan(
            lowrank=LowRankConfig(ranks={x.name: 0.5 for x in layers if x.factorizable}),
            quantize=int8,
        ),
        "student_w0.5_int8": CompressionPlan(
            architecture=student,
            quantize=QuantizeConfig(weight_bits=s_int8, activation_bits=8),
        ),
    }
    return {name: plans[name] for name in PLANS}


def scores(task: Any, model: Any) -> dict[str, float]:
    return {
        "val": task.evaluate(model, "val")["accuracy"],
        "test": task.evaluate(model, "test")["accuracy"],
    }


def one_plan(task: Any, exp: Any, plan: Any, *, seed: int, full: bool) -> dict[str, Any]:
    """Every figure of one plan (`full`: the variants and sweep too; else before and new)."""
    from search.pipeline import build, prepare, recover, recovery_kind, recovery_schedule

    rec = exp.recovery
    kind = recovery_kind(plan)
    schedule = recovery_schedule(rec, plan)
    out: dict[str, Any] = {"plan": plan.describe(), "kind": kind, "schedule": vars(schedule)}

    def trained(*, lr: float, epochs: int, warmup: float, freeze: float | None, old=False):
        compressed = build(plan, task, calibrate=not old)
        if not old:
            prepare(compressed, plan, task)
        t0 = time.perf_counter()
        model = recover(
            compressed,
            plan,
            task,
            epochs=epochs,
            lr=lr,
            warmup=warmup,
            freeze_bn=freeze,
            batch_size=rec.batch_size,
            seed=seed,
        )
        return {**scores(task, model), "seconds": round(time.perf_counter() - t0, 1)}

    compressed = build(plan, task)
    out["raw"] = scores(task, compressed.model)
    prepare(compressed, plan, task)
    out["before"] = scores(task, compressed.model)
    new = {"epochs": schedule.epochs, "warmup": schedule.warmup, "freeze": schedule.freeze_bn}
    out["new_default"] = trained(lr=schedule.lr, **new)
    if not full:
        return out
    old_lr = OLD_DEFAULT["student_lr"] if kind == "student" else OLD_DEFAULT["lr"]
    out["old_default"] = trained(
        lr=old_lr, epochs=schedule.epochs, warmup=0.0, freeze=None, old=True
    )
    if schedule.freeze_bn is not None:
        out["no_bn_freeze"] = trained(lr=schedule.lr, **{**new, "freeze": None})
    out["no_warmup"] = trained(lr=schedule.lr, **{**new, "warmup": 0.0})
    out["steps_3x"] = trained(lr=schedule.lr, **{**new, "epochs": 3 * schedule.epochs})
    out["lr_sweep"] = {}
    for lr in STUDENT_LRS if kind == "student" else BASE_LRS:
        same = abs(lr - schedule.lr) < 1e-12
        out["lr_sweep"][f"{lr:g}"] = out["new_default"] if same else trained(lr=lr, **new)
    return out


def random_plans(task: Any, exp: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` plans of the trained network from the `joint` space: before and after recovery."""
    import optuna

    from search.objective import TrialObjective
    from search.study import load_space, load_target

    objective = TrialObjective(exp, task, load_space(exp), load_target(exp))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        trial = study.ask()
        plan = objective.suggest(trial)
        study.tell(trial, 0.0)
        if plan.architecture.is_student:
            continue
        rows.append(one_plan(task, exp, plan, seed=seed + len(rows), full=False))
        log(f"{task.name}: random plan {len(rows)}/{n} {plan.describe()}")
    return rows


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_task(task_name: str, n_random: int, seed: int) -> dict[str, Any]:
    import torch

    from search.tasks import load_task

    torch.set_num_threads(1)
    exp = experiment(task_name)
    task = load_task(exp, log=log)
    out: dict[str, Any] = {
        "base": scores(task, task.base_model),
        "recovery": TASKS[task_name]["recovery"],
        "defaults": {
            k: getattr(exp.recovery, k)
            for k in ("epochs", "student_epochs", "lr", "quant_lr", "student_lr", "warmup")
        }
        | {"freeze_bn": exp.recovery.freeze_bn, "skip_within": exp.recovery.skip_within},
        "plans": {},
    }
    for name, plan in hand_plans(task).items():
        t0 = time.perf_counter()
        out["plans"][name] = one_plan(task, exp, plan, seed=seed, full=True)
        log(f"{task_name}: {name} done in {time.perf_counter() - t0:.0f} s")
    out["random_plans"] = random_plans(task, exp, n_random, seed)
    summarise(out)
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3:
        return None
    rho = spearmanr(xs, ys).statistic
    return None if rho != rho else round(float(rho), 3)


def summarise(t: dict[str, Any]) -> None:
    """Per task: int8's drop in points (test) and before-vs-after rank correlations."""
    base = t["base"]["test"]
    int8 = t["plans"]["int8"]
    t["int8_drop_points"] = {
        stage: round(100 * (base - int8[stage]["test"]), 2)
        for stage in ("raw", "before", "old_default", "new_default")
    }
    rows = [*t["plans"].values(), *t["random_plans"]]
    trained_net = [r for r in rows if r["kind"] != "student"]
    t["spearman_before_vs_after"] = {
        "all_plans": spearman(
            [r["before"]["val"] for r in rows], [r["new_default"]["val"] for r in rows]
        ),
        "trained_network_plans": spearman(
            [r["before"]["val"] for r in trained_net],
            [r["new_default"]["val"] for r in trained_net],
        ),
        "plans": len(rows),
        "trained_network_count": len(trained_net),
    }


def pooled(doc: dict[str, Any]) -> None:
    """Spearman over every task's plans of the trained network, on drops from each base."""
    before, after = [], []
    for t in doc["tasks"].values():
        base = t["base"]["val"]
        for r in [*t["plans"].values(), *t["random_plans"]]:
            if r["kind"] != "student":
                before.append(base - r["before"]["val"])
                after.append(base - r["new_default"]["val"])
    doc["spearman_before_vs_after"] = {
        "trained_network_plans_pooled_drops": spearman(before, after),
        "plans": len(before),
    }


def pts(base: float, acc: float) -> str:
    return f"{acc:.4f} ({100 * (acc - base):+.1f})"


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Recovery: accuracy before and after fine-tuning",
        "",
        _stamp.line(doc["stamp"]),
        "",
        "Generated by `experiments/benchmarks/recovery.py` (method in its docstring). Test "
        "accuracy, with the change in points from the uncompressed base in brackets; the "
        "defaults were chosen on validation (the sweep's val columns).",
        "",
    ]
    for name, t in doc["tasks"].items():
        base = t["base"]["test"]
        d = t["defaults"]
        lines += [
            f"## {name}",
            "",
            f"Base: val {t['base']['val']:.4f}, test {base:.4f}. Recovery budget "
            f"{t['recovery']}. New defaults: lr {d['lr']:g} (pruned / factorised), quant_lr "
            f"{d['quant_lr']:g} (quantize only), student_lr {d['student_lr']:g}; warm-up "
            f"{d['warmup']:g} of the steps; BatchNorm frozen after {d['freeze_bn']:g} "
            "(quantize-only: from the start; students: never).",
            "",
            "| plan | raw | before | old default | new default | no BN freeze | no warm-up | "
            "3x steps |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for pname, r in t["plans"].items():
            cells = [
                pts(base, r[k]["test"]) if k in r else "-"
                for k in (
                    "raw",
                    "before",
                    "old_default",
                    "new_default",
                    "no_bn_freeze",
                    "no_warmup",
                    "steps_3x",
                )
            ]
            lines.append(f"| {pname} ({r['plan']}) | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Learning-rate sweep at the new schedule (val / test):",
            "",
            "| plan | " + " | ".join(f"lr {lr:g}" for lr in BASE_LRS) + " |",
            "|---|" + "---|" * len(BASE_LRS),
        ]
        for pname, r in t["plans"].items():
            sweep = r["lr_sweep"]
            grid = STUDENT_LRS if r["kind"] == "student" else BASE_LRS
            cells = [
                f"{sweep[f'{lr:g}']['val']:.4f} / {sweep[f'{lr:g}']['test']:.4f}"
                if lr in grid
                else "-"
                for lr in BASE_LRS
            ]
            extra = (
                " (students: "
                + ", ".join(
                    f"lr {lr:g} {sweep[f'{lr:g}']['val']:.4f} / {sweep[f'{lr:g}']['test']:.4f}"
                    for lr in STUDENT_LRS
                )
                + ")"
                if r["kind"] == "student"
                else ""
            )
            lines.append(f"| {pname}{extra} | " + " | ".join(cells) + " |")
        s = t["spearman_before_vs_after"]
        lines += [
            "",
            f"int8 drop in points (test): {t['int8_drop_points']}.",
            "",
            f"Spearman, val accuracy before vs after the default recovery: "
            f"{s['all_plans']} over all {s['plans']} plans (students start at chance), "
            f"{s['trained_network_plans']} over the {s['trained_network_count']} plans of the "
            f"trained network ({len(t['random_plans'])} of them random plans of `joint`).",
            "",
            "| random plan | before (val) | after (val) |",
            "|---|---|---|",
        ]
        for r in t["random_plans"]:
            lines.append(
                f"| {r['plan']} | {r['before']['val']:.4f} | {r['new_default']['val']:.4f} |"
            )
        lines.append("")
    p = doc["spearman_before_vs_after"]
    lines += [
        "## Pooled",
        "",
        f"Spearman of the accuracy drop before vs after recovery over the {p['plans']} plans of "
        f"the trained networks of every task: **{p['trained_network_plans_pooled_drops']}** "
        "(target >= 0.8).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--random-plans", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.render:
        doc = json.loads((args.results / "recovery.json").read_text())
        (args.results / "recovery.md").write_text(markdown(doc))
        return
    stamp = _stamp.start()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            name: pool.submit(run_task, name, args.random_plans, args.seed) for name in args.tasks
        }
        tasks, failed = {}, {}
        for name, f in futures.items():  # a task that fails leaves the others' figures
            try:
                tasks[name] = f.result()
            except Exception as exc:  # noqa: BLE001 - reported in the results file
                failed[name] = f"{type(exc).__name__}: {exc}"
                log(f"{name}: failed: {failed[name]}")
    doc: dict[str, Any] = {"tasks": tasks, "seed": args.seed, "random_plans": args.random_plans}
    if failed:
        doc["failed"] = failed
    pooled(doc)
    doc["stamp"] = _stamp.finish(stamp)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "recovery.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.results / "recovery.md").write_text(markdown(doc))
    summary = {n: (t["int8_drop_points"], t["spearman_before_vs_after"]) for n, t in tasks.items()}
    print(json.dumps({**summary, "pooled": doc["spearman_before_vs_after"]}, indent=2))


if __name__ == "__main__":
    main()
