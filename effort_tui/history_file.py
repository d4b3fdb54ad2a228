"""The history's SQLite file: its schema, opening it (WAL, checked), and moving a damaged one aside.

Conversations are private: the folder is made 0700 and the database, its -wal and -shm, and any
.damaged-* or .unsaved-* copy 0600 (an existing folder or file is tightened too).

`effort_tui.history.HistoryStore` is what the app uses; this module only knows the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.io.atomic import write_text

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 1.0  # how long a write waits for another process's lock (on the UI thread)
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    system_prompt TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


def private(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Make `path` (if it exists) readable by its owner only."""
    try:
        os.chmod(path, mode)
    except OSError:  # gone, or not ours to change (another user's folder): leave it
        pass


def make_folder(folder: Path) -> None:
    """The history's folder, made (or tightened) private."""
    folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    private(folder, PRIVATE_DIR)


def connect(path: Path | None, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """The database at `path` (None: in memory), checked and migrated; raises sqlite3.DatabaseError
    for a damaged or locked file (`is_damaged`, `is_locked` tell which) and RuntimeError for one
    written by a newer version."""
    if path is None:
        db = sqlite3.connect(":memory:")
        _setup(db, path)
        return db
    if not path.exists():  # created private; SQLite gives its -wal and -shm the same mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    for suffix in ("", "-wal", "-shm"):
        private(path.with_name(path.name + suffix))
    db = sqlite3.connect(str(path), timeout=timeout)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        _setup(db, path)
    except Exception:
        db.close()
        raise
    return db


def _setup(db: sqlite3.Connection, path: Path | None) -> None:
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys=ON")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path} was written by a newer Effort Engine (schema {version}); upgrade, or move the file away")
    if version == SCHEMA_VERSION:  # nothing to write: a file another program holds still opens
        return
    with db:
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def is_locked(exc: BaseException) -> bool:
    """A database error that means another program holds the file (as opposed to damage)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def is_damaged(exc: BaseException) -> bool:
    """A database error that means the file is damaged (as opposed to locked or busy)."""
    text = str(exc).lower()
    return any(w in text for w in ("malformed", "not a database", "disk image", "quick_check", "encrypted"))


def move_aside(path: Path) -> Path:
    """Rename the damaged file (and its -wal/-shm) to <name>.damaged-<time>, kept private; returns
    the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, aside.with_name(aside.name + suffix))
            private(aside.with_name(aside.name + suffix))
    return aside


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def write_unsaved(path: Path, pending: list[Any]) -> None:
    """Writes that never reached the database, as <name>.unsaved-<time>.json beside it (private),
    so nothing is lost; a file that cannot be written either is given up quietly."""
    dump = path.with_name(f"{path.name}.unsaved-{time.strftime('%Y%m%d-%H%M%S')}.json")
    try:
        write_text(dump, json.dumps(pending, ensure_ascii=False, indent=1), mode=PRIVATE_FILE)
    except OSError:
        pass


def load_meta(text: str) -> dict[str, Any]:
    """A message's stored metadata (JSON); {} when it is not a JSON object."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
