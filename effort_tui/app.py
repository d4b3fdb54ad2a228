"""The Effort Engine chat app (Textual) and `run_chat`, its entry point for the CLI.

The app owns the long-lived pieces (engine, config, history, clock, theme and
keymap) and hands the chat screen what it needs (`ChatSetup`); the screen tells
the app what it needs to know with messages. Nothing here imports MLX: the
engine is reached only through `engine.api.ChatEngine`.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterable

from textual import on
from textual.app import App, SystemCommand
from textual.markup import escape
from textual.screen import Screen
from textual.theme import Theme

from effort_tui import themes
from engine.api import ChatEngine, ModelInfo
from engine.display import printable
from engine.io import paths as engine_paths
from effort_tui import input_guard, paths
from effort_tui.clock import Clock, SystemClock
from effort_tui.config import Config, ConfigError, load_config, save_config, with_theme
from effort_tui.history import HistoryStore
from effort_tui.keymap import EFFORT_STEP, bindings_for, install_alt_digit_sequences
from effort_tui.messages import Exported, ModelLoaded, ModelLoadFailed, SystemPromptSet
from effort_tui.screens.chat import ChatScreen, ChatSetup
from effort_tui.screens.help import HelpScreen

EXIT_OK = 0
EXIT_NO_MODEL = 1  # the user quit after the model failed to load
# The engine thread takes the GIL back after each C call (one per token). While the UI thread draws a
# frame (10-20 ms of Python) it would wait up to the interpreter's switch interval (5 ms) for it; at
# 4 frames a second and ~90 tok/s that is most of a millisecond per token. 1 ms keeps the wait short.
GIL_SWITCH_INTERVAL_S = 0.001


class EffortApp(App[int]):
    TITLE = "Effort Engine"
    CSS_PATH = "app.tcss"
    BINDINGS = bindings_for("app")

    def __init__(
        self,
        *,
        engine: ChatEngine,
        model: str | None = None,
        effort: float | None = None,
        history: bool = True,
        theme: str | None = None,
        config_path: Path | None = None,
        data_dir: Path | None = None,
        clock: Clock | None = None,
        cursor_blink: bool = True,
    ) -> None:
        install_alt_digit_sequences()
        input_guard.install()  # invalid UTF-8 typed or pasted becomes U+FFFD instead of ending the app
        super().__init__()
        self.engine = engine
        self.clock: Clock = clock or SystemClock()
        self.cursor_blink = cursor_blink
        self.config_path = config_path or engine_paths.config_path()
        loaded = load_config(self.config_path)
        self.config: Config = loaded.config
        self.config_problems: list[str] = list(loaded.problems)
        self.config_broken = loaded.broken
        self.model_name = model or self.config.model
        # the starting effort, set here and nowhere else: a model switch keeps what the user chose
        engine.effort.set(effort if effort is not None else self.config.effort)
        self.data_dir = data_dir or paths.data_dir()
        self.history_enabled = history
        self.store = self._open_store()
        self.exports_dir = (
            Path(self.config.export_dir).expanduser() if self.config.export_dir else paths.exports_dir(self.data_dir)
        )
        self.requested_theme = theme
        self.model_info: ModelInfo | None = None
        self.last_export: Path | None = None
        self._saved_theme = self.config.theme
        self._startup_theme = themes.DARK
        self._theme_touched = False
        self._config_problems_shown = False

    def _open_store(self) -> HistoryStore:
        if not self.history_enabled:
            return HistoryStore(None, now=self.clock.time)
        path = paths.history_path(self.data_dir)
        try:
            store = HistoryStore(path, now=self.clock.time)
            self.config_problems.extend(store.problems)  # e.g. a damaged file moved aside
            store.on_problem = self._history_problem
            return store
        except Exception as exc:  # locked at start, newer schema, read-only disk…
            self.config_problems.append(f"history is off for this session: cannot open {path}: {exc}")
            return HistoryStore(None, now=self.clock.time)

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every notification of the app: what it quotes (paths, model names, engine errors) is shown
        as text, its control characters escaped (engine.display) and never read as markup."""
        extra = {} if timeout is None else {"timeout": timeout}
        super().notify(printable(message, lines=True), title=printable(title), severity=severity, markup=False, **extra)

    def _history_problem(self, text: str) -> None:
        self.notify(text, title="History", severity="warning", timeout=10)

    # -- start-up ------------------------------------------------------------------------------

    def on_mount(self) -> None:
        themes.register_themes(self)
        if self.config.keymap:
            self.set_keymap(self.config.keymap)
        self._startup_theme = self._initial_theme()
        self.theme = self._startup_theme
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self.push_screen(ChatScreen(ChatSetup(
            engine=self.engine, store=self.store, clock=self.clock, model=self.model_name,
            sampling=self.config.sampling, system_prompt=self.config.system_prompt,
            exports_dir=self.exports_dir, cursor_blink=self.cursor_blink,
            model_dirs=tuple(Path(d).expanduser() for d in self.config.model_dirs),
        )))

    # -- what the chat screen tells the app ----------------------------------------------------

    @on(ModelLoaded)
    def _model_loaded(self, message: ModelLoaded) -> None:
        self.model_name, self.model_info = message.model, message.info
        self.show_config_problems()

    @on(ModelLoadFailed)
    def _model_load_failed(self) -> None:
        self.show_config_problems()

    @on(SystemPromptSet)
    def _system_prompt_set(self, message: SystemPromptSet) -> None:
        self.config = replace(self.config, system_prompt=message.text)  # new chats in this session

    @on(Exported)
    def _exported(self, message: Exported) -> None:
        self.last_export = message.path

    def show_config_problems(self) -> None:
        """Once, when the model is ready (or failed): notes shown during loading were gone before
        anyone looked, and covered the status bar while it mattered."""
        if self._config_problems_shown:
            return
        self._config_problems_shown = True
        for problem in self.config_problems:
            self.notify(problem, title="Settings", severity="error" if self.config_broken else "warning", timeout=10)

    def _initial_theme(self) -> str:
        for source, name in (("--theme", self.requested_theme), ("config theme", self.config.theme)):
            if not name:
                continue
            if name in self.available_themes:
                return name
            self.notify(f"{source}: unknown theme {name!r}; using {themes.DARK}", severity="warning", timeout=8)
        return themes.DARK

    # -- theme and settings --------------------------------------------------------------------

    def _theme_changed(self, theme: Theme) -> None:
        """Remember the theme the user picked (ctrl+t or the palette); not the start-up one."""
        if not self._theme_touched and theme.name == self._startup_theme:
            return
        self._theme_touched = True
        if theme.name == self._saved_theme:
            return
        self.save_settings(with_theme(self.config, theme.name))

    def save_settings(self, config: Config) -> bool:
        self.config = config
        if self.config_broken:
            self.notify(
                f"Not saved: {self.config_path} has errors; fix or delete it first.", severity="warning", timeout=6
            )
            return False
        try:
            save_config(self.config_path, config)
        except OSError as exc:
            self.notify(f"Could not save {self.config_path}: {exc.strerror or exc}", severity="error")
            return False
        except ConfigError as exc:  # it would not read back as it was: leave the file alone
            self.notify(f"Not saved: {self.config_path}: {exc}", severity="warning", timeout=8)
            return False
        self._saved_theme = config.theme
        return True

    def action_toggle_theme(self) -> None:
        self.theme = themes.toggled(self.theme, self.current_theme.dark)

    # -- screens -------------------------------------------------------------------------------

    @property
    def chat_screen(self) -> ChatScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                return screen
        return None

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        self.push_screen(HelpScreen(dict(self.config.keymap)))

    async def action_quit(self) -> None:
        chat = self.chat_screen
        if chat is not None and chat.streaming:
            chat.save_partial_for_quit()  # the partial answer is kept, as stopped
        code = EXIT_NO_MODEL if chat is not None and chat.model_state == "failed" else EXIT_OK
        self.exit(code, return_code=code)

    def on_unmount(self) -> None:
        self.store.close()

    # -- command palette -----------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # Textual's own "Keys" panel would be a second help beside ours (F1)
        yield from (c for c in super().get_system_commands(screen) if c.title != "Keys")
        chat = self.chat_screen
        yield SystemCommand("Toggle dark / light theme", "Switch between effort-dark and effort-light", self.action_toggle_theme)
        for name in themes.bundled():
            yield SystemCommand(f"Theme: {name}", f"Use the {name} theme", partial(setattr, self, "theme", name), discover=False)
        yield SystemCommand("Help: keys and status bar", "Show every key binding", self.action_help)
        if chat is None:
            return
        run = chat.run_action
        points = round(EFFORT_STEP * 100)
        yield SystemCommand("Effort: raise", f"Raise the effort by {points} points", partial(run, f"effort_step({EFFORT_STEP})"))
        yield SystemCommand("Effort: lower", f"Lower the effort by {points} points", partial(run, f"effort_step({-EFFORT_STEP})"))
        for tenth in range(1, 11):
            yield SystemCommand(
                f"Effort: {tenth * 10}%", f"Set the effort to {tenth * 10}%", partial(run, f"effort_set({tenth / 10})"), discover=False
            )
        yield SystemCommand("Stop the answer", "Stop generating (Esc)", partial(run, "stop"))
        yield SystemCommand("New chat", "Start a new conversation", partial(run, "new_chat"))
        yield SystemCommand("Regenerate", "Answer the last message again", partial(run, "regenerate"))
        yield SystemCommand("Export chat as Markdown", "Write the conversation to a .md file", partial(run, "export"))
        yield SystemCommand("Conversations", "Reopen or delete saved conversations", partial(run, "conversations"))
        yield SystemCommand("Search conversations…", "Find conversations by title or message text", partial(run, "search"))
        yield SystemCommand("Rename conversation…", "Give this conversation a new title", partial(run, "rename"))
        yield SystemCommand("Copy last answer", "Copy the last answer to the clipboard (OSC 52, ctrl+o)", partial(run, "copy_answer"))
        yield SystemCommand("Model: switch…", f"Load another model (now {escape(printable(chat.model_name))})", partial(run, "switch_model"))
        yield SystemCommand("System prompt…", "Set the system prompt of this conversation and new ones", partial(run, "ask_system_prompt"))
        label = chat.sampling.label()
        yield SystemCommand("Sampling: greedy / default (ctrl+g)", f"Now {label}; greedy is the exact argmax", partial(run, "toggle_greedy"))
        yield SystemCommand("Sampling: model defaults", f"Back to {chat.default_sampling.label()}", partial(run, "sampling_defaults"))
        for value in (0.0, 0.3, 0.7, 1.0, 1.2):
            yield SystemCommand(f"Temperature: {value:g}", "0 = greedy" if value == 0 else f"Sample at temperature {value:g}",
                                partial(run, f"set_temperature({value})"), discover=False)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "top_k", "max_tokens"):
            yield SystemCommand(f"Sampling: set {name.replace('_', ' ')}…", f"Now {getattr(chat.sampling, name):g}",
                                partial(chat.ask_sampling_value, name))


def run_chat(
    *,
    engine: ChatEngine,
    model: str | None,
    effort: float | None,
    history: bool = True,
    theme: str | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the chat app until the user quits; returns the exit code.

    `model` None uses the config's model (default "smollm2-135m"); `effort`
    None the config's effort. The app calls `engine.load` on start and cancels
    an answer in flight on exit; closing the engine stays with the caller.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = EffortApp(engine=engine, model=model, effort=effort, history=history, theme=theme, config_path=config_path)
    result = app.run()
    if app.return_code is not None:
        return app.return_code
    return result if isinstance(result, int) else EXIT_OK
