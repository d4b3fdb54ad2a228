"""Effort hotkeys: every binding, while the prompt box has focus and while the model answers."""

from __future__ import annotations

import pytest

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import FakeEngine, step_at
from .screen_text import screen_text

REPLY = " ".join(f"t{i}" for i in range(40))


async def next_token(pilot, chat, engine):
    """Let exactly one token through and wait until the status bar has it."""
    n = chat.status.stats.tokens
    engine.release(1)
    await wait_until(pilot, lambda: chat.status.stats.tokens == n + 1, what=f"token {n + 1}")
    return engine.events[-1]


async def test_effort_keys_apply_to_the_next_token(make_app) -> None:
    engine = FakeEngine(reply=REPLY, gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "go")
        assert chat.prompt.has_focus
        await next_token(pilot, chat, engine)
        first = await next_token(pilot, chat, engine)
        assert first.effort == 1.0
        expected = [
            ("ctrl+down", 0.95),
            ("f7", 0.90),
            ("f8", 0.95),
            ("ctrl+up", 1.0),
            ("ctrl+up", 1.0),  # already at the top
            ("alt+5", 0.5),
            ("alt+1", 0.1),
            ("alt+9", 0.9),
            ("alt+0", 1.0),
            ("alt+2", 0.2),
        ]
        for key, value in expected:
            await pilot.press(key)
            assert engine.effort.get() == pytest.approx(value), key
            token = await next_token(pilot, chat, engine)
            assert token.effort == pytest.approx(value), key
            # The speed shown is the speed of that token, which the effort set.
            assert chat.status.stats.latest_tps == pytest.approx(1 / step_at(value))
        await pilot.pause()
        text = screen_text(app)
        assert "effort 20%" in text and "eff 18%" in text
        assert f"{1 / step_at(0.2):.1f} tok/s" in text
        assert chat.prompt.text == ""  # nothing was typed into the prompt box
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        assert chat.last_result.effort_trace[:3] == [1.0, 1.0, 0.95]
        assert "effort 10–100%" in chat.status.summary


async def test_effort_keys_work_while_idle_and_clamp_at_the_bottom(make_app) -> None:
    app = make_app(FakeEngine(), effort=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.engine.effort.get() == pytest.approx(0.1)
        await pilot.press("ctrl+down", "ctrl+down", "ctrl+down")
        assert app.engine.effort.get() == pytest.approx(0.05)
        await pilot.press("f8")
        assert app.engine.effort.get() == pytest.approx(0.10)
        await pilot.pause()
        assert "effort 10%" in screen_text(app)


async def test_effort_is_capped_and_the_cap_is_shown(make_app) -> None:
    engine = FakeEngine(effort_cap=0.75, reply=REPLY, gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert engine.effort.get() == pytest.approx(0.75)
        await pilot.pause()
        text = screen_text(app)
        assert "effort 75%" in text and "cap 75%" in text
        await pilot.press("alt+0")
        assert engine.effort.get() == pytest.approx(0.75)
        assert any("capped at 75%" in n.message for n in app._notifications)
        await pilot.press("ctrl+up")
        assert engine.effort.get() == pytest.approx(0.75)
        await pilot.press("alt+5")
        await send(pilot, chat, "go")
        token = await next_token(pilot, chat, engine)
        assert token.effort == pytest.approx(0.5)


async def test_effort_from_config_and_from_the_command_line(make_app, config_path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text('effort = "40%"\n')
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.engine.effort.get() == pytest.approx(0.4)
    app = make_app(FakeEngine(), effort=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.engine.effort.get() == pytest.approx(0.3)


async def test_keys_respond_while_tokens_flood(make_app) -> None:
    """An ungated engine streams as fast as it can; a key press still lands mid-answer."""
    reply = " ".join(f"w{i}" for i in range(3000))
    engine = FakeEngine(reply=reply, token_delay_s=0.006)  # ~3 s of tokens: room for the key on a loaded machine
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "flood")
        await wait_until(pilot, lambda: len(engine.events) > 50)
        pressed_at = len(engine.events)
        await pilot.press("alt+3")  # Pilot's press() itself may return late (it waits for idle)
        await wait_until(pilot, lambda: not chat.streaming, timeout=30)
        efforts = [e.effort for e in engine.events]
        applied_at = efforts.index(0.3)
        assert pressed_at <= applied_at < 512  # it landed mid-answer, not after the stream
        assert set(efforts[applied_at:]) == {0.3}
        # max_tokens (512 by default) ends the answer; the UI says so.
        assert chat.turns[-1].content == " ".join(reply.split()[:512])
        assert chat.last_result.finish_reason == "length"
        assert "max_tokens reached" in screen_text(app) or chat.turns[-1].widget.note.endswith("max_tokens reached")
