"""Each compression operator alone, at three strengths, on the built-in digits reference CNN.

For every row: stored size (bytes), MACs, and validation/test accuracy after recovery
(fine-tuning with distillation from the reference model, the pipeline's own `train`).
Also measured: int8 ONNX Runtime accuracy of the 8-bit row against its simulated accuracy, and
what caching the teacher's logits saves per trial.

Run from the repository root:
    python experiments/benchmarks/operators.py
Writes experiments/results/operators.json and experiments/results/operators.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _stamp  # this folder is on sys.path when run as a script
import torch
from torch import nn

from search.compress import Compressed, compressible_layers, export_onnx
from search.config import load_experiment
from search.hardware import load_profile
from search.pipeline import CALIBRATION_ROWS, build, cost_of, train
from search.tasks import classification_metrics, load_task, predict
from spaces import (
    ArchitectureConfig,
    CompressionPlan,
    LowRankConfig,
    PruneConfig,
    QuantizeConfig,
)

ROOT = Path(__file__).resolve().parents[2]

PROFILE = "mcu"  # for MACs and the cost model's latency; sizes are counted at the plan's bits


def stored_bytes(c: Compressed) -> int:
    """Weights at their plan bits (sparse layers: a bitmask plus the kept weights); every other
    parameter (biases, norms) at 32 bits."""
    bits = 0
    counted: set[int] = set()
    for name, m in c.model.named_modules():
        if name not in c.layer_bits:
            continue
        w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        counted.add(id(w))
        density = c.layer_density.get(name, 1.0)
        if density < 1.0:
            bits += w.numel() + round(w.numel() * density) * c.layer_bits[name]
        else:
            bits += w.numel() * c.layer_bits[name]
    bits += sum(32 * p.numel() for p in c.model.parameters() if id(p) not in counted)
    return math.ceil(bits / 8)


def plans(
    layers_for: Callable[[ArchitectureConfig], list],
) -> list[tuple[str, str, CompressionPlan]]:
    base = layers_for(ArchitectureConfig())
    prunable = [x.name for x in base if x.prunable]
    factorizable = [x.name for x in base if x.factorizable]
    rows = [("reference", "-", CompressionPlan())]
    for r in (0.25, 0.5, 0.75):
        rows.append(
            (
                "prune (l1, per layer)",
                f"ratio {r}",
                CompressionPlan(prune=PruneConfig(ratios={n: r for n in prunable})),
            )
        )
    for s in (0.5, 0.75, 0.9):
        rows.append(
            (
                "sparsity (magnitude)",
                f"sparsity {s}",
                CompressionPlan(prune=PruneConfig(sparsity=s)),
            )
        )
    for b in (8, 4, 2):
        rows.append(
            (
                "quantize (QAT)",
                f"w{b} a8",
                CompressionPlan(quantize=QuantizeConfig(default_weight_bits=b, activation_bits=8)),
            )
        )
    for k in (0.75, 0.5, 0.25):
        rows.append(
            (
                "low-rank (svd)",
                f"rank {k}",
                CompressionPlan(lowrank=LowRankConfig(ranks={n: k for n in factorizable})),
            )
        )
    for family in ("mobilenetv2", "shufflenetv2"):
        for w in (1.0, 0.5, 0.25):
            rows.append(
                (
                    f"student {family}",
                    f"width {w} depth 1",
                    CompressionPlan(architecture=ArchitectureConfig(family, w, 1)),
                )
            )
    return rows  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="recovery epochs (default: quickstart's)")
    parser.add_argument("--student-epochs", type=int, help="student epochs (default: config)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args()
    stamp = _stamp.start()

    torch.set_num_threads(2)
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml")
    task = load_task(exp, log=lambda m: print(m, file=sys.stderr))
    rec = exp.recovery
    epochs = args.epochs if args.epochs is not None else rec.epochs
    student_epochs = args.student_epochs if args.student_epochs is not None else rec.student_epochs
    profile = load_profile(PROFILE)

    def layers_for(arch: ArchitectureConfig) -> list:
        from search.compress import build_student

        if not arch.is_student:
            return compressible_layers(task.base_model)
        return compressible_layers(
            build_student(arch, input_shape=task.input_shape, num_classes=task.num_classes)
        )

    start = time.perf_counter()
    x_train = task.train.dataset.tensors[0]  # digits: an in-memory TensorDataset
    teacher = predict(task.base_model, x_train)
    teacher_s = time.perf_counter() - start
    assert teacher.shape[0] == len(x_train)

    rows = []
    for operator, strength, plan in plans(layers_for):
        t0 = time.perf_counter()
        c = build(plan, task)
        build_s = time.perf_counter() - t0
        student = plan.architecture.is_student
        n_epochs = 0 if operator == "reference" else (student_epochs if student else epochs)
        t0 = time.perf_counter()
        if n_epochs:
            # The operator table compares operators at one learning rate, students included.
            model = train(c, plan, task, rec, epochs=n_epochs, lr=rec.lr, seed=exp.seed)
        else:
            model = c.model.eval()
        train_s = time.perf_counter() - t0
        cost = cost_of(c, task, profile)
        row = {
            "operator": operator,
            "strength": strength,
            "plan": plan.describe(),
            "params": sum(p.numel() for p in model.parameters()),
            "size_bytes": stored_bytes(c),
            "macs": int(cost.macs),
            f"{PROFILE}_latency_ms": round(float(cost.latency_ms), 4),
            "val_accuracy": round(task.evaluate(model, "val")["accuracy"], 4),
            "test_accuracy": round(task.evaluate(model, "test")["accuracy"], 4),
            "epochs": n_epochs,
            "build_s": round(build_s, 3),
            "train_s": round(train_s, 3),
            "skipped": c.skipped,
        }
        if strength == "w8 a8":
            row["int8_onnx_test_accuracy"] = _onnx_accuracy(model, task)
        rows.append(row)
        print(
            f"{operator:24s} {strength:20s} size {row['size_bytes']:>8d} B  "
            f"MACs {row['macs']:>9d}  test acc {row['test_accuracy']:.4f}",
            file=sys.stderr,
        )

    ref = rows[0]
    for row in rows:
        row["size_ratio"] = round(row["size_bytes"] / ref["size_bytes"], 4)
        row["macs_ratio"] = round(row["macs"] / ref["macs"], 4)
        row["accuracy_drop"] = round(ref["test_accuracy"] - row["test_accuracy"], 4)
    trial_train_s = [r["train_s"] for r in rows if r["epochs"] == epochs and epochs]
    result = {
        "task": task.name,
        "base_hash": task.base_hash,
        "profile_for_macs_latency": PROFILE,
        "recovery": {
            "epochs": epochs,
            "student_epochs": student_epochs,
            "lr": rec.lr,
            "batch_size": rec.batch_size,
            "distillation": "alpha 0.7, T 4",
        },
        "rows": rows,
        "best_tradeoff": _best(rows),
        "teacher_logits_cache": {
            "teacher_forward_train_split_s": round(teacher_s, 4),
            "per_trial_recomputation_s": round(teacher_s * epochs, 4),
            "mean_recovery_s": round(sum(trial_train_s) / max(len(trial_train_s), 1), 4),
            "note": "a trial that recomputed the teacher's logits every epoch would pay "
            "per_trial_recomputation_s more; the cache pays teacher_forward once per run",
        },  # fmt: skip
        "torch": torch.__version__,
        "stamp": _stamp.finish(stamp),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operators.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "operators.md").write_text(_markdown(result))
    print(f"wrote {args.out / 'operators.json'} and operators.md", file=sys.stderr)


def _onnx_accuracy(model: nn.Module, task) -> float:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "q.onnx", input_shape=task.input_shape, int8=True,
                           calib_inputs=task.calibration_inputs(CALIBRATION_ROWS))  # fmt: skip
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x, y = task.test.dataset.tensors
        logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    return round(classification_metrics(logits, y, task.num_classes)["accuracy"], 4)


def _best(rows: list[dict]) -> dict:
    """Smallest size among rows within 1 point of the reference's test accuracy."""
    ok = [r for r in rows[1:] if r["accuracy_drop"] <= 0.01]
    best = min(ok, key=lambda r: r["size_bytes"]) if ok else None
    return {"rule": "smallest size_bytes with test accuracy drop <= 0.01",
            "operator": best and best["operator"], "strength": best and best["strength"],
            "size_ratio": best and best["size_ratio"],
            "accuracy_drop": best and best["accuracy_drop"]}  # fmt: skip


def _markdown(result: dict) -> str:
    lines = [
        "# Each operator alone on the digits reference CNN",
        "",
        _stamp.line(result["stamp"]),
        "",
        "| operator | strength | size (bytes) | size ratio | MACs | MACs ratio | "
        "test accuracy | drop |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['operator']} | {r['strength']} | {r['size_bytes']} | {r['size_ratio']:.3f} | "
            f"{r['macs']} | {r['macs_ratio']:.3f} | {r['test_accuracy']:.4f} | "
            f"{r['accuracy_drop']:+.4f} |"
        )
    rec = result["recovery"]
    q8 = next((r for r in result["rows"] if "int8_onnx_test_accuracy" in r), None)
    best = result["best_tradeoff"]
    notes = [
        "",
        f"Task {result['task']}; recovery {rec['epochs']} epochs ({rec['student_epochs']} for "
        f"students), distillation {rec['distillation']}. MACs from the cost model "
        f"({result['profile_for_macs_latency']} profile). Size: weights at their plan bits "
        "(sparse layers: bitmask + kept weights), other parameters at 32 bits.",
    ]
    if q8:
        notes.append(
            f"int8 ONNX Runtime (QDQ) test accuracy of the w8 a8 row: "
            f"{q8['int8_onnx_test_accuracy']:.4f} (simulated {q8['test_accuracy']:.4f})."
        )
    if best["operator"]:
        notes.append(
            f"Best trade-off alone ({best['rule']}): {best['operator']}, {best['strength']} "
            f"(size x{best['size_ratio']:.3f}, drop {best['accuracy_drop']:+.4f})."
        )
    t = result["teacher_logits_cache"]
    notes.append(
        f"Teacher logits cache: one teacher pass over the training split takes "
        f"{t['teacher_forward_train_split_s']:.3f} s; recomputing it every epoch would add "
        f"{t['per_trial_recomputation_s']:.3f} s to a trial whose recovery takes "
        f"{t['mean_recovery_s']:.3f} s."
    )
    return "\n".join(lines + notes) + "\n"


if __name__ == "__main__":
    main()
