"""Errors a user can cause, each printable as one line.

Anything raised as an `EngineError` is the user's input being wrong (a bad path,
a corrupt file, an unsupported model); the CLI prints `str(err)` and exits 2.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class EngineError(Exception):
    """A problem with the user's input, explained in one line."""


class ModelFileError(EngineError):
    """A model file or folder that cannot be used."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ContextLimitError(EngineError):
    """The prompt (or prompt + answer) does not fit the model's context."""
