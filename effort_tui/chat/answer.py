"""The answer in flight: the engine's events in; its text, speeds and result out, at a reading pace.

The engine calls back on its own thread, and those callbacks only `Inbox.put` (effort_tui.bridge):
the first event after a drain posts one `GenerationUpdate` to the screen. The screen drains an
answer at most every `DRAIN_INTERVAL_S` (the status bar's speed and sparkline follow) and redraws
its text at most every `TEXT_INTERVAL_S`. Each text redraw lays out and repaints the conversation;
on a two-core machine that Python work runs on the cores the decoding needs, and redrawn per token
it made the chat decode at 0.6x the speed of `effort generate`. The figures (cheap) follow four
times a second, the text (a Markdown layout of the whole answer) twice: with SmolLM2 answering at
~220 tok/s, redrawing the text 4 times a second left the chat at 0.82-0.87x of `effort generate`,
twice a second at 0.94-0.96x (headless, same prompt, in turn; 2026-12-05).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from textual.timer import Timer

from engine.api import GenerationHandle, SamplingSettings
from engine.events import GenerationResult, LoadProgress, TokenEvent
from effort_tui.bridge import Inbox
from effort_tui.stats import SpeedStats
from effort_tui.widgets.chat_message import ChatMessage

DRAIN_INTERVAL_S = 0.25  # the status bar's figures, at most 4 times a second
TEXT_INTERVAL_S = 0.5  # the answer's text, at most twice a second


@dataclass(eq=False)
class Answer:
    """One answer: in flight until `result` arrives."""

    conversation_id: int
    model: str
    widget: ChatMessage
    sampling: SamplingSettings  # what it is sampled with (kept in its metadata)
    inbox: Inbox[Any] = field(init=False)
    prefix: str = ""  # the start it goes on from (written again from a collapse point)
    stats: SpeedStats = field(default_factory=SpeedStats)
    handle: GenerationHandle | None = None
    text: str = ""  # everything so far, the prefix included
    pending: str = ""  # streamed but not drawn yet
    token_ends: list[int] = field(default_factory=list)  # len(text) after each token
    prefill: LoadProgress | None = None  # the latest news of the prompt being read
    result: GenerationResult | None = None
    stop_requested: bool = False
    detached: bool = False  # the user moved on (new chat, other conversation); still saved when done
    last_drain: float = float("-inf")
    last_draw: float = float("-inf")
    drain_timer: Timer | None = None
    draw_timer: Timer | None = None

    def __post_init__(self) -> None:
        self.text = self.prefix

    def take(self, items: Iterable[object]) -> None:
        """Absorb a drained batch of engine events."""
        for item in items:
            if isinstance(item, TokenEvent):
                self.stats.add(item)
                self.text += item.text
                self.pending += item.text
                self.token_ends.append(len(self.text))
            elif isinstance(item, LoadProgress):  # the prompt being read (long prompts take a while)
                self.prefill = item
            elif isinstance(item, GenerationResult):
                self.result = item

    def final_text(self) -> str:
        """The whole answer once the result is in (what streamed, if the result lost it)."""
        assert self.result is not None
        return self.prefix + self.result.text if (self.result.text or self.text == self.prefix) else self.text

    def due_to_draw(self, now: float) -> bool:
        return bool(self.pending) and now - self.last_draw >= TEXT_INTERVAL_S

    async def draw(self, now: float) -> None:
        """Show what streamed since the last redraw."""
        if self.draw_timer is not None:
            self.draw_timer.stop()
            self.draw_timer = None
        if not self.pending or self.detached or not self.widget.is_attached:
            return
        fragment, self.pending = self.pending, ""
        self.last_draw = now
        await self.widget.append(fragment)

    def stop_timers(self) -> None:
        for timer in (self.drain_timer, self.draw_timer):
            if timer is not None:
                timer.stop()
        self.drain_timer = self.draw_timer = None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
