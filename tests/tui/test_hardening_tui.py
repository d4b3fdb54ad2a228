"""Issue 16, the TUI rows: the app keeps running with a notice, and nothing in the history is lost."""

from __future__ import annotations

import sqlite3
import time

import tomllib
from textual import events

from effort_tui.history import HistoryStore
from engine.events import LoadProgress

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import FakeEngine


def echo(request) -> str:
    return f"echo: {request.messages[-1]['content']}"


def _history(data_dir):
    return data_dir / "history.sqlite3"


def _stored(path) -> list[tuple[str, str]]:
    db = sqlite3.connect(str(path))
    try:
        return [tuple(r) for r in db.execute("SELECT role, content FROM messages ORDER BY id")]
    finally:
        db.close()


async def test_corrupt_history_page_at_start_gives_a_notice_and_a_fresh_file(make_app, data_dir) -> None:
    path = _history(data_dir)
    store = HistoryStore(path, now=time.time)
    cid = store.create_conversation("old")
    for n in range(200):  # several pages of messages
        store.add_message(cid, "user", f"message {n} " + "x" * 200)
    store.close()
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:  # one page of garbage in the middle of the messages table
        f.seek(page * 3)
        f.write(b"\xde\xad\xbe\xef" * (page // 4))
    damaged = path.read_bytes()
    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert app.store.persistent
        notes = [n.message for n in app._notifications if "damaged" in n.message]
        assert len(notes) == 1 and "fresh history" in notes[0], [n.message for n in app._notifications]
        await send(pilot, chat, "after the damage")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer done")
    (aside,) = data_dir.glob("history.sqlite3.damaged-*")
    assert aside.read_bytes() == damaged  # the old file is kept, untouched
    assert _stored(path) == [("user", "after the damage"), ("assistant", "echo: after the damage")]


async def test_locked_history_while_chatting_keeps_the_answer_and_saves_it_later(make_app, data_dir) -> None:
    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "first")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="first answer")
        other = sqlite3.connect(str(_history(data_dir)), timeout=0)
        other.execute("BEGIN EXCLUSIVE")  # another program holds the database
        await send(pilot, chat, "while locked")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer while locked")
        assert app.is_running
        notes = [n.message for n in app._notifications if "kept in memory" in n.message]
        assert len(notes) == 1, [n.message for n in app._notifications]
        assert app.store.unsaved == 2  # the message and its answer
        assert [t.content for t in chat.turns] == ["first", "echo: first", "while locked", "echo: while locked"]
        other.rollback()
        other.close()
        await send(pilot, chat, "unlocked")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer after the lock")
        assert app.store.unsaved == 0
        assert any("saved again" in n.message for n in app._notifications)
    assert [c for _, c in _stored(_history(data_dir))] == [
        "first", "echo: first", "while locked", "echo: while locked", "unlocked", "echo: unlocked"
    ]


async def test_history_still_locked_at_quit_is_written_beside_it(make_app, data_dir) -> None:
    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        other = sqlite3.connect(str(_history(data_dir)), timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        await send(pilot, chat, "never saved")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer")
    other.rollback()
    other.close()
    (dump,) = data_dir.glob("history.sqlite3.unsaved-*.json")
    assert "never saved" in dump.read_text(encoding="utf-8")


async def test_toml_datetime_and_nested_tables_survive_the_theme_switch(make_app, config_path) -> None:
    original = (
        'theme = "effort-dark"\nwhen = 1979-05-27T07:32:00Z\n\n[plugin]\nday = 1979-05-27\n'
        '[plugin.deep]\nx = 1\ninner = { a = [1, 2] }\n\n[[plugin.items]]\nname = "a"\n'
    )
    config_path.parent.mkdir(parents=True)
    config_path.write_text(original)
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: "effort-light" in config_path.read_text(), what="config written")
        assert app.is_running
    before, after = tomllib.loads(original), tomllib.loads(config_path.read_text())
    assert after["theme"] == "effort-light"
    assert after["when"] == before["when"] and after["plugin"] == before["plugin"]


async def test_config_that_cannot_be_written_back_is_left_alone_with_a_notice(make_app, config_path, monkeypatch) -> None:
    from effort_tui import config as config_module

    config_path.parent.mkdir(parents=True)
    config_path.write_text('theme = "effort-dark"\nwhen = 1979-05-27T07:32:00Z\n')
    monkeypatch.setattr(config_module, "toml_value", lambda v: "???")  # a writer that cannot say it
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: any("Not saved" in n.message for n in app._notifications), what="notice")
        assert app.is_running
    assert config_path.read_text() == 'theme = "effort-dark"\nwhen = 1979-05-27T07:32:00Z\n'


async def test_invalid_utf8_pasted_into_the_chat_does_not_end_the_app(make_app, data_dir) -> None:
    from textual.drivers import linux_driver

    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        # the terminal's bytes: the input thread's decoder no longer raises on them
        decode = linux_driver.getincrementaldecoder("utf-8")().decode
        assert decode(b"\xff\xfe hi", final=True) == "\ufffd\ufffd hi"
        # what a paste of those bytes can still carry: lone surrogates
        app.post_message(events.Paste("\udcff\udcfe hi"))  # as the driver delivers it
        await pilot.pause(0.2)
        assert chat.prompt.text == "\ufffd\ufffd hi", repr(chat.prompt.text)
        requests = app.engine.requests
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(requests) == 1, what="sent")
        app.engine.release_all()
        await wait_until(pilot, lambda: chat.generation is None, what="answer")
        assert app.is_running
    assert _stored(_history(data_dir))[0] == ("user", "\ufffd\ufffd hi")


async def test_long_prompt_shows_progress_and_esc_stops_it(make_app) -> None:
    engine = FakeEngine(reply=echo, gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "a very long prompt")
        engine.on_prefill(LoadProgress("prefill", 1024, 8190, "", "reading the prompt"))
        await wait_until(pilot, lambda: "reading the prompt 1,024 / 8,190" in chat.status.summary, what="progress")
        await pilot.press("escape")
        await wait_until(pilot, lambda: engine.handles[-1].cancelled.is_set(), timeout=1.0, what="cancel")
        await wait_until(pilot, lambda: chat.generation is None, what="stopped")
        assert app.is_running
