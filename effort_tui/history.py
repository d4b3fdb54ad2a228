"""Conversation history in SQLite (stdlib `sqlite3`, WAL, one commit per message).

A message is committed as soon as it exists (the user's when it is sent, the
answer when it finishes), so a killed app loses at most the answer in flight.
`HistoryStore(None)` keeps everything in memory (``--no-history``).

Runs on the UI thread: every call is one small statement and one commit, and
WAL with ``synchronous=NORMAL`` makes a commit an append to the log.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SCHEMA_VERSION = 1

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


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: str  # "user" | "assistant"
    content: str
    created: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    model: str
    created: float
    updated: float
    message_count: int


def title_from(text: str, limit: int = 60) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "") or "Untitled"
    first = first.lstrip("#>").strip() or first  # "# Heading" is titled "Heading"
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


class HistoryStore:
    def __init__(self, path: Path | None, now: Callable[[], float]) -> None:
        self.path = path
        self._now = now
        if path is None:
            self._db = sqlite3.connect(":memory:")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} was written by a newer Effort Engine (schema {version}); "
                "upgrade, or move the file away"
            )
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- writes (each one commit) --------------------------------------------------------------

    def create_conversation(self, title: str, model: str = "", system_prompt: str = "") -> int:
        now = self._now()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO conversations (title, model, system_prompt, created, updated) VALUES (?, ?, ?, ?, ?)",
                (title, model, system_prompt, now, now),
            )
        return int(cur.lastrowid)

    def add_message(self, conversation_id: int, role: str, content: str, meta: dict[str, Any] | None = None) -> int:
        now = self._now()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, meta) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, now, json.dumps(meta or {}, separators=(",", ":"))),
            )
            self._db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, conversation_id))
        return int(cur.lastrowid)

    def delete_message(self, message_id: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM messages WHERE id=?", (message_id,))

    def delete_conversation(self, conversation_id: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        with self._db:
            self._db.execute("UPDATE conversations SET title=? WHERE id=?", (title, conversation_id))

    def set_system_prompt(self, conversation_id: int, system_prompt: str) -> None:
        with self._db:
            self._db.execute("UPDATE conversations SET system_prompt=? WHERE id=?", (system_prompt, conversation_id))

    def search_conversations(self, query: str) -> list[ConversationSummary]:
        """Conversations whose title or any message contains `query` (case-insensitive), newest first."""
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        needle = f"%{escaped}%"
        return self._summaries(
            "WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages s WHERE s.conversation_id = c.id "
            "AND s.content LIKE ? ESCAPE '\\')",
            (needle, needle),
        )

    # -- reads ---------------------------------------------------------------------------------

    def conversation(self, conversation_id: int) -> ConversationSummary | None:
        rows = self._summaries("WHERE c.id=?", (conversation_id,))
        return rows[0] if rows else None

    def list_conversations(self) -> list[ConversationSummary]:
        return self._summaries("", ())

    def _summaries(self, where: str, params: tuple) -> list[ConversationSummary]:
        rows = self._db.execute(
            "SELECT c.id, c.title, c.model, c.created, c.updated, COUNT(m.id) AS n "
            "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            f"{where} GROUP BY c.id ORDER BY c.updated DESC, c.id DESC",
            params,
        ).fetchall()
        return [ConversationSummary(r["id"], r["title"], r["model"], r["created"], r["updated"], r["n"]) for r in rows]

    def system_prompt(self, conversation_id: int) -> str:
        row = self._db.execute("SELECT system_prompt FROM conversations WHERE id=?", (conversation_id,)).fetchone()
        return row[0] if row else ""

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT id, conversation_id, role, content, created, meta FROM messages WHERE conversation_id=? ORDER BY id",
            (conversation_id,),
        ).fetchall()
        return [
            StoredMessage(r["id"], r["conversation_id"], r["role"], r["content"], r["created"], _load_meta(r["meta"]))
            for r in rows
        ]

    def prompt_history(self, limit: int = 200) -> list[str]:
        """The user's recent messages, oldest first, without repeats in a row."""
        rows = self._db.execute(
            "SELECT content FROM messages WHERE role='user' ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        out: list[str] = []
        for (content,) in reversed(rows):
            if not out or out[-1] != content:
                out.append(content)
        return out

    def close(self) -> None:
        self._db.close()


def _load_meta(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
