"""The conversation pane: a scrolling column of `ChatMessage`s.

It is anchored (`Widget.anchor`): while the view sits at the bottom new text
keeps it there; once the user scrolls up it stays put until they scroll back
to the bottom.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

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

    async def add_message(self, message: ChatMessage) -> ChatMessage:
        self.query_one("#chat-welcome").display = False
        await self.mount(message)
        return message

    async def clear(self) -> None:
        await self.query_children(ChatMessage).remove()
        self.query_one("#chat-welcome").display = True
        self.anchor()
