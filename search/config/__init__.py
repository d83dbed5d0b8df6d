"""Experiment YAML -> typed, validated `Experiment`. YAML is read here and nowhere deeper.

The experiment's types live in `_types`, its field checks in `_checks` and the parser in
`_parse` (the parser over the types over the checks); this package is where callers import
them from. A check that needs a hardware profile too (`search.validate`) lives above
`search.hardware`, not here: the experiment sits below the cost model.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .._resources import resolve
from ..budgets import BUDGET_KEYS
from ..errors import ConfigError
from ._parse import parse_experiment
from ._types import (
    BUDGET_MARGINS,
    METRIC_DIRECTIONS,
    RECOVERY_KINDS,
    SAMPLERS,
    Experiment,
    Objective,
    Recovery,
    Schedule,
    UserTask,
)

__all__ = [
    "BUDGET_KEYS",
    "BUDGET_MARGINS",
    "METRIC_DIRECTIONS",
    "SAMPLERS",
    "ConfigError",
    "Experiment",
    "Objective",
    "RECOVERY_KINDS",
    "Recovery",
    "Schedule",
    "UserTask",
    "load_experiment",
    "parse_experiment",
]


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
