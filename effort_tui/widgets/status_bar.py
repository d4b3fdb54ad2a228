"""The status bar: model and device, the effort gauge, speeds, the sparkline, the last summary.

What it shows is held in reactive attributes; the chat screen assigns them and each watcher
redraws the one line that shows it. Every line is one row high, so a redraw never needs a new
layout: while an answer streams the bar costs a repaint of its own rows, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import var
from textual.widgets import Static

from engine.display import printable
from engine.units import human_bytes
from effort_tui.stats import SpeedStats, percent, prompt_text, quality_at, tps_text
from effort_tui.widgets.effort_sparkline import EffortLegend, EffortSparkline, effort_style, scale_label

ModelState = Literal["loading", "ready", "failed"]
GAUGE_CELLS = 10


@dataclass(frozen=True)
class ModelLine:
    name: str = ""
    state: ModelState = "loading"
    backend: str = ""
    device: str = ""
    weights: int = 0  # bytes the loaded model's weights hold in memory (0: not known)


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

    model: var[ModelLine] = var(ModelLine)
    effort: var[float] = var(1.0)
    cap: var[float] = var(1.0)
    # the answer in flight (or the last one); assigned again after every batch of tokens
    stats: var[SpeedStats] = var(SpeedStats, always_update=True)
    streaming: var[bool] = var(False)
    summary: var[str] = var("")
    sampling: var[str] = var("")  # e.g. "T0.7 p0.9 min-p0.05 rep1.1" or "greedy"
    system_prompt: var[bool] = var(False)
    quality: var[tuple[tuple[float, float], ...]] = var(())  # (effort, expected top-1 agreement)
    effort_note: var[str] = var("")  # e.g. "effort dial: calibrating 40%" while the conversion runs

    def compose(self) -> ComposeResult:
        yield Static(self.model_text(), id="status-model")
        yield Static(self.speed_text(), id="status-speed")
        with Horizontal(id="status-spark-row"):
            yield Static("speed", id="status-spark-label")
            yield EffortSparkline(id="status-sparkline")
            yield EffortLegend(id="status-legend")
        yield Static(self.summary_text(), id="status-summary")

    def on_mount(self) -> None:
        self._render_all()
        self.watch(self.app, "theme", lambda _: self._render_all(), init=False)

    # -- watchers: each redraws what shows its attribute ----------------------------------------

    def validate_model(self, line: ModelLine) -> ModelLine:
        """The name and device as shown: a path may hold escapes (engine.display)."""
        return replace(line, name=printable(line.name), device=printable(line.device))

    def watch_model(self) -> None:
        self._render_model()

    def watch_sampling(self) -> None:
        self._render_model()

    def watch_system_prompt(self) -> None:
        self._render_model()

    def watch_effort(self) -> None:
        self._render_speed()

    def watch_cap(self) -> None:
        self._render_speed()

    def watch_quality(self) -> None:
        self._render_speed()

    def watch_effort_note(self) -> None:
        self._render_speed()

    def watch_streaming(self) -> None:
        self._render_speed()

    def watch_stats(self) -> None:
        self._render_model()
        self._render_speed()
        try:
            spark = self.query_one(EffortSparkline)
        except NoMatches:
            return
        spark.set_samples(self.stats.samples)
        self._line("#status-spark-label", scale_label(spark.top) if spark.top else "speed")

    def watch_summary(self) -> None:
        self._render_summary()

    # -- rendering -----------------------------------------------------------------------------

    def _line(self, selector: str, content: Text | str) -> None:
        try:
            line = self.query_one(selector, Static)
        except NoMatches:  # assigned before the bar was composed: compose draws it
            return
        line.update(content, layout=False)

    def _render_all(self) -> None:
        self._render_model()
        self._render_speed()
        self._render_summary()
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
            if m.weights:
                text.append(f" · {human_bytes(m.weights)}", style="dim")
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
            quality = quality_at(list(self.quality), self.effort)
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

    def summary_text(self) -> Text:
        # it may quote a conversation's title or a model's name from the history file
        return Text(printable(self.summary)) if self.summary else Text("no answer yet", style="italic dim")

    def _render_model(self) -> None:
        self._line("#status-model", self.model_text())

    def _render_speed(self) -> None:
        self._line("#status-speed", self.speed_text())

    def _render_summary(self) -> None:
        self._line("#status-summary", self.summary_text())
