"""The conversation pane: a scrolling column of `ChatMessage`s.

It is anchored (`Widget.anchor`): while the view sits at the bottom new text
keeps it there; once the user scrolls up it stays put until they scroll back
to the bottom.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from effort_tui.answer_meta import header_text, note_text
from effort_tui.clock import Clock
from effort_tui.history import ConversationSummary, StoredMessage
from effort_tui.widgets.chat_message import ChatMessage

WELCOME = (
    "Ask anything. While the model answers, turn the effort with "
    "ctrl+↑/↓ (or F7/F8, alt+1…alt+0) and watch the speed follow it in the status bar. "
    "F1 shows every key."
)


class ChatView(VerticalScroll):
    DEFAULT_CSS = """
    ChatView {
        height: 1fr;
        padding: 1 1 0 1;
        scrollbar-size-vertical: 1;
    }
    ChatView > #chat-welcome {
        color: $text-muted;
        padding: 1 2;
        height: auto;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static(WELCOME, id="chat-welcome")

    def on_mount(self) -> None:
        self.anchor()

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self.query_children(ChatMessage))

    def offer_last(self, last: ConversationSummary | None, clock: Clock) -> None:
        """Below the welcome: the conversation the user had last, and how to go back to it."""
        if last is None:
            return
        when = clock.local(last.updated)
        self.query_one("#chat-welcome", Static).update(
            f"{WELCOME}\n\nLast time: “{last.title}” ({when:%Y-%m-%d %H:%M}, {last.message_count} messages). "
            "ctrl+b and Enter to go on with it."
        )

    async def add_message(self, message: ChatMessage) -> ChatMessage:
        self.query_one("#chat-welcome").display = False
        await self.mount(message)
        return message

    async def show_stored(self, stored: list[StoredMessage]) -> list[ChatMessage]:
        """The messages of a reopened conversation, each with what its history row says of it."""
        widgets = [
            ChatMessage(m.role, m.content, detail=header_text(m.meta) if m.role == "assistant" and m.meta else "",
                        note=note_text(m.meta) if m.role == "assistant" and m.meta else "", message_id=m.id)
            for m in stored
        ]
        if widgets:
            self.query_one("#chat-welcome").display = False
            await self.mount_all(widgets)
        self.anchor()
        return widgets

    async def drop_answers_not_in(self, kept: list[ChatMessage | None]) -> None:
        """Remove answers shown but not in the conversation (a failure that left no text)."""
        keep = {id(w) for w in kept}
        for widget in self.messages:
            if widget.role == "assistant" and id(widget) not in keep:
                await widget.remove()

    async def clear(self) -> None:
        await self.query_children(ChatMessage).remove()
        self.query_one("#chat-welcome").display = True
        self.anchor()

    def scroll_to_place(self, where: str) -> None:
        """'page_up', 'page_down', 'home', or anything else: the newest message (and follow it)."""
        if where == "page_up":
            self.scroll_page_up(animate=False)
        elif where == "page_down":
            self.scroll_page_down(animate=False)
        elif where == "home":
            self.scroll_home(animate=False)
        else:
            self.anchor()
