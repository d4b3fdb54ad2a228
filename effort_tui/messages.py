"""Textual messages used across the app.

Engine callbacks arrive on the engine's worker thread. They never touch a
widget: they drop their event into an `Inbox` (see `bridge.py`), which posts
`LoadUpdate` / `GenerationUpdate` with `post_message` (thread-safe) only when
the UI has drained the previous batch. The other messages carry results from
a part of the chat screen to the screen, and from the screen to the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from engine.api import ModelInfo
from engine.events import LoadProgress

if TYPE_CHECKING:
    from engine.events import GenerationResult
    from effort_tui.bridge import Inbox
    from effort_tui.chat.answer import Answer


class LoadUpdate(Message):
    """New `LoadProgress` events, or the end of the load, wait in `inbox`."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox


class GenerationUpdate(Message):
    """New `TokenEvent`s, or the `GenerationResult`, wait in `inbox`."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox


class PromptSubmitted(Message):
    """The user pressed Enter in the prompt box."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ModelLoaded(Message):
    """The engine loaded `model` (posted by the load panel; the app hears it too)."""

    def __init__(self, model: str, info: ModelInfo) -> None:
        super().__init__()
        self.model = model
        self.info = info


class ModelLoadFailed(Message):
    """The engine could not load `model`; `error` is one line."""

    def __init__(self, model: str, error: str) -> None:
        super().__init__()
        self.model = model
        self.error = error


class EngineNews(Message):
    """Something the engine says after (or beside) a load: a notice, or how the background effort
    conversion goes (LoadProgress stages "notice", "effort", "effort-ready", "effort-failed")."""

    def __init__(self, progress: LoadProgress) -> None:
        super().__init__()
        self.progress = progress


class SystemPromptSet(Message):
    """The user set the system prompt: this conversation's, and new ones' for this session."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class Exported(Message):
    """A conversation was written to `path` as Markdown."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path


class AnswerStarted(Message):
    """`answer` is in flight: the screen is answering."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer


class AnswerEnded(Message):
    """`answer` is no longer in flight on screen: it ended with `result`, or (None) the user moved
    on and it is cancelled (it is still stored when the engine's result arrives)."""

    def __init__(self, answer: Answer, result: GenerationResult | None) -> None:
        super().__init__()
        self.answer = answer
        self.result = result
