"""One message in the chat pane: a header line and its Markdown body.

An answer in flight grows by `append` (Markdown.append re-parses only the last block), called at
the answering part's pace; when it ends the whole text is rendered once more with
`Markdown.update`, so code fences opened and closed during the stream come out whole.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from engine.display import printable

ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}


class ChatMessage(Vertical):
    DEFAULT_CSS = """
    ChatMessage {
        height: auto;
        margin: 0 0 1 0;
        padding: 0 1;
    }
    ChatMessage > .chat-message--header {
        height: 1;
        color: $text-muted;
        text-style: bold;
    }
    ChatMessage.-user > .chat-message--header { color: $secondary; }
    ChatMessage.-assistant > .chat-message--header { color: $primary; }
    ChatMessage.-error > .chat-message--header { color: $error; }
    ChatMessage > Markdown {
        margin: 0;
        padding: 0;
        background: transparent;
    }
    ChatMessage > .chat-message--text { height: auto; }
    ChatMessage > .chat-message--note {
        height: auto;
        color: $text-muted;
    }
    ChatMessage.-error > .chat-message--note { color: $error; }
    """

    def __init__(self, role: str, content: str = "", *, detail: str = "", note: str = "", message_id: int | None = None) -> None:
        super().__init__(classes=f"-{role}")
        self.role = role
        self.content = content
        self.detail = detail
        self.note = note
        self.message_id = message_id  # row id in the history, once stored

    def compose(self) -> ComposeResult:
        yield Static(self._header_text(), classes="chat-message--header", markup=False)
        if self.role == "user":
            # what the user typed, as typed: every line break kept, "# Heading" or **x** not rendered
            yield Static(printable(self.content, lines=True), classes="chat-message--text", markup=False)
        else:
            yield Markdown(printable(self.content, lines=True))
        yield Static(printable(self.note), classes="chat-message--note", markup=False)

    def on_mount(self) -> None:
        self.query_one(".chat-message--note", Static).display = bool(self.note)

    def _header_text(self) -> str:
        title = ROLE_TITLES.get(self.role, self.role)
        return printable(f"{title} · {self.detail}" if self.detail else title)  # the detail names the model

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def set_detail(self, detail: str) -> None:
        self.detail = detail
        self.query_one(".chat-message--header", Static).update(self._header_text())

    def set_note(self, note: str, *, error: bool = False) -> None:
        self.note = note
        label = self.query_one(".chat-message--note", Static)
        label.update(printable(note))
        label.display = bool(note)
        self.set_class(error, "-error")

    async def append(self, fragment: str) -> None:
        """Add streamed text (a model's escape sequences are shown, not obeyed)."""
        if fragment:
            self.content += fragment
            await self.markdown.append(printable(fragment, lines=True))

    async def finish(self, full_text: str | None = None) -> None:
        """Render the whole text in one go."""
        if full_text is not None:
            self.content = full_text
        await self.markdown.update(printable(self.content, lines=True))
