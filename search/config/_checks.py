"""Field checks of an experiment: each raises ConfigError(file, field, what is allowed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._resources import resolve
from ..errors import ConfigError


def check_int(file: str, key: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(file, key, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(file, key, f"must be >= {low}{upper}, got {value}")
    return value


def check_num(
    file: str, key: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(file, key, f"must be a number, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        lo = f"> {low}" if low_open else f">= {low}"
        hi = "" if high == math.inf else f" and <= {high}"
        raise ConfigError(file, key, f"must be {lo}{hi}, got {value}")
    return float(value)


def check_str(file: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(file, key, f"must be a non-empty string, got {value!r}")
    return value


def check_choice(file: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(file, key, f"{value!r} is not one of {list(allowed)}")
    return value


def check_mapping(file: str, key: str, value: Any, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(file, key, f"must be a mapping with keys from {list(allowed)}")
    for k in value:
        if k not in allowed:
            raise ConfigError(file, f"{key}.{k}", f"unknown key; allowed: {list(allowed)}")
    return value


def check_out_path(file: str, key: str, value: Any) -> str:
    text = check_str(file, key, value)
    if "\x00" in text:  # no file system takes one (os.path raises on it)
        raise ConfigError(file, key, "a path cannot contain a null character")
    path = Path(text)
    # A relative path must stay inside the project (the current directory): no `..` escapes.
    if not path.is_absolute():
        resolved = (Path.cwd() / path).resolve()
        if not resolved.is_relative_to(Path.cwd().resolve()):
            raise ConfigError(
                file, key, f"{text!r} escapes the project folder; use a path inside it"
            )
    return text


def check_target(file: str, key: str, value: Any) -> str:
    text = check_str(file, key, value)
    resolve("profile", text, file=file, field=key)
    return text


def check_targets(file: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of target names (or profile paths); one of them is the same as `target`."""
    if not isinstance(value, list) or not value:
        raise ConfigError(file, key, "must be a non-empty list of profiles, e.g. [mcu, phone]")
    names = tuple(check_target(file, f"{key}[{i}]", v) for i, v in enumerate(value))
    stems = [Path(n).stem for n in names]
    if len(set(stems)) != len(stems):
        raise ConfigError(file, key, f"lists a target twice: {list(names)}")
    # One target is the ordinary single-target search.
    return names if len(names) > 1 else ()


def check_storage(file: str, key: str, value: Any) -> str:
    text = check_str(file, key, value)
    if "://" not in text:
        raise ConfigError(
            file, key, f"{text!r} is not a SQLAlchemy URL (sqlite:///..., postgresql://...)"
        )
    return text


def check_optional_int(file: str, key: str, value: Any, *, low: int) -> int | None:
    return None if value is None else check_int(file, key, value, low=low, high=10**9)
