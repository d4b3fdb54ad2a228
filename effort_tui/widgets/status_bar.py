"""The status bar: model and device, the effort gauge, speeds, the sparkline, the last summary.

It holds plain values and re-renders its lines when they change; Textual
coalesces the refreshes, so calling the setters once per token batch is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from engine.display import printable
from effort_tui.stats import SpeedStats, percent, prompt_text, quality_at, tps_text
from effort_tui.widgets.effort_sparkline import EffortLegend, EffortSparkline, effort_style, scale_label

ModelState = Literal["loading", "ready", "failed"]
GAUGE_CELLS = 10


@dataclass
class ModelLine:
    name: str = ""
    state: ModelState = "loading"
    backend: str = ""
    device: str = ""


class StatusBar(Vertical):
    DEFAULT_CSS = """
    StatusBar {
        height: auto;
        padding: 0 1;
        background: $panel;
        color: $foreground;
    }
    StatusBar > Static { height: 1; width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    StatusBar #status-spark-row { height: 1; }
    StatusBar #status-spark-label { width: 11; color: $text-muted; text-wrap: nowrap; }
    StatusBar #status-summary { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = ModelLine()
        self.effort = 1.0
        self.cap = 1.0
        self.stats = SpeedStats()
        self.summary = ""
        self.streaming = False
        self.sampling = ""  # e.g. "T0.7 p0.9 min-p0.05 rep1.1" or "greedy"
        self.system_prompt = False
        self.quality: list[tuple[float, float]] = []  # (effort, expected top-1 agreement with dense)
        self.effort_note = ""  # e.g. "effort ready in 40 s" while the conversion runs behind the chat

    def compose(self) -> ComposeResult:
        yield Static(id="status-model")
        yield Static(id="status-speed")
        with Horizontal(id="status-spark-row"):
            yield Static("speed", id="status-spark-label")
            yield EffortSparkline(id="status-sparkline")
            yield EffortLegend(id="status-legend")
        yield Static(self.summary_text(), id="status-summary")

    def on_mount(self) -> None:
        self._render_all()
        self.watch(self.app, "theme", lambda _: self._render_all(), init=False)

    # -- setters -------------------------------------------------------------------------------

    def set_model(self, name: str, state: ModelState, backend: str = "", device: str = "") -> None:
        self.model = ModelLine(printable(name), state, backend, printable(device))  # a path may hold escapes
        self._render_model()

    def set_effort(self, effort: float, cap: float) -> None:
        self.effort, self.cap = effort, cap
        self._render_speed()

    def set_stats(self, stats: SpeedStats, *, streaming: bool) -> None:
        self.stats = stats
        self.streaming = streaming
        self._render_model()
        self._render_speed()
        if self.is_mounted:
            spark = self.query_one(EffortSparkline)
            spark.set_samples(stats.samples)
            self.query_one("#status-spark-label", Static).update(scale_label(spark.top) if spark.top else "speed")

    def set_quality(self, table: list[tuple[float, float]]) -> None:
        self.quality = list(table)
        self._render_speed()

    def set_effort_note(self, note: str) -> None:
        self.effort_note = note
        self._render_speed()

    def set_sampling(self, label: str, system_prompt: bool = False) -> None:
        self.sampling, self.system_prompt = label, system_prompt
        self._render_model()

    def set_summary(self, text: str) -> None:
        self.summary = text
        self._render_summary()

    # -- rendering -----------------------------------------------------------------------------

    def _render_all(self) -> None:
        self._render_model()
        self._render_speed()
        self._render_summary()
        if self.is_mounted:
            self.query_one(EffortSparkline).set_samples(self.stats.samples)
            self.query_one(EffortLegend).refresh()

    def model_text(self) -> Text:
        """One line, most important first (it is cut, never wrapped, when the terminal is narrow)."""
        m, s = self.model, self.stats
        text = Text()
        if m.state == "loading":
            text.append(f"◌ loading {m.name}…", style="bold")
        elif m.state == "failed":
            text.append(f"✗ {m.name} not loaded", style="bold red")
        else:
            text.append(f"● {m.name}", style="bold")
            if m.backend:
                text.append(f" · {m.backend}", style="dim")
        if self.sampling:
            text.append(f"  {self.sampling}")
            if self.system_prompt:
                text.append(" · sys")
        if s.context_limit:
            text.append(f"  ctx {s.context_used:,}/{s.context_limit:,}")
            if s.context_used >= 0.9 * s.context_limit:
                text.append(" (nearly full)", style="bold yellow")
        if s.ttft_s is not None:
            text.append(f"  ttft {s.ttft_s:.2f}s")
        if s.prompt_tps is not None:
            text.append(f"  {prompt_text(s.prompt_tokens, s.prompt_cached, s.prompt_tps)}")
        if m.state == "ready" and m.device and self.size.width >= 110:
            text.append(f"  {m.device}", style="dim")
        return text

    def speed_text(self) -> Text:
        s = self.stats
        colour = effort_style(self.effort)
        text = Text()
        text.append("effort ", style="bold")
        text.append(percent(self.effort), style=f"bold {colour}")
        filled = round(self.effort * GAUGE_CELLS)
        cap_cells = round(self.cap * GAUGE_CELLS)
        text.append(" ")
        text.append("━" * filled, style=colour)
        text.append("─" * max(0, cap_cells - filled), style="dim")
        text.append("╌" * (GAUGE_CELLS - max(cap_cells, filled)), style="red")
        if self.effort_note:
            text.append(f"  {self.effort_note}", style="italic")
        else:
            quality = quality_at(self.quality, self.effort)
            if quality is not None:
                text.append(f"  ≈{quality * 100:.0f}% top-1", style="bold red" if quality < 0.6 else "")
        if s.effective_effort is not None and self.streaming:
            text.append(f"  eff {percent(s.effective_effort)}")  # only while it describes the answer in flight
        if self.cap < 0.9995:
            text.append(f"  cap {percent(self.cap)}", style="yellow")
        text.append("  │  ", style="dim")
        text.append(tps_text(s.latest_tps), style="bold" if self.streaming else "")
        average = s.average_tps
        if average is not None:
            text.append(f"  avg {tps_text(average)}")
        text.append(f"  {s.tokens} tok", style="dim")
        return text

    def _render_model(self) -> None:
        if self.is_mounted:
            self.query_one("#status-model", Static).update(self.model_text())

    def _render_speed(self) -> None:
        if self.is_mounted:
            self.query_one("#status-speed", Static).update(self.speed_text())

    def summary_text(self) -> Text:
        return Text(self.summary) if self.summary else Text("no answer yet", style="italic dim")

    def _render_summary(self) -> None:
        if self.is_mounted:
            self.query_one("#status-summary", Static).update(self.summary_text())
