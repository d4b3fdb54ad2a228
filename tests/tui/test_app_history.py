"""History across restarts, the conversation list, --no-history."""

from __future__ import annotations

from effort_tui.screens.conversations import ConversationsScreen
from textual.widgets import OptionList

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import FakeEngine
from .screen_text import screen_text


def echo(request) -> str:
    return f"echo {len(request.messages)}: {request.messages[-1]['content']}"


async def chat_once(make_app, *messages: str, **kwargs):
    app = make_app(FakeEngine(reply=echo), **kwargs)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        for text in messages:
            await send(pilot, chat, text)
            await wait_until(pilot, lambda: not chat.streaming)
        await pilot.press("ctrl+q")
    return app


async def test_history_survives_a_restart_and_the_conversation_continues(make_app, data_dir) -> None:
    await chat_once(make_app, "first question", "second question")
    assert (data_dir / "history.sqlite3").exists()

    engine = FakeEngine(reply=echo)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert chat.chat_view.messages == []  # a fresh start opens a new chat
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.pause()
        assert "first question" in screen_text(app) and "4 messages" in screen_text(app)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is chat and len(chat.chat_view.messages) == 4)
        await pilot.pause()
        text = screen_text(app)
        assert "echo 1: first question" in text and "echo 3: second question" in text
        assert "reopened" in chat.status.summary
        # Up in the empty prompt box recalls what was sent before the restart.
        await pilot.press("up")
        assert chat.prompt.text == "second question"
        chat.prompt.text = ""
        await send(pilot, chat, "third question")
        await wait_until(pilot, lambda: not chat.streaming)
        sent = [m["content"] for m in engine.requests[-1].messages]
        assert sent == ["first question", "echo 1: first question", "second question", "echo 3: second question", "third question"]
        assert len(app.store.list_conversations()) == 1
        assert len(app.store.messages(chat.conversation_id)) == 6


async def test_conversation_list_deletes_after_confirmation(make_app) -> None:
    await chat_once(make_app, "keep me")
    await chat_once(make_app, "delete me")
    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.pause()
        options = app.screen.query_one(OptionList)
        assert options.option_count == 2
        await pilot.press("delete")  # newest first: "delete me"
        assert options.option_count == 2 and any("again" in n.message for n in app._notifications)
        await pilot.press("delete")
        await wait_until(pilot, lambda: options.option_count == 1)
        assert [c.title for c in app.store.list_conversations()] == ["keep me"]
        await pilot.press("ctrl+b")  # closes the list again
        await wait_until(pilot, lambda: app.screen is chat)


async def test_deleting_the_open_conversation_starts_a_new_chat(make_app) -> None:
    app = make_app(FakeEngine(reply=echo))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "short lived")
        await wait_until(pilot, lambda: not chat.streaming)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.press("delete", "delete", "escape")
        await wait_until(pilot, lambda: app.screen is chat and not chat.chat_view.messages)
        assert chat.conversation_id is None and app.store.list_conversations() == []


async def test_no_history_keeps_nothing_on_disk(make_app, data_dir) -> None:
    app = await chat_once(make_app, "secret", history=False)
    assert not app.store.persistent
    assert not (data_dir / "history.sqlite3").exists()
    app = make_app(FakeEngine(), history=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.store.list_conversations() == []
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.pause()
        assert "History is off" in screen_text(app) and "No conversations yet" in screen_text(app)


async def test_unusable_history_file_is_kept_aside_and_a_fresh_one_started(make_app, data_dir) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "history.sqlite3").write_bytes(b"this is not a database" * 100)
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.store.persistent
        assert any("fresh history" in n.message for n in app._notifications)
    (aside,) = data_dir.glob("history.sqlite3.damaged-*")
    assert aside.read_bytes() == b"this is not a database" * 100
