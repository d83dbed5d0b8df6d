"""The winner file (`winner.yaml`) and `apply`: rebuild a winner from the base model.

`apply_winner` checks the hashes, rebuilds the structure from the base model with the plan
(`search.pipeline.build`, deterministic), loads `model.pt` and re-evaluates on test. The helpers
here (hashes, versions, the stored experiment and profile, the size figures) are shared with
`_export`, which writes the file.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..files import atomic_write_text, plain
from ..record import primary_metric

__all__ = [
    "APPLY_TOLERANCE",
    "SIZE_KEYS",
    "WINNER_FORMAT",
    "ApplyResult",
    "apply_winner",
    "load_state",
    "package_versions",
    "sha256_file",
    "size_figures",
    "stored_experiment",
    "stored_profile",
]

WINNER_FORMAT = "compression-search/winner/1"
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
                from .. import __version__

                out[name] = f"{__version__} (source checkout)"
    return out


def stored_experiment(data: Mapping[str, Any], *, where: str, run_dir: Path | None) -> Any:
    """The search's Experiment, from the dict the study stored (`Experiment.to_dict()`)."""
    from ..config import parse_experiment

    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(where, "experiment", "the study holds no experiment record")
    fields_ = dict(data)
    source = str(fields_.pop("source", where))
    exp = parse_experiment(fields_, source)
    if run_dir is not None and exp.storage is None:
        # The base-model cache and relative weight paths live in the run folder it came from.
        exp = replace(exp, out=str(run_dir))
    return exp


def load_state(model: Any, path: Path, *, where: str, field_name: str) -> None:
    from ..tasks import load_state_dict_file

    state = load_state_dict_file(path, file=where, field_name=field_name)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise ConfigError(
            where, field_name, f"{path} does not fit the rebuilt plan ({detail})"
        ) from None


def size_figures(cost: Any, model: Any) -> dict[str, int]:
    numel = sum(int(v.numel()) for v in model.state_dict().values())
    return {
        "params": int(cost.params),
        "weight_bytes": int(cost.weight_bytes),
        "flash_bytes": int(cost.flash_bytes),
        "state_dict_numel": numel,
    }


def stored_profile(data: Mapping[str, Any], *, where: str) -> Any:
    """The HardwareProfile a study stored; JSON turned its precision keys (8, 16) into strings."""
    from ..hardware import profile_from_dict

    def ints(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {
                int(k) if isinstance(k, str) and k.isdigit() else k: ints(x) for k, x in v.items()
            }
        return v

    return profile_from_dict(ints(dict(data)), file=f"{where} (profile)")


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
    for key in ("plan", "experiment", "metrics", "artifacts", "base_model", "profile"):
        if not isinstance(data.get(key), dict):
            raise ConfigError(where, key, "missing; re-export the winner")
    if not isinstance(data["metrics"].get("test"), dict):
        raise ConfigError(where, "metrics.test", "missing; re-export the winner")
    return data


def apply_winner(
    winner_yaml: str | Path, out: str | Path | None = None, *, log: Callable[[str], None] = print
) -> ApplyResult:
    """Rebuild a winner from the base model and re-evaluate it on the test split.

    Checks the sha256 of every artifact and of the base model first and refuses (ConfigError)
    on any mismatch. With `out`, writes the rebuilt `model.pt` and `applied.yaml` there.
    """
    from spaces import CompressionPlan, PlanError

    from ..pipeline import build, cost_of
    from ..tasks import load_task

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
    exp = stored_experiment(data["experiment"], where=where, run_dir=None)
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
    load_state(model, folder / "model.pt", where=where, field_name="artifacts.model.pt")
    model.eval()
    profile = stored_profile(data["profile"], where=where)
    cost = cost_of(compressed, task, profile)
    m = data["metrics"]
    result = ApplyResult(
        winner_yaml=path,
        size=size_figures(cost, model),
        exported_size={k: m[k] for k in SIZE_KEYS if k in m},
        test=task.evaluate(model, "test"),
        exported_test=dict(m["test"]),
        primary_metric=primary_metric(stored=m.get("primary_metric")),
        out=Path(out) if out else None,
    )
    if out:
        import torch

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), o / "model.pt")
        atomic_write_text(
            o / "applied.yaml",
            yaml.safe_dump(
                plain(
                    {
                        "winner": str(path.resolve()),
                        "size": result.size,
                        "test": result.test,
                        "size_matches": result.size_matches,
                        "ok": result.ok,
                    }
                ),
                sort_keys=False,
            ),
        )
    return result
