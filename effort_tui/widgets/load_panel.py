"""Model loading: asks the engine for the model, shows how it goes (stage, bar, amount, rate,
ETA, and a clock that keeps moving while a step gives no figures), and posts the outcome.

The engine reports from its own thread into an `Inbox`; the panel drains it on the UI thread and
posts `ModelLoaded` or `ModelLoadFailed` to the screen, and later `EngineNews` (notices, the
background effort conversion) that arrive on the same line after the load.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.timer import Timer
from textual.widgets import Static

from engine.api import ChatEngine, ModelInfo
from engine.display import printable
from engine.events import LoadProgress
from engine.units import amount_text, human_bytes, human_duration
from effort_tui.bridge import Inbox
from effort_tui.clock import Clock
from effort_tui.messages import EngineNews, LoadUpdate, ModelLoaded, ModelLoadFailed

BAR_CELLS = 30
TICK_S = 0.5  # the elapsed clock of a step without figures

STAGE_TITLES = {
    "download": "Downloading",
    "verify": "Verifying",
    "read": "Reading",
    "convert": "Converting",
    "load": "Loading",
    "calibrate": "Calibrating effort",
}


@dataclass
class _LoadEnded:
    info: ModelInfo | None
    error: str | None


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


def waiting_line(p: LoadProgress, waited: float) -> Text:
    """A step that gives no figures (or the work after the last figure): how long it has taken."""
    text = Text()
    finishing = bool(p.total) and p.done >= p.total
    text.append(f"{'Finishing' if finishing else STAGE_TITLES.get(p.stage, 'Working'):<12}", style="bold")
    text.append("getting the model ready to answer" if finishing else (printable(p.message) or "working"))
    text.append(f"  {human_duration(waited)}", style="dim")
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

    def __init__(self, clock: Clock, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self._stage_clock = StageClock()
        # the load in progress last; before it, the loaded model's (its background conversion still
        # reports there, and it stays loaded if the new load fails)
        self._inboxes: list[Inbox[object]] = []
        self._ticker: Timer | None = None
        self._since = 0.0  # when the latest figure arrived
        self.model = ""
        self.last: LoadProgress | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("Starting…", id="load-progress")
        yield Static("", id="load-message")
        yield Static("", id="load-hint")

    def load(self, engine: ChatEngine, model: str, *, show: bool = True) -> None:
        """Ask `engine` for `model`; `show` False loads behind the chat (a switch: the loaded
        model answers until the new one is ready)."""
        self.model = model
        self.error = None
        self.last = None
        self._stage_clock = StageClock()
        self.border_title = escape(f"Loading {printable(model)}")  # a title is markup
        self.remove_class("-failed")
        self._set("#load-progress", "Starting…")
        self._set("#load-message", "")
        self._set("#load-hint", "ctrl+q quits · ctrl+b opens old conversations")
        self.display = show
        for stale in self._inboxes[:-1]:  # a load that was still going: nobody waits for it now
            stale.close()
        inbox: Inbox[object] = Inbox(self, LoadUpdate)
        self._inboxes = [*self._inboxes[-1:], inbox]
        try:
            engine.load(model, inbox.put, lambda info, error: inbox.put(_LoadEnded(info, error)))
        except Exception as exc:  # an engine that fails before its thread starts
            inbox.put(_LoadEnded(None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))

    @on(LoadUpdate)
    def _on_load_update(self, message: LoadUpdate) -> None:
        if message.inbox not in self._inboxes:
            return
        latest: LoadProgress | None = None
        for item in message.inbox.drain():
            if isinstance(item, _LoadEnded):
                self._stop_ticker()
                self._load_ended(message.inbox, item)
                latest = None  # the figures before the end are history
            elif isinstance(item, LoadProgress) and (item.stage == "notice" or item.stage.startswith("effort")):
                self.post_message(EngineNews(item))
            elif isinstance(item, LoadProgress):
                latest = item
        if latest is not None:
            self.show_progress(latest)

    def _load_ended(self, inbox: Inbox[object], ended: _LoadEnded) -> None:
        if ended.info is None:
            inbox.close()
            self._inboxes.remove(inbox)
            self.post_message(ModelLoadFailed(self.model, ended.error or "the model could not be loaded"))
            return
        for other in self._inboxes:
            if other is not inbox:
                other.close()
        self._inboxes = [inbox]
        self.post_message(ModelLoaded(self.model, ended.info))

    def close(self) -> None:
        """Hear nothing more from the engine (the screen is going away)."""
        self._stop_ticker()
        for inbox in self._inboxes:
            inbox.close()
        self._inboxes = []

    def show_progress(self, p: LoadProgress) -> None:
        self.last = p
        self._since = self.clock.monotonic()
        rate, left = self._stage_clock.observe(p, self._since)
        colour = self.app.theme_variables.get("primary", "")
        if p.total and p.done < p.total:
            self._set("#load-progress", progress_line(p, rate, left, colour))
        else:
            self._set("#load-progress", waiting_line(p, 0.0))
        self._set("#load-message", Text(printable(p.message)))
        if self._ticker is None:
            self._ticker = self.set_interval(TICK_S, self.tick)

    def tick(self) -> None:
        """Keep the clock of a step without figures moving."""
        p = self.last
        if p is not None and not (p.total and p.done < p.total):
            self._set("#load-progress", waiting_line(p, self.clock.monotonic() - self._since))

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def show_error(self, error: str) -> None:
        self.error = error
        self.display = True
        self.add_class("-failed")
        self.border_title = escape(f"Could not load {printable(self.model)}")
        self._set("#load-progress", Text(printable(error), style="bold"))
        self._set("#load-message", "Set another model with `effort chat --model …` or `model = …` in the config file.")
        self._set("#load-hint", "ctrl+q quits · ctrl+b opens old conversations · F1 help")

    def _set(self, selector: str, content: Text | str) -> None:
        if self.is_mounted:
            self.query_one(selector, Static).update(content)
