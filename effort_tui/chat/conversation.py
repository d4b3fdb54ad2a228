"""The open conversation: its turns and its rows in the history.

The screen shows the turns; this object keeps them in step with the history store and builds
what the engine is sent (the system prompt the conversation started with, then every turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.api import ChatRequest, SamplingSettings
from effort_tui.history import HistoryStore, StoredMessage, title_from
from effort_tui.widgets.chat_message import ChatMessage

@dataclass
class Turn:
    role: str
    content: str
    message_id: int | None = None
    widget: ChatMessage | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # the text's length after each token (answers made in this session): where a token's text ends
    token_ends: list[int] = field(default_factory=list)


class Conversation:
    """What the user is talking about right now (`id` None until the first message is stored)."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.id: int | None = None
        self.turns: list[Turn] = []

    def system_prompt(self, default: str) -> str:
        """This conversation's system prompt, or `default` (what a new one would start with)."""
        return self.store.system_prompt(self.id) if self.id is not None else default

    def title(self, default: str = "New chat") -> str:
        summary = self.store.conversation(self.id) if self.id is not None else None
        return summary.title if summary else default

    def add_user(self, text: str, *, model: str, system_prompt: str) -> int:
        """Store the user's message (starting the conversation with it); returns its row id."""
        if self.id is None:
            self.id = self.store.create_conversation(title_from(text), model=model, system_prompt=system_prompt)
        return self.store.add_message(self.id, "user", text)

    def request(self, sampling: SamplingSettings, answer_prefix: str = "") -> ChatRequest:
        system = self.system_prompt("")
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": t.role, "content": t.content} for t in self.turns]
        return ChatRequest(messages=messages, sampling=sampling, answer_prefix=answer_prefix)

    def drop_last_answer(self) -> Turn | None:
        """Take the last answer out of the conversation and the history (regenerate)."""
        if not self.turns or self.turns[-1].role != "assistant":
            return None
        last = self.turns.pop()
        if last.message_id is not None:
            self.store.delete_message(last.message_id)
        return last

    def last_answer(self) -> Turn | None:
        return next((t for t in reversed(self.turns) if t.role == "assistant" and t.content), None)

    def start_new(self) -> None:
        self.id = None
        self.turns = []

    def reopen(self, conversation_id: int) -> list[StoredMessage]:
        """Make `conversation_id` the open one; returns its stored messages (the caller makes the
        widgets and adds the turns with `add_turn`)."""
        self.id = conversation_id
        self.turns = []
        return self.store.messages(conversation_id)


def stored_sampling(stored: list[StoredMessage]) -> SamplingSettings | None:
    """The sampling of the conversation's last answer that kept one."""
    fields = SamplingSettings.__dataclass_fields__
    for m in reversed(stored):
        raw = m.meta.get("sampling") if m.role == "assistant" else None
        if isinstance(raw, dict):
            try:
                return SamplingSettings(**{k: v for k, v in raw.items() if k in fields})
            except TypeError:
                return None
    return None
