"""Textual messages used across the app.

Engine callbacks arrive on the engine's worker thread. They never touch a
widget: they drop their event into an `Inbox` (see `bridge.py`), which posts
one of the messages below with `post_message` (thread-safe) only when the UI
has drained the previous batch. A fast engine therefore costs the UI one
message per frame, not one per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from effort_tui.bridge import Inbox


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
