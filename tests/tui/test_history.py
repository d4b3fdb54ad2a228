"""The SQLite history: schema, one commit per message, a killed app keeps what was committed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from effort_tui.history import HistoryStore, title_from

ROOT = Path(__file__).resolve().parents[2]


def test_conversations_and_messages(tmp_path: Path) -> None:
    times = iter(range(100, 200))
    store = HistoryStore(tmp_path / "h.sqlite3", now=lambda: float(next(times)))
    a = store.create_conversation("first", model="m", system_prompt="sys")
    store.add_message(a, "user", "hello")
    store.add_message(a, "assistant", "hi", {"tok_s": 12.5, "effort_trace": [1.0, 0.5]})
    b = store.create_conversation("second")
    store.add_message(b, "user", "again")
    assert [c.title for c in store.list_conversations()] == ["second", "first"]
    assert store.conversation(a).message_count == 2
    msgs = store.messages(a)
    assert [(m.role, m.content) for m in msgs] == [("user", "hello"), ("assistant", "hi")]
    assert msgs[1].meta == {"tok_s": 12.5, "effort_trace": [1.0, 0.5]}
    assert store.system_prompt(a) == "sys"
    assert store.prompt_history() == ["hello", "again"]
    store.delete_message(msgs[1].id)
    assert len(store.messages(a)) == 1
    store.delete_conversation(a)
    assert store.messages(a) == [] and [c.id for c in store.list_conversations()] == [b]
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_in_memory_store_writes_nothing(tmp_path: Path) -> None:
    store = HistoryStore(None, now=lambda: 0.0)
    store.add_message(store.create_conversation("t"), "user", "x")
    assert not store.persistent and store.list_conversations()[0].message_count == 1
    assert list(tmp_path.iterdir()) == []


def test_a_killed_process_keeps_every_committed_message(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from effort_tui.history import HistoryStore
        store = HistoryStore(__import__("pathlib").Path({str(db)!r}), now=lambda: 1.0)
        c = store.create_conversation("killed")
        store.add_message(c, "user", "question")
        store.add_message(c, "assistant", "answer", {{"finish_reason": "stop"}})
        store.add_message(c, "user", "second question")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    store = HistoryStore(db, now=lambda: 2.0)
    (conv,) = store.list_conversations()
    assert [m.content for m in store.messages(conv.id)] == ["question", "answer", "second question"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version=99")
    con.close()
    try:
        HistoryStore(db, now=lambda: 0.0)
    except RuntimeError as exc:
        assert "newer" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected a RuntimeError")


def test_title_from() -> None:
    assert title_from("\n\n  Hello there  \nmore") == "Hello there"
    assert title_from("") == "Untitled"
    assert title_from("x" * 100).endswith("…") and len(title_from("x" * 100)) == 60


def test_meta_is_json(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3", now=lambda: 0.0)
    store.add_message(store.create_conversation("t"), "assistant", "a", {"ttft_s": 0.25})
    raw = sqlite3.connect(tmp_path / "h.sqlite3").execute("SELECT meta FROM messages").fetchone()[0]
    assert json.loads(raw) == {"ttft_s": 0.25}
