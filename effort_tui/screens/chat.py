"""The chat screen: it composes the conversation pane, the load panel, the prompt box and the
status bar, and ties together the parts in `effort_tui.chat` (the conversation, the answers, the
effort dial, the sampling, the dialogs). The engine's callbacks reach it as messages (see
`effort_tui.bridge`), as do the results of its parts; it never imports the app.
"""

from __future__ import annotations

from dataclasses import replace

from textual import on
from textual.app import ComposeResult
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer

from engine.api import ChatRequest, ModelInfo, SamplingSettings
from engine.events import GenerationResult
from effort_tui.chat.answer import Answer
from effort_tui.chat.answering import Answers
from effort_tui.chat.conversation import Conversation, Turn
from effort_tui.chat.dialogs import ChatDialogs
from effort_tui.chat.effort_dial import EffortDial
from effort_tui.chat.sampling import SamplingChoice
from effort_tui.chat.setup import ChatSetup
from effort_tui.input_guard import clean_text
from effort_tui.keymap import bindings_for
from effort_tui.messages import (
    AnswerEnded, AnswerStarted, EngineNews, GenerationUpdate, ModelLoaded, ModelLoadFailed, PromptSubmitted,
)
from effort_tui.stats import SpeedStats
from effort_tui.widgets.chat_message import ChatMessage
from effort_tui.widgets.chat_view import ChatView
from effort_tui.widgets.load_panel import LoadPanel
from effort_tui.widgets.prompt_box import PromptBox
from effort_tui.widgets.status_bar import ModelLine, StatusBar


class ChatScreen(Screen):
    CSS_PATH = "chat.tcss"
    BINDINGS = bindings_for("chat")
    AUTO_FOCUS = "PromptBox"

    model_state: var[str] = var("loading", init=False)  # "loading" | "ready" | "failed"

    def __init__(self, setup: ChatSetup) -> None:
        super().__init__(id="chat")
        self.setup = setup
        self.engine = setup.engine
        self.store = setup.store
        self.model_name = setup.model  # loaded, or being loaded
        self.loaded_name = ""  # what the loaded model was asked for by
        self.model_info: ModelInfo | None = None
        self.load_error: str | None = None
        self.system_prompt = setup.system_prompt  # for new conversations
        self.conversation = Conversation(setup.store)
        self.choice = SamplingChoice(setup.sampling)
        self.dialogs = ChatDialogs(self)
        self.last_result: GenerationResult | None = None
        self.answer_when_ready = False  # a message sent while the model loads waits for it
        self.chat_view = ChatView(id="chat-view")
        self.load_panel = LoadPanel(setup.clock, id="load-panel")
        self.prompt = PromptBox(self.store.prompt_history(), id="prompt")
        self.status = StatusBar(id="status")

    def compose(self) -> ComposeResult:
        yield from (self.chat_view, self.load_panel, self.prompt, self.status, Footer())

    def on_mount(self) -> None:
        self.dial = EffortDial(self.engine.effort, self.status, self.notify)
        self.answers = Answers(self, self.engine, self.store, self.conversation, self.chat_view, self.status)
        self.prompt.cursor_blink = self.setup.cursor_blink
        self.prompt.submit_check = self._can_send
        self.show_sampling()
        self.dial.show()
        self.chat_view.offer_last(next(iter(self.store.list_conversations()), None), self.setup.clock)
        self.start_load(self.model_name)

    def on_unmount(self) -> None:
        self.load_panel.close()
        self.answers.close()

    @property
    def generation(self) -> Answer | None:
        """The answer in flight, on screen (None when idle)."""
        return self.answers.current

    @property
    def streaming(self) -> bool:
        return self.answers.current is not None

    @property
    def turns(self) -> list[Turn]:
        return self.conversation.turns

    @property
    def conversation_id(self) -> int | None:
        return self.conversation.id

    @property
    def sampling(self) -> SamplingSettings:
        return self.choice.current

    @property
    def default_sampling(self) -> SamplingSettings:
        return self.choice.defaults

    @property
    def effort_preparing(self) -> bool | None:
        return self.dial.preparing

    def model_label(self) -> str:
        return self.model_info.name if self.model_info else self.model_name

    # -- the model -----------------------------------------------------------------------------

    def watch_model_state(self) -> None:
        self.show_model()

    def show_model(self) -> None:
        info = self.model_info
        if self.model_state == "ready" and info is not None:
            self.status.model = ModelLine(info.name, "ready", info.backend, info.device, info.resident_bytes)
        else:
            self.status.model = ModelLine(self.model_name, self.model_state)  # type: ignore[arg-type]

    def start_load(self, model: str) -> None:
        """Load `model`; while another one is loaded, that one answers until the new one is ready."""
        switching = self.model_state == "ready"
        self.model_name = model
        if switching:
            self.notify(f"Loading {model}; {self.model_label()} answers until it is ready.", title="Model", timeout=4)
            self.dial.conversion_gone()  # the new model's own news follow (the old one's, if it stays)
        else:
            self.model_state = "loading"
            self.load_error = None
            self.show_model()
        self.load_panel.load(self.engine, model, show=not switching)

    @on(ModelLoaded)
    async def _model_loaded(self, message: ModelLoaded) -> None:
        self.model_info = message.info
        self.model_name = self.loaded_name = message.model
        self.load_panel.display = False
        self.choice.model_ready(message.info.sampling, keep_current=bool(self.turns))
        self.show_sampling()
        self.dial.model_ready(message.info)
        self.status.stats = SpeedStats(context_limit=message.info.context_limit)
        self.model_state = "ready"
        self.show_model()  # after a switch the state was "ready" already
        if self.answer_when_ready and self.turns and self.turns[-1].role == "user":
            await self.answer()
        self.answer_when_ready = False

    @on(ModelLoadFailed)
    def _model_load_failed(self, message: ModelLoadFailed) -> None:
        title = f"Could not load {message.model}"
        if self.model_state == "ready" and self.model_info is not None:  # a switch: keep what works
            self.model_name = self.loaded_name
            self.notify(f"{message.error}. Still using {self.model_info.name}.", title=title, severity="error", timeout=8)
            return
        self.answer_when_ready = False
        self.load_error = message.error
        self.load_panel.show_error(message.error)
        self.model_state = "failed"
        self.notify(message.error, title=title, severity="error", timeout=8)

    @on(EngineNews)
    def _engine_news(self, message: EngineNews) -> None:
        item = message.progress
        if item.stage == "notice":
            self.notify(item.message, title="Note", severity="warning", timeout=8)
        else:
            self.dial.conversion(item)

    # -- sending and answering -----------------------------------------------------------------

    @on(PromptSubmitted)
    async def _on_prompt_submitted(self, message: PromptSubmitted) -> None:
        message.stop()
        if not self._can_send():  # e.g. a second Enter typed before the first answer started
            self.prompt.restore(message.text)
            return
        await self.send(message.text)

    def _can_send(self) -> bool:
        if self.model_state == "failed":
            self.notify(f"No model is loaded: {self.load_error}", severity="error")
            return False
        if self.answer_when_ready:
            self.notify("A message is already waiting for the model to load.", severity="warning", timeout=3)
            return False
        if self.streaming:
            self.notify("Still answering; press Esc to stop it first.", severity="warning", timeout=3)
            return False
        return True

    async def send(self, text: str) -> None:
        """Add the user's message to the conversation and answer it (once the model is loaded)."""
        if not self._can_send():
            return
        text = clean_text(text)  # text that is not Unicode (lone surrogates) cannot be stored or encoded
        message_id = self.conversation.add_user(text, model=self.model_label(), system_prompt=self.system_prompt)
        widget = await self.chat_view.add_message(ChatMessage("user", text, message_id=message_id))
        self.turns.append(Turn("user", text, message_id, widget))
        if self.model_state == "loading":
            self.answer_when_ready = True
            self.status.summary = "your message is sent as soon as the model is loaded"
            return
        await self.answer()

    async def answer(self, prefix: str = "") -> None:
        context = self.model_info.context_limit if self.model_info else 0
        await self.answers.start(self.model_label(), context, self.sampling, prefix)

    def build_request(self) -> ChatRequest:
        return self.conversation.request(self.sampling)

    @on(GenerationUpdate)
    async def _on_generation_update(self, message: GenerationUpdate) -> None:
        await self.answers.update(message.inbox.tag)

    @on(AnswerStarted)
    def _answer_started(self) -> None:
        self.refresh_bindings()  # Esc (stop) shows in the footer only while answering

    @on(AnswerEnded)
    def _answer_ended(self, message: AnswerEnded) -> None:
        self.refresh_bindings()
        if message.result is None:
            return
        self.last_result = message.result
        if message.result.finish_reason == "error":
            self.notify(message.result.error or "The answer failed.", title="Generation failed", severity="error", timeout=8)
        self.dial.offer_repair(self.turns, self.streaming)

    def save_partial_for_quit(self) -> None:
        self.answers.save_partial_for_quit()

    # -- effort --------------------------------------------------------------------------------

    def action_effort_step(self, delta: float) -> None:
        self.dial.step(delta)
        self.dial.offer_repair(self.turns, self.streaming)

    def action_effort_set(self, value: float) -> None:
        self.dial.set(value)
        self.dial.offer_repair(self.turns, self.streaming)

    # -- sampling ------------------------------------------------------------------------------

    def show_sampling(self) -> None:
        self.status.sampling = self.sampling.label()
        self.status.system_prompt = bool(self.conversation.system_prompt(self.system_prompt))

    def set_sampling(self, sampling: SamplingSettings, *, say: bool = True) -> None:
        """Use `sampling` for this conversation from the next answer on (kept with each answer)."""
        self.choice.current = sampling
        self.show_sampling()
        if say:
            self.notify(f"Sampling: {sampling.label()}", timeout=3)

    def action_toggle_greedy(self) -> None:
        self.set_sampling(self.choice.toggled_greedy())

    def action_sampling_defaults(self) -> None:
        self.set_sampling(self.choice.sampled_defaults())

    def action_set_temperature(self, value: float) -> None:
        self.set_sampling(replace(self.sampling, temperature=max(0.0, float(value))))

    def ask_sampling_value(self, name: str) -> None:
        self.dialogs.ask_sampling_value(name)

    # -- the other keys ------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.streaming  # False: Esc falls through to other handlers when idle
        return True

    def action_stop(self) -> None:
        self.answers.stop()

    async def action_new_chat(self) -> None:
        self.answers.detach()
        self.answer_when_ready = False
        self.conversation.start_new()
        self.last_result = None
        await self.chat_view.clear()
        self.status.stats, self.status.streaming = SpeedStats(context_limit=self.context_limit()), False
        self.status.summary = ""
        self.show_sampling()
        self.prompt.focus()

    async def action_regenerate(self) -> None:
        if not self.turns:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        if not self._can_send() or self.model_state != "ready":
            return
        repair = self.dial.repair_point(self.turns)
        await self.chat_view.drop_answers_not_in([t.widget for t in self.turns])  # failed ones without text
        last = self.conversation.drop_last_answer()
        if last is not None and last.widget is not None:
            await last.widget.remove()
        await self.answer(repair[1] if repair else "")

    def action_copy_answer(self) -> None:
        last = self.conversation.last_answer()
        if last is None:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.app.copy_to_clipboard(last.content)  # OSC 52: works over ssh and in tmux with set-clipboard on
        self.notify(f"Copied the last answer ({len(last.content):,} characters).", timeout=3)

    def action_export(self) -> None:
        self.dialogs.export()

    def action_conversations(self) -> None:
        self.dialogs.conversations()

    def action_rename(self) -> None:
        self.dialogs.rename()

    def action_search(self) -> None:
        self.dialogs.search()

    def action_switch_model(self) -> None:
        self.dialogs.switch_model()

    def action_ask_system_prompt(self) -> None:
        self.dialogs.ask_system_prompt()

    def action_scroll_chat(self, where: str) -> None:
        self.chat_view.scroll_to_place(where)

    async def open_conversation(self, conversation_id: int) -> None:
        await self.dialogs.open_conversation(conversation_id)

    def context_limit(self) -> int:
        return self.model_info.context_limit if self.model_info else 0
