"""Issue 24, the TUI and history rows: a history locked before the app starts, private history
files, and model paths with control characters on screen."""

from __future__ import annotations

import sqlite3
import stat
import time

import pytest

from effort_tui.history import HistoryStore

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import FakeEngine


def echo(request) -> str:
    return f"echo: {request.messages[-1]['content']}"


def _stored(path) -> list[str]:
    db = sqlite3.connect(str(path))
    try:
        return [r[0] for r in db.execute("SELECT content FROM messages ORDER BY id")]
    finally:
        db.close()


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 6. history: locked at start, private files -----------------------------------------------------


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_history_locked_before_the_app_starts_is_kept_in_memory_and_written_later(make_app, data_dir, journal):
    path = data_dir / "history.sqlite3"
    data_dir.mkdir(parents=True)
    if journal == "wal":  # an existing history another program holds: it can still be read
        store = HistoryStore(path, now=time.time)
        store.add_message(store.create_conversation("older"), "user", "older message")
        store.close()
    other = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another program holds the database before we start
    other.execute("CREATE TABLE IF NOT EXISTS other_program (x)")
    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert app.store.persistent  # not turned off
        await send(pilot, chat, "while locked")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer while locked")
        notes = [n.message for n in app._notifications if "kept in memory" in n.message]
        assert len(notes) == 1, [n.message for n in app._notifications]
        assert app.store.unsaved >= 2  # the message and its answer (and the conversation)
        assert "while locked" in [c.title for c in app.store.list_conversations()]  # listed from memory
        assert [m.content for m in app.store.messages(chat.conversation_id)] == ["while locked", "echo: while locked"]
        other.execute("ROLLBACK")
        other.close()
        await send(pilot, chat, "after the lock")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer after the lock")
        assert app.store.unsaved == 0
    stored = _stored(path)
    assert stored[-4:] == ["while locked", "echo: while locked", "after the lock", "echo: after the lock"]
    assert ("older message" in stored) == (journal == "wal")


def test_history_locked_at_start_and_still_at_close_goes_beside_it(tmp_path):
    path = tmp_path / "history.sqlite3"
    other = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("CREATE TABLE other_program (x)")
    store = HistoryStore(path, now=time.time)
    cid = store.create_conversation("never written")
    store.add_message(cid, "user", "kept safe")
    store.set_system_prompt(cid, "be brief")
    assert store.system_prompt(cid) == "be brief" and store.conversation(cid).title == "never written"
    store.close()
    other.execute("ROLLBACK")
    other.close()
    (dump,) = tmp_path.glob("history.sqlite3.unsaved-*.json")
    assert "kept safe" in dump.read_text(encoding="utf-8") and "be brief" in dump.read_text(encoding="utf-8")
    assert _mode(dump) == 0o600


def test_history_files_are_private(tmp_path):
    folder = tmp_path / "data"
    path = folder / "history.sqlite3"
    store = HistoryStore(path, now=time.time)
    cid = store.create_conversation("secret")
    store.add_message(cid, "user", "my medical question")
    assert _mode(folder) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert _mode(path.with_name(path.name + suffix)) == 0o600, suffix
    store.close()
    # files an older version made world-readable are tightened at the next start
    for p in [folder, *folder.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    store = HistoryStore(path, now=time.time)
    assert _mode(folder) == 0o700 and _mode(path) == 0o600
    store.close()
    # a damaged file is kept aside, privately
    path.write_bytes(b"this is not a database" * 100)
    path.chmod(0o644)
    store = HistoryStore(path, now=time.time)
    store.close()
    aside = list(folder.glob("history.sqlite3.damaged-*"))
    assert aside and all(_mode(p) == 0o600 for p in aside)
    assert _mode(path) == 0o600


# -- 8. what a path or a model puts on the screen is shown, not obeyed -------------------------------

EVIL = "evil\n\x1b[2J\x1b]52;c;cHduZWQ=\x07[red]name\u202e.gguf"


def _screen_text(app) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


async def test_a_model_path_with_escapes_and_markup_is_shown_as_text(make_app, tmp_path) -> None:
    from dataclasses import replace

    from .fake_engine import DEFAULT_INFO

    app = make_app(FakeEngine(info=replace(DEFAULT_INFO, name=EVIL, path=str(tmp_path / EVIL))), model=EVIL)
    async with app.run_test(size=(140, 32)) as pilot:
        await ready(app, pilot)
        app.notify(f"loaded {EVIL}", title=EVIL)
        await pilot.pause()
        text = _screen_text(app)
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\\x1b[2J" in text and "[red]name" in text  # visible, markup not applied
        notes = [n for n in app._notifications if "loaded" in n.message]
        assert notes and "\n" not in notes[0].title and "\\x1b" in notes[0].message


async def test_a_load_error_quoting_such_a_path_is_one_visible_line(make_app) -> None:
    app = make_app(FakeEngine(load_error=f"{EVIL}: not a GGUF file"), model=EVIL)
    async with app.run_test(size=(140, 32)) as pilot:
        await wait_until(pilot, lambda: app.chat_screen is not None and app.chat_screen.model_state == "failed",
                         what="load failed")
        await pilot.pause()
        text = _screen_text(app)
        assert "\x1b" not in text and "not a GGUF file" in text and "[red]name" in text


async def test_a_model_answer_with_escape_sequences_is_shown_not_obeyed(make_app) -> None:
    app = make_app(FakeEngine(reply=lambda request: "sure \x1b]52;c;cHduZWQ=\x07 and \x1b[2J done"))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "hi")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer")
        await pilot.pause()
        text = _screen_text(app)
        assert "\x1b" not in text and "\\x1b[2J" in text
        assert chat.turns[-1].content.count("\x1b") == 2  # kept as it was in the conversation itself
