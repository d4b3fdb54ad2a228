"""The chat screen: conversation, prompt box, status bar; model loading and answers.

Threading: the engine calls back on its own worker thread. Those callbacks
only ever do `Inbox.put` (see `effort_tui.bridge`), which posts one
`LoadUpdate` / `GenerationUpdate` per batch to this screen. Everything below
runs on the UI thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer

from engine.api import ChatRequest, GenerationHandle, ModelInfo, SamplingSettings
from engine.sampler import CHAT_DEFAULTS, overlay
from engine.events import GenerationResult, LoadProgress, TokenEvent
from engine.io.atomic import write_text
from effort_tui.bridge import Inbox
from effort_tui.exporting import conversation_markdown, export_path
from effort_tui.history import StoredMessage, title_from
from effort_tui.input_guard import clean_text
from effort_tui.keymap import bindings_for
from effort_tui.messages import GenerationUpdate, LoadUpdate, PromptSubmitted
from effort_tui.stats import (
    FINISH_TEXT, SpeedStats, collapse_effort, effort_range_text, percent, quality_at, result_meta, summary_line,
)
from effort_tui.widgets.chat_message import ChatMessage
from effort_tui.widgets.chat_view import ChatView
from effort_tui.widgets.load_panel import LoadPanel
from effort_tui.widgets.prompt_box import PromptBox
from effort_tui.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from effort_tui.app import EffortApp

FLUSH_INTERVAL_S = 1 / 20  # markdown writes are batched on this timer while tokens stream
PREFILL_NOTE_TOKENS = 64  # prompts longer than this show how much of them has been read


@dataclass
class _LoadDone:
    info: ModelInfo | None
    error: str | None


@dataclass
class Turn:
    role: str
    content: str
    message_id: int | None = None
    widget: ChatMessage | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    """One answer: in flight until `result` arrives."""

    number: int
    conversation_id: int
    model: str
    widget: ChatMessage
    inbox: Inbox
    stats: SpeedStats = field(default_factory=SpeedStats)
    handle: GenerationHandle | None = None
    text: str = ""
    pending: str = ""
    flush_timer: Timer | None = None
    result: GenerationResult | None = None
    stop_requested: bool = False
    sampling: SamplingSettings | None = None  # what this answer was sampled with (kept in its metadata)
    detached: bool = False  # the user moved on (new chat, other conversation); still saved when done


class ChatScreen(Screen):
    CSS_PATH = "chat.tcss"
    BINDINGS = bindings_for("chat")
    AUTO_FOCUS = "PromptBox"

    def __init__(self) -> None:
        super().__init__(id="chat")
        self.model_state = "loading"  # "loading" | "ready" | "failed"
        self.load_error: str | None = None
        self.conversation_id: int | None = None
        self.turns: list[Turn] = []
        self._generation: Generation | None = None
        self._generation_count = 0
        self._load_inbox: Inbox | None = None
        self.last_result: GenerationResult | None = None
        self.sampling: SamplingSettings = CHAT_DEFAULTS  # this conversation's; set from the model at load
        self.default_sampling: SamplingSettings = CHAT_DEFAULTS  # the model's defaults + config.toml
        self._sampled: SamplingSettings | None = None  # what ctrl+g goes back to from greedy
        self._context_warned: set[int | None] = set()
        self.quality_hint_shown = False  # the one-time "quality collapses below N%" hint
        self.effort_preparing: bool | None = None  # None: never heard of; True while the conversion runs
        self._effort_eta = 0.0  # seconds until the effort dial is ready, as last reported

    @property
    def effort_app(self) -> EffortApp:
        return self.app  # type: ignore[return-value]

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        app = self.effort_app
        yield ChatView(id="chat-view")
        yield LoadPanel(id="load-panel")
        yield PromptBox(app.store.prompt_history(), id="prompt")
        yield StatusBar(id="status")
        yield Footer()

    @property
    def chat_view(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def prompt(self) -> PromptBox:
        return self.query_one(PromptBox)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def load_panel(self) -> LoadPanel:
        return self.query_one(LoadPanel)

    @property
    def generation(self) -> Generation | None:
        """The answer in flight, shown on screen (None when idle)."""
        return self._generation

    @generation.setter
    def generation(self, value: Generation | None) -> None:
        self._generation = value
        self.refresh_bindings()  # Esc (stop) shows in the footer only while answering

    @property
    def streaming(self) -> bool:
        return self._generation is not None

    def on_mount(self) -> None:
        self.prompt.cursor_blink = self.effort_app.cursor_blink
        self.prompt.submit_check = self._can_answer
        self.sampling = self.default_sampling = self.effort_app.config.sampling
        self._show_sampling()
        self._show_effort()
        self.start_load()

    # -- model loading -------------------------------------------------------------------------

    def start_load(self) -> None:
        app = self.effort_app
        self.model_state = "loading"
        self.load_error = None
        self.load_panel.display = True
        self.load_panel.start(app.model_name)
        self.status.set_model(app.model_name, "loading")
        if self._load_inbox is not None:
            self._load_inbox.close()
        inbox: Inbox = Inbox(self, LoadUpdate)
        self._load_inbox = inbox
        try:
            app.engine.load(app.model_name, inbox.put, lambda info, error: inbox.put(_LoadDone(info, error)))
        except Exception as exc:  # an engine that fails before its thread starts
            inbox.put(_LoadDone(None, _one_line(exc)))

    @on(LoadUpdate)
    def _on_load_update(self, message: LoadUpdate) -> None:
        if message.inbox is not self._load_inbox:
            return
        latest: LoadProgress | None = None
        done: _LoadDone | None = None
        for item in message.inbox.drain():
            if isinstance(item, LoadProgress) and item.stage == "effort":
                self._effort_progress(item)
            elif isinstance(item, LoadProgress) and item.stage == "notice":
                self.notify(item.message, title="Note", severity="warning", timeout=12)
            elif isinstance(item, LoadProgress):
                latest = item
            elif isinstance(item, _LoadDone):
                done = item
        if latest is not None and done is None:
            self.load_panel.show_progress(latest, self.effort_app.clock.monotonic())
        if done is not None:
            self._load_finished(done.info, done.error)

    def _load_finished(self, info: ModelInfo | None, error: str | None) -> None:
        app = self.effort_app
        if info is None:
            self.model_state = "failed"
            self.load_error = error or "the model could not be loaded"
            self.load_panel.show_error(app.model_name, self.load_error)
            app.show_config_problems()
            self.status.set_model(app.model_name, "failed")
            self.notify(self.load_error, title=f"Could not load {app.model_name}", severity="error", timeout=15)
            return
        self.model_state = "ready"
        app.model_info = info
        app.show_config_problems()
        effort = app.engine.effort
        if info.effort_cap < effort.cap - 1e-9:
            effort.set_cap(info.effort_cap)
        effort.set(app.initial_effort)
        self.default_sampling = overlay(info.sampling or CHAT_DEFAULTS, app.config.sampling)
        if not self.turns:
            self.sampling = self.default_sampling
        self._show_sampling()
        self.status.set_quality(list(info.quality))
        self.load_panel.display = False
        self.status.set_model(info.name, "ready", info.backend, info.device)
        stats = SpeedStats(context_limit=info.context_limit)
        self.status.set_stats(stats, streaming=False)
        self._show_effort()

    def _effort_progress(self, item: LoadProgress) -> None:
        """The effort conversion of a model that was loaded dense, running in the background."""
        was = self.effort_preparing
        self.effort_preparing = item.total > 1 and item.unit != "failed"
        self._effort_eta = max(0.0, item.total - item.done) if self.effort_preparing else 0.0
        if self.effort_preparing and was is None:
            self.notify("The chat runs at full effort until the effort dial is ready "
                        f"(about {self._effort_eta:.0f} s, done in the background).", title="Effort", timeout=8)
        elif not self.effort_preparing and item.unit == "failed":
            self.notify(item.message, title="Effort", severity="warning", timeout=12)
        elif not self.effort_preparing:
            self.notify(item.message.capitalize() + ".", title="Effort", timeout=6)
        self._show_effort()

    def _effort_not_ready(self) -> None:
        if self.effort_preparing:
            self.notify(f"Effort ready in about {self._effort_eta:.0f} s; until then every token runs at full effort.",
                        title="Effort", timeout=4)

    # -- sending and answering -----------------------------------------------------------------

    @on(PromptSubmitted)
    async def _on_prompt_submitted(self, message: PromptSubmitted) -> None:
        message.stop()
        if not self._can_answer():  # e.g. a second Enter typed before the first answer started
            self.prompt.restore(message.text)
            return
        await self.send(message.text)

    def _can_answer(self) -> bool:
        if self.model_state == "loading":
            self.notify("The model is still loading.", severity="warning")
            return False
        if self.model_state == "failed":
            self.notify(f"No model is loaded: {self.load_error}", severity="error")
            return False
        if self.streaming:
            self.notify("Still answering; press Esc to stop it first.", severity="warning")
            return False
        return True

    async def send(self, text: str) -> None:
        if not self._can_answer():
            return
        app = self.effort_app
        text = clean_text(text)  # text that is not Unicode (lone surrogates) cannot be stored or encoded
        if self.conversation_id is None:
            self.conversation_id = app.store.create_conversation(
                title_from(text), model=self._model_label(), system_prompt=app.config.system_prompt
            )
        message_id = app.store.add_message(self.conversation_id, "user", text)
        widget = await self.chat_view.add_message(ChatMessage("user", text, message_id=message_id))
        self.turns.append(Turn("user", text, message_id, widget))
        await self.start_generation()

    def build_request(self) -> ChatRequest:
        app = self.effort_app
        system = app.store.system_prompt(self.conversation_id) if self.conversation_id is not None else ""
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": t.role, "content": t.content} for t in self.turns]
        return ChatRequest(messages=messages, sampling=self.sampling)

    async def start_generation(self) -> None:
        app = self.effort_app
        assert self.conversation_id is not None
        self._generation_count += 1
        widget = await self.chat_view.add_message(ChatMessage("assistant", detail=self._model_label()))
        widget.add_class("-streaming")
        gen = Generation(self._generation_count, self.conversation_id, self._model_label(), widget, inbox=None)  # type: ignore[arg-type]
        gen.inbox = Inbox(self, GenerationUpdate, tag=gen)
        gen.stats.context_limit = app.model_info.context_limit if app.model_info else 0
        gen.sampling = self.sampling
        self.generation = gen
        self.status.set_stats(gen.stats, streaming=True)
        self.status.set_summary("answering…  (Esc stops)")
        self.chat_view.anchor()
        try:
            extra = {"on_prefill": gen.inbox.put} if _takes(app.engine.generate, "on_prefill") else {}
            gen.handle = app.engine.generate(self.build_request(), gen.inbox.put, gen.inbox.put, **extra)
        except Exception as exc:
            gen.inbox.put(_failed_result(_one_line(exc)))

    @on(GenerationUpdate)
    async def _on_generation_update(self, message: GenerationUpdate) -> None:
        gen: Generation = message.inbox.tag
        result: GenerationResult | None = None
        for item in message.inbox.drain():
            if isinstance(item, LoadProgress):  # the prompt being read (long prompts take a while)
                if gen is self.generation and not gen.text and item.total > PREFILL_NOTE_TOKENS and not gen.stop_requested:
                    self.status.set_summary(
                        "answering…  (Esc stops)" if item.done >= item.total
                        else f"reading the prompt {item.done:,.0f} / {item.total:,.0f} tokens…  (Esc stops)"
                    )
            elif isinstance(item, TokenEvent):
                gen.stats.add(item)
                gen.text += item.text
                gen.pending += item.text
            elif isinstance(item, GenerationResult):
                result = item
        if result is not None:
            await self._finish_generation(gen, result)
            return
        if gen is self.generation:
            self.status.set_stats(gen.stats, streaming=True)
            self._maybe_context_warning(gen.stats)
        if gen.pending and gen.flush_timer is None and not gen.detached:
            gen.flush_timer = self.set_timer(FLUSH_INTERVAL_S, lambda: self._flush(gen))

    async def _flush(self, gen: Generation) -> None:
        gen.flush_timer = None
        if gen.detached or gen.result is not None or not gen.pending:
            return
        fragment, gen.pending = gen.pending, ""
        await gen.widget.append(fragment)

    async def _finish_generation(self, gen: Generation, result: GenerationResult) -> None:
        app = self.effort_app
        gen.result = result
        gen.inbox.close()
        if gen.flush_timer is not None:
            gen.flush_timer.stop()
            gen.flush_timer = None
        text = result.text if (result.text or not gen.text) else gen.text
        meta = result_meta(result, gen.model)
        if gen.sampling is not None:
            meta["sampling"] = asdict(gen.sampling)
        message_id: int | None = None
        if text or result.finish_reason != "error":
            message_id = app.store.add_message(gen.conversation_id, "assistant", text, meta)
        if gen.detached:
            return
        current = gen is self.generation
        widget = gen.widget
        widget.remove_class("-streaming")
        widget.message_id = message_id
        if widget.is_attached:
            await widget.finish(text)
            widget.set_detail(_answer_detail(gen.model, result))
            if result.finish_reason == "error":
                widget.set_note(f"⚠ {result.error or 'the answer failed'}", error=True)
            elif result.finish_reason == "cancelled":
                widget.set_note("■ stopped")
            elif result.finish_reason in ("length", "context"):
                widget.set_note(f"… {'max_tokens reached' if result.finish_reason == 'length' else 'context is full'}")
        if message_id is not None and gen.conversation_id == self.conversation_id:
            self.turns.append(Turn("assistant", text, message_id, widget, meta))
        if current:
            self.status.set_stats(gen.stats, streaming=False)
            self.status.set_summary(summary_line(result))
            self.last_result = result
            self.generation = None  # last: "not streaming" means the answer is fully in place
        if result.finish_reason == "error":
            self.notify(result.error or "The answer failed.", title="Generation failed", severity="error", timeout=10)

    def _maybe_context_warning(self, stats: SpeedStats) -> None:
        if not stats.context_limit or stats.context_used < 0.9 * stats.context_limit:
            return
        if self.conversation_id in self._context_warned:
            return
        self._context_warned.add(self.conversation_id)
        self.notify(
            f"The context is {stats.context_used / stats.context_limit:.0%} full ({stats.context_used:,} of "
            f"{stats.context_limit:,} tokens). Start a new chat (ctrl+n) before it runs out.",
            title="Context nearly full", severity="warning", timeout=10,
        )

    def _detach_generation(self) -> None:
        """Stop showing the answer in flight (it is cancelled, and saved when it ends)."""
        gen = self.generation
        if gen is None:
            return
        gen.detached = True
        if gen.flush_timer is not None:
            gen.flush_timer.stop()
            gen.flush_timer = None
        if gen.handle is not None:
            gen.handle.cancel()
        self.generation = None

    # -- effort --------------------------------------------------------------------------------

    def action_effort_step(self, points: int) -> None:
        self._effort_not_ready()
        effort = self.effort_app.engine.effort
        before = effort.get()
        value = effort.step(points / 100)
        if points > 0 and value <= before and effort.cap < 1.0:
            self.notify(f"The effort is capped at {percent(effort.cap)} for this model.", timeout=3)
        self._show_effort()

    def action_effort_set(self, percent_value: int) -> None:
        self._effort_not_ready()
        effort = self.effort_app.engine.effort
        value = effort.set(percent_value / 100)
        if value < percent_value / 100 - 1e-9:
            self.notify(f"The effort is capped at {percent(effort.cap)} for this model.", timeout=3)
        self._show_effort()

    def _show_effort(self) -> None:
        effort = self.effort_app.engine.effort
        value = effort.get()
        self.status.set_effort(value, effort.cap)
        self._maybe_quality_hint(value)

    def _maybe_quality_hint(self, value: float) -> None:
        """Once per session: say so when the effort goes below where this model's quality collapses."""
        info = self.effort_app.model_info
        if self.quality_hint_shown or info is None or not info.quality:
            return
        collapse = collapse_effort(list(info.quality))
        if collapse is None or value > collapse + 1e-9:
            return
        self.quality_hint_shown = True
        top1 = quality_at(list(info.quality), value) or 0.0
        self.notify(
            f"At {percent(value)} {info.name} agrees with full effort on only ≈{top1 * 100:.0f}% of tokens "
            f"(measured); below about {percent(collapse + 0.05)} its text falls apart. Raise it with ctrl+↑ / F8.",
            title="Quality drops here", severity="warning", timeout=10,
        )

    # -- sampling, system prompt ---------------------------------------------------------------

    def _show_sampling(self) -> None:
        system = ""
        if self.conversation_id is not None:
            system = self.effort_app.store.system_prompt(self.conversation_id)
        else:
            system = self.effort_app.config.system_prompt
        self.status.set_sampling(self.sampling.label(), bool(system))

    def set_sampling(self, sampling: SamplingSettings, *, say: bool = True) -> None:
        """Use `sampling` for this conversation from the next answer on (kept with each answer)."""
        self.sampling = sampling
        self._show_sampling()
        if say:
            self.notify(f"Sampling: {sampling.label()}", timeout=3)

    def action_toggle_greedy(self) -> None:
        if self.sampling.greedy:
            back = self._sampled or (self.default_sampling if not self.default_sampling.greedy else CHAT_DEFAULTS)
            self.set_sampling(back)
        else:
            self._sampled = self.sampling
            self.set_sampling(replace(self.sampling, temperature=0.0))

    def action_sampling_defaults(self) -> None:
        self.set_sampling(self.default_sampling if not self.default_sampling.greedy else CHAT_DEFAULTS)

    def action_set_temperature(self, value: float) -> None:
        self.set_sampling(replace(self.sampling, temperature=max(0.0, float(value))))

    def ask_sampling_value(self, name: str) -> None:
        from effort_tui.screens.ask import AskScreen

        limits = {"temperature": (0.0, 10.0), "top_p": (0.01, 1.0), "min_p": (0.0, 0.99),
                  "repetition_penalty": (0.5, 3.0), "top_k": (0, 100000), "max_tokens": (1, 1_000_000)}
        low, high = limits[name]

        def chosen(text: str | None) -> None:
            if text is None or not text.strip():
                return
            try:
                value = int(text) if name in ("top_k", "max_tokens") else float(text)
            except ValueError:
                self.notify(f"{name} must be a number, not {text!r}", severity="warning")
                return
            if not low <= value <= high:
                self.notify(f"{name} must be in {low}..{high}", severity="warning")
                return
            self.set_sampling(replace(self.sampling, **{name: value}))

        self.app.push_screen(
            AskScreen(f"{name.replace('_', ' ')} ({low}–{high})", f"{getattr(self.sampling, name):g}"), chosen
        )

    def action_ask_system_prompt(self) -> None:
        from effort_tui.screens.ask import AskScreen

        app = self.effort_app
        current = app.store.system_prompt(self.conversation_id) if self.conversation_id is not None else app.config.system_prompt
        self.app.push_screen(
            AskScreen("System prompt (this conversation and new ones; \"\" = none)", current,
                      hint="Enter to apply · Esc to cancel · saved with the conversation"),
            self.set_system_prompt,
        )

    def set_system_prompt(self, text: str | None) -> None:
        if text is None:
            return
        app = self.effort_app
        text = text.strip()
        app.config = replace(app.config, system_prompt=text)  # new chats in this session
        if self.conversation_id is not None:
            app.store.set_system_prompt(self.conversation_id, text)
        self._show_sampling()
        self.notify("System prompt cleared." if not text else "System prompt set.", timeout=3)

    # -- copy, rename, search, switch model ------------------------------------------------------

    def last_answer(self) -> str | None:
        return next((t.content for t in reversed(self.turns) if t.role == "assistant" and t.content), None)

    def action_copy_answer(self) -> None:
        text = self.last_answer()
        if text is None:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.app.copy_to_clipboard(text)  # OSC 52: works over ssh and in tmux with set-clipboard on
        self.notify(f"Copied the last answer ({len(text):,} characters).", timeout=3)

    def action_rename(self) -> None:
        from effort_tui.screens.ask import AskScreen

        app = self.effort_app
        if self.conversation_id is None:
            self.notify("Nothing to rename yet: send a message first.", severity="warning")
            return
        summary = app.store.conversation(self.conversation_id)
        conversation_id = self.conversation_id

        def chosen(text: str | None) -> None:
            if text is None or not text.strip():
                return
            app.store.rename_conversation(conversation_id, text.strip())
            self.notify(f"Renamed to “{text.strip()}”.", timeout=3)

        self.app.push_screen(AskScreen("Rename this conversation", summary.title if summary else ""), chosen)

    def action_search(self) -> None:
        from effort_tui.screens.ask import AskScreen
        from effort_tui.screens.conversations import ConversationsScreen

        app = self.effort_app

        def chosen(text: str | None) -> None:
            if text is None:
                return
            self.app.push_screen(
                ConversationsScreen(app.store, app.clock, current_id=self.conversation_id, query=text),
                self._conversation_chosen,
            )

        self.app.push_screen(AskScreen("Search conversations (titles and messages)", placeholder="words to find"), chosen)

    def action_switch_model(self) -> None:
        from effort_tui.screens.ask import AskScreen

        app = self.effort_app

        def chosen(text: str | None) -> None:
            if text is None or not text.strip() or text.strip() == app.model_name:
                return
            if self.streaming:
                self.action_stop()
            app.model_name = text.strip()
            app.model_info = None
            self.start_load()

        self.app.push_screen(
            AskScreen("Switch model: an alias, a GGUF file or a Hugging Face folder", app.model_name), chosen
        )

    def save_partial_for_quit(self) -> None:
        """ctrl+q mid-answer: keep what was written so far, as a stopped answer, then let it go."""
        gen = self.generation
        if gen is None or gen.result is not None:
            return
        gen.detached = True
        gen.inbox.close()
        if gen.handle is not None:
            gen.handle.cancel()
        if gen.text:
            meta = {"model": gen.model, "finish_reason": "cancelled", "generated_tokens": gen.stats.tokens,
                    "prompt_tokens": gen.stats.prompt_tokens, "tok_s": round(gen.stats.average_tps or 0.0, 3),
                    "ttft_s": round(gen.stats.ttft_s or 0.0, 4),
                    "effort_trace": [round(s.effort, 4) for s in gen.stats.samples], "note": "the app was quit"}
            if gen.sampling is not None:
                meta["sampling"] = asdict(gen.sampling)
            self.effort_app.store.add_message(gen.conversation_id, "assistant", gen.text, meta)

    # -- other actions -------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.streaming  # False: Esc falls through to other handlers when idle
        return True

    def action_stop(self) -> None:
        gen = self.generation
        if gen is None or gen.stop_requested:
            return
        gen.stop_requested = True
        if gen.handle is not None:
            gen.handle.cancel()
        self.status.set_summary("stopping…")

    async def action_new_chat(self) -> None:
        self._detach_generation()
        self.conversation_id = None
        self.turns = []
        self.last_result = None
        await self.chat_view.clear()
        self.status.set_stats(SpeedStats(context_limit=self._context_limit()), streaming=False)
        self.status.set_summary("")
        self.prompt.focus()

    async def action_regenerate(self) -> None:
        if not self.turns:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        if not self._can_answer():
            return
        # A failed answer that left no text is on screen but not in the context: drop it.
        kept = {id(t.widget) for t in self.turns}
        for widget in self.chat_view.messages:
            if widget.role == "assistant" and id(widget) not in kept:
                await widget.remove()
        last = self.turns[-1]
        if last.role == "assistant":
            self.turns.pop()
            if last.message_id is not None:
                self.effort_app.store.delete_message(last.message_id)
            if last.widget is not None:
                await last.widget.remove()
        await self.start_generation()

    def action_export(self) -> None:
        app = self.effort_app
        if not self.turns:
            self.notify("Nothing to export yet.", severity="warning")
            return
        title = "New chat"
        if self.conversation_id is not None:
            summary = app.store.conversation(self.conversation_id)
            title = summary.title if summary else title
        now = app.clock.time()
        text = conversation_markdown(
            title,
            [(t.role, t.content, t.meta) for t in self.turns],
            model=self._model_label(),
            exported_at=app.clock.local(now),
            system_prompt=app.store.system_prompt(self.conversation_id) if self.conversation_id else "",
        )
        path = export_path(app.exports_dir, self.conversation_id, app.clock.local(now))
        try:
            write_text(path, text)
        except OSError as exc:
            self.notify(f"Could not write {path}: {exc.strerror or exc}", severity="error")
            return
        app.last_export = path
        self.notify(f"Saved {path}", title="Exported")

    def action_conversations(self) -> None:
        from effort_tui.screens.conversations import ConversationsScreen

        app = self.effort_app
        self.app.push_screen(
            ConversationsScreen(app.store, app.clock, current_id=self.conversation_id), self._conversation_chosen
        )

    async def _conversation_chosen(self, result: Any) -> None:
        if result is None:
            return
        open_id, deleted = result
        if self.conversation_id in deleted and open_id is None:
            await self.action_new_chat()
        if open_id is not None:
            await self.open_conversation(open_id)

    async def open_conversation(self, conversation_id: int) -> None:
        app = self.effort_app
        stored = app.store.messages(conversation_id)
        self._detach_generation()
        await self.chat_view.clear()
        self.conversation_id = conversation_id
        self.turns = []
        widgets = [_widget_for(m) for m in stored]
        if widgets:
            self.chat_view.query_one("#chat-welcome").display = False
            await self.chat_view.mount_all(widgets)
        for m, w in zip(stored, widgets):
            self.turns.append(Turn(m.role, m.content, m.id, w, m.meta))
        self.sampling = _stored_sampling(stored) or self.default_sampling
        self._show_sampling()
        self.chat_view.anchor()
        last = next((m for m in reversed(stored) if m.role == "assistant" and m.meta), None)
        stats = SpeedStats(context_limit=self._context_limit())
        if last is not None:  # what the context held after the last answer (the next send resends it)
            stats.context_used = int(last.meta.get("prompt_tokens", 0)) + int(last.meta.get("generated_tokens", 0))
        self.status.set_stats(stats, streaming=False)
        summary = app.store.conversation(conversation_id)
        label = summary.title if summary else "conversation"
        if last is not None:
            self.status.set_summary(f"reopened “{label}” · last answer: {_meta_summary(last.meta)}")
        else:
            self.status.set_summary(f"reopened “{label}”")
        self.prompt.focus()

    def action_scroll_chat(self, where: str) -> None:
        view = self.chat_view
        if where == "page_up":
            view.scroll_page_up(animate=False)
        elif where == "page_down":
            view.scroll_page_down(animate=False)
        elif where == "home":
            view.scroll_home(animate=False)
        else:
            view.anchor()

    # -- helpers -------------------------------------------------------------------------------

    def _model_label(self) -> str:
        app = self.effort_app
        return app.model_info.name if app.model_info else app.model_name

    def _context_limit(self) -> int:
        info = self.effort_app.model_info
        return info.context_limit if info else 0

    def on_unmount(self) -> None:
        if self._load_inbox is not None:
            self._load_inbox.close()
        gen = self.generation
        if gen is not None:
            gen.inbox.close()
            if gen.handle is not None:
                gen.handle.cancel()


def _stored_sampling(stored: list[StoredMessage]) -> SamplingSettings | None:
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


def _widget_for(message: StoredMessage) -> ChatMessage:
    detail = ""
    note = ""
    if message.role == "assistant" and message.meta:
        detail = _meta_detail(message.meta)
        if message.meta.get("finish_reason") == "cancelled":
            note = "■ stopped"
        elif message.meta.get("finish_reason") == "error":
            note = f"⚠ {message.meta.get('error', 'the answer failed')}"
    return ChatMessage(message.role, message.content, detail=detail, note=note, message_id=message.id)


def _answer_detail(model: str, result: GenerationResult) -> str:
    parts = [model]
    if result.generated_tokens and result.decode_tps > 0:
        parts.append(f"{result.decode_tps:.1f} tok/s")
    if result.effort_trace:
        parts.append(effort_range_text(result.effort_trace))
    return " · ".join(parts)


def _meta_detail(meta: dict[str, Any]) -> str:
    parts = [str(meta.get("model", ""))] if meta.get("model") else []
    if meta.get("generated_tokens") and float(meta.get("tok_s", 0.0)) > 0:
        parts.append(f"{float(meta.get('tok_s', 0.0)):.1f} tok/s")
    trace = meta.get("effort_trace") or []
    if trace:
        parts.append(effort_range_text(trace))
    return " · ".join(parts)


def _meta_summary(meta: dict[str, Any]) -> str:
    parts = [f"{meta.get('generated_tokens', 0)} tok"]
    if meta.get("generated_tokens") and float(meta.get("tok_s", 0.0)) > 0:
        parts.append(f"{float(meta.get('tok_s', 0.0)):.1f} tok/s")
    if meta.get("generated_tokens"):
        parts.append(f"ttft {float(meta.get('ttft_s', 0.0)):.2f}s")
    if meta.get("finish_reason"):
        parts.append(FINISH_TEXT.get(str(meta["finish_reason"]), str(meta["finish_reason"])))  # "stopped", not "cancelled"
    return " · ".join(parts)


def _failed_result(error: str) -> GenerationResult:
    return GenerationResult(
        text="",
        token_ids=[],
        prompt_token_ids=[],
        prompt_tokens=0,
        generated_tokens=0,
        prompt_tps=0.0,
        decode_tps=0.0,
        ttft_s=0.0,
        finish_reason="error",
        error=error,
    )


def _takes(fn: Any, name: str) -> bool:
    """Whether `fn` has a parameter `name` (engines written before it existed do not)."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
