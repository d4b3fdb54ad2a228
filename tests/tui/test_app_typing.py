"""Typed text is never lost: the prompt box handles Enter / ctrl+j in the order the keys came.

Two ways of typing fast: `pilot.press` with hundreds of keys in one call, and a raw burst
(every key event posted at once, as the terminal driver does when it reads a chunk of input
— what a fast typist or a slow frame produces) with no waiting in between.
"""

from __future__ import annotations

from textual import events

from .conftest import SIZE, ready, wait_until
from .fake_engine import FakeEngine

LINES = [
    "| fruit | color |",
    "|---|---|",
    "| apple | red |",
    "**bold** and _italic_ words, then some more text to make this line long enough",
    "Write a short story about a lighthouse keeper who finds a message in a bottle, please.",
    "last line: 1234567890 !?.,;:-()[]{}",
    "",
    "  indented after an empty line, and a trailing space ",
]


def keys_for_text(text: str) -> list[str]:
    """Pilot key names for `text`; a newline is ctrl+j."""
    names = {" ": "space", "\n": "ctrl+j"}
    return [names.get(ch, ch) for ch in text]


def burst(app, keys: list[str]) -> None:
    """Post every key event to the app at once (no frame, no idle wait in between)."""


    for key in keys:
        char = key if len(key) == 1 else (" " if key == "space" else None)
        if key.startswith("ctrl+") or key in ("enter",):
            char = None
        app._driver.send_message(events.Key(key, char))


def _stored_user_messages(app) -> list[str]:
    return [m.content for c in app.store.list_conversations() for m in app.store.messages(c.id) if m.role == "user"]


async def test_pilot_press_of_hundreds_of_keys_stores_the_message_byte_for_byte(make_app) -> None:
    text = "\n".join(LINES)
    assert len(text) > 250
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press(*keys_for_text(text), "enter")
        await wait_until(pilot, lambda: bool(app.engine.requests) and not chat.streaming, what="answered")
        assert app.engine.requests[0].messages[-1]["content"] == text
        assert _stored_user_messages(app) == [text]
        assert chat.prompt.text == ""


async def test_a_burst_with_ctrl_j_and_enter_is_stored_whole(make_app) -> None:
    text = "\n".join(LINES)
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        burst(app, keys_for_text(text) + ["enter"])
        await wait_until(pilot, lambda: bool(app.engine.requests) and not chat.streaming, what="answered")
        assert _stored_user_messages(app) == [text]
        assert chat.prompt.text == ""


async def test_a_120_character_burst_and_enter_is_stored_whole(make_app) -> None:
    text = ("Write a haiku about the sea, then explain each line; keep it short but vivid. " * 2)[:120]
    assert len(text) == 120
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        burst(app, keys_for_text(text) + ["enter"])
        await wait_until(pilot, lambda: bool(app.engine.requests) and not chat.streaming, what="answered")
        assert _stored_user_messages(app) == [text]


async def test_text_typed_right_after_enter_stays_in_the_box(make_app) -> None:
    """ctrl+n, a message, Enter and the start of the next one, all in one burst."""
    app = make_app(FakeEngine(gated=True))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        burst(app, ["ctrl+n", *keys_for_text("first message"), "enter", *keys_for_text("second")])
        await wait_until(pilot, lambda: bool(app.engine.requests), what="sent")
        await wait_until(pilot, lambda: chat.prompt.text == "second", what="next draft kept")
        assert _stored_user_messages(app) == ["first message"]
        app.engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)


async def test_enter_while_answering_keeps_the_text(make_app) -> None:
    app = make_app(FakeEngine(gated=True))
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        burst(app, [*keys_for_text("one"), "enter", *keys_for_text("two"), "enter"])
        await wait_until(pilot, lambda: bool(app.engine.requests), what="sent")
        await wait_until(pilot, lambda: chat.prompt.text == "two", what="refused text kept")
        assert _stored_user_messages(app) == ["one"]
        app.engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
