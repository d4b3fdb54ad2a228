"""Write files so that a crash never leaves half of one behind: the one atomic writer of the project
(the engine's caches, the TUI's config and exports).

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
from typing import Iterator

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.part$")  # .<name>.<pid>.<random>.part
_LEGACY_TEMP = re.compile(r"^(\..+\.part|\.tmp[A-Za-z0-9]{6})$")  # before the pid was in the name
LEGACY_TEMP_AGE_S = 3600.0  # a legacy temp file untouched this long belongs to no live write


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; if the block succeeds, the file written there is
    flushed to disk (fsync) and then replaces `target`. Otherwise it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".part", dir=target.parent))
    tmp_path = work / target.name
    try:
        yield tmp_path
        with open(tmp_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_text(target: Path, text: str) -> None:
    """`text` as UTF-8 with "\\n" line ends, atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
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
