"""Errors a user can act on. Each message names the file, line, key or reference at fault."""

from __future__ import annotations


class TuneforgeError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(TuneforgeError):
    """A recipe or override is invalid (unknown key, wrong type, value out of range)."""


class ModelLoadError(TuneforgeError):
    """A model reference cannot be resolved or loaded."""


class DatasetError(TuneforgeError):
    """A dataset cannot be read, or has invalid examples.

    `problems` holds every problem found (one line each), so a caller can show all of them at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)
