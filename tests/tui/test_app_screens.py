"""Help (F1), the command palette, quitting."""

from __future__ import annotations

import pytest
from textual.command import CommandPalette

from effort_tui.screens.help import HelpScreen

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import FakeEngine
from .screen_text import screen_text


async def test_f1_toggles_help(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.pause()
        text = screen_text(app)
        assert "effort.up" in text and "ctrl+up / f8" in text and "alt+5" in text
        await pilot.press("f1")
        await wait_until(pilot, lambda: app.screen is chat)
        await pilot.press("f1", "escape")
        await wait_until(pilot, lambda: app.screen is chat)


async def test_command_palette_offers_the_actions(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        titles = [c.title for c in app.get_system_commands(chat)]
        for title in ("Effort: raise", "Effort: lower", "Effort: 50%", "Stop the answer", "New chat", "Regenerate",
                      "Export chat as Markdown", "Conversations", "Toggle dark / light theme", "Help: keys and status bar"):
            assert title in titles
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"effort: 30%")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.engine.effort.get() == pytest.approx(0.3))
        await wait_until(pilot, lambda: app.screen is chat)
        await pilot.pause()
        assert "effort 30%" in screen_text(app)


async def test_palette_command_callbacks_run_the_chat_actions(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        commands = {c.title: c.callback for c in app.get_system_commands(chat)}
        await commands["Effort: lower"]()
        assert app.engine.effort.get() == pytest.approx(0.95)
        await send(pilot, chat, "hi")
        await wait_until(pilot, lambda: not chat.streaming)
        await commands["New chat"]()
        await wait_until(pilot, lambda: not chat.chat_view.messages)
        commands["Toggle dark / light theme"]()
        assert app.theme == "effort-light"


async def test_ctrl_q_quits_even_while_answering(make_app) -> None:
    engine = FakeEngine(gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "hi")
        await pilot.press("ctrl+q")
    assert app.return_code == 0
    assert engine.handles[0].cancelled.is_set()
