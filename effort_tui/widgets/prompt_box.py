"""The prompt box: Enter sends, shift+enter / ctrl+j add a line, up/down walk the history."""

from __future__ import annotations

from typing import Iterable

from textual import events
from textual.widgets import TextArea

from effort_tui.input_guard import clean_text
from effort_tui.keymap import bindings_for
from effort_tui.messages import PromptSubmitted

PLACEHOLDER = "Message · Enter sends · ctrl+j new line · ↑ history"


class PromptBox(TextArea):
    """Posts `PromptSubmitted`; the screen calls `accept()` once it takes the text.

    Up on an empty box shows the previous message sent (again for older
    ones); down walks forward and finally back to an empty box. Once the
    shown entry is edited, up/down move the cursor as usual.
    """

    BINDINGS = bindings_for("prompt")

    DEFAULT_CSS = """
    PromptBox {
        height: auto;
        min-height: 3;
        max-height: 10;
        margin: 0 1;
        border: round $primary 60%;
    }
    PromptBox:focus { border: round $primary; }
    """

    def __init__(self, history: Iterable[str] = (), *, id: str | None = None) -> None:
        super().__init__(
            "",
            id=id,
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            highlight_cursor_line=False,
            placeholder=PLACEHOLDER,
        )
        self.sent_history: list[str] = list(history)
        self._index: int | None = None  # which history entry is shown, None = not browsing

    def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea's own handler (Textual calls each class's, subclass first), which
        # then inserts the cleaned text: never let text that is not Unicode into the box.
        event.text = clean_text(event.text)

    # -- actions -------------------------------------------------------------------------------

    def action_submit(self) -> None:
        text = self.text
        if text.strip():
            self.post_message(PromptSubmitted(text))

    def action_newline(self) -> None:
        self._index = None
        self.insert("\n")

    def action_history_previous(self) -> None:
        if not self._browsing_allowed(previous=True):
            self.action_cursor_up()
            return
        if not self.sent_history:
            return
        if self._index is None:
            self._index = len(self.sent_history) - 1
        elif self._index > 0:
            self._index -= 1
        else:
            return
        self._show(self.sent_history[self._index])

    def action_history_next(self) -> None:
        if self._index is None or not self._browsing_allowed(previous=False):
            self.action_cursor_down()
            return
        if self._index < len(self.sent_history) - 1:
            self._index += 1
            self._show(self.sent_history[self._index])
        else:
            self._index = None
            self._show("")

    # -- helpers -------------------------------------------------------------------------------

    def _browsing_allowed(self, *, previous: bool) -> bool:
        if self._index is None:
            return previous and self.text == ""
        if self.text != self.sent_history[self._index]:
            self._index = None  # the user edited the entry: it is a draft now
            return False
        row = self.cursor_location[0]
        return row == 0 if previous else row == self.document.line_count - 1

    def _show(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)

    def accept(self) -> str:
        """Take the text: remember it in the history and empty the box."""
        text = self.text
        if text.strip() and (not self.sent_history or self.sent_history[-1] != text):
            self.sent_history.append(text)
        self._index = None
        self.text = ""
        return text
