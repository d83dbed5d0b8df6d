"""Export a chosen plan as a shippable winner, and rebuild it from the base model (`apply`).

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
arena beside the predicted `peak_activation_bytes` (`search.tflite`).

`apply_winner` checks the hashes, rebuilds the structure from the base model with the plan
(`search.pipeline.build`, deterministic), loads `model.pt` and re-evaluates on test.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .review import (
    RunData,
    TrialRecord,
    latency_error,
    latency_note,
    latency_text,
    layer_rows,
    load_run,
    load_run_dir,
)
from .review import why_infeasible as _why

__all__ = ["ApplyResult", "ExportResult", "apply_winner", "export_winner"]

WINNER_FORMAT = "compression-search/winner/1"
ARTIFACTS = ("model.pt", "model.onnx", "card.md")
TFLITE_ARTIFACTS = ("model.pt", "model.tflite", "model_data.cc", "model_data.h", "card.md")
FORMATS = ("onnx", "onnx-fp16", "tflite")
ONNX_TOLERANCE = 0.01  # ONNX Runtime vs PyTorch test accuracy: within 1 point
APPLY_TOLERANCE = 0.005  # apply vs export test accuracy: within 0.5 point
SIZE_KEYS = ("params", "weight_bytes", "flash_bytes", "state_dict_numel")
_PACKAGES = (
    "torch",
    "torchvision",
    "torch-pruning",
    "optuna",
    "onnx",
    "onnxruntime",
    "numpy",
    "compression-search",
)
CALIBRATION_ROWS = 256


@dataclass(frozen=True)
class ExportResult:
    """What `export_winner` wrote and measured."""

    winner_dir: Path
    trial: int
    pick: str | None
    feasible: bool
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def winner_yaml(self) -> Path:
        return self.winner_dir / "winner.yaml"

    def __str__(self) -> str:
        m = self.metrics
        lines = [
            f"exported trial {self.trial}"
            + (f" ({self.pick})" if self.pick else "")
            + ("" if self.feasible else " [INFEASIBLE: exported on request]")
            + f" to {self.winner_dir}"
        ]
        tflite = m.get("tflite")
        test = m.get("test", {})
        runtime, other = (
            ("TFLite Micro", m.get("tflm_test", {}))
            if tflite
            else ("ONNX Runtime", m.get("onnx_test", {}))
        )
        primary = m.get("primary_metric", "accuracy")
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


@dataclass(frozen=True)
class ApplyResult:
    """The rebuilt winner's size and test metrics, beside what the export recorded."""

    winner_yaml: Path
    size: Mapping[str, float]
    exported_size: Mapping[str, float]
    test: Mapping[str, float]
    exported_test: Mapping[str, float]
    primary_metric: str
    out: Path | None = None

    @property
    def size_matches(self) -> bool:
        return all(self.size.get(k) == self.exported_size.get(k) for k in self.exported_size)

    @property
    def accuracy_delta(self) -> float:
        p = self.primary_metric
        return abs(float(self.test[p]) - float(self.exported_test[p]))

    @property
    def ok(self) -> bool:
        """Same size and test metric within 0.5 point of the export."""
        return self.size_matches and self.accuracy_delta <= APPLY_TOLERANCE + 1e-12

    def __str__(self) -> str:
        p = self.primary_metric
        size = ", ".join(f"{k} {self.size.get(k)}" for k in self.exported_size)
        lines = [
            f"applied {self.winner_yaml}",
            f"  size: {size} ({'identical to' if self.size_matches else 'DIFFERS FROM'} the "
            "export)",
            f"  test {p}: {self.test[p]:.4f} (exported {self.exported_test[p]:.4f}, "
            f"difference {self.accuracy_delta * 100:.2f} points"
            f"{'' if self.accuracy_delta <= APPLY_TOLERANCE + 1e-12 else ' > 0.5: MISMATCH'})",
        ]
        if self.out is not None:
            lines.append(f"  wrote {self.out}")
        return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            if name == "compression-search":
                from . import __version__

                out[name] = f"{__version__} (source checkout)"
    return out


def _experiment(data: Mapping[str, Any], *, where: str, run_dir: Path | None) -> Any:
    """The search's Experiment, from the dict the study stored (`Experiment.to_dict()`)."""
    from .config import parse_experiment

    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(where, "experiment", "the study holds no experiment record")
    fields_ = dict(data)
    source = str(fields_.pop("source", where))
    exp = parse_experiment(fields_, source)
    if run_dir is not None and exp.storage is None:
        # The base-model cache and relative weight paths live in the run folder it came from.
        exp = replace(exp, out=str(run_dir))
    return exp


def _find_weights(recorded: str | None, run_dir: Path | None) -> Path | None:
    if not recorded:
        return None
    path = Path(recorded)
    candidates = [path]
    if run_dir is not None:
        candidates += [run_dir / "weights" / path.name, run_dir / path]
    return next((p for p in candidates if p.is_file()), None)


def _load_state(model: Any, path: Path, *, where: str, field_name: str) -> None:
    from .tasks import load_state_dict_file

    state = load_state_dict_file(path, file=where, field_name=field_name)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise ConfigError(
            where, field_name, f"{path} does not fit the rebuilt plan ({detail})"
        ) from None


def _size(cost: Any, model: Any) -> dict[str, int]:
    numel = sum(int(v.numel()) for v in model.state_dict().values())
    return {
        "params": int(cost.params),
        "weight_bytes": int(cost.weight_bytes),
        "flash_bytes": int(cost.flash_bytes),
        "state_dict_numel": numel,
    }


class _OnnxModel:
    """An ONNX Runtime session that `Task.evaluate` can call like a torch module."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def to(self, *_: Any, **__: Any) -> _OnnxModel:
        return self

    def eval(self) -> _OnnxModel:
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(None, {self.input: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


def _is_host(profile: Mapping[str, Any]) -> bool:
    return str(profile.get("name", "")).lower().startswith("host")


def _write_atomic_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh folder beside `final`, then swap it in: never half a winner on disk."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _profile(data: Mapping[str, Any], *, where: str) -> Any:
    """The HardwareProfile a study stored; JSON turned its precision keys (8, 16) into strings."""
    from .hardware import profile_from_dict

    def ints(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {
                int(k) if isinstance(k, str) and k.isdigit() else k: ints(x) for k, x in v.items()
            }
        return v

    return profile_from_dict(ints(dict(data)), file=f"{where} (profile)")


def _plain(x: Any) -> Any:
    """YAML-safe plain values (tuples to lists, numpy/torch scalars to numbers)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


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
        pick: `knee` | `max-accuracy` | `min-latency` | `min-size` (see `search.pareto`).
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
        from .tflite import missing_extra

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
    exp = _experiment(run.experiment, where=where, run_dir=base)
    _write_atomic_dir(
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
    result = ExportResult(
        winner_dir, chosen.number, data.get("pick"), chosen.feasible, data["metrics"]
    )
    return result


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

    from .compress import export_onnx
    from .hardware import estimate_cost, measure_latency_ms
    from .pipeline import build, recover
    from .tasks import load_task

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
    profile = _profile(run.profile, where=where)
    compressed = build(plan, task)
    model = compressed.model

    # The trained weights: the refine stage's if it ran, else the search's; train only when
    # the search never did (an over-budget plan exported with --allow-infeasible).
    refined = _find_weights((t.refined or {}).get("weights"), base)
    searched = _find_weights(t.weights, base)
    if refined is not None:
        weights_from = "refined"
        _load_state(model, refined, where=where, field_name="refined.weights")
    elif searched is not None:
        weights_from = "search"
        _load_state(model, searched, where=where, field_name="trial.weights")
    elif not t.trained:
        weights_from = "trained at export"
        rec = exp.recovery
        student = plan.architecture.family != "base"
        epochs, lr = rec.schedule(student)
        steps = rec.steps_for(student)
        log(
            f"trial {t.number} was not trained during the search ({t.status}); "
            f"training it now ({f'{steps} steps' if steps is not None else f'{epochs} epochs'})"
        )
        model = recover(
            compressed,
            plan,
            task,
            epochs=epochs,
            steps=steps,
            lr=lr,
            batch_size=rec.batch_size,
            seed=exp.seed + t.number,
        )
    else:
        raise ConfigError(
            where,
            "trial.weights",
            f"the trained weights of trial {t.number} "
            f"({t.weights or 'not recorded'}) are missing; export needs them",
        )
    model.eval()

    primary = run.primary_metric or "accuracy"
    val = task.evaluate(model, "val")
    test = task.evaluate(model, "test")
    cost = estimate_cost(
        model,
        task.input_shape,
        profile,
        layer_bits=compressed.layer_bits,
        activation_bits=compressed.activation_bits,
        layer_density=compressed.layer_density,
    )

    torch.save(model.state_dict(), tmp / "model.pt")
    int8_layers = sorted(k for k, b in compressed.layer_bits.items() if b == 8)
    runtime_metrics: dict[str, Any]
    if fmt == "tflite":
        runtime_metrics = _tflite_into(
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
        export_onnx(
            model,
            tmp / "model.onnx",
            input_shape=tuple(task.input_shape),
            int8=bool(int8_layers) and fmt == "onnx",
            calib_inputs=task.calibration_inputs(CALIBRATION_ROWS),
            symmetric="tensorrt" in str((profile.runtime or {}).get("name", "")).lower(),
        )
        if fmt == "onnx-fp16":
            _to_float16(tmp / "model.onnx")
        onnx_test = task.evaluate(_OnnxModel(tmp / "model.onnx"), "test")  # type: ignore[arg-type]
        onnx_gap = abs(float(onnx_test[primary]) - float(test[primary]))
        if onnx_gap > ONNX_TOLERANCE:
            log(
                f"warning: ONNX Runtime test {primary} {onnx_test[primary]:.4f} is "
                f"{onnx_gap * 100:.2f} points from PyTorch's {test[primary]:.4f} (limit 1 point)"
            )
        runtime_metrics = {
            "onnx_test": onnx_test,
            "onnx_vs_torch_points": round(onnx_gap * 100, 4),
            "onnx_within_1_point": onnx_gap <= ONNX_TOLERANCE,
        }
    measured = None
    if measure:
        measured = measure_latency_ms(
            tmp / "model.onnx", threads=profile.threads, batch=profile.batch
        )

    metrics: dict[str, Any] = {
        "primary_metric": primary,
        **_size(cost, model),
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
    (tmp / "card.md").write_text(_card(record, run, t, compressed.layer_bits))
    names = TFLITE_ARTIFACTS if fmt == "tflite" else ARTIFACTS
    record["artifacts"] = {name: sha256_file(tmp / name) for name in names}
    (tmp / "winner.yaml").write_text(
        "# A compression-search winner. Rebuild it: python -m search apply winner.yaml\n"
        + yaml.safe_dump(_plain(record), sort_keys=False)
    )


def _to_float16(path: Path) -> None:
    """Rewrite an fp32 ONNX file as float16 (its input and output stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def _tflite_into(
    tmp: Path,
    model: Any,
    task: Any,
    compressed: Any,
    cost: Any,
    profile: Any,
    where: str,
    log: Callable[[str], None],
    *,
    primary: str,
    torch_test: Mapping[str, Any],
) -> dict[str, Any]:
    """`model.tflite` + C array in `tmp`; its test metrics in TFLite Micro and its arena."""
    from .tflite import LiteRtModel, TflmModel, convert, operators, write_c_array

    bits = dict(compressed.layer_bits)
    wider = sorted(k for k, b in bits.items() if b != 8)
    # TFLM has int8 kernels (weights and activations) and float ones; a plan with any wider
    # layer or activation runs as float32 there (its card says so).
    int8 = bool(bits) and not wider and compressed.activation_bits == 8
    convert(
        model,
        tmp / "model.tflite",
        input_shape=tuple(task.input_shape),
        calib_inputs=task.calibration_inputs(CALIBRATION_ROWS) if int8 else None,
        int8=int8,
        where=where,
    )
    size = write_c_array(tmp / "model.tflite", tmp)
    tflm = TflmModel(tmp / "model.tflite", where=where)
    tflm_test = task.evaluate(tflm, "test")
    gap = abs(float(tflm_test[primary]) - float(torch_test[primary]))
    if gap > ONNX_TOLERANCE:
        log(
            f"warning: TFLite Micro test {primary} {tflm_test[primary]:.4f} is "
            f"{gap * 100:.2f} points from PyTorch's {torch_test[primary]:.4f} (limit 1 point)"
        )
    arena = tflm.arena()
    litert_ms = LiteRtModel(tmp / "model.tflite").latency_ms()  # what a phone's runtime does
    runtime_flash = int(profile.runtime_flash_kb * 1024)
    why = ""
    if not int8:
        parts = [f"{len(wider)} layer(s) wider than 8 bits"] if wider else []
        if compressed.activation_bits != 8:
            parts.append(f"activations at {compressed.activation_bits} bits")
        why = (", ".join(parts) or "no quantized layer") + (
            ": TFLite Micro runs them on its float32 kernels"
        )
    return {
        "tflm_test": tflm_test,
        "tflm_vs_torch_points": round(gap * 100, 4),
        "tflm_within_1_point": gap <= ONNX_TOLERANCE,
        "tflite": {
            "kind": "int8" if int8 else "float32",
            "why_float": why or None,
            "bytes": size,
            "operators": operators(tmp / "model.tflite"),
            "arena": arena.as_dict(),
            "predicted_peak_activation_bytes": int(cost.peak_activation_bytes),
            "predicted_memory_bytes": int(cost.memory_bytes),
            "arena_vs_predicted": round(arena.total / max(cost.memory_bytes, 1) - 1, 4),
            "flash_bytes": size + runtime_flash,
            "runtime_flash_bytes": runtime_flash,
            "predicted_flash_bytes": int(cost.flash_bytes),
            "flash_vs_predicted": round((size + runtime_flash) / max(cost.flash_bytes, 1) - 1, 4),
            "litert_host_latency_ms": round(litert_ms, 4),
        },
    }


# --- the card ----------------------------------------------------------------------------------
def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.{digits}g}"
    return str(v)


def _pct(measured: float, predicted: float) -> str:
    return f"{measured / predicted - 1:+.1%}" if predicted else "-"


def _card(
    r: Mapping[str, Any], run: RunData, t: TrialRecord, layer_bits: Mapping[str, int]
) -> str:
    m, plan = r["metrics"], r["plan"]
    primary = m["primary_metric"]
    base = r["base_metrics"]
    prof = r["profile"]
    lines = [
        f"# Model card: {r['study']}, trial {r['trial']}"
        + (f" ({r['pick']})" if r["pick"] else ""),
        "",
        f"{'**Infeasible** (exported on request): ' if not r['feasible'] else ''}"
        f"A compressed version of the `{r['task']['name']}` base model (sha256 "
        f"`{r['base_model']['sha256'][:16]}...`), found by a joint compression search for the "
        f"`{prof.get('name')}` profile. Weights: {r['weights_from']}.",
        "",
        "## What was done",
        "",
        f"Plan: {r['plan_text']}",
        "",
    ]
    a, lr_, pr, q, d = (
        plan.get(k, {}) for k in ("architecture", "lowrank", "prune", "quantize", "distill")
    )
    if a.get("family", "base") != "base":
        lines.append(
            f"- Architecture: a `{a['family']}` student, width {a.get('width')}, "
            f"depth {a.get('depth')}, trained by distillation from the base model."
        )
    else:
        lines.append("- Architecture: the base model's own.")
    ranks = {k: v for k, v in (lr_.get("ranks") or {}).items() if v < 1}
    lines.append(
        f"- Low-rank ({lr_.get('mode', 'svd')}): "
        + (", ".join(f"{k} keeps {v:.0%}" for k, v in ranks.items()) or "none")
        + "."
    )
    if pr.get("global_ratio") is not None:
        lines.append(
            f"- Structured pruning: {pr['global_ratio']:.0%} of channels, ranked "
            f"globally by {pr.get('importance')} importance."
        )
    else:
        ratios = {k: v for k, v in (pr.get("ratios") or {}).items() if v > 0}
        lines.append(
            "- Structured pruning (channels physically removed): "
            + (", ".join(f"{k} {v:.0%}" for k, v in ratios.items()) or "none")
            + f" ({pr.get('importance', 'l1')} importance)."
        )
    if pr.get("sparsity"):
        lines.append(f"- Unstructured sparsity: {pr['sparsity']:.0%} of the remaining weights.")
    bits_count: dict[int, int] = {}
    for b in layer_bits.values():
        bits_count[b] = bits_count.get(b, 0) + 1
    lines.append(
        "- Weights: "
        + ", ".join(f"{n} layer(s) at {b} bits" for b, n in sorted(bits_count.items()))
        + f"; activations at {q.get('activation_bits', 32)} bits."
    )
    if d.get("enabled"):
        lines.append(
            f"- Recovery: fine-tuned with distillation (alpha {d.get('alpha')}, "
            f"temperature {d.get('temperature')})."
        )
    tfl = m.get("tflite")
    if tfl:
        lines.append(
            f"- TFLite: a {'full-integer int8' if tfl['kind'] == 'int8' else 'float32'} "
            f"`.tflite` ({tfl['bytes']:,} bytes, {len(tfl['operators'])} operators)"
            + (f"; float32 because of {tfl['why_float']}." if tfl.get("why_float") else ".")
        )
    elif r["onnx"].get("float16"):
        lines.append(
            "- ONNX: float16 weights and compute, for GPUs (TensorRT, ONNX Runtime's CUDA and "
            "TensorRT providers); input and output stay float32."
        )
    else:
        o = r["onnx"]
        lines.append(
            f"- ONNX: {len(o['int8_qdq_layers'])} layer(s) as int8 QDQ "
            f"({', '.join(o['int8_qdq_layers']) or 'none'}), the rest fp32."
        )
    if r["skipped_layers"]:
        lines.append(
            "- Left whole: " + "; ".join(f"{k} ({v})" for k, v in r["skipped_layers"].items())
        )
    runtime, key = ("TFLite Micro", "tflm") if tfl else ("ONNX Runtime", "onnx")
    lines += [
        "",
        "## Metrics",
        "",
        "| metric | base model (val) | search (val) | exported (val) | test, PyTorch "
        f"| test, {runtime} |",
        "|---|---|---|---|---|---|",
    ]
    for k in m["test"]:
        lines.append(
            f"| {k} | {_f(base.get(k))} | {_f(m['validation_at_search'].get(k))} | "
            f"{_f(m['validation'].get(k))} | {_f(m['test'].get(k))} | "
            f"{_f(m[f'{key}_test'].get(k))} |"
        )
    lines += [
        "",
        f"{runtime} vs PyTorch on test {primary}: {m[f'{key}_vs_torch_points']:.2f} "
        f"points ({'within' if m[f'{key}_within_1_point'] else 'OUTSIDE'} the 1-point "
        "limit).",
        "",
    ]
    if tfl:
        a = tfl["arena"]
        lines += [
            "## Memory in TFLite Micro",
            "",
            "The arena is what the board reserves for the interpreter (`print_allocations()` "
            "after `invoke()`): head = activations placed by TFLM's memory planner, tail = "
            "persistent data (tensor structs, per-channel quantization, operator state).",
            "",
            "| figure | predicted (cost model) | TFLite Micro | difference |",
            "|---|---|---|---|",
            f"| activations (arena head) | {tfl['predicted_peak_activation_bytes']:,} B | "
            f"{a['head']:,} B | {_pct(a['head'], tfl['predicted_peak_activation_bytes'])} |",
            f"| SRAM (arena total) | {tfl['predicted_memory_bytes']:,} B | {a['total']:,} B | "
            f"{_pct(a['total'], tfl['predicted_memory_bytes'])} |",
            f"| flash (.tflite + {tfl['runtime_flash_bytes']:,} B runtime) | "
            f"{tfl['predicted_flash_bytes']:,} B | {tfl['flash_bytes']:,} B | "
            f"{_pct(tfl['flash_bytes'], tfl['predicted_flash_bytes'])} |",
            "",
        ]
        lines += [
            f"The same `.tflite` in LiteRT (XNNPACK, one thread) on the exporting machine: "
            f"{_f(tfl['litert_host_latency_ms'])} ms per inference (this host, not the board).",
            "",
        ]
        if tfl.get("why_float"):
            lines += [
                f"This plan runs in float32 on the board ({tfl['why_float']}): four bytes per "
                "activation and weight, and float kernels far slower than the int8 ones the "
                "cost model's 8-bit rates describe.",
                "",
            ]
    lines += [
        "## Cost and budget check",
        "",
        f"Predicted by the cost model for `{prof.get('name')}`."
        + latency_note(run, m.get("latency_ms")),
        "",
        "| figure | base model | winner | budget | check |",
        "|---|---|---|---|---|",
    ]
    budget_of = {
        "latency_ms": ("latency_ms", 1.0),
        "memory_bytes": ("memory_kb", 1024.0),
        "flash_bytes": ("flash_kb", 1024.0),
    }
    for k in (
        "params",
        "macs",
        "weight_bytes",
        "peak_activation_bytes",
        "memory_bytes",
        "flash_bytes",
        "latency_ms",
    ):
        bk, scale = budget_of.get(k, (None, 1.0))
        c = r["constraints"].get(bk) if bk else None
        budget = r["budgets"].get(bk) if bk else None
        unit = {"kb": "kB"}.get(bk.split("_")[-1], bk.split("_")[-1]) if bk else ""
        shown = f"{_f(budget)} {unit}" if budget is not None else "-"
        check = "-" if c is None else ("ok" if c <= 0 else f"OVER by {c:.0%}")
        won = _f(m.get(k))
        if k == "latency_ms" and m.get(k) is not None and latency_error(run) is not None:
            won = latency_text(m[k], latency_error(run))  # with the profile's p90 band
        lines.append(f"| {k} | {_f(base.get(k))} | {won} | {shown} | {check} |")
    c_drop, drop = r["constraints"].get("accuracy_drop"), t.metrics.get("accuracy_drop")
    if c_drop is not None and drop is not None:
        # The constraint is `drop - max_drop`, so the allowed drop is `drop - c`.
        lines.append(
            f"| {primary} drop (val) | | {_f(drop)} | at most {_f(drop - c_drop)} | "
            f"{'ok' if c_drop <= 0 else 'OVER'} |"
        )
    verdict = "meets every budget" if r["feasible"] else f"is INFEASIBLE ({_why(t)})"
    lines += ["", f"The plan {verdict}.", ""]
    lines += ["## Latency measured on this machine", ""]
    if m.get("measured_latency_ms") is not None:
        lines += [
            "| predicted (cost model) | measured (ONNX Runtime, median) | threads |",
            "|---|---|---|",
            f"| {_f(m.get('latency_ms'))} ms | {_f(m['measured_latency_ms'])} ms | "
            f"{prof.get('threads', 1)} |",
        ]
    elif tfl:
        lines.append(
            f"Not measured on the board: `{prof.get('name')}` is not this machine. The "
            f"`.tflite` ran in LiteRT here in {_f(tfl['litert_host_latency_ms'])} ms (see above)."
        )
    else:
        lines.append(
            f"Not measured: `{prof.get('name')}` is not this machine (the host "
            "profile measures the exported ONNX model here)."
        )
    rows = layer_rows(plan)
    if rows:
        lines += [
            "",
            "## Per-layer plan",
            "",
            "| layer | weight bits | prune ratio | kept rank |",
            "|---|---|---|---|",
        ]
        for row in rows:
            glob = " (global)" if row["prune_global"] else ""
            lines.append(
                f"| {row['layer']} | {row['bits']} | {row['prune_ratio']:.0%}{glob} | "
                f"{row['rank']:.2f} |"
            )
    lines += [
        "",
        "## Files",
        "",
        "- `winner.yaml`: plan, metrics, profile, versions, hashes",
        "- `model.pt`: compressed state_dict (`torch.load(..., weights_only=True)`)",
        *(
            [
                "- `model.tflite`: runs in TFLite Micro / LiteRT (batch 1)",
                "- `model_data.cc`, `model_data.h`: the flatbuffer as a C array "
                "(`g_model_data`, `g_model_data_len`)",
            ]
            if tfl
            else ["- `model.onnx`: runs in ONNX Runtime (input `input`, output `logits`)"]
        ),
        "",
        "Rebuild and check: `python -m search apply winner.yaml`",
        "",
    ]
    return "\n".join(lines)


# --- apply -------------------------------------------------------------------------------------
def _read_winner(path: Path) -> dict[str, Any]:
    where = str(path)
    if not path.is_file():
        raise ConfigError(where, "<file>", "no such winner file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(where, "<yaml>", "malformed YAML") from None
    if not isinstance(data, dict) or data.get("format") != WINNER_FORMAT:
        raise ConfigError(where, "format", f"not a winner file (expected format: {WINNER_FORMAT})")
    for key in ("plan", "experiment", "metrics", "artifacts", "base_model"):
        if not isinstance(data.get(key), dict):
            raise ConfigError(where, key, "missing; re-export the winner")
    return data


def apply_winner(
    winner_yaml: str | Path, out: str | Path | None = None, *, log: Callable[[str], None] = print
) -> ApplyResult:
    """Rebuild a winner from the base model and re-evaluate it on the test split.

    Checks the sha256 of every artifact and of the base model first and refuses (ConfigError)
    on any mismatch. With `out`, writes the rebuilt `model.pt` and `applied.yaml` there.
    """
    from spaces import CompressionPlan, PlanError

    from .hardware import estimate_cost
    from .pipeline import build
    from .tasks import load_task

    path = Path(winner_yaml)
    where = str(path)
    data = _read_winner(path)
    folder = path.parent
    for name, digest in data["artifacts"].items():
        f = folder / name
        if not f.is_file():
            raise ConfigError(where, f"artifacts.{name}", f"{f} is missing")
        if sha256_file(f) != digest:
            raise ConfigError(
                where,
                f"artifacts.{name}",
                f"sha256 of {f} does not match the "
                "recorded one: the file changed after export; re-export it",
            )
    try:
        plan = CompressionPlan.from_dict(data["plan"])
    except PlanError as exc:
        raise ConfigError(where, f"plan.{exc.field}", str(exc)) from None
    exp = _experiment(data["experiment"], where=where, run_dir=None)
    task = load_task(exp, log=log)
    if task.base_hash != data["base_model"].get("sha256"):
        raise ConfigError(
            where,
            "base_model.sha256",
            f"the base model found here (sha256 "
            f"{task.base_hash[:12]}...) is not the one this winner was exported "
            f"from ({str(data['base_model'].get('sha256'))[:12]}...)",
        )
    compressed = build(plan, task)
    model = compressed.model
    _load_state(model, folder / "model.pt", where=where, field_name="artifacts.model.pt")
    model.eval()
    profile = _profile(data["profile"], where=where)
    cost = estimate_cost(
        model,
        task.input_shape,
        profile,
        layer_bits=compressed.layer_bits,
        activation_bits=compressed.activation_bits,
        layer_density=compressed.layer_density,
    )
    m = data["metrics"]
    result = ApplyResult(
        winner_yaml=path,
        size=_size(cost, model),
        exported_size={k: m[k] for k in SIZE_KEYS if k in m},
        test=task.evaluate(model, "test"),
        exported_test=dict(m["test"]),
        primary_metric=str(m.get("primary_metric", "accuracy")),
        out=Path(out) if out else None,
    )
    if out:
        import torch

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), o / "model.pt")
        (o / "applied.yaml").write_text(
            yaml.safe_dump(
                _plain(
                    {
                        "winner": str(path.resolve()),
                        "size": result.size,
                        "test": result.test,
                        "size_matches": result.size_matches,
                        "ok": result.ok,
                    }
                ),
                sort_keys=False,
            )
        )
    return result
