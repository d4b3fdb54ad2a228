"""Model loading: the stage, a bar, bytes, percent, rate and ETA; or the one-line error."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import Static

from engine.display import printable
from engine.events import LoadProgress
from effort_tui.stats import amount_text, human_bytes, human_duration

BAR_CELLS = 30

STAGE_TITLES = {
    "download": "Downloading",
    "verify": "Verifying",
    "read": "Reading",
    "convert": "Converting",
    "load": "Loading",
    "calibrate": "Calibrating effort",
}


@dataclass
class StageClock:
    """Rate and ETA of the current stage, from the app's clock."""

    stage: str = ""
    started_at: float = 0.0
    start_done: float = 0.0

    def observe(self, p: LoadProgress, now: float) -> tuple[float | None, float | None]:
        """(rate per second, seconds left) for `p`, None while unknown."""
        if p.stage != self.stage or p.done < self.start_done:
            self.stage, self.started_at, self.start_done = p.stage, now, p.done
            return None, None
        elapsed = now - self.started_at
        moved = p.done - self.start_done
        if elapsed <= 0 or moved <= 0:
            return None, None
        rate = moved / elapsed
        left = (p.total - p.done) / rate if p.total and p.total > p.done else (0.0 if p.total else None)
        return rate, left


def progress_line(p: LoadProgress, rate: float | None, left: float | None, colour: str = "") -> Text:
    title = STAGE_TITLES.get(p.stage, p.stage.capitalize() or "Working")
    text = Text()
    text.append(f"{title:<12}", style="bold")
    if p.total:
        filled = p.fraction * BAR_CELLS
        whole = int(filled)
        text.append("━" * whole, style=f"bold {colour}")
        if whole < BAR_CELLS:
            text.append("╸" if filled - whole >= 0.5 else " ", style=f"bold {colour}")
            text.append("━" * (BAR_CELLS - whole - 1), style="dim")
        text.append(f" {p.fraction * 100:5.1f}%  ")
    text.append(amount_text(p))
    if rate is not None:
        text.append(f"  {human_bytes(rate)}/s" if p.unit == "B" else f"  {rate:.1f}/s", style="dim")
    if left is not None and p.total:
        text.append(f"  ETA {human_duration(left)}")
    return text


class LoadPanel(Vertical):
    DEFAULT_CSS = """
    LoadPanel {
        height: auto;
        margin: 0 1 1 1;
        padding: 0 1;
        border: round $primary;
        border-title-color: $primary;
        border-title-style: bold;
    }
    LoadPanel.-failed {
        border: round $error;
        border-title-color: $error;
    }
    LoadPanel > Static { height: auto; }
    LoadPanel > #load-message { color: $text-muted; }
    LoadPanel > #load-hint { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._clock = StageClock()
        self.last: LoadProgress | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("Starting…", id="load-progress")
        yield Static("", id="load-message")
        yield Static("", id="load-hint")

    def start(self, model: str) -> None:
        self.border_title = escape(f"Loading {printable(model)}")  # a title is markup
        self.remove_class("-failed")
        self.error = None
        self._clock = StageClock()
        self.query_one("#load-progress", Static).update("Starting…")
        self.query_one("#load-message", Static).update("")
        self.query_one("#load-hint", Static).update("ctrl+q quits · ctrl+b opens old conversations")

    def show_progress(self, p: LoadProgress, now: float) -> None:
        self.last = p
        rate, left = self._clock.observe(p, now)
        colour = self.app.theme_variables.get("primary", "")
        self.query_one("#load-progress", Static).update(progress_line(p, rate, left, colour))
        self.query_one("#load-message", Static).update(Text(printable(p.message)))

    def show_error(self, model: str, error: str) -> None:
        self.error = error
        self.add_class("-failed")
        self.border_title = escape(f"Could not load {printable(model)}")
        self.query_one("#load-progress", Static).update(Text(printable(error), style="bold"))
        self.query_one("#load-message", Static).update(
            "Set another model with `effort chat --model …` or `model = …` in the config file."
        )
        self.query_one("#load-hint", Static).update("ctrl+q quits · ctrl+b opens old conversations · F1 help")
