"""Sending, streaming, stop, errors, new chat, regenerate, export (states: idle, streaming, stopped, error)."""

from __future__ import annotations

import itertools

from textual.widgets import Markdown

from effort_tui.messages import GenerationUpdate

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import FakeEngine
from .screen_text import screen_text

CODE_REPLY = "Here is code:\n\n```python\nprint('hi')\n```\n\nThat is all."


async def test_answer_streams_token_by_token_then_renders_whole(make_app) -> None:
    engine = FakeEngine(reply=CODE_REPLY, gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "show me code")
        assert chat.prompt.text == ""
        gen = chat.generation
        engine.release(3)
        await wait_until(pilot, lambda: gen.widget.content == "Here is code:", what="3 tokens shown")
        assert chat.status.stats.tokens == 3
        assert "answering" in chat.status.summary
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        widget = chat.turns[-1].widget
        assert widget.markdown.source == CODE_REPLY
        assert widget.content == CODE_REPLY
        text = screen_text(app)
        assert "print('hi')" in text and "That is all." in text
        assert chat.status.summary.startswith("✓ done")
        request = engine.requests[0]
        assert request.messages == [{"role": "user", "content": "show me code"}]
        # Both messages are in the history, the answer with its metadata.
        (conv,) = app.store.list_conversations()
        user, answer = app.store.messages(conv.id)
        assert (user.role, user.content, answer.content) == ("user", "show me code", CODE_REPLY)
        assert answer.meta["finish_reason"] == "stop" and answer.meta["model"] == "fake-135m"
        assert answer.meta["effort_trace"] and answer.meta["tok_s"] > 0 and answer.meta["ttft_s"] == 0.25


async def test_escape_stops_the_answer(make_app) -> None:
    engine = FakeEngine(reply="one two three four five six seven", gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("escape")  # idle: nothing to stop, nothing breaks
        await send(pilot, chat, "count")
        engine.release(2)
        await wait_until(pilot, lambda: chat.status.stats.tokens == 2)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not chat.streaming, what="stopped")
        assert chat.last_result.finish_reason == "cancelled"
        assert chat.status.summary.startswith("■ stopped · 2 tok")
        assert "■ stopped" in screen_text(app)
        stored = app.store.messages(chat.conversation_id)[-1]
        assert stored.content == "one two" and stored.meta["finish_reason"] == "cancelled"
        # The stopped answer is part of the context of the next question.
        engine.gated = False
        await send(pilot, chat, "go on")
        await wait_until(pilot, lambda: not chat.streaming)
        assert [m["content"] for m in engine.requests[-1].messages] == ["count", "one two", "go on"]


async def test_generation_error_is_shown_not_raised(make_app) -> None:
    engine = FakeEngine(reply="a b c d e", fail_generation="out of memory while decoding")
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "hi")
        await wait_until(pilot, lambda: not chat.streaming)
        assert chat.last_result.finish_reason == "error"
        assert "⚠ out of memory while decoding" in screen_text(app)
        assert chat.status.summary.startswith("✗ error")
        assert any(n.severity == "error" and "out of memory" in n.message for n in app._notifications)


async def test_engine_that_raises_in_generate_is_reported(make_app) -> None:
    class Exploding(FakeEngine):
        def generate(self, request, on_token, on_done, on_prefill=None):
            raise ValueError("prompt does not fit the context (4100 > 4096 tokens)")

    app = make_app(Exploding())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press(*"hi", "enter")
        await wait_until(pilot, lambda: chat.last_result is not None)
        assert "does not fit the context" in screen_text(app)
        assert not chat.streaming


async def test_sending_while_answering_is_refused(make_app) -> None:
    engine = FakeEngine(gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "first")
        await pilot.press(*"second", "enter")
        assert chat.prompt.text == "second"
        assert any("Still answering" in n.message for n in app._notifications)
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        assert len(engine.requests) == 1


async def test_new_chat_starts_a_new_conversation(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "first chat")
        await wait_until(pilot, lambda: not chat.streaming)
        first_id = chat.conversation_id
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: not chat.chat_view.messages)
        assert chat.conversation_id is None and chat.turns == []
        assert chat.status.summary == ""
        await send(pilot, chat, "second chat")
        await wait_until(pilot, lambda: not chat.streaming)
        assert chat.conversation_id != first_id
        assert len(app.store.list_conversations()) == 2
        assert app.engine.requests[-1].messages == [{"role": "user", "content": "second chat"}]


async def test_new_chat_while_answering_keeps_the_old_answer(make_app) -> None:
    engine = FakeEngine(reply="a b c d", gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "old")
        old_id = chat.conversation_id
        engine.release(2)
        await wait_until(pilot, lambda: chat.status.stats.tokens == 2)
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: not engine.busy, what="old answer cancelled")
        await pilot.pause()
        assert not chat.streaming and not chat.chat_view.messages
        stored = app.store.messages(old_id)
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[-1].meta["finish_reason"] == "cancelled"


async def test_regenerate_replaces_the_last_answer(make_app) -> None:
    counter = itertools.count(1)
    engine = FakeEngine(reply=lambda request: f"answer number {next(counter)}")
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("ctrl+r")
        assert any("Nothing to regenerate" in n.message for n in app._notifications)
        await send(pilot, chat, "question")
        await wait_until(pilot, lambda: not chat.streaming)
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(engine.requests) == 2 and not chat.streaming)
        assert engine.requests[1].messages == engine.requests[0].messages == [{"role": "user", "content": "question"}]
        contents = [m.content for m in app.store.messages(chat.conversation_id)]
        assert contents == ["question", "answer number 2"]
        assert [t.content for t in chat.turns] == contents
        assert len(chat.chat_view.messages) == 2
        text = screen_text(app)
        assert "answer number 2" in text and "answer number 1" not in text


async def test_export_writes_markdown(make_app, tmp_path) -> None:
    app = make_app(FakeEngine(reply=CODE_REPLY))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("ctrl+e")
        assert any("Nothing to export" in n.message for n in app._notifications)
        await send(pilot, chat, "show me code")
        await wait_until(pilot, lambda: not chat.streaming)
        await pilot.press("ctrl+e")
        await wait_until(pilot, lambda: app.last_export is not None)
    path = app.last_export
    assert path.parent == app.data_dir / "exports"
    assert path.name == f"effort-chat-{chat.conversation_id}-20260101-120000.md"
    text = path.read_text()
    assert text.startswith("# show me code\n")
    assert "## You\n\nshow me code" in text
    assert "## Assistant\n\n" + CODE_REPLY in text
    assert "fake-135m" in text and "tok/s" in text


async def test_tokens_coalesce_into_few_messages(make_app) -> None:
    """A fast engine must not flood the UI: one message per drained batch, not per token."""
    messages = []
    reply = " ".join(f"w{i}" for i in range(400))
    engine = FakeEngine(reply=reply)
    app = make_app(engine)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "go")
        await wait_until(pilot, lambda: not chat.streaming, timeout=20)
        updates = [m for m in messages if isinstance(m, GenerationUpdate)]
        assert chat.turns[-1].content == reply
        assert chat.turns[-1].widget.query_one(Markdown).source == reply
        assert len(updates) < 400


async def test_prompt_newlines_and_history(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        prompt = chat.prompt
        await pilot.press("a", "shift+enter", "b", "ctrl+j", "c")
        assert prompt.text == "a\nb\nc"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.streaming and len(chat.turns) == 2)
        await send(pilot, chat, "second")
        await wait_until(pilot, lambda: not chat.streaming)
        assert prompt.text == ""
        await pilot.press("up")
        assert prompt.text == "second"
        await pilot.press("up")
        assert prompt.text == "a\nb\nc"
        await pilot.press("down")
        assert prompt.text == "second"
        await pilot.press("down")
        assert prompt.text == ""
        # Once the shown entry is edited, up/down move the cursor instead.
        await pilot.press("up", "x", "up")
        assert prompt.text == "secondx"


async def test_page_keys_scroll_and_autoscroll_only_at_bottom(make_app) -> None:
    reply = "\n\n".join(f"Paragraph {i}." for i in range(60))
    engine = FakeEngine(reply=reply, gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        view = chat.chat_view
        await send(pilot, chat, "long")
        engine.release(80)  # two tokens a paragraph
        await wait_until(pilot, lambda: "Paragraph 39." in chat.generation.widget.content)
        await pilot.pause(0.1)
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y  # following the answer
        await pilot.press("pageup")
        await pilot.pause()
        held = view.scroll_y
        assert held < view.max_scroll_y
        engine.release(20)
        await wait_until(pilot, lambda: "Paragraph 49." in chat.generation.widget.content)
        await pilot.pause(0.1)
        assert view.scroll_y == held  # the user scrolled up: the view stays put
        await pilot.press("ctrl+end")
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        await pilot.pause(0.1)
        assert view.scroll_y == view.max_scroll_y  # back at the bottom: following again


async def test_regenerate_after_a_failed_answer(make_app) -> None:
    engine = FakeEngine(reply="a b c d e", fail_generation="boom")
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "hi")
        await wait_until(pilot, lambda: not chat.streaming)
        stored = app.store.messages(chat.conversation_id)
        assert [m.role for m in stored] == ["user", "assistant"]  # the partial text ("a b") is kept
        assert stored[-1].meta["finish_reason"] == "error"
        engine.fail_generation = None
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(engine.requests) == 2 and not chat.streaming)
        assert [t.content for t in chat.turns] == ["hi", "a b c d e"]
        assert len(chat.chat_view.messages) == 2 and "boom" not in screen_text(app)


async def test_a_failure_before_any_text_is_not_saved(make_app) -> None:
    class FailsAtOnce(FakeEngine):
        def generate(self, request, on_token, on_done, on_prefill=None):
            self.requests.append(request)
            if len(self.requests) == 1:
                raise RuntimeError("the KV cache could not be allocated")
            return super().generate(request, on_token, on_done)

    engine = FailsAtOnce(reply="fine now")
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "hi")
        await wait_until(pilot, lambda: chat.last_result is not None)
        assert [m.role for m in app.store.messages(chat.conversation_id)] == ["user"]
        assert len(chat.chat_view.messages) == 2  # the error stays visible…
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(engine.requests) >= 3 and not chat.streaming)
        assert len(chat.chat_view.messages) == 2  # …until the answer is regenerated
        assert [t.content for t in chat.turns] == ["hi", "fine now"]
