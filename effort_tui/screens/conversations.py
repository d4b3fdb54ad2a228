"""ctrl+b: the saved conversations. Enter reopens one, Delete (twice) removes it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from engine.display import printable

from effort_tui.clock import Clock
from effort_tui.history import ConversationSummary, HistoryStore
from effort_tui.keymap import bindings_for

# (conversation to open or None, ids deleted while the list was open)
ConversationsResult = tuple[int | None, set[int]]


class ConversationsScreen(ModalScreen[ConversationsResult]):
    CSS_PATH = "conversations.tcss"
    BINDINGS = bindings_for("conversations")
    AUTO_FOCUS = "#conversation-list"

    def __init__(self, store: HistoryStore, clock: Clock, *, current_id: int | None = None, query: str = "") -> None:
        super().__init__(id="conversations")
        self.query_text = query.strip()  # only conversations whose title or messages contain it
        self.store = store
        self.clock = clock
        self.current_id = current_id
        self.deleted: set[int] = set()
        self._armed_delete: int | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations-dialog"):
            title = f"Conversations containing “{self.query_text}”" if self.query_text else "Conversations"
            yield Label(printable(title), id="conversations-title", markup=False)
            yield OptionList(id="conversation-list")
            yield Static(id="conversations-empty")
            yield Static(self._hint(), id="conversations-hint")

    def _hint(self) -> str:
        text = "Enter opens · Delete twice removes · Esc closes"
        if not self.store.persistent:
            text += "\nHistory is off (--no-history): nothing is kept after you quit."
        return text

    def on_mount(self) -> None:
        self.refresh_list()

    def refresh_list(self) -> None:
        option_list = self.query_one(OptionList)
        if self.query_text:
            conversations = self.store.search_conversations(self.query_text)
        else:
            conversations = self.store.list_conversations()
        highlighted = option_list.highlighted
        option_list.clear_options()
        option_list.add_options([self._option(c) for c in conversations])
        empty = self.query_one("#conversations-empty", Static)
        empty.display = not conversations
        option_list.display = bool(conversations)
        empty.update(f"No conversation contains “{self.query_text}”." if self.query_text else "No conversations yet.")
        if conversations:
            index = next((i for i, c in enumerate(conversations) if c.id == self.current_id), 0)
            if highlighted is not None:
                index = min(highlighted, len(conversations) - 1)
            option_list.highlighted = index

    def _option(self, c: ConversationSummary) -> Option:
        when = self.clock.local(c.updated)
        text = Text()
        text.append(printable(c.title), style="bold" if c.id == self.current_id else "")
        if c.id == self.current_id:
            text.append("  (open)", style="italic")
        details = f"{when:%Y-%m-%d %H:%M} · {c.message_count} messages"
        if c.model:
            details += f" · {printable(c.model)}"
        text.append(f"\n{details}", style="dim")
        return Option(text, id=str(c.id))

    def _selected_id(self) -> int | None:
        option_list = self.query_one(OptionList)
        if option_list.highlighted is None or option_list.option_count == 0:
            return None
        option = option_list.get_option_at_index(option_list.highlighted)
        return int(option.id) if option.id is not None else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.dismiss((int(event.option.id), self.deleted))

    def action_open(self) -> None:
        selected = self._selected_id()
        if selected is not None:
            self.dismiss((selected, self.deleted))

    def action_delete(self) -> None:
        selected = self._selected_id()
        if selected is None:
            return
        if self._armed_delete != selected:
            self._armed_delete = selected
            summary = self.store.conversation(selected)
            self.notify(f"Press Delete again to delete “{summary.title if summary else selected}”.", timeout=4)
            return
        self._armed_delete = None
        self.store.delete_conversation(selected)
        self.deleted.add(selected)
        self.refresh_list()
        self.notify("Conversation deleted.", timeout=3)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is None or int(event.option.id) != self._armed_delete:
            self._armed_delete = None

    def action_close(self) -> None:
        self.dismiss((None, self.deleted))
