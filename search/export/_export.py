"""Export a chosen plan as a shippable winner (`apply` rebuilds it: `_winner`).

`export_winner` writes `winner/`:

* `winner.yaml`: the plan; metrics on validation and on the held-out test split (touched here for
  the first time); the profile; package versions; sha256 of the base model and every artifact.
* `model.pt`: the compressed network's state_dict (loaded back only with `weights_only=True`).
* `model.onnx`: int8 QDQ for the layers the plan put at 8 bits, fp32 elsewhere.
* `card.md`: what was done, the metrics, the budget check, and on the host profile the measured
  ONNX Runtime latency beside the prediction.

With `fmt="tflite"` (`export --format tflite`, for a microcontroller) `model.onnx` gives way to
`model.tflite` (full-integer int8 when every layer and activation of the plan is at 8 bits, else
float32, which TFLite Micro runs on its float kernels) and `model_data.cc`/`.h` (the flatbuffer
as a C array); the test split runs in the TFLite Micro interpreter, and `winner.yaml` records its
arena beside the predicted `peak_activation_bytes` (`_tflite`).

The card is `_card`'s; the winner file's format and `apply_winner` are `_winner`'s; the
deployed file and its check in ONNX Runtime or TFLite Micro are `_runtimes`'.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..files import atomic_write_dir, plain
from ..record import primary_metric
from ..review import RunData, TrialRecord, load_run, load_run_dir
from . import _card
from ._runtimes import onnx_into, symmetric_int8, tflite_into
from ._winner import (
    WINNER_FORMAT,
    ApplyResult,
    apply_winner,
    load_state,
    package_versions,
    sha256_file,
    size_figures,
    stored_experiment,
    stored_profile,
)

__all__ = ["ApplyResult", "ExportResult", "apply_winner", "export_winner"]

ARTIFACTS = ("model.pt", "model.onnx", "card.md")
TFLITE_ARTIFACTS = ("model.pt", "model.tflite", "model_data.cc", "model_data.h", "card.md")
FORMATS = ("onnx", "onnx-fp16", "tflite")


@dataclass(frozen=True)
class ExportResult:
    """What `export_winner` wrote and measured."""

    winner_dir: Path
    trial: int
    pick: str | None
    feasible: bool
    metrics: Mapping[str, Any] = field(default_factory=dict)
    fmt: str = "onnx"
    replaced: str | None = None  # the earlier export this one overwrote, in words

    @property
    def winner_yaml(self) -> Path:
        return self.winner_dir / "winner.yaml"

    def __str__(self) -> str:
        m = self.metrics
        lines = [
            f"exported trial {self.trial}"
            + (f" ({self.pick})" if self.pick else "")
            + ("" if self.feasible else " [INFEASIBLE: exported on request]")
            + f" as {self.fmt} to {self.winner_dir}"
        ]
        if self.replaced:
            lines.append(f"  replaced the {self.replaced} there (give --out to keep both)")
        tflite = m.get("tflite")
        test = m.get("test", {})
        runtime, other = (
            ("TFLite Micro", m.get("tflm_test", {}))
            if tflite
            else ("ONNX Runtime", m.get("onnx_test", {}))
        )
        primary = primary_metric(stored=m.get("primary_metric"))
        if primary in test:
            lines.append(
                f"  test {primary}: PyTorch {test[primary]:.4f}, {runtime} "
                f"{other.get(primary, float('nan')):.4f}"
            )
        if tflite:
            arena = tflite["arena"]
            lines.append(
                f"  {tflite['kind']} .tflite {tflite['bytes']:,} bytes; TFLM arena "
                f"{arena['total']:,} bytes (planned {arena['head']:,}), predicted "
                f"{tflite['predicted_memory_bytes']:,} (peak activations "
                f"{m.get('peak_activation_bytes'):,})"
            )
        lines.append(
            f"  size: {m.get('params')} params, {m.get('weight_bytes')} weight bytes; "
            f"predicted latency {m.get('latency_ms', float('nan')):.4g} ms"
        )
        if m.get("measured_latency_ms") is not None:
            lines.append(
                f"  measured latency (ONNX Runtime, this host): {m['measured_latency_ms']:.4g} ms"
            )
        return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------------
def _find_weights(recorded: str | None, run_dir: Path | None) -> Path | None:
    if not recorded:
        return None
    path = Path(recorded)
    candidates = [path]
    if run_dir is not None:
        candidates += [run_dir / "weights" / path.name, run_dir / path]
    return next((p for p in candidates if p.is_file()), None)


def _is_host(profile: Mapping[str, Any]) -> bool:
    return str(profile.get("name", "")).lower().startswith("host")


# --- export ------------------------------------------------------------------------------------
def export_winner(
    run_dir: str | Path | None = None,
    *,
    storage: str | None = None,
    study: str | None = None,
    pick: str | None = "knee",
    trial: int | None = None,
    out: str | Path | None = None,
    allow_infeasible: bool = False,
    measure_latency: bool | None = None,
    fmt: str = "onnx",
    target: str | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export one trial of a finished search as `winner/`.

    Args:
        run_dir: the run folder (its `study.db`); with `storage`, where `winner/` goes by default.
        storage, study: a shared storage URL and study name instead of the run folder's SQLite.
        pick: `knee` | `max-accuracy` | `min-latency` | `min-size` (see `search.review`).
        trial: export this trial number instead of a pick.
        out: the winner folder (default `RUN_DIR/winner`).
        allow_infeasible: export even when the trial, or every trial, breaks a budget.
        measure_latency: measure ONNX Runtime latency here; default: only for the host profile.
        fmt: `onnx` (default), `onnx-fp16` (float16 ONNX for GPUs: TensorRT, ONNX Runtime's
            CUDA and TensorRT providers) or `tflite` (int8 `.tflite` + C array, run in TFLM).

    Raises:
        ConfigError: unknown trial or pick, nothing feasible (without `allow_infeasible`),
            missing weights, a base model that differs from the one the search used, or (tflite)
            a missing optional extra or an operator the converter or TFLite Micro cannot run,
            or `target` missing (or not one of them) in a run searched for several targets.
    """
    if fmt not in FORMATS:
        raise ConfigError("<command line>", "--format", f"{fmt!r} is not one of {list(FORMATS)}")
    if fmt == "tflite":
        from ._tflite import missing_extra

        why = missing_extra()
        if why:
            raise ConfigError("<command line>", "--format", f"tflite needs the extra: {why}")
    if storage:
        run = load_run(storage, study)
        base = Path(run_dir) if run_dir else None
    elif run_dir is not None:
        run = load_run_dir(run_dir)
        base = Path(run_dir)
    else:
        raise ConfigError("<command line>", "run_dir", "give a run folder or --storage/--study")
    folder = "winner"
    if run.views or target is not None:
        run = _target_view(run, target)
        folder = f"winner-{target}" if target and run.target else folder
    chosen = run.pick(pick or "knee", trial=trial, allow_infeasible=allow_infeasible)
    winner_dir = Path(out) if out else (base or Path("experiments/runs") / run.study_name) / folder
    where = f"study {run.study_name}"
    exp = stored_experiment(run.experiment, where=where, run_dir=base)
    replaced = _earlier_export(winner_dir)
    atomic_write_dir(
        winner_dir,
        lambda tmp: _export_into(
            tmp,
            run,
            chosen,
            exp,
            base=base,
            pick=None if trial is not None else (pick or "knee"),
            measure=_is_host(run.profile) if measure_latency is None else measure_latency,
            fmt=fmt,
            log=log,
        ),
    )
    data = yaml.safe_load((winner_dir / "winner.yaml").read_text())
    return ExportResult(
        winner_dir,
        chosen.number,
        data.get("pick"),
        chosen.feasible,
        data["metrics"],
        fmt=fmt,
        replaced=replaced,
    )


def _earlier_export(winner_dir: Path) -> str | None:
    """`onnx export of trial 2` for a winner folder already there (the new one replaces it)."""
    try:
        old = yaml.safe_load((winner_dir / "winner.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(old, dict):
        return None
    onnx = old.get("onnx")
    fmt = old.get("export_format") or (
        "tflite" if onnx is None else "onnx-fp16" if (onnx or {}).get("float16") else "onnx"
    )
    return f"{fmt} export of trial {old.get('trial')}"


def _target_view(run: RunData, target: str | None) -> RunData:
    """The view of `target` in a multi-target run (a single-target run: its own target)."""
    names = list(run.views) or [str(run.profile.get("name"))]
    if target is None or target not in names:
        what = "this run searched several targets" if run.views else "this run searched"
        got = "" if target is None else f", not {target!r}"
        raise ConfigError("<command line>", "--target", f"{what}: name one of {names}{got}")
    return run.views.get(target, run)


def _export_into(
    tmp: Path,
    run: RunData,
    t: TrialRecord,
    exp: Any,
    *,
    base: Path | None,
    pick: str | None,
    measure: bool,
    log: Callable[[str], None],
    fmt: str = "onnx",
) -> None:
    import torch

    from spaces import CompressionPlan

    from ..compress import int8_weight_bits
    from ..hardware import measure_latency_ms
    from ..pipeline import build, cost_of
    from ..tasks import load_task

    where = f"study {run.study_name}"
    if t.plan is None:
        raise ConfigError(where, "trial", f"trial {t.number} has no plan")
    plan = CompressionPlan.from_dict(t.plan)
    task = load_task(exp, log=log)
    if run.base_hash and task.base_hash != run.base_hash:
        raise ConfigError(
            where,
            "base_hash",
            f"the base model here (sha256 {task.base_hash[:12]}"
            f"...) is not the one the search used ({run.base_hash[:12]}...); "
            "restore it or point COMPRESS_SEARCH_CACHE at its cache",
        )
    profile = stored_profile(run.profile, where=where)
    compressed = build(plan, task)
    weights_from = _trained_weights(compressed, plan, task, t, exp, where, base=base, log=log)
    model = compressed.model
    model.eval()

    primary = primary_metric(run.objectives, run.primary_metric)
    val = task.evaluate(model, "val")
    test = task.evaluate(model, "test")
    cost = cost_of(compressed, task, profile)

    torch.save(model.state_dict(), tmp / "model.pt")
    int8_layers = sorted(k for k, b in compressed.layer_bits.items() if b == 8)
    runtime_metrics: dict[str, Any]
    if fmt == "tflite":
        runtime_metrics = tflite_into(
            tmp,
            model,
            task,
            compressed,
            cost,
            profile,
            where,
            log,
            primary=primary,
            torch_test=test,
        )
        measure = False  # the host measures ONNX Runtime; a board is not this machine
    else:
        runtime_metrics = onnx_into(
            tmp,
            model,
            task,
            profile,
            log,
            int8=bool(int8_layers) and fmt == "onnx",
            float16=fmt == "onnx-fp16",
            primary=primary,
            torch_test=test,
        )
    measured = None
    if measure:
        measured = measure_latency_ms(
            tmp / "model.onnx", threads=profile.threads, batch=profile.batch
        )

    metrics: dict[str, Any] = {
        "primary_metric": primary,
        **size_figures(cost, model),
        **{
            k: v
            for k, v in cost.metrics().items()
            if k not in ("params", "weight_bytes", "flash_bytes")
        },
        "validation": val,
        "validation_at_search": {
            k: t.metrics.get(k)
            for k in ("accuracy", "recall", "f1")
            if t.metrics.get(k) is not None
        },
        "test": test,
        **runtime_metrics,
        "measured_latency_ms": measured,
    }
    if t.refined:
        metrics["validation_refined_at_search"] = {
            k: v for k, v in t.refined.items() if k in ("accuracy", "recall", "f1")
        }
    record: dict[str, Any] = {
        "format": WINNER_FORMAT,
        "export_format": fmt,
        "study": run.study_name,
        "storage": run.storage,
        "trial": t.number,
        "pick": pick,
        "feasible": t.feasible,
        "status": t.status,
        "plan_text": t.plan_text,
        "plan": t.plan,
        "weights_from": weights_from,
        "metrics": metrics,
        "base_metrics": dict(run.base_metrics),
        "budgets": dict(run.budgets),
        "constraints": dict(t.constraints),
        "skipped_layers": dict(t.skipped_layers),
        "onnx": {
            "int8_qdq_layers": int8_layers if fmt == "onnx" else [],
            "fp32_layers": sorted(k for k, b in compressed.layer_bits.items() if b != 8)
            if fmt == "onnx"
            else [],
            "activation_bits": compressed.activation_bits,
            # 7 on x86 CPUs without VNNI: see compress.int8_weight_bits
            "int8_weight_bits": int8_weight_bits(symmetric=symmetric_int8(profile))
            if fmt == "onnx" and int8_layers
            else None,
            "float16": fmt == "onnx-fp16",
        },
        "profile": dict(run.profile),
        "experiment": dict(run.experiment),
        "task": {
            "name": task.name,
            "input_shape": list(task.input_shape),
            "num_classes": task.num_classes,
        },
        "base_model": {"sha256": task.base_hash},
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if fmt == "tflite":
        del record["onnx"]
    (tmp / "card.md").write_text(_card.render(record, run, t, compressed.layer_bits))
    names = TFLITE_ARTIFACTS if fmt == "tflite" else ARTIFACTS
    record["artifacts"] = {name: sha256_file(tmp / name) for name in names}
    (tmp / "winner.yaml").write_text(
        "# A compression-search winner. Rebuild it: python -m search apply winner.yaml\n"
        + yaml.safe_dump(plain(record), sort_keys=False)
    )


def _trained_weights(
    compressed: Any,
    plan: Any,
    task: Any,
    t: TrialRecord,
    exp: Any,
    where: str,
    *,
    base: Path | None,
    log: Callable[[str], None],
) -> str:
    """Put the trained weights in `compressed.model` and say whose they are: the refine
    stage's if it ran, else the search's; trained here only when the search never did (an
    over-budget plan exported with --allow-infeasible)."""
    from ..pipeline import prepare, recovery_schedule, train

    refined = _find_weights((t.refined or {}).get("weights"), base)
    searched = _find_weights(t.weights, base)
    if refined is not None:
        load_state(compressed.model, refined, where=where, field_name="refined.weights")
        return "refined"
    if searched is not None:
        load_state(compressed.model, searched, where=where, field_name="trial.weights")
        return "search"
    if t.trained:
        raise ConfigError(
            where,
            "trial.weights",
            f"the trained weights of trial {t.number} "
            f"({t.weights or 'not recorded'}) are missing; export needs them",
        )
    schedule = recovery_schedule(exp.recovery, plan)
    steps, epochs = schedule.steps, schedule.epochs
    log(
        f"trial {t.number} was not trained during the search ({t.status}); "
        f"training it now ({f'{steps} steps' if steps is not None else f'{epochs} epochs'})"
    )
    prepare(compressed, plan, task)
    train(compressed, plan, task, exp.recovery, seed=exp.seed + t.number)
    return "trained at export"
