"""Experiment YAML -> typed, validated `Experiment`. YAML is read here and nowhere deeper."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ._resources import resolve
from .budgets import BUDGET_KEYS
from .errors import ConfigError

# Metrics the built-in pipeline measures, with the direction that is better.
METRIC_DIRECTIONS = {
    "accuracy": "maximize",
    "f1": "maximize",
    "recall": "maximize",
    "latency_ms": "minimize",
    "weight_bytes": "minimize",
    "flash_bytes": "minimize",
    "memory_bytes": "minimize",
    "peak_activation_bytes": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random")
# Which latency a budget is checked against: the prediction, or its pessimistic p90 bound
# (prediction x (1 + the profile's measured p90 error)).
BUDGET_MARGINS = ("none", "p90")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" | "minimize"


@dataclass(frozen=True)
class Recovery:
    """Fine-tuning after compression (short while searching, long in the refine stage)."""

    epochs: int = 2
    student_epochs: int = 10  # students start from scratch, so they need more than a touch-up
    lr: float = 0.005
    student_lr: float = 0.01
    batch_size: int = 64
    distillation: bool = True
    early_stop: bool = True  # stop hopeless plans at the recovery checkpoint
    refine_epochs: int = 8
    refine_student_epochs: int = 30  # the refine stage's budget for students
    refine_top_k: int = 0  # 0 = no refine stage
    # Step budgets (optimizer steps): when set they replace the matching epochs, so a trial on a
    # large dataset costs the same whatever its size.
    steps: int | None = None
    student_steps: int | None = None
    refine_steps: int | None = None
    refine_student_steps: int | None = None
    amp: bool = True  # mixed precision for recovery on a GPU (ignored on the CPU)

    def schedule(self, student: bool, *, refine: bool = False) -> tuple[int, float]:
        """Epochs and learning rate of one recovery. Students start from scratch, so they get
        their own; the refine stage is never shorter than the search's."""
        if student:
            epochs, lr, longer = self.student_epochs, self.student_lr, self.refine_student_epochs
        else:
            epochs, lr, longer = self.epochs, self.lr, self.refine_epochs
        return (max(longer, epochs) if refine else epochs), lr

    def steps_for(self, student: bool, *, refine: bool = False) -> int | None:
        """The step budget of one recovery, or None to count epochs (`schedule`). The refine
        stage is never shorter than the search's."""
        if student:
            steps, longer = self.student_steps, self.refine_student_steps
        else:
            steps, longer = self.steps, self.refine_steps
        if not refine:
            return steps
        if longer is None:
            return steps
        return max(longer, steps or 0)


@dataclass(frozen=True)
class UserTask:
    """A user's model and data, given as importable `pkg.module:function` factories."""

    model: str
    data: str
    input_shape: tuple[int, ...]
    num_classes: int
    weights: str | None = None
    evaluate: str | None = None
    train_epochs: int = 10
    train_steps: int | None = None  # base training in optimizer steps (replaces train_epochs)
    workers: int = 2  # DataLoader worker processes for datasets not held in memory
    val_subset: int | None = None  # the search evaluates on this many fixed val rows


@dataclass(frozen=True)
class Experiment:
    """One validated experiment. Build with `load_experiment`; every field is checked."""

    name: str
    source: str  # the file it was read from
    task: str | UserTask = "digits"
    target: str = "host"
    # Several targets: one study costs every plan on each, trains it once, and keeps one front
    # per target (search.multi_target). Empty: the single `target`. `target` is then the first.
    targets: tuple[str, ...] = ()
    space: str = "joint"
    objectives: tuple[Objective, ...] = (
        Objective("accuracy", "maximize"),
        Objective("latency_ms", "minimize"),
        Objective("weight_bytes", "minimize"),
    )
    budgets: Mapping[str, float] = field(default_factory=dict)
    max_accuracy_drop: float | None = 0.02
    trials: int = 30
    seed: int = 0
    sampler: str = "auto"
    storage: str | None = None
    out: str | None = None
    device: str = "cpu"
    latency: str = "predicted"  # or "measured": ONNX Runtime on this machine (host target only)
    budget_margin: str = "none"  # "p90": check latency_ms against the profile's p90 bound
    recovery: Recovery = field(default_factory=Recovery)
    storage_flag: bool = False  # the storage came from --storage, not the file (for messages)

    @property
    def storage_where(self) -> tuple[str, str]:
        """(file, field) that gave the storage URL, for error messages."""
        return ("<command line>", "--storage") if self.storage_flag else (self.source, "storage")

    @property
    def base_dir(self) -> Path:
        """Folder of the experiment file: relative task paths and imports start here."""
        return Path(self.source).resolve().parent

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("experiments") / "runs" / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').resolve()}"

    def with_overrides(self, **changes: Any) -> Experiment:
        """Apply command-line overrides (None means "not given"), validating each."""
        changes = {k: v for k, v in changes.items() if v is not None}
        where = "<command line>"
        if "trials" in changes:
            changes["trials"] = _int(where, "--trials", changes["trials"], low=1)
        if "seed" in changes:
            changes["seed"] = _int(where, "--seed", changes["seed"], low=0)
        if "out" in changes:
            changes["out"] = _out_path(where, "--out", changes["out"])
        if "target" in changes and "targets" in changes:
            raise ConfigError(where, "--targets", "give --target or --targets, not both")
        if "target" in changes:
            changes["target"] = _target(where, "--target", changes["target"])
            changes["targets"] = ()  # --target X searches for X alone
        elif "targets" in changes:
            names = changes["targets"].split(",")
            changes["targets"] = _targets(where, "--targets", names)
            # One name is the ordinary single-target search for it.
            changes["target"] = _target(where, "--targets", names[0])
        if "storage" in changes:
            changes["storage"] = _storage(where, "--storage", changes["storage"])
            changes["storage_flag"] = True
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objectives"] = [{o.metric: o.direction} for o in self.objectives]
        data["budgets"] = dict(self.budgets)
        data["targets"] = list(self.targets)
        data.pop("storage_flag")
        return data


# -- field checks: each raises ConfigError(file, field, what is allowed) ----------------------


def _int(file: str, key: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(file, key, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(file, key, f"must be >= {low}{upper}, got {value}")
    return value


def _num(
    file: str, key: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(file, key, f"must be a number, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        lo = f"> {low}" if low_open else f">= {low}"
        hi = "" if high == math.inf else f" and <= {high}"
        raise ConfigError(file, key, f"must be {lo}{hi}, got {value}")
    return float(value)


def _str(file: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(file, key, f"must be a non-empty string, got {value!r}")
    return value


def _choice(file: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(file, key, f"{value!r} is not one of {list(allowed)}")
    return value


def _mapping(file: str, key: str, value: Any, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(file, key, f"must be a mapping with keys from {list(allowed)}")
    for k in value:
        if k not in allowed:
            raise ConfigError(file, f"{key}.{k}", f"unknown key; allowed: {list(allowed)}")
    return value


def _out_path(file: str, key: str, value: Any) -> str:
    text = _str(file, key, value)
    path = Path(text)
    # A relative path must stay inside the project (the current directory): no `..` escapes.
    if not path.is_absolute():
        resolved = (Path.cwd() / path).resolve()
        if not resolved.is_relative_to(Path.cwd().resolve()):
            raise ConfigError(
                file, key, f"{text!r} escapes the project folder; use a path inside it"
            )
    return text


def _target(file: str, key: str, value: Any) -> str:
    text = _str(file, key, value)
    resolve("profile", text, file=file, field=key)
    return text


def _targets(file: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of target names (or profile paths); one of them is the same as `target`."""
    if not isinstance(value, list) or not value:
        raise ConfigError(file, key, "must be a non-empty list of profiles, e.g. [mcu, phone]")
    names = tuple(_target(file, f"{key}[{i}]", v) for i, v in enumerate(value))
    stems = [Path(n).stem for n in names]
    if len(set(stems)) != len(stems):
        raise ConfigError(file, key, f"lists a target twice: {list(names)}")
    # One target is the ordinary single-target search.
    return names if len(names) > 1 else ()


def _storage(file: str, key: str, value: Any) -> str:
    text = _str(file, key, value)
    if "://" not in text:
        raise ConfigError(
            file, key, f"{text!r} is not a SQLAlchemy URL (sqlite:///..., postgresql://...)"
        )
    return text


def _objectives(file: str, value: Any, custom_metrics: bool) -> tuple[Objective, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            file, "objectives", "must be a non-empty list, e.g. [accuracy, latency_ms]"
        )
    out = []
    for i, item in enumerate(value):
        where = f"objectives[{i}]"
        if isinstance(item, str):
            if item not in METRIC_DIRECTIONS:
                raise ConfigError(
                    file,
                    where,
                    f"{item!r} is not one of {list(METRIC_DIRECTIONS)}"
                    " (or give {metric: maximize|minimize})",
                )
            out.append(Objective(item, METRIC_DIRECTIONS[item]))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((metric, direction),) = item.items()
            metric = _str(file, where, metric)
            if metric not in METRIC_DIRECTIONS and not custom_metrics:
                raise ConfigError(
                    file, where, f"{metric!r} is not one of {list(METRIC_DIRECTIONS)}"
                )
            out.append(
                Objective(metric, _choice(file, where, direction, ("maximize", "minimize")))
            )
        else:
            raise ConfigError(file, where, "must be a metric name or {metric: maximize|minimize}")
    if len({o.metric for o in out}) != len(out):
        raise ConfigError(file, "objectives", "lists a metric twice")
    return tuple(out)


def _user_task(file: str, raw: Mapping[str, Any], base: Path) -> UserTask:
    keys = (
        "model",
        "data",
        "input_shape",
        "num_classes",
        "weights",
        "evaluate",
        "train_epochs",
        "train_steps",
        "workers",
        "val_subset",
    )
    _mapping(file, "task", raw, keys)
    for required in ("model", "data", "input_shape", "num_classes"):
        if required not in raw:
            raise ConfigError(file, f"task.{required}", "is required for a user task")
    for k in ("model", "data", "evaluate"):
        if raw.get(k) is not None and not _FACTORY.match(str(raw[k])):
            raise ConfigError(
                file, f"task.{k}", f"{raw[k]!r} must look like 'pkg.module:function'"
            )
    shape = raw["input_shape"]
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ConfigError(
            file, "task.input_shape", "must be a list of 1-4 positive integers, e.g. [3, 32, 32]"
        )
    weights = raw.get("weights")
    if weights is not None:
        path = Path(_str(file, "task.weights", weights))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(file, "task.weights", f"no weights file at {path}")
        weights = str(path)
    return UserTask(
        model=raw["model"],
        data=raw["data"],
        input_shape=tuple(shape),
        num_classes=_int(file, "task.num_classes", raw["num_classes"], low=2),
        weights=weights,
        evaluate=raw.get("evaluate"),
        train_epochs=_int(
            file, "task.train_epochs", raw.get("train_epochs", 10), low=1, high=1000
        ),
        train_steps=_optional_int(file, "task.train_steps", raw.get("train_steps"), low=1),
        workers=_int(file, "task.workers", raw.get("workers", 2), low=0, high=64),
        val_subset=_optional_int(file, "task.val_subset", raw.get("val_subset"), low=1),
    )


def _optional_int(file: str, key: str, value: Any, *, low: int) -> int | None:
    return None if value is None else _int(file, key, value, low=low, high=10**9)


_TOP_KEYS = (
    "name",
    "description",
    "task",
    "target",
    "targets",
    "space",
    "objectives",
    "budgets",
    "max_accuracy_drop",
    "trials",
    "seed",
    "sampler",
    "storage",
    "out",
    "device",
    "latency",
    "budget_margin",
    "recovery",
)


def parse_experiment(data: Any, source: str) -> Experiment:
    """Validate a parsed YAML document. Raises ConfigError naming `source` and the field."""
    file = source
    if not isinstance(data, Mapping):
        raise ConfigError(file, "<top>", "an experiment must be a mapping of keys to values")
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(file, str(key), f"unknown key; allowed: {list(_TOP_KEYS)}")
    name = _str(file, "name", data.get("name", Path(source).stem))
    if not _NAME.match(name):
        raise ConfigError(file, "name", "use letters, digits, '-', '_' and '.' (at most 64)")
    base = Path(source).resolve().parent

    raw_task = data.get("task", "digits")
    if isinstance(raw_task, str):
        task: str | UserTask = _choice(file, "task", raw_task, ("digits", "gratings"))
    else:
        task = _user_task(file, raw_task, base)

    space = _str(file, "space", data.get("space", "joint"))
    space_path = Path(space)
    if not space_path.is_absolute() and ("/" in space or space.endswith((".yaml", ".yml"))):
        space = str(base / space_path) if (base / space_path).exists() else space
    resolve("space", space, file=file, field="space")

    target = data.get("target", "host")
    if (
        isinstance(target, str)
        and not Path(target).is_absolute()
        and ("/" in target or target.endswith((".yaml", ".yml")))
    ):
        target = str(base / target) if (base / target).exists() else target
    target = _target(file, "target", target)
    targets: tuple[str, ...] = ()
    if data.get("targets"):  # a stored single-target experiment holds []
        raw_targets = data["targets"]
        if isinstance(raw_targets, list):
            raw_targets = [
                str(base / t)
                if isinstance(t, str)
                and not Path(t).is_absolute()
                and ("/" in t or t.endswith((".yaml", ".yml")))
                and (base / t).exists()
                else t
                for t in raw_targets
            ]
        targets = _targets(file, "targets", raw_targets)
        if "target" in data and data["target"] not in data["targets"]:
            raise ConfigError(file, "target", "give `target` or `targets`, not both")
        target = targets[0] if targets else _target(file, "targets[0]", raw_targets[0])

    kwargs: dict[str, Any] = {
        "name": name,
        "source": source,
        "task": task,
        "space": space,
        "target": target,
        "targets": targets,
    }
    if "objectives" in data:
        kwargs["objectives"] = _objectives(file, data["objectives"], isinstance(task, UserTask))
    if "budgets" in data and data["budgets"] is not None:
        budgets = _mapping(file, "budgets", data["budgets"], BUDGET_KEYS)
        kwargs["budgets"] = {
            k: _num(file, f"budgets.{k}", v, low=0, low_open=True) for k, v in budgets.items()
        }
    if "max_accuracy_drop" in data:
        drop = data["max_accuracy_drop"]
        kwargs["max_accuracy_drop"] = (
            None if drop is None else _num(file, "max_accuracy_drop", drop, low=0, high=1)
        )
    if "trials" in data:
        kwargs["trials"] = _int(file, "trials", data["trials"], low=1, high=100_000)
    if "seed" in data:
        kwargs["seed"] = _int(file, "seed", data["seed"], low=0)
    if "sampler" in data:
        kwargs["sampler"] = _choice(file, "sampler", data["sampler"], SAMPLERS)
    if data.get("storage") is not None:
        kwargs["storage"] = _storage(file, "storage", data["storage"])
    if data.get("out") is not None:
        kwargs["out"] = _out_path(file, "out", data["out"])
    if "latency" in data:
        kwargs["latency"] = _choice(file, "latency", data["latency"], ("predicted", "measured"))
        if kwargs["latency"] == "measured" and (targets or Path(target).stem != "host"):
            raise ConfigError(
                file,
                "latency",
                "measured latency needs `target: host` (this "
                "machine); other targets use the profile's prediction",
            )
    if data.get("budget_margin") is not None:
        kwargs["budget_margin"] = _choice(
            file, "budget_margin", data["budget_margin"], BUDGET_MARGINS
        )
        if kwargs["budget_margin"] != "none" and kwargs.get("latency") == "measured":
            raise ConfigError(
                file,
                "budget_margin",
                "bounds the predicted latency; with `latency: measured` use `none`",
            )
    if "device" in data:
        kwargs["device"] = _choice(file, "device", data["device"], ("cpu", "cuda"))
    if data.get("recovery") is not None:
        raw = _mapping(
            file,
            "recovery",
            data["recovery"],
            (
                "epochs",
                "student_epochs",
                "lr",
                "student_lr",
                "batch_size",
                "distillation",
                "early_stop",
                "refine_epochs",
                "refine_student_epochs",
                "refine_top_k",
                "steps",
                "student_steps",
                "refine_steps",
                "refine_student_steps",
                "amp",
            ),
        )
        rec = Recovery()
        changes: dict[str, Any] = {}
        if "epochs" in raw:
            changes["epochs"] = _int(file, "recovery.epochs", raw["epochs"], low=0, high=1000)
        if "student_epochs" in raw:
            changes["student_epochs"] = _int(
                file, "recovery.student_epochs", raw["student_epochs"], low=0, high=1000
            )
        for key in ("refine_epochs", "refine_student_epochs"):
            if key in raw:
                changes[key] = _int(file, f"recovery.{key}", raw[key], low=0, high=1000)
        if "refine_top_k" in raw:
            changes["refine_top_k"] = _int(
                file, "recovery.refine_top_k", raw["refine_top_k"], low=0
            )
        for key in ("lr", "student_lr"):
            if key in raw:
                changes[key] = _num(
                    file, f"recovery.{key}", raw[key], low=0, high=10, low_open=True
                )
        if "batch_size" in raw:
            changes["batch_size"] = _int(file, "recovery.batch_size", raw["batch_size"], low=1)
        for key in ("steps", "student_steps", "refine_steps", "refine_student_steps"):
            if key in raw:
                changes[key] = _optional_int(file, f"recovery.{key}", raw[key], low=1)
        for key in ("distillation", "early_stop", "amp"):
            if key in raw:
                if not isinstance(raw[key], bool):
                    raise ConfigError(file, f"recovery.{key}", "must be true or false")
                changes[key] = raw[key]
        kwargs["recovery"] = replace(rec, **changes)
    return Experiment(**kwargs)


def load_experiment(name_or_path: str | Path) -> Experiment:
    """Read and validate an experiment file (or a built-in experiment by name)."""
    path = resolve("experiment", name_or_path, file=str(name_or_path), field="<experiment>")
    file = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "<file>", f"cannot read it as text: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<yaml>"
        raise ConfigError(file, where, "malformed YAML; fix the syntax there") from None
    if data is None:
        raise ConfigError(file, "<file>", "the file is empty; see experiments/quickstart.yaml")
    return parse_experiment(data, file)
