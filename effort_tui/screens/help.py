"""F1: every key (with the user's remaps) and what the status bar shows."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from effort_tui.keymap import SCOPE_TITLES, SPECS, bindings_for, keys_for

STATUS_HELP = """\
effort NN%   the share of the weights you ask to be read per token (5 %–100 %)
≈NN% top-1   how often this model picks the same token as at full effort, at this effort (measured)
eff NN%      the share the engine actually read for the last token (CPU: bytes; MLX: multiply-adds)
cap NN%      the highest effort this model allows (loaded with truncated ranks)
N.N tok/s    the speed of the latest token; avg: the answer so far, without the first token
ttft         time to first token; prompt: prompt tokens per second; ctx: context used / limit
speed        one bar per token, height = speed, colour = the effort it ran at"""


IDS_FROM_WIDTH = 100  # below this many columns the binding ids would squeeze the descriptions


def format_keys(keys: str) -> str:
    return " / ".join(k.strip() for k in keys.split(",") if k.strip())


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = bindings_for("help")

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__(id="help")
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Label("Effort Engine · keys", id="help-title")
            yield Static(self._keys_table(), id="help-keys")
            yield Label("Status bar", classes="help-heading")
            yield Static(Text(STATUS_HELP), id="help-status")
            yield Static(
                "Remap any key in config.toml under [keymap], e.g. \"effort.up\" = \"ctrl+k,f8\" (the ids show "
                f"from {IDS_FROM_WIDTH} columns on, and in the README). ctrl+p opens the command palette with the "
                "same actions.",
                id="help-footer",
                markup=False,  # "[keymap]" is text here, not a style tag
            )

    def _keys_table(self) -> Table:
        ids = self.app.size.width >= IDS_FROM_WIDTH
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        if ids:
            table.add_column(style="dim", no_wrap=True)
        for scope, title in SCOPE_TITLES.items():
            if scope == "help":
                continue
            table.add_row(Text(title, style="underline"), "", *([""] if ids else []))
            for spec in SPECS:
                if spec.scope == scope:
                    table.add_row(format_keys(keys_for(spec.id, self.keymap)), spec.help, *([spec.id] if ids else []))
        return table

    def action_close(self) -> None:
        self.dismiss(None)
