"""Find built-in profiles, spaces and experiments by name, in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, did_you_mean

_PACKAGE = Path(__file__).resolve().parent
_KINDS = {
    # kind: (folder in a checkout, folder in an installed wheel)
    "profile": (
        _PACKAGE.parent / "hardware_profiles",
        _PACKAGE / "_builtin" / "hardware_profiles",
    ),
    "space": (_PACKAGE.parent / "spaces", _PACKAGE.parent / "spaces"),
    "experiment": (_PACKAGE.parent / "experiments", _PACKAGE / "_builtin" / "experiments"),
}


def builtin_dir(kind: str) -> Path:
    """The folder holding the built-in YAML files of one kind."""
    checkout, wheel = _KINDS[kind]
    return checkout if any(checkout.glob("*.yaml")) else wheel


def builtin_names(kind: str) -> list[str]:
    return sorted(p.stem for p in builtin_dir(kind).glob("*.yaml"))


def resolve(kind: str, name_or_path: str | Path, *, file: str, field: str) -> Path:
    """A path as given, or a built-in name; a clear ConfigError otherwise."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or "/" in text or path.exists():
        if not path.is_file():
            raise ConfigError(file, field, f"no {kind} file at {text}")
        return path
    candidate = builtin_dir(kind) / f"{text}.yaml"
    if candidate.is_file():
        return candidate
    names = builtin_names(kind)
    raise ConfigError(
        file,
        field,
        f"unknown {kind} {text!r};{did_you_mean(text, names)} built-in: {names} "
        "or a path to a YAML",
    )
