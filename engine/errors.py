"""Errors a user can cause, each printable as one line.

Anything raised as an `EngineError` is the user's input being wrong (a bad path,
a corrupt file, an unsupported model); the CLI prints `str(err)` and exits 2.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
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


class WriteError(EngineError, OSError):
    """A file could not be written (full disk, quota, read-only or forbidden folder). Also an
    OSError, with the original `errno` and `strerror`, for callers that handle those."""

    def __init__(self, target: str | Path, cause: BaseException, reason: str) -> None:
        self.message = f"cannot write {target}: {reason}"
        super().__init__(self.message)
        self.errno = getattr(cause, "errno", None)
        self.strerror = reason
        self.filename = str(target)

    def __str__(self) -> str:  # OSError's own would read "[Errno 28] ...: '<path>'"
        return self.message


# what a full or forbidden disk looks like, also inside a library's own error text (safetensors
# reports "No space left on device" in a SafetensorError, not an OSError)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def disk_reason(exc: BaseException) -> str | None:
    """Why a write failed, if the disk or its permissions refused it ("no space left on device")."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return os.strerror(exc.errno).lower()
    text = str(exc)
    return next((os.strerror(e).lower() for e in DISK_ERRNOS if os.strerror(e) in text), None)


def os_error_message(exc: OSError) -> str:
    """One line for an OSError that reached the top: what, where, and for the model cache a hint."""
    what = (exc.strerror or str(exc) or type(exc).__name__).lower()
    where = exc.filename or ""
    line = f"{where}: {what}" if where else what
    if isinstance(exc, PermissionError) and where:
        from engine.io.paths import cache_dir

        try:
            inside = Path(where).resolve().is_relative_to(cache_dir().resolve())
        except OSError:
            inside = False
        if inside:
            line += (f" (the cache {cache_dir()} belongs to another user, e.g. made with sudo: fix its owner "
                     "or permissions, or set EFFORT_CACHE_DIR)")
    return line
