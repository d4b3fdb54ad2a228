""""Model: switch…": the GGUF models already on this machine (the Hugging Face cache, LM Studio,
ollama, the folders in `model_dirs`, this app's own cache) with their size, quantization and
whether the effort conversion is cached; or a path or alias typed in. Dismisses with what to load.

The search reads folders and file headers (and hashes small files), so it runs in a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine.display import printable
from engine.io.local_models import LocalModel, find
from engine.units import human_bytes
from effort_tui.keymap import bindings_for


class ModelPickerScreen(ModalScreen["str | None"]):
    CSS_PATH = "model_picker.tcss"
    BINDINGS = bindings_for("models")
    AUTO_FOCUS = "#model-list"

    def __init__(self, current: str, folders: tuple[Path, ...] = ()) -> None:
        super().__init__(id="models")
        self.current = current
        self.folders = folders
        self.models: list[LocalModel] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="models-dialog"):
            yield Label("Switch model", id="models-title")
            yield Static("Looking for the models on this machine…", id="models-status")
            yield OptionList(id="model-list")
            yield Input(placeholder="…or type an alias, a GGUF file or a Hugging Face folder", id="model-path")
            yield Label("Enter loads it (the loaded model answers until then) · Tab moves · Esc closes", id="models-hint")

    def on_mount(self) -> None:
        self.look()

    @work(thread=True, exclusive=True)
    def look(self) -> None:
        models = find(self.folders)
        self.app.call_from_thread(self.show, models)

    def show(self, models: list[LocalModel]) -> None:
        if not self.is_attached:  # closed while the search ran
            return
        self.models = models
        where = "Hugging Face cache, LM Studio, ollama, this app's cache" + (", model_dirs" if self.folders else "")
        self.query_one("#models-status", Static).update(
            f"{len(models)} found ({where})." if models else
            f"No GGUF models found ({where}; add folders with model_dirs in config.toml). Type a path below."
        )
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([self._option(i, m) for i, m in enumerate(models)])
        if models:
            options.highlighted = next((i for i, m in enumerate(models) if m.spec == self.current), 0)
        else:
            self.query_one("#model-path", Input).focus()

    def _option(self, index: int, m: LocalModel) -> Option:
        text = Text()
        text.append(printable(m.name), style="bold")  # folder and file names: shown, never obeyed
        if m.spec == self.current:
            text.append("  (loaded)", style="italic")
        text.append(f"\n{human_bytes(m.size)} · {printable(m.quantization or 'quantization ?')} · {m.conversion} · {m.source}",
                    style="dim")
        return Option(text, id=str(index))

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.models[int(event.option.id or 0)].spec)

    @on(Input.Submitted)
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_close(self) -> None:
        self.dismiss(None)
