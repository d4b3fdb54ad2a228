"""Config at start-up: broken file, keymap remaps, theme switching remembered."""

from __future__ import annotations

import pytest

from effort_tui.config import load_config
from effort_tui.screens.help import HelpScreen

from .conftest import SIZE, ready, wait_until
from .fake_engine import FakeEngine
from .screen_text import screen_text


async def test_broken_config_gives_defaults_and_a_message(make_app, config_path) -> None:
    config_path.parent.mkdir(parents=True)
    broken = 'model = "my-model"\ntheme = "effort-light\n'
    config_path.write_text(broken)
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(app, pilot)
        assert engine.loaded_models == ["smollm2-135m"]  # the default, not "my-model"
        assert app.theme == "effort-dark"
        (note,) = [n for n in app._notifications if n.title == "Settings"]
        assert note.severity == "error" and "not valid TOML" in note.message and str(config_path) in note.message
        await pilot.pause()
        assert "not valid TOML" in screen_text(app)  # the toast is on screen
        await pilot.press("ctrl+t")  # a theme change must not overwrite the user's broken file
        await pilot.pause()
        assert app.theme == "effort-light"
        assert config_path.read_text() == broken


async def test_bad_values_are_reported_and_the_rest_is_used(make_app, config_path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text('model = "tiny-model"\neffort = 2000\n[sampling]\ntemperature = 0.5\ntop_p = "high"\n')
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert engine.loaded_models == ["tiny-model"]
        assert engine.effort.get() == 1.0
        messages = " ".join(n.message for n in app._notifications)
        assert "effort must be between" in messages and "top_p must be a number" in messages
        request = chat.build_request()
        assert request.sampling.temperature == 0.5 and request.sampling.top_p == 0.9


async def test_sampling_and_system_prompt_reach_the_engine(make_app, config_path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text(
        'system_prompt = "You are terse."\n[sampling]\ntemperature = 0.8\ntop_p = 0.9\ntop_k = 20\nmax_tokens = 64\nseed = 3\n'
    )
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        chat.prompt.insert("hi")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.engine.requests)
        request = app.engine.requests[0]
        assert request.messages[0] == {"role": "system", "content": "You are terse."}
        s = request.sampling
        assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.seed) == (0.8, 0.9, 20, 64, 3)


async def test_keymap_remap_from_config(make_app, config_path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text('[keymap]\n"effort.down" = "ctrl+l"\n"prompt.submit" = "ctrl+s"\n"app.help" = "f2"\n')
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        await pilot.press("ctrl+l")
        assert app.engine.effort.get() == pytest.approx(0.95)
        await pilot.press("ctrl+down")  # the old key no longer lowers the effort
        assert app.engine.effort.get() == pytest.approx(0.95)
        await pilot.press("f7")  # nor does the old alias
        assert app.engine.effort.get() == pytest.approx(0.95)
        await pilot.press("ctrl+up")  # unmapped bindings keep their defaults
        assert app.engine.effort.get() == pytest.approx(1.0)
        chat.prompt.insert("hello")
        await pilot.press("enter")  # Enter is a plain newline now…
        assert chat.prompt.text == "hello\n" and not app.engine.requests
        await pilot.press("ctrl+s")  # …and ctrl+s sends
        await wait_until(pilot, lambda: app.engine.requests)
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.pause()
        assert "ctrl+l" in screen_text(app)  # the help shows the remapped key


async def test_theme_toggle_is_remembered(make_app, config_path) -> None:
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.theme == "effort-dark" and not config_path.exists()  # nothing written until a change
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: config_path.exists())
        assert app.theme == "effort-light"
    assert load_config(config_path).config.theme == "effort-light"
    assert [p.name for p in config_path.parent.iterdir()] == ["config.toml"]
    app = make_app(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.theme == "effort-light"
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: load_config(config_path).config.theme == "effort-dark")


async def test_theme_from_the_command_line_is_not_saved(make_app, config_path) -> None:
    app = make_app(FakeEngine(), theme="effort-light")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.pause()
        assert app.theme == "effort-light"
    assert not config_path.exists()


async def test_unknown_theme_falls_back(make_app) -> None:
    app = make_app(FakeEngine(), theme="no-such-theme")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert app.theme == "effort-dark"
        assert any("unknown theme 'no-such-theme'" in n.message for n in app._notifications)
