"""The one error type users see for bad input: it names the file, the field and what is allowed."""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable

_UNKNOWN_KEY = "unknown key; allowed: "


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` did you mean 'x'?` for the closest choice to a misspelt `word`, else ''."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


def _with_suggestion(field: str, message: str) -> str:
    """An `unknown key; allowed: [...]` message (every loader words it so, including the
    space and profile loaders) gains the closest allowed key. Done here, once, so no loader
    can forget it."""
    if not message.startswith(_UNKNOWN_KEY):
        return message
    allowed_text = message[len(_UNKNOWN_KEY) :]
    try:
        allowed = ast.literal_eval(allowed_text)
    except (ValueError, SyntaxError):  # a plain "a, b, c" list
        allowed = allowed_text.split(", ")
    if not isinstance(allowed, (list, tuple, set)):
        return message
    hint = did_you_mean(field.rsplit(".", 1)[-1], allowed)
    return f"unknown key;{hint} allowed: {allowed_text}" if hint else message


def describe(exc: BaseException) -> str:
    """`TypeName: first line of the message` (cut to 200 characters), for one-line errors."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class ConfigError(ValueError):
    """Bad input. The command line prints `error: <file>: <field>: <message>` and exits 2."""

    def __init__(self, file: str, field: str, message: str) -> None:
        message = _with_suggestion(field, message)
        super().__init__(f"{file}: {field}: {message}")
        self.file, self.field, self.message = str(file), field, message
