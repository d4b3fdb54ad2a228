"""Write files so that a crash never leaves half of one behind: the one atomic writer of the project
(the engine's caches, the TUI's config and exports), and the lock that keeps two processes from
making the same cached file at once (`file_lock`).

Everything a write makes before its rename lives in one folder beside the target,
``.<name>.<pid>.<random>.part`` (the file itself, and any temporary file a library writes next to
it, like safetensors' ``.tmpXXXX``). A process killed mid-write leaves that folder behind;
`clean_stale` removes the ones whose process is gone, and the cache openers call it on start.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from engine.errors import WriteError, disk_reason

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.part$")  # .<name>.<pid>.<random>.part
_LEGACY_TEMP = re.compile(r"^(\..+\.part|\.tmp[A-Za-z0-9]{6})$")  # before the pid was in the name
LEGACY_TEMP_AGE_S = 3600.0  # a legacy temp file untouched this long belongs to no live write


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; if the block succeeds, the file written there is
    flushed to disk (fsync) and then replaces `target`. Otherwise it is removed.

    A full disk, a quota or a folder that may not be written ends as `WriteError` (an EngineError
    and an OSError, one line: "cannot write <target>: no space left on device"), whether the block
    raised an OSError or a library wrapped one in its own exception; nothing half-written stays."""
    work: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".part", dir=target.parent))
        tmp_path = work / target.name
        yield tmp_path
        with open(tmp_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, target)
    except Exception as exc:
        reason = disk_reason(exc)
        if reason is None or isinstance(exc, WriteError):
            raise
        raise WriteError(target, exc, reason) from exc
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def write_text(target: Path, text: str, mode: int | None = None) -> None:
    """`text` as UTF-8 with "\\n" line ends, atomically; `mode` (e.g. 0o600) is the file's
    permissions from the start, before any text is in it."""
    with atomic_path(target) as tmp:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(tmp, flags, 0o666 if mode is None else mode)
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # exactly this, whatever the umask
        with open(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it there; assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale(directory: Path) -> list[Path]:
    """Remove what killed writes left in `directory` (not recursive); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        m = _TEMP.match(name)
        if m:
            stale = not pid_alive(int(m[1]))
        elif _LEGACY_TEMP.match(name):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_TEMP_AGE_S
            except OSError:
                continue
        else:
            continue
        if not stale:
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


@contextmanager
def file_lock(target: Path, *, shared: bool = False, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold a lock on ``.<name>.lock`` beside `target` for the block: exclusive to make `target`
    (a second maker waits, then finds it made), shared to read it (no maker replaces it meanwhile).

    `fcntl.flock`, so the system drops the lock of a process that dies. `on_wait` is called once if
    the lock is busy, before waiting for it. Where there is no flock (Windows), or a reader cannot
    create the lock file (a read-only cache), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = target.with_name(f".{target.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        if not shared:
            raise
        yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock
