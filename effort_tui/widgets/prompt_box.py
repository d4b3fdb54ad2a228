"""The prompt box: Enter sends, shift+enter / ctrl+j add a line, up/down walk the history."""

from __future__ import annotations

from typing import Callable, Iterable

from textual import events
from textual.widgets import TextArea

from effort_tui.input_guard import clean_text
from effort_tui.keymap import SPECS, bindings_for, keys_for
from effort_tui.messages import PromptSubmitted

PLACEHOLDER = "Message · Enter sends · ctrl+j new line · ↑ history"


class PromptBox(TextArea):
    """Posts `PromptSubmitted` with the text it took out of the box (`accept()`).

    Up on an empty box shows the previous message sent (again for older
    ones); down walks forward and finally back to an empty box. Once the
    shown entry is edited, up/down move the cursor as usual.

    The box owns typing: its keys (Enter, ctrl+j, up, down, remapped or not)
    are handled in `_on_key`, in the widget's own queue, so they run after
    every character typed before them and before every character typed after
    them. (As app-level priority bindings they ran as soon as the app read
    the key, while earlier characters were still queued here: a fast typist's
    message was sent cut short and the rest cleared.) Submitting takes the
    text out of the box at once; `submit_check` (set by the screen) can
    refuse, and `restore` puts a refused text back.
    """

    BINDINGS = bindings_for("prompt")

    DEFAULT_CSS = """
    /* one row when empty (the chrome fits 80x24 in 6 rows), growing with the text */
    PromptBox {
        height: auto;
        min-height: 1;
        max-height: 8;
        margin: 0 1;
        padding: 0 1;
        border: none;
        border-left: tall $primary 60%;
        background: $boost;
    }
    PromptBox:focus { border: none; border-left: tall $primary; }
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
        self.submit_check: Callable[[], bool] | None = None  # False: keep the text, don't send

    # -- keys, in typing order -----------------------------------------------------------------

    def _key_actions(self) -> dict[str, str]:
        keymap = getattr(self.app, "_keymap", None) or {}
        actions: dict[str, str] = {}
        for spec in SPECS:
            if spec.scope != "prompt":
                continue
            for key in keys_for(spec.id, keymap).split(","):
                actions.setdefault(key.strip(), spec.action)
        return actions

    async def _on_key(self, event: events.Key) -> None:
        action = self._key_actions().get(event.key)
        if action is None:
            for alias in event.aliases:
                action = self._key_actions().get(alias)
                if action is not None:
                    break
        if action is None or self.read_only:
            await super()._on_key(event)
            return
        event.stop()
        event.prevent_default()
        getattr(self, f"action_{action}")()

    def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea's own handler (Textual calls each class's, subclass first), which
        # then inserts the cleaned text: never let text that is not Unicode into the box.
        event.text = clean_text(event.text)

    # -- actions -------------------------------------------------------------------------------

    def action_submit(self) -> None:
        text = self.text
        if not text.strip():
            return
        if self.submit_check is not None and not self.submit_check():
            return
        self.post_message(PromptSubmitted(self.accept()))

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

    def restore(self, text: str) -> None:
        """Put back a submitted text the screen could not send (before anything typed since)."""
        if self.sent_history and self.sent_history[-1] == text:
            self.sent_history.pop()
        rest = self.text
        self.text = text + rest
        self.move_cursor(self.document.end)

    def accept(self) -> str:
        """Take the text: remember it in the history and empty the box."""
        text = self.text
        if text.strip() and (not self.sent_history or self.sent_history[-1] != text):
            self.sent_history.append(text)
        self._index = None
        self.text = ""
        return text
