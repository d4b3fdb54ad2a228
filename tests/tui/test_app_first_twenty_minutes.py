"""What a new user hit in the first twenty minutes (issue 23): the chat's own cost while the model
answers, a failed model switch, notifications over the status bar, cut answers, loading that
seemed stuck, an answer that collapsed at low effort, and the smaller rough edges."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace

from rich.console import Console
from textual.widgets._toast import Toast

from engine.events import GenerationResult, LoadProgress
from effort_tui.answer_meta import answer_meta, summary_text
from effort_tui.keymap import SPECS
from effort_tui.screens.help import HelpScreen
from effort_tui.screens.model_picker import ModelPickerScreen

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import DEFAULT_INFO, FakeEngine
from .screen_text import screen_text

QUALITY = ((0.1, 0.08), (0.25, 0.46), (0.5, 0.79), (0.75, 0.95), (1.0, 1.0))  # collapses at 25 %


async def _until(predicate, timeout: float = 20.0) -> None:
    """Wait without Pilot (whose pause() forces a frame each time it is called)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_chat_redraws_at_a_reading_pace_not_per_token(make_app) -> None:
    """Every frame is Python work on the cores the decoding needs: a fast answer must not make the
    screen redraw per token (the chat decoded at 0.6x the speed of `effort generate` when it did)."""
    reply = " ".join(f"w{i}" for i in range(400))
    engine = FakeEngine(reply=reply, token_delay_s=0.004)  # 250 tokens a second
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        frames: list[float] = []
        display = app._display

        def counted(screen, renderable) -> None:
            frames.append(time.monotonic())
            display(screen, renderable)

        app._display = counted  # type: ignore[method-assign]
        chat.prompt.insert("go")
        await pilot.press("enter")
        start = time.monotonic()
        await _until(lambda: not chat.streaming)
        elapsed = time.monotonic() - start
        assert chat.turns[-1].content == reply
    assert len(frames) <= 20 * elapsed + 4, f"{len(frames)} frames in {elapsed:.2f} s"


async def test_a_failed_switch_keeps_the_working_model(make_app) -> None:
    class BrokenOther(FakeEngine):
        def load(self, model, on_progress, on_done):
            if model == "/models/broken.gguf":
                self.loaded_models.append(model)
                on_done(None, "/models/broken.gguf: not a GGUF file (no GGUF signature)")
                return
            super().load(model, on_progress, on_done)

    engine = BrokenOther()
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        chat.start_load("/models/broken.gguf")  # what "Model: switch…" does with the model chosen
        await wait_until(pilot, lambda: any("Still using fake-135m" in n.message for n in app._notifications))
        assert chat.model_state == "ready" and not chat.load_panel.display
        await send(pilot, chat, "still there?")
        await wait_until(pilot, lambda: not chat.streaming)
        assert chat.turns[-1].content == "You said: still there?"
        assert "● fake-135m" in screen_text(app)


async def test_notifications_leave_the_status_bar_alone(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("ctrl+o")  # "No answer to copy yet."
        await wait_until(pilot, lambda: bool(app.screen.query(Toast)))
        await pilot.pause()
        toast = app.screen.query_one(Toast)
        assert not toast.region.overlaps(chat.status.region) and not toast.region.overlaps(chat.prompt.region)
        assert all(n.timeout <= 10 for n in app._notifications)


async def test_a_cut_answer_says_it_was_cut(make_app) -> None:
    engine = FakeEngine(reply="one two three four five six")
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        chat.set_sampling(replace(chat.sampling, max_tokens=3), say=False)
        await send(pilot, chat, "count")
        await wait_until(pilot, lambda: not chat.streaming)
        assert chat.turns[-1].widget.note == "… cut: max_tokens reached"
        assert chat.status.summary.startswith("… cut: max_tokens reached · 3 tok")


async def test_loading_shows_a_clock_that_moves_until_the_model_is_ready(make_app) -> None:
    plan = (LoadProgress("read", 0, 0, "", "reading smollm2.gguf"), LoadProgress("load", 30, 30, "", "loading model.norm.weight"))
    engine = FakeEngine(gated_load=True, load_plan=plan)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = app.chat_screen
        engine.release_load()
        await wait_until(pilot, lambda: chat.load_panel.last is not None)
        await pilot.pause()
        text = screen_text(app)
        assert "Reading" in text and "reading smollm2.gguf" in text and "Reading     0" not in text
        engine.release_load()
        await wait_until(pilot, lambda: chat.load_panel.last.stage == "load")
        app.clock.advance(4.0)
        chat.load_panel.tick()
        await pilot.pause()
        assert "Finishing" in screen_text(app) and "4s" in screen_text(app)  # not frozen at 100 %
        engine.release_load()
        await wait_until(pilot, lambda: chat.model_state == "ready")


async def test_a_collapsed_answer_is_offered_again_from_where_it_broke(make_app) -> None:
    engine = FakeEngine(info=replace(DEFAULT_INFO, quality=QUALITY), reply="a b c d e f g h", gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "letters")
        engine.release(3)
        await wait_until(pilot, lambda: chat.status.stats.tokens == 3)
        chat.action_effort_set(0.1)  # below where this model's text falls apart
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        assert not any("Quality collapsed" in (n.title or "") for n in app._notifications)  # not at 10 % still
        chat.action_effort_set(0.6)
        await wait_until(pilot, lambda: any("Quality collapsed" in (n.title or "") for n in app._notifications))
        offer = next(n for n in app._notifications if "Quality collapsed" in (n.title or ""))
        assert "From token 4 on" in offer.message and "ctrl+r" in offer.message and "60%" in offer.message
        chat.action_effort_set(0.7)
        await pilot.pause()
        assert sum("Quality collapsed" in (n.title or "") for n in app._notifications) == 1  # once
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(engine.requests) == 2)
        assert engine.requests[-1].answer_prefix == "a b c"  # the good start, kept
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        assert chat.turns[-1].content.startswith("a b c")


def test_efforts_describe_the_decoded_tokens() -> None:
    """Regenerating at 50 %: the first token comes from the (dense) prompt; the answer ran at 50 %."""
    result = GenerationResult(text="x", token_ids=[1] * 4, prompt_token_ids=[0], prompt_tokens=1, generated_tokens=4,
                              prompt_tps=10.0, decode_tps=20.0, ttft_s=0.1, finish_reason="stop",
                              effort_trace=[1.0, 0.5, 0.5, 0.5], effective_trace=[1.0, 0.5, 0.5, 0.5])
    assert summary_text(answer_meta(result, "m", None)).endswith("effort 50% (eff 50%)")


async def test_help_explains_top1_and_fits_80_columns(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.pause()
        keys = app.screen.query_one("#help-keys")
        console = Console(width=keys.content_region.width, record=True, file=io.StringIO())
        console.print(app.screen._keys_table())  # type: ignore[attr-defined]
        text = console.export_text()
        wrapped = [spec.help for spec in SPECS if spec.scope != "help" and spec.help not in text]
        assert wrapped == [], "descriptions wrapped at 80 columns"
        help_text = app.screen.query_one("#help-status").render().plain  # type: ignore[attr-defined]
        assert "top-1" in help_text


async def test_an_empty_conversation_list_says_so(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert "No conversations yet" in screen_text(app)


async def test_the_palette_has_one_help(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Help: keys and status bar" in titles and "Keys" not in titles


async def test_a_relaunch_offers_the_last_conversation(make_app) -> None:
    first = make_app(FakeEngine())
    async with first.run_test(size=SIZE) as pilot:
        chat = await ready(first, pilot)
        await send(pilot, chat, "lighthouses at night")
        await wait_until(pilot, lambda: not chat.streaming)
    again = make_app(FakeEngine())
    async with again.run_test(size=SIZE) as pilot:
        await ready(again, pilot)
        text = screen_text(again)
        assert "lighthouses at night" in text and "ctrl+b" in text


async def test_the_model_picker_lists_the_models_on_this_machine(make_app, tmp_path, monkeypatch) -> None:
    for key in ("HOME", "HF_HOME", "OLLAMA_MODELS", "EFFORT_CACHE_DIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "Tiny-Q5_K_M.gguf").write_bytes(b"\0" * 2048)
    config = tmp_path / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'model_dirs = ["{folder}"]\n')
    engine = FakeEngine()
    app = make_app(engine, config_path=config)
    async with app.run_test(size=(100, 32)) as pilot:
        chat = await ready(app, pilot)
        chat.action_switch_model()
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        picker = app.screen
        await wait_until(pilot, lambda: "gguf/Tiny-Q5_K_M.gguf" in screen_text(app), what="models found")
        text = screen_text(app)
        assert "2.0 KB · Q5_K_M · not converted · folder" in text
        await pilot.press("enter")
        await wait_until(pilot, lambda: engine.loaded_models[-1] == str(folder / "Tiny-Q5_K_M.gguf"))
        await wait_until(pilot, lambda: chat.loaded_name == str(folder / "Tiny-Q5_K_M.gguf"))
