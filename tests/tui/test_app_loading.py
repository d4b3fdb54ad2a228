"""Model loading: progress with bytes/%/ETA, failure shown in the app (state: loading, error)."""

from __future__ import annotations

from engine.events import LoadProgress
from effort_tui.screens.conversations import ConversationsScreen

from .conftest import SIZE, wait_until
from .fake_engine import MB, FakeEngine
from .screen_text import screen_text


async def test_loading_shows_bytes_percent_and_eta(make_app) -> None:
    engine = FakeEngine(gated_load=True)
    app = make_app(engine, model="smollm2-135m")
    async with app.run_test(size=SIZE) as pilot:
        chat = app.chat_screen
        assert chat.model_state == "loading"
        assert engine.loaded_models == ["smollm2-135m"]
        engine.release_load()
        await wait_until(pilot, lambda: chat.load_panel.last is not None)
        app.clock.advance(2.0)
        engine.release_load()
        await wait_until(pilot, lambda: chat.load_panel.last.done == 108 * MB)
        await pilot.pause()
        text = screen_text(app)
        assert "Loading smollm2-135m" in text
        assert "Downloading" in text and "40.0%" in text and "108.0 MB / 270.0 MB" in text
        assert "54.0 MB/s" in text and "ETA 3s" in text
        assert "loading smollm2-135m" in text  # the status bar says so too
        # A message sent while loading is kept, shown, and sent as soon as the model is ready.
        await pilot.press(*"hello", "enter")
        await wait_until(pilot, lambda: chat.prompt.text == "" and len(chat.turns) == 1, what="message kept")
        assert "hello" in screen_text(app) and engine.requests == []
        engine.release_load(2)
        await wait_until(pilot, lambda: chat.model_state == "ready")
        assert not chat.load_panel.display
        assert "fake-135m" in screen_text(app)
        await wait_until(pilot, lambda: len(engine.requests) == 1, what="sent when ready")
        assert engine.requests[0].messages[-1]["content"] == "hello"


async def test_load_failure_is_shown_and_the_app_stays_usable(make_app) -> None:
    error = "/models/broken.gguf: not a GGUF file (bad magic)"
    engine = FakeEngine(load_error=error, load_plan=(LoadProgress("read", 1, 3, ""),))
    app = make_app(engine, model="/models/broken.gguf")
    async with app.run_test(size=SIZE) as pilot:
        chat = app.chat_screen
        await wait_until(pilot, lambda: chat.model_state == "failed")
        await pilot.pause()
        text = screen_text(app)
        assert "Could not load /models/broken.gguf" in text
        assert "not a GGUF file (bad magic)" in text
        assert any(n.severity == "error" and error in n.message for n in app._notifications)
        await pilot.press(*"hi", "enter")
        assert any("No model is loaded" in n.message for n in app._notifications)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is chat)
        await pilot.press("ctrl+q")
    assert app.return_code == 1


async def test_engine_that_raises_in_load_is_reported(make_app) -> None:
    class Exploding(FakeEngine):
        def load(self, model, on_progress, on_done):
            raise RuntimeError("no backend available\nsecond line")

    app = make_app(Exploding())
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.chat_screen.model_state == "failed")
        assert app.chat_screen.load_error == "no backend available"
