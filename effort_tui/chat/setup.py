"""What the chat screen is given by the app: the screen never reaches into the app for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.api import ChatEngine, SamplingSettings
from effort_tui.clock import Clock
from effort_tui.history import HistoryStore


@dataclass(frozen=True)
class ChatSetup:
    """The long-lived pieces the chat works with, and the settings it starts from."""

    engine: ChatEngine
    store: HistoryStore
    clock: Clock
    model: str
    sampling: SamplingSettings  # config.toml's [sampling]
    system_prompt: str  # for new conversations
    exports_dir: Path
    model_dirs: tuple[Path, ...] = ()  # more folders the model picker searches
    cursor_blink: bool = True
