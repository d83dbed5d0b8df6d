"""Parse a YAML document into an `Experiment`, checking every field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._resources import resolve
from ..budgets import BUDGET_KEYS
from ..errors import ConfigError
from ._checks import (
    check_choice,
    check_int,
    check_mapping,
    check_num,
    check_optional_int,
    check_out_path,
    check_storage,
    check_str,
    check_target,
    check_targets,
)
from ._types import (
    BUDGET_MARGINS,
    METRIC_DIRECTIONS,
    SAMPLERS,
    Experiment,
    Objective,
    Recovery,
    UserTask,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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
            metric = check_str(file, where, metric)
            if metric not in METRIC_DIRECTIONS and not custom_metrics:
                raise ConfigError(
                    file, where, f"{metric!r} is not one of {list(METRIC_DIRECTIONS)}"
                )
            out.append(
                Objective(metric, check_choice(file, where, direction, ("maximize", "minimize")))
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
    check_mapping(file, "task", raw, keys)
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
        path = Path(check_str(file, "task.weights", weights))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(file, "task.weights", f"no weights file at {path}")
        weights = str(path)
    return UserTask(
        model=raw["model"],
        data=raw["data"],
        input_shape=tuple(shape),
        num_classes=check_int(file, "task.num_classes", raw["num_classes"], low=2),
        weights=weights,
        evaluate=raw.get("evaluate"),
        train_epochs=check_int(
            file, "task.train_epochs", raw.get("train_epochs", 10), low=1, high=1000
        ),
        train_steps=check_optional_int(file, "task.train_steps", raw.get("train_steps"), low=1),
        workers=check_int(file, "task.workers", raw.get("workers", 2), low=0, high=64),
        val_subset=check_optional_int(file, "task.val_subset", raw.get("val_subset"), low=1),
    )


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
    "larger_students",
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
    name = check_str(file, "name", data.get("name", Path(source).stem))
    if not _NAME.match(name):
        raise ConfigError(file, "name", "use letters, digits, '-', '_' and '.' (at most 64)")
    base = Path(source).resolve().parent

    raw_task = data.get("task", "digits")
    if isinstance(raw_task, str):
        task: str | UserTask = check_choice(file, "task", raw_task, ("digits", "gratings"))
    else:
        task = _user_task(file, raw_task, base)

    space = check_str(file, "space", data.get("space", "joint"))
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
    target = check_target(file, "target", target)
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
        targets = check_targets(file, "targets", raw_targets)
        if "target" in data and data["target"] not in data["targets"]:
            raise ConfigError(file, "target", "give `target` or `targets`, not both")
        target = targets[0] if targets else check_target(file, "targets[0]", raw_targets[0])

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
        budgets = check_mapping(file, "budgets", data["budgets"], BUDGET_KEYS)
        kwargs["budgets"] = {
            k: check_num(file, f"budgets.{k}", v, low=0, low_open=True) for k, v in budgets.items()
        }
    if "max_accuracy_drop" in data:
        drop = data["max_accuracy_drop"]
        kwargs["max_accuracy_drop"] = (
            None if drop is None else check_num(file, "max_accuracy_drop", drop, low=0, high=1)
        )
    if "trials" in data:
        kwargs["trials"] = check_int(file, "trials", data["trials"], low=1, high=100_000)
    if "seed" in data:
        kwargs["seed"] = check_int(file, "seed", data["seed"], low=0)
    if "sampler" in data:
        kwargs["sampler"] = check_choice(file, "sampler", data["sampler"], SAMPLERS)
    if data.get("storage") is not None:
        kwargs["storage"] = check_storage(file, "storage", data["storage"])
    if data.get("out") is not None:
        kwargs["out"] = check_out_path(file, "out", data["out"])
    if "latency" in data:
        kwargs["latency"] = check_choice(
            file, "latency", data["latency"], ("predicted", "measured")
        )
        if kwargs["latency"] == "measured" and (targets or Path(target).stem != "host"):
            raise ConfigError(
                file,
                "latency",
                "measured latency needs `target: host` (this "
                "machine); other targets use the profile's prediction",
            )
    if data.get("budget_margin") is not None:
        kwargs["budget_margin"] = check_choice(
            file, "budget_margin", data["budget_margin"], BUDGET_MARGINS
        )
        if kwargs["budget_margin"] != "none" and kwargs.get("latency") == "measured":
            raise ConfigError(
                file,
                "budget_margin",
                "bounds the predicted latency; with `latency: measured` use `none`",
            )
    if "larger_students" in data:
        if not isinstance(data["larger_students"], bool):
            raise ConfigError(file, "larger_students", "must be true or false")
        kwargs["larger_students"] = data["larger_students"]
    if "device" in data:
        kwargs["device"] = check_choice(file, "device", data["device"], ("cpu", "cuda"))
    if data.get("recovery") is not None:
        kwargs["recovery"] = _recovery(file, data["recovery"])
    return Experiment(**kwargs)


def _recovery(file: str, value: Any) -> Recovery:
    """The `recovery:` mapping: every key checked, the rest left at its default."""
    raw = check_mapping(
        file,
        "recovery",
        value,
        (
            "epochs",
            "student_epochs",
            "lr",
            "quant_lr",
            "student_lr",
            "warmup",
            "freeze_bn",
            "skip_within",
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
        changes["epochs"] = check_int(file, "recovery.epochs", raw["epochs"], low=0, high=1000)
    if "student_epochs" in raw:
        changes["student_epochs"] = check_int(
            file, "recovery.student_epochs", raw["student_epochs"], low=0, high=1000
        )
    for key in ("refine_epochs", "refine_student_epochs"):
        if key in raw:
            changes[key] = check_int(file, f"recovery.{key}", raw[key], low=0, high=1000)
    if "refine_top_k" in raw:
        changes["refine_top_k"] = check_int(
            file, "recovery.refine_top_k", raw["refine_top_k"], low=0
        )
    for key in ("lr", "quant_lr", "student_lr"):
        if key in raw:
            changes[key] = check_num(
                file, f"recovery.{key}", raw[key], low=0, high=10, low_open=True
            )
    if "warmup" in raw:
        changes["warmup"] = check_num(file, "recovery.warmup", raw["warmup"], low=0, high=0.9)
    if "freeze_bn" in raw:
        changes["freeze_bn"] = check_num(
            file, "recovery.freeze_bn", raw["freeze_bn"], low=0, high=1
        )
    if "skip_within" in raw and raw["skip_within"] is not None:
        changes["skip_within"] = check_num(
            file, "recovery.skip_within", raw["skip_within"], low=0, high=1
        )
    elif "skip_within" in raw:
        changes["skip_within"] = None
    if "batch_size" in raw:
        changes["batch_size"] = check_int(file, "recovery.batch_size", raw["batch_size"], low=1)
    for key in ("steps", "student_steps", "refine_steps", "refine_student_steps"):
        if key in raw:
            changes[key] = check_optional_int(file, f"recovery.{key}", raw[key], low=1)
    for key in ("distillation", "early_stop", "amp"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(file, f"recovery.{key}", "must be true or false")
            changes[key] = raw[key]
    return replace(rec, **changes)
