"""Fixtures for the TUI tests: a fake engine, a temporary data/config dir, a fixed clock."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) does not add the repo root
    sys.path.insert(0, str(ROOT))

from effort_tui.app import EffortApp  # noqa: E402
from effort_tui.clock import FixedClock  # noqa: E402

from .fake_engine import FakeEngine  # noqa: E402

SIZE = (100, 32)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "config.toml"


@pytest.fixture
def make_app(data_dir: Path, config_path: Path) -> Callable[..., EffortApp]:
    """`make_app(engine=..., **kwargs)` builds an app on the temporary dirs with a fixed clock."""
    engines: list[FakeEngine] = []

    def factory(engine: FakeEngine | None = None, **kwargs) -> EffortApp:
        engine = engine or FakeEngine()
        engines.append(engine)
        kwargs.setdefault("data_dir", data_dir)
        kwargs.setdefault("config_path", config_path)
        kwargs.setdefault("clock", FixedClock())
        kwargs.setdefault("cursor_blink", False)
        return EffortApp(engine=engine, **kwargs)

    yield factory
    for engine in engines:
        engine.close()


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll `predicate` between frames (a single pause() is not enough while threads post)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.01)


async def ready(app, pilot):
    """Wait for the model to load; returns the chat screen."""
    await wait_until(pilot, lambda: app.chat_screen is not None and app.chat_screen.model_state == "ready", what="model loaded")
    return app.chat_screen


async def send(pilot, chat, text: str) -> None:
    """Put `text` in the prompt box (typing key by key costs ~75 ms a key), press Enter,
    and wait until the engine has the request."""
    requests = chat.app.engine.requests
    before = len(requests)
    chat.prompt.insert(text)
    await pilot.press("enter")
    await wait_until(pilot, lambda: len(requests) > before, what="answer started")
