"""A sha256 beside each cached file (``<file>.sha256``), checked before the file is used.

The record holds the digest, the size and mtime the file had when it was last hashed, and when
that was. A file nobody touched since is not read again on every start; a changed size or mtime
(a flipped byte written by anything) means hashing it again, and so does a record older than
REHASH_AFTER_S: damage that keeps size and mtime (bit rot on the disk) is found within a week,
at the cost of one full read of the file (about a second for SmolLM2's files) once a week.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from engine.events import LoadProgress
from engine.io.atomic import write_text

ProgressFn = Callable[[LoadProgress], None]

REHASH_AFTER_S = 7 * 24 * 3600.0


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path, on_progress: ProgressFn | None = None, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            done += len(block)
            if on_progress:
                on_progress(LoadProgress("verify", done, total, "B", f"checking {path.name}"))
    return digest.hexdigest()


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None


def record(path: Path, digest: str | None = None) -> str:
    """Write the record for `path` (hashing it unless `digest` is given); returns the digest."""
    digest = digest or sha256_file(path)
    st = path.stat()
    fields = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hashed_at": time.time()}
    write_text(record_path(path), json.dumps(fields) + "\n")
    return digest


def verify(path: Path, on_progress: ProgressFn | None = None, expected: str | None = None) -> bool | None:
    """True: `path` matches its record (or `expected`); False: it does not (damaged);
    None: there is no record and nothing expected (a file cached before records existed).
    Hashes the file unless the record is for this very size and mtime and younger than REHASH_AFTER_S."""
    rec = _read(path)
    want = expected or (rec or {}).get("sha256")
    if want is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return False
    hashed_at = rec.get("hashed_at") if rec else None
    recent = isinstance(hashed_at, (int, float)) and 0 <= time.time() - hashed_at < REHASH_AFTER_S
    if rec and rec["sha256"] == want and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns and recent:
        return True
    if sha256_file(path, on_progress) != want:
        return False
    record(path, want)
    return True


def recorded(path: Path) -> str | None:
    """The sha256 on record for `path`, if the file is unchanged since it was hashed (no hashing)."""
    rec = _read(path)
    try:
        st = path.stat()
    except OSError:
        return None
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return rec["sha256"]
    return None
