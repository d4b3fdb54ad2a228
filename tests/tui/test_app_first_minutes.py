"""Issue 15's list: each small thing a new user met, fixed (FakeEngine, Pilot)."""

from __future__ import annotations

from dataclasses import replace

from rich.color import Color, ColorSystem

from effort_tui.keymap import validate_keymap
from effort_tui.answer_meta import answer_meta, summary_text
from effort_tui.stats import collapse_effort, prompt_text, quality_at
from effort_tui.widgets.effort_sparkline import EFFORT_BANDS, effort_style, nice_ceiling, scale_for
from engine.events import GenerationResult

from .conftest import SIZE, ready, send, wait_until
from .fake_engine import DEFAULT_INFO, FakeEngine
from .screen_text import screen_text

QUALITY = ((0.25, 0.49), (0.5, 0.8), (0.75, 0.935), (1.0, 1.0))


def _result(**kw) -> GenerationResult:
    base = dict(text="a", token_ids=[1], prompt_token_ids=[], prompt_tokens=238, generated_tokens=1, prompt_tps=7.0,
                decode_tps=0.0, ttft_s=0.3, finish_reason="cancelled", effort_trace=[1.0], effective_trace=[1.0])
    return GenerationResult(**{**base, **kw})


def test_one_token_answer_has_no_zero_speed_and_cached_prompt_reads_sensibly() -> None:
    line = summary_text(answer_meta(_result(prompt_cached=230), "fake-135m", None))
    assert "0.0 tok/s" not in line and line.startswith("■ stopped · 1 tok")
    assert "prompt 8 new + 230 cached" in line
    assert prompt_text(238, 0, 55.0) == "prompt 55 tok/s"


def test_invalid_key_names_are_reported() -> None:
    clean, problems = validate_keymap({"effort.up": "ctrl+zz", "effort.down": "ctrl+down,alt+minus,lots"})
    assert "effort.up" not in clean and clean["effort.down"] == "ctrl+down,alt+minus"
    assert any("'ctrl+zz' is not a key name" in p for p in problems) and any("'lots'" in p for p in problems)


def test_effort_colours_stay_apart_in_256_and_16_colours() -> None:
    for system in (ColorSystem.EIGHT_BIT, ColorSystem.STANDARD):
        numbers = {Color.parse(colour).downgrade(system).number for _, colour, _ in EFFORT_BANDS}
        assert len(numbers) == len(EFFORT_BANDS)
    assert effort_style(0.05) == "red" and effort_style(1.0) == "green" and effort_style(0.6) == "yellow"


def test_the_sparkline_scale_is_round_and_only_grows() -> None:
    assert [nice_ceiling(v) for v in (0.5, 12.7, 55, 101)] == [1, 20, 100, 200]
    top = scale_for([55.0, 50.0])
    assert top == 100 and scale_for([12.7], top) == 100  # a slower answer keeps the scale


def test_quality_table_interpolates_and_finds_the_collapse() -> None:
    assert quality_at(list(QUALITY), 0.6) == 0.8 + (0.935 - 0.8) * 0.1 / 0.25
    assert quality_at([], 0.5) is None and collapse_effort(list(QUALITY)) == 0.25


async def test_quality_beside_the_gauge_and_a_one_time_hint(make_app) -> None:
    engine = FakeEngine(info=replace(DEFAULT_INFO, quality=QUALITY))
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        chat.action_effort_set(0.5)
        await pilot.pause()
        assert "≈80% top-1" in screen_text(app)
        chat.action_effort_set(0.2)
        chat.action_effort_set(0.1)
        await pilot.pause()
        hints = [n for n in app._notifications if "Quality drops" in (n.title or "")]
        assert len(hints) == 1 and "≈49%" in hints[0].message


async def test_ctrl_q_mid_answer_keeps_the_partial_answer_as_stopped(make_app) -> None:
    engine = FakeEngine(reply="one two three four five", gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "count")
        engine.release(2)
        await wait_until(pilot, lambda: chat.status.stats.tokens == 2)
        saved: list[tuple] = []
        add = app.store.add_message
        app.store.add_message = lambda *a, **k: saved.append(a) or add(*a, **k)  # type: ignore[method-assign]
        await pilot.press("ctrl+q")
    assert saved and saved[-1][1:3] == ("assistant", "one two") and saved[-1][3]["finish_reason"] == "cancelled"


async def test_multiline_and_heading_user_messages_show_as_typed(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "# Heading\nline two\nline three")
        await wait_until(pilot, lambda: not chat.streaming)
        text = screen_text(app)
        assert "# Heading" in text and "line two" in text and "line three" in text
        (conv,) = app.store.list_conversations()
        assert conv.title == "Heading"


async def test_help_shows_keymap_in_brackets(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=(100, 60)) as pilot:
        await ready(app, pilot)
        await pilot.press("f1")
        await pilot.pause()
        footer = app.screen.query_one("#help-footer")
        assert "[keymap]" in str(footer.render())


async def test_config_warnings_are_shown_after_the_model_is_ready(make_app, config_path) -> None:
    import threading

    config_path.parent.mkdir(parents=True)
    config_path.write_text('[keymap]\n"effort.up" = "ctrl+zz"\n')
    gate = threading.Event()
    app = make_app(FakeEngine(load_gate=gate))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert not [n for n in app._notifications if "ctrl+zz" in n.message]  # not while loading
        gate.set()
        await ready(app, pilot)
        await pilot.pause()
        assert [n for n in app._notifications if "ctrl+zz" in n.message]


async def test_reopened_chat_shows_its_ctx_and_sampling(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        chat.action_toggle_greedy()
        await send(pilot, chat, "hello there")
        await wait_until(pilot, lambda: not chat.streaming)
        conv_id = chat.conversation_id
        await chat.action_new_chat()
        chat.action_toggle_greedy()
        assert not chat.sampling.greedy
        await chat.open_conversation(conv_id)
        assert chat.status.stats.context_used == 40 + 4  # the prompt + "You said: hello there"
        assert chat.sampling.greedy and "greedy" in chat.status.model_text().plain


async def test_layout_fits_80x24(make_app) -> None:
    engine = FakeEngine(reply="word " * 30, gated=True)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "hi")
        engine.release_all()
        await wait_until(pilot, lambda: not chat.streaming)
        await pilot.pause()
        chrome = 24 - chat.chat_view.outer_size.height
        assert chrome <= 6, chrome
        assert chat.status.size.height == 4  # no line wraps
        assert chat.query_one("#status-summary").size.height == 1


async def test_copy_rename_search(make_app) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await send(pilot, chat, "tell me about lighthouses")
        await wait_until(pilot, lambda: not chat.streaming)
        copied: list[str] = []
        app.copy_to_clipboard = copied.append  # type: ignore[method-assign]
        chat.action_copy_answer()
        assert copied == ["You said: tell me about lighthouses"]
        chat.action_rename()
        await pilot.pause()
        app.screen.query_one("Input").value = "Lighthouses"
        await pilot.press("enter")
        await pilot.pause()
        assert app.store.conversation(chat.conversation_id).title == "Lighthouses"
        assert [c.title for c in app.store.search_conversations("LIGHTHOUSE")] == ["Lighthouses"]
        assert app.store.search_conversations("zebra") == []


async def test_first_launch_chats_at_once_while_the_effort_dial_is_prepared(make_app) -> None:
    """A model never converted loads dense; the effort conversion runs behind it: the chat says so,
    shows how far the conversion is (its own count, not a timer), effort keys say when they will
    act, and the end is announced."""
    from engine.events import LoadProgress
    from effort_tui.messages import EngineNews

    engine = FakeEngine(after_load=(LoadProgress("effort", 12, 30, "", "calibrating"),))
    app = make_app(engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        chat = await ready(app, pilot)
        await wait_until(pilot, lambda: chat.effort_preparing is True, what="effort preparing")
        await wait_until(pilot, lambda: any("full effort until the effort dial is ready" in n.message for n in app._notifications))
        await wait_until(pilot, lambda: "effort dial: calibrating 40%" in screen_text(app), what="progress shown")
        await pilot.press("ctrl+down")
        await wait_until(pilot, lambda: any("being prepared (calibrating 40%)" in n.message for n in app._notifications))
        chat.post_message(EngineNews(LoadProgress("effort-ready", 1, 1, "", "the effort dial is ready (70 s)")))
        await wait_until(pilot, lambda: chat.effort_preparing is False)
        await wait_until(pilot, lambda: any("The effort dial is ready" in n.message for n in app._notifications))
        chat.post_message(EngineNews(LoadProgress("effort-failed", 0, 0, "", "the effort dial is unavailable: disk full")))
        await wait_until(pilot, lambda: any(n.severity == "warning" and "disk full" in n.message for n in app._notifications))


async def test_the_status_bar_shows_what_the_weights_hold_in_memory(make_app) -> None:
    """Issue 21: the chat shows the loaded model's resident size (the engine's ModelInfo.resident_bytes)."""
    engine = FakeEngine()
    engine.info = replace(engine.info, resident_bytes=97_300_000)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert "92.8 MB" in chat.status.model_text().plain
