"""Answering: asking the engine for an answer, streaming it onto the screen, keeping it.

`Answers` starts an `Answer` (effort_tui.chat.answer), drains it at a reading pace as the
screen hands it each `GenerationUpdate`, and when the result arrives stores it in the history,
puts it in the conversation and posts `AnswerEnded` to the screen. An answer the user walked
away from (new chat, another conversation) is cancelled but still stored when it ends.
"""

from __future__ import annotations

import time
from functools import partial

from textual.screen import Screen

from engine.api import ChatEngine, SamplingSettings
from engine.events import GenerationResult
from effort_tui.answer_meta import answer_meta, header_text, note_text, partial_meta, summary_text
from effort_tui.bridge import Inbox
from effort_tui.chat.answer import DRAIN_INTERVAL_S, TEXT_INTERVAL_S, Answer
from effort_tui.chat.conversation import Conversation, Turn
from effort_tui.history import HistoryStore
from effort_tui.messages import AnswerEnded, AnswerStarted, GenerationUpdate
from effort_tui.stats import SpeedStats
from effort_tui.widgets.chat_message import ChatMessage
from effort_tui.widgets.chat_view import ChatView
from effort_tui.widgets.status_bar import StatusBar

PREFILL_NOTE_TOKENS = 64  # prompts longer than this show how much of them has been read


class Answers:
    def __init__(self, screen: Screen, engine: ChatEngine, store: HistoryStore, conversation: Conversation,
                 view: ChatView, status: StatusBar) -> None:
        self.screen = screen  # posts AnswerStarted / AnswerEnded, owns the timers
        self.engine = engine
        self.store = store
        self.conversation = conversation
        self.view = view
        self.status = status
        self.current: Answer | None = None  # the answer in flight on screen
        self._warned_context: set[int | None] = set()

    async def start(self, model: str, context_limit: int, sampling: SamplingSettings, prefix: str = "") -> None:
        """Answer the conversation's last message (going on from `prefix`, the start of an answer)."""
        assert self.conversation.id is not None
        widget = await self.view.add_message(ChatMessage("assistant", prefix, detail=model))
        widget.add_class("-streaming")
        gen = Answer(self.conversation.id, model, widget, sampling, prefix=prefix)
        gen.inbox = Inbox(self.screen, GenerationUpdate, tag=gen)
        gen.stats.context_limit = context_limit
        self.current = gen
        self.status.stats, self.status.streaming = gen.stats, True
        self.status.summary = "answering…  (Esc stops)"
        self.view.anchor()
        self.screen.post_message(AnswerStarted(gen))
        request = self.conversation.request(sampling, prefix)
        try:
            gen.handle = self.engine.generate(request, gen.inbox.put, gen.inbox.put, gen.inbox.put)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            gen.inbox.put(GenerationResult.failed(text[0] if text else type(exc).__name__))

    async def update(self, gen: Answer) -> None:
        """News from the engine for `gen`: drained now, or when the last drain is far enough back
        (an answer no longer on screen costs no redraw: it is drained at once, to be stored)."""
        wait = gen.last_drain + DRAIN_INTERVAL_S - time.monotonic()
        if wait <= 0 or gen.detached:
            await self._drain(gen)
        elif gen.drain_timer is None:
            gen.drain_timer = self.screen.set_timer(wait, partial(self._drain, gen))

    async def _drain(self, gen: Answer) -> None:
        gen.drain_timer = None
        now = gen.last_drain = time.monotonic()
        gen.take(gen.inbox.drain())
        if gen.result is not None:
            await self._finish(gen, gen.result)
            return
        if gen is self.current:
            self.status.stats = gen.stats
            self._maybe_context_warning(gen.stats)
            p = gen.prefill
            if p is not None and not gen.stats.tokens and p.total > PREFILL_NOTE_TOKENS and not gen.stop_requested:
                self.status.summary = ("answering…  (Esc stops)" if p.done >= p.total
                                       else f"reading the prompt {p.done:,.0f} / {p.total:,.0f} tokens…  (Esc stops)")
        if gen.due_to_draw(now):
            await gen.draw(now)
        elif gen.pending and gen.draw_timer is None and not gen.detached:
            gen.draw_timer = self.screen.set_timer(TEXT_INTERVAL_S, lambda: gen.draw(time.monotonic()))

    async def _finish(self, gen: Answer, result: GenerationResult) -> None:
        gen.inbox.close()
        gen.stop_timers()
        text = gen.final_text()
        meta = answer_meta(result, gen.model, gen.sampling)
        message_id: int | None = None
        if text or result.finish_reason != "error":
            message_id = self.store.add_message(gen.conversation_id, "assistant", text, meta)
        if gen.detached:
            return
        widget = gen.widget
        widget.remove_class("-streaming")
        widget.message_id = message_id
        if widget.is_attached:
            await widget.finish(text)
            widget.set_detail(header_text(meta))
            widget.set_note(note_text(meta), error=result.finish_reason == "error")
        if message_id is not None and gen.conversation_id == self.conversation.id:
            self.conversation.turns.append(Turn("assistant", text, message_id, widget, meta, gen.token_ends))
        if gen is self.current:
            self.status.stats, self.status.streaming = gen.stats, False
            self.status.summary = summary_text(meta)
            self.current = None  # "not streaming" means the answer is fully in place
            self.screen.post_message(AnswerEnded(gen, result))

    def _maybe_context_warning(self, stats: SpeedStats) -> None:
        if not stats.context_limit or stats.context_used < 0.9 * stats.context_limit:
            return
        if self.conversation.id in self._warned_context:
            return
        self._warned_context.add(self.conversation.id)
        self.screen.notify(
            f"The context is {stats.context_used / stats.context_limit:.0%} full ({stats.context_used:,} of "
            f"{stats.context_limit:,} tokens). Start a new chat (ctrl+n) before it runs out.",
            title="Context nearly full", severity="warning", timeout=8,
        )

    def stop(self) -> bool:
        """Esc: ask the engine to stop the answer in flight (what it wrote is kept)."""
        gen = self.current
        if gen is None or gen.stop_requested:
            return False
        gen.stop_requested = True
        gen.cancel()
        self.status.summary = "stopping…"
        return True

    def detach(self) -> None:
        """Stop showing the answer in flight (it is cancelled, and stored when it ends)."""
        gen = self.current
        if gen is None:
            return
        gen.detached = True
        gen.stop_timers()
        gen.cancel()
        self.current = None
        self.screen.post_message(AnswerEnded(gen, None))

    def save_partial_for_quit(self) -> None:
        """ctrl+q mid-answer: keep what was written so far, as a stopped answer, then let it go."""
        gen = self.current
        if gen is None or gen.result is not None:
            return
        gen.detached = True
        gen.inbox.close()
        gen.cancel()
        if gen.text:
            meta = partial_meta(gen.stats, gen.model, gen.sampling, "the app was quit")
            self.store.add_message(gen.conversation_id, "assistant", gen.text, meta)

    def close(self) -> None:
        gen = self.current
        if gen is not None:
            gen.inbox.close()
            gen.cancel()
