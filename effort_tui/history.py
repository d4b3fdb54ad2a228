"""Conversation history in SQLite (stdlib `sqlite3`, WAL, one commit per message).

A message is committed as soon as it exists (the user's when it is sent, the
answer when it finishes), so a killed app loses at most the answer in flight.
`HistoryStore(None)` keeps everything in memory (``--no-history``).

Conversations are private (0700 folder, 0600 files: `effort_tui.history_file`).

Runs on the UI thread: every call is one small statement and one commit, and
WAL with ``synchronous=NORMAL`` makes a commit an append to the log.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from effort_tui.history_file import (
    BUSY_TIMEOUT_S, connect, is_damaged, is_locked, load_meta, make_folder, move_aside, one_line, write_unsaved,
)

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


RETRY_TIMEOUT_S = 0.05  # the same while earlier writes are waiting in memory


class HistoryStore:
    """The history database. It never raises on a locked or damaged file while the app runs:

    * locked (another program holds it): the write is kept in memory, with a notice, and written
      before the next one once the lock is gone (and at close); ids handed out meanwhile are
      provisional (negative) and mapped to the real ones when written. Locked already at start,
      the file is opened at the first write that finds it free; until then everything is in memory.
    * damaged (at start or later): the file is moved aside as ``<name>.damaged-<time>`` and a fresh
      one started, with a notice; writes kept in memory go to the fresh file.

    Notices go to `on_problem` once it is set; before that they collect in `problems`.
    """

    def __init__(self, path: Path | None, now: Callable[[], float], on_problem: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._now = now
        self.problems: list[str] = []
        self.on_problem = on_problem
        self._pending: list[list[Any]] = []  # writes not yet in the database, oldest first
        self._ids: dict[int, int] = {}  # provisional id -> id in the database
        self._next_provisional = -1
        self._recovered = False
        self._deferred = path is not None  # the file is not open yet (at start, or locked at start)
        self._db = connect(None)  # until it is (and for good with no path)
        if path is not None:
            make_folder(path.parent)
            if not self._connect(BUSY_TIMEOUT_S, at_start=True):
                self._notice(f"{path.name} is locked by another program; your messages are kept in memory "
                             "and saved once it is free")

    def _connect(self, timeout: float, at_start: bool = False) -> bool:
        """Open the file if it is not open yet (at start; later, once a lock held at start is gone);
        True once it is open. At start a damaged file is moved aside for a fresh one, and any other
        trouble than a lock raises (the app then keeps the history in memory)."""
        if not self._deferred:
            return True
        assert self.path is not None
        try:
            db = connect(self.path, timeout)
        except sqlite3.DatabaseError as exc:
            if not is_damaged(exc):
                if at_start and not is_locked(exc):
                    raise
                return False  # locked: everything stays in memory until it is free
            aside = move_aside(self.path)
            db = connect(self.path, timeout)
            self._notice(f"{self.path.name} was damaged ({one_line(exc)}); kept as {aside.name}, a fresh history started")
        except RuntimeError:  # written by a newer version (meanwhile): at start the app's to report
            if at_start:
                raise
            return False
        self._db.close()
        self._db, self._deferred = db, False
        return True

    @property
    def persistent(self) -> bool:
        return self.path is not None

    # -- trouble -------------------------------------------------------------------------------

    def _notice(self, text: str) -> None:
        if self.on_problem is not None:
            self.on_problem(text)
        else:
            self.problems.append(text)

    def _trouble(self, exc: sqlite3.DatabaseError) -> None:
        """A write or read failed: start a fresh file if this one is damaged."""
        if self.path is None or not is_damaged(exc):
            return
        try:
            self._db.close()
        except sqlite3.Error:
            pass
        aside = move_aside(self.path)
        self._db = connect(self.path)
        self._recovered = True
        self._notice(
            f"{self.path.name} is damaged ({one_line(exc)}); kept as {aside.name}. A fresh history "
            "was started; this conversation is saved there"
        )

    # -- writes (each one commit) --------------------------------------------------------------

    def _real(self, some_id: int) -> int:
        return self._ids.get(some_id, some_id)

    def _apply(self, op: list[Any]) -> int:
        kind = op[0]
        db = self._db
        with db:
            if kind == "conv":
                _, _pid, title, model, system_prompt, now = op
                cur = db.execute(
                    "INSERT INTO conversations (title, model, system_prompt, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (title, model, system_prompt, now, now),
                )
                return int(cur.lastrowid)
            if kind == "msg":
                _, _pid, conversation_id, role, content, meta, now = op
                cid = self._real(conversation_id)
                if db.execute("SELECT 1 FROM conversations WHERE id=?", (cid,)).fetchone() is None:
                    if not self._recovered:
                        return 0  # the conversation was deleted meanwhile: nothing to add it to
                    db.execute(  # its conversation is in the damaged file: give it a home
                        "INSERT INTO conversations (id, title, model, system_prompt, created, updated) "
                        "VALUES (?, 'Recovered conversation', '', '', ?, ?)",
                        (cid, now, now),
                    )
                cur = db.execute(
                    "INSERT INTO messages (conversation_id, role, content, created, meta) VALUES (?, ?, ?, ?, ?)",
                    (cid, role, content, now, meta),
                )
                db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, cid))
                return int(cur.lastrowid)
            if kind == "delete_msg":
                db.execute("DELETE FROM messages WHERE id=?", (self._real(op[1]),))
            elif kind == "delete_conv":
                db.execute("DELETE FROM conversations WHERE id=?", (self._real(op[1]),))
            elif kind == "rename":
                db.execute("UPDATE conversations SET title=? WHERE id=?", (op[2], self._real(op[1])))
            elif kind == "system":
                db.execute("UPDATE conversations SET system_prompt=? WHERE id=?", (op[2], self._real(op[1])))
            return 0

    def _flush(self, timeout: float = RETRY_TIMEOUT_S) -> None:
        """Write what is waiting in memory, oldest first, until one fails."""
        if not self._pending or not self._connect(timeout):
            return
        self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        try:
            while self._pending:
                op = self._pending[0]
                try:
                    real = self._apply(op)
                except sqlite3.DatabaseError as exc:
                    self._trouble(exc)
                    if not is_damaged(exc):
                        return
                    continue  # a fresh file now: try again there
                if op[0] in ("conv", "msg") and op[1] is not None:
                    self._ids[op[1]] = real
                self._pending.pop(0)
            self._notice(f"the history is saved again to {self.path.name if self.path else 'memory'}")
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")

    def _submit(self, op: list[Any]) -> int:
        self._flush()
        if not self._pending and self._connect(RETRY_TIMEOUT_S):
            try:
                return self._apply(op)
            except sqlite3.DatabaseError as exc:
                self._trouble(exc)
                if is_damaged(exc):
                    try:
                        return self._apply(op)  # on the fresh file
                    except sqlite3.DatabaseError:
                        pass
                self._notice(
                    f"the history file is busy or unwritable ({one_line(exc)}); your messages are kept "
                    "in memory and saved once it can be written"
                )
        provisional = None
        if op[0] in ("conv", "msg"):
            provisional = self._next_provisional
            self._next_provisional -= 1
            op[1] = provisional
        self._pending.append(op)
        return provisional or 0

    def create_conversation(self, title: str, model: str = "", system_prompt: str = "") -> int:
        return self._submit(["conv", None, title, model, system_prompt, self._now()])

    def add_message(self, conversation_id: int, role: str, content: str, meta: dict[str, Any] | None = None) -> int:
        meta_text = json.dumps(meta or {}, separators=(",", ":"))
        return self._submit(["msg", None, conversation_id, role, content, meta_text, self._now()])

    def delete_message(self, message_id: int) -> None:
        self._submit(["delete_msg", message_id])

    def delete_conversation(self, conversation_id: int) -> None:
        self._submit(["delete_conv", conversation_id])

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self._submit(["rename", conversation_id, title])

    @property
    def unsaved(self) -> int:
        """Writes waiting in memory (0 when everything is in the file)."""
        return len(self._pending)

    def set_system_prompt(self, conversation_id: int, system_prompt: str) -> None:
        op = self._pending_conversation(conversation_id)
        if op is not None:  # not written yet: it is written with the prompt
            op[4] = system_prompt
            return
        self._submit(["system", conversation_id, system_prompt])

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

    def _query(self, sql: str, params: tuple) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            self._trouble(exc)
            if not is_damaged(exc):
                self._notice(f"cannot read the history ({one_line(exc)})")
            return []

    def _pending_conversation(self, conversation_id: int) -> list[Any] | None:
        return next((op for op in self._pending if op[0] == "conv" and op[1] == conversation_id), None)

    def conversation(self, conversation_id: int) -> ConversationSummary | None:
        op = self._pending_conversation(conversation_id)
        if op is not None:
            n = sum(1 for o in self._pending if o[0] == "msg" and o[2] == conversation_id)
            return ConversationSummary(conversation_id, op[2], op[3], op[5], op[5], n)
        rows = self._summaries("WHERE c.id=?", (self._real(conversation_id),))
        return rows[0] if rows else None

    def list_conversations(self) -> list[ConversationSummary]:
        """Every conversation, newest first, those still waiting in memory included."""
        waiting = [self.conversation(op[1]) for op in self._pending if op[0] == "conv"]
        rows = [c for c in waiting if c is not None] + self._summaries("", ())
        return sorted(rows, key=lambda c: (c.updated, c.id), reverse=True)

    def _summaries(self, where: str, params: tuple) -> list[ConversationSummary]:
        rows = self._query(
            "SELECT c.id, c.title, c.model, c.created, c.updated, COUNT(m.id) AS n "
            "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            f"{where} GROUP BY c.id ORDER BY c.updated DESC, c.id DESC",
            params,
        )
        return [ConversationSummary(r["id"], r["title"], r["model"], r["created"], r["updated"], r["n"]) for r in rows]

    def system_prompt(self, conversation_id: int) -> str:
        op = self._pending_conversation(conversation_id)
        if op is not None:
            return op[4]
        rows = self._query("SELECT system_prompt FROM conversations WHERE id=?", (self._real(conversation_id),))
        return rows[0][0] if rows else ""

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, conversation_id, role, content, created, meta FROM messages WHERE conversation_id=? ORDER BY id",
            (self._real(conversation_id),),
        )
        out = [
            StoredMessage(r["id"], conversation_id, r["role"], r["content"], r["created"], load_meta(r["meta"]))
            for r in rows
        ]
        for op in self._pending:
            if op[0] == "msg" and self._real(op[2]) == self._real(conversation_id):
                out.append(StoredMessage(op[1], conversation_id, op[3], op[4], op[6], load_meta(op[5])))
        return out

    def prompt_history(self, limit: int = 200) -> list[str]:
        """The user's recent messages, oldest first, without repeats in a row."""
        rows = self._query("SELECT content FROM messages WHERE role='user' ORDER BY id DESC LIMIT ?", (limit,))
        out: list[str] = []
        for (content,) in reversed(rows):
            if not out or out[-1] != content:
                out.append(content)
        return out

    def close(self) -> None:
        """Write what is still waiting (a last, longer try); what cannot be written goes to
        <name>.unsaved-<time>.json beside the database, so nothing is lost."""
        if self._pending:
            try:
                self._flush(timeout=2.0)
            except sqlite3.Error:
                pass
        if self._pending and self.path is not None:
            write_unsaved(self.path, self._pending)
        try:
            self._db.close()
        except sqlite3.Error:
            pass
