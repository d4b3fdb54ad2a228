"""SVG snapshots of the main screens (fixed clock, gated fake engine, no cursor blink).

Update after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the SVGs in tests/tui/__snapshots__/ before committing them.
"""

from __future__ import annotations

import pytest

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import MB, FakeEngine

ANSWER = (
    "Here is the classic first program:\n\n"
    "```python\n"
    "def main() -> None:\n"
    "    print(\"Hello, world!\")\n"
    "\n"
    "main()\n"
    "```\n\n"
    "Run it with `python hello.py`. Lower effort answers faster; "
    "raise it when the answer matters more than the speed."
)


async def answer_with_effort_changes(pilot, app, engine) -> None:
    """Send a question and let the answer run at 100 %, then 60 %, then 30 %."""
    chat = await ready(app, pilot)
    await send(pilot, chat, "Write hello world in Python")
    gen = chat.generation
    for effort, tokens in ((None, 12), (0.6, 10), (0.3, 10)):
        if effort is not None:
            chat.action_effort_set(effort)
        n = len(engine.events)
        engine.release(tokens)
        await wait_until(pilot, lambda: chat.status.stats.tokens == n + tokens)
    engine.release_all()
    await wait_until(pilot, lambda: not chat.streaming)
    assert gen.widget.markdown.source == ANSWER
    await pilot.pause()


@pytest.fixture
def answered(make_app):
    def build(**kwargs):
        engine = FakeEngine(reply=ANSWER, gated=True)
        app = make_app(engine, **kwargs)
        return app, lambda pilot: answer_with_effort_changes(pilot, app, engine)

    return build


def test_snapshot_answered_dark(snap_compare, answered) -> None:
    app, run_before = answered()
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_answered_light(snap_compare, answered) -> None:
    app, run_before = answered(theme="effort-light")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_streaming_with_cap(snap_compare, make_app) -> None:
    engine = FakeEngine(reply=ANSWER, gated=True, effort_cap=0.75)
    app = make_app(engine)

    async def run_before(pilot) -> None:
        chat = await ready(app, pilot)
        await send(pilot, chat, "Write hello world in Python")
        gen = chat.generation
        engine.release(8)
        await wait_until(pilot, lambda: chat.status.stats.tokens == 8)
        chat.action_effort_step(-0.25)
        engine.release(8)
        await wait_until(pilot, lambda: chat.status.stats.tokens == 16)
        await wait_until(pilot, lambda: gen.widget.markdown.source == gen.text, what="markdown flushed")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_loading(snap_compare, make_app) -> None:
    engine = FakeEngine(gated_load=True)
    app = make_app(engine, model="smollm2-135m")

    async def run_before(pilot) -> None:
        chat = app.chat_screen
        engine.release_load()
        await wait_until(pilot, lambda: chat.load_panel.last is not None)
        app.clock.advance(2.0)
        engine.release_load()
        await wait_until(pilot, lambda: chat.load_panel.last.done == 108 * MB)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_load_error(snap_compare, make_app) -> None:
    engine = FakeEngine(load_error="~/models/llama.gguf: unsupported quantization Q3_K (supported: Q4_0, Q4_1, Q8_0, F16, F32)")
    app = make_app(engine, model="~/models/llama.gguf")

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: app.chat_screen.model_state == "failed")
        app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_conversations(snap_compare, make_app) -> None:
    app = make_app(FakeEngine())
    store = app.store
    for title, n in (("Explain the effort dial", 4), ("Write hello world in Python", 2), ("Summarise this paper", 6)):
        conversation = store.create_conversation(title, model="fake-135m")
        for i in range(n):
            store.add_message(conversation, "user" if i % 2 == 0 else "assistant", f"message {i}")
        app.clock.advance(3600)

    async def run_before(pilot) -> None:
        await ready(app, pilot)
        await pilot.press("ctrl+b")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_help(snap_compare, make_app) -> None:
    app = make_app(FakeEngine())

    async def run_before(pilot) -> None:
        await ready(app, pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 48), run_before=run_before)
