"""The chat's commands that ask something first or open another screen: rename, search, switch
model, system prompt, a sampling value, the conversation list, export. Each pushes its screen and
hands the answer back to the chat screen (`DialogHost`); results for the app go as messages.
"""

from __future__ import annotations

from typing import Any, Protocol

from textual.app import App
from textual.screen import ModalScreen

from engine import validation
from engine.api import SamplingSettings
from engine.io.atomic import write_text
from effort_tui.answer_meta import reopened_text
from effort_tui.chat.answering import Answers
from effort_tui.chat.conversation import Conversation, Turn, stored_sampling
from effort_tui.chat.sampling import SamplingChoice
from effort_tui.chat.setup import ChatSetup
from effort_tui.exporting import conversation_markdown, export_path
from effort_tui.messages import Exported, SystemPromptSet
from effort_tui.screens.ask import AskScreen
from effort_tui.screens.conversations import ConversationsScreen
from effort_tui.screens.model_picker import ModelPickerScreen
from effort_tui.stats import SpeedStats
from effort_tui.widgets.chat_view import ChatView
from effort_tui.widgets.prompt_box import PromptBox
from effort_tui.widgets.status_bar import StatusBar


class DialogHost(Protocol):
    """What the dialogs need of the chat screen."""

    app: App[Any]
    conversation: Conversation
    choice: SamplingChoice
    system_prompt: str
    model_name: str
    answer_when_ready: bool
    setup: ChatSetup
    answers: Answers
    chat_view: ChatView
    status: StatusBar
    prompt: PromptBox

    @property
    def streaming(self) -> bool: ...
    def notify(self, message: str, **kwargs: Any) -> None: ...
    def post_message(self, message: Any) -> bool: ...
    def model_label(self) -> str: ...
    def show_sampling(self) -> None: ...
    def set_sampling(self, sampling: SamplingSettings, *, say: bool = True) -> None: ...
    def start_load(self, model: str) -> None: ...
    def context_limit(self) -> int: ...
    def action_stop(self) -> None: ...
    async def action_new_chat(self) -> None: ...


class ChatDialogs:
    def __init__(self, chat: DialogHost) -> None:
        self.chat = chat

    def _ask(self, screen: ModalScreen[Any], then: Any) -> None:
        self.chat.app.push_screen(screen, then)

    def ask_sampling_value(self, name: str) -> None:
        choice = self.chat.choice

        def chosen(text: str | None) -> None:
            if text is None or not text.strip():
                return
            try:
                sampling = choice.with_value(name, text)
            except validation.SettingError as exc:
                self.chat.notify(str(exc), severity="warning")
                return
            self.chat.set_sampling(sampling)

        self._ask(AskScreen(choice.question(name), f"{getattr(choice.current, name):g}"), chosen)

    def ask_system_prompt(self) -> None:
        chat = self.chat

        def chosen(text: str | None) -> None:
            if text is None:
                return
            text = text.strip()
            chat.system_prompt = text  # new chats in this session
            if chat.conversation.id is not None:
                chat.conversation.store.set_system_prompt(chat.conversation.id, text)
            chat.show_sampling()
            chat.post_message(SystemPromptSet(text))
            chat.notify("System prompt cleared." if not text else "System prompt set.", timeout=3)

        current = chat.conversation.system_prompt(chat.system_prompt)
        self._ask(AskScreen("System prompt (this conversation and new ones; \"\" = none)", current,
                            hint="Enter to apply · Esc to cancel · saved with the conversation"), chosen)

    def rename(self) -> None:
        conversation = self.chat.conversation
        if conversation.id is None:
            self.chat.notify("Nothing to rename yet: send a message first.", severity="warning")
            return
        conversation_id = conversation.id

        def chosen(text: str | None) -> None:
            if text is None or not text.strip():
                return
            conversation.store.rename_conversation(conversation_id, text.strip())
            self.chat.notify(f"Renamed to “{text.strip()}”.", timeout=3)

        self._ask(AskScreen("Rename this conversation", conversation.title("")), chosen)

    def conversations(self, query: str = "") -> None:
        store, clock = self.chat.conversation.store, self.chat.setup.clock
        self._ask(ConversationsScreen(store, clock, current_id=self.chat.conversation.id, query=query), self._chosen)

    def search(self) -> None:
        def chosen(text: str | None) -> None:
            if text is not None:
                self.conversations(text)

        self._ask(AskScreen("Search conversations (titles and messages)", placeholder="words to find"), chosen)

    async def _chosen(self, result: Any) -> None:
        if result is None:
            return
        open_id, deleted = result
        if self.chat.conversation.id in deleted and open_id is None:
            await self.chat.action_new_chat()
        if open_id is not None:
            await self.open_conversation(open_id)

    async def open_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation and go on with it (its own sampling, its context figures)."""
        chat = self.chat
        chat.answers.detach()
        chat.answer_when_ready = False  # a message that waited for the model belongs to the chat left
        await chat.chat_view.clear()
        stored = chat.conversation.reopen(conversation_id)
        widgets = await chat.chat_view.show_stored(stored)
        for m, w in zip(stored, widgets):
            chat.turns.append(Turn(m.role, m.content, m.id, w, m.meta))
        chat.set_sampling(stored_sampling(stored) or chat.choice.defaults, say=False)
        stats = SpeedStats(context_limit=chat.context_limit())
        last = next((m for m in reversed(stored) if m.role == "assistant" and m.meta), None)
        if last is not None:  # what the context held after the last answer (the next send resends it)
            stats.context_used = int(last.meta.get("prompt_tokens", 0)) + int(last.meta.get("generated_tokens", 0))
        chat.status.stats, chat.status.streaming = stats, False
        title = chat.conversation.title("conversation")
        chat.status.summary = f"reopened “{title}”" + (f" · last answer: {reopened_text(last.meta)}" if last else "")
        chat.prompt.focus()

    def switch_model(self) -> None:
        chat = self.chat

        def chosen(spec: str | None) -> None:
            if spec is None or spec == chat.model_name:
                return
            if chat.streaming:
                chat.action_stop()
            chat.start_load(spec)

        self._ask(ModelPickerScreen(chat.model_name, chat.setup.model_dirs), chosen)

    def export(self) -> None:
        chat = self.chat
        conversation = chat.conversation
        if not conversation.turns:
            chat.notify("Nothing to export yet.", severity="warning")
            return
        clock = chat.setup.clock
        when = clock.local(clock.time())
        text = conversation_markdown(
            conversation.title(), [(t.role, t.content, t.meta) for t in conversation.turns],
            model=chat.model_label(), exported_at=when, system_prompt=conversation.system_prompt(""),
        )
        path = export_path(chat.setup.exports_dir, conversation.id, when)
        try:
            write_text(path, text)
        except OSError as exc:
            chat.notify(f"Could not write {path}: {exc.strerror or exc}", severity="error")
            return
        chat.post_message(Exported(path))
        chat.notify(f"Saved {path}", title="Exported")

