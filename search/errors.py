"""The one error type users see for bad input: it names the file, the field and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input. The command line prints `error: <file>: <field>: <message>` and exits 2."""

    def __init__(self, file: str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}: {message}")
        self.file, self.field, self.message = str(file), field, message
