"""A one-line question in a modal: the system prompt, a temperature, a conversation's new name…"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class AskScreen(ModalScreen["str | None"]):
    """Dismisses with the text entered (Enter), or None (Esc)."""

    CSS_PATH = "ask.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="ask.cancel")]

    def __init__(self, title: str, value: str = "", *, placeholder: str = "", hint: str = "") -> None:
        super().__init__(id="ask")
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(id="ask-dialog"):
            yield Label(self.title_text, id="ask-title", markup=False)
            yield Input(self.value, placeholder=self.placeholder, id="ask-input")
            yield Label(self.hint or "Enter to apply · Esc to cancel", id="ask-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
