"""Per-token speed as a one-line bar chart, each bar coloured by the effort it ran at.

The scale is fixed and labelled: a round number of tok/s (10, 20, 50, 100, 200, …) that only
grows during a session, so 12.7 tok/s never draws as tall as 55 tok/s, and a slower answer looks
slower than the one before. The effort colours are five bands of the terminal's own ANSI colours
(red, magenta, yellow, cyan, green), which stay apart in 16, 256 and true colour alike (a gradient
collapsed to neighbouring 256-colour entries such as 73 and 75).
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from effort_tui.stats import TokenSample

BARS = "▁▂▃▄▅▆▇█"
SCALE_STEPS = (1, 2, 5)

# (upper bound of the band, colour, legend label); the bands cover every effort the dial allows
# (engine.validation.MIN_EFFORT to 1.0)
EFFORT_BANDS: tuple[tuple[float, str, str], ...] = (
    (0.25, "red", "≤25"),
    (0.45, "magenta", "≤45"),
    (0.65, "yellow", "≤65"),
    (0.85, "cyan", "≤85"),
    (1.0, "green", "100"),
)


def effort_style(effort: float) -> str:
    """The colour of a token (or the gauge) at `effort`."""
    for upper, colour, _ in EFFORT_BANDS:
        if effort <= upper + 1e-9:
            return colour
    return EFFORT_BANDS[-1][1]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, … tok/s at or above `value`."""
    magnitude = 1.0
    while True:
        for step in SCALE_STEPS:
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def scale_for(values: list[float], current: float = 0.0) -> float:
    """The fixed top of the scale: a round number above the speeds seen (never below `current`).
    With 20+ samples the 95th percentile is used, so one token that came back at once does not
    flatten the others."""
    ordered = sorted(v for v in values if v > 0)
    if not ordered:
        return current or 10.0
    top = ordered[-1] if len(ordered) < 20 else ordered[int(0.95 * (len(ordered) - 1))]
    return max(current, nice_ceiling(top))


def scale_label(top: float) -> str:
    return f"≤{top:g} t/s"


class EffortSparkline(Widget):
    """The newest samples that fit, right-aligned, on the session's fixed scale (`top`)."""

    DEFAULT_CSS = """
    EffortSparkline {
        height: 1;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._samples: list[TokenSample] = []
        self.top = 0.0  # tok/s drawn as a full bar; 0 until the first sample

    @property
    def samples(self) -> list[TokenSample]:
        return self._samples

    def set_samples(self, samples: list[TokenSample]) -> None:
        self._samples = samples
        if samples:
            self.top = scale_for([s.tps for s in samples], self.top)
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width)
        if not self._samples:
            return Text("per-token speed, coloured by effort", style="italic dim")
        top = self.top or scale_for([s.tps for s in self._samples])
        visible = self._samples[-width:]
        text = Text(" " * (width - len(visible)))
        for sample in visible:
            level = min(len(BARS) - 1, max(0, round(sample.tps / top * len(BARS)) - 1))
            text.append(BARS[level], style=effort_style(sample.effort))
        return text


class EffortLegend(Widget):
    """A tiny key for the sparkline colours: ``effort █████``, one cell per band."""

    DEFAULT_CSS = """
    EffortLegend {
        height: 1;
        width: 18;
    }
    """

    def render(self) -> Text:
        text = Text(" 5% ", style="dim")
        for _, colour, _ in EFFORT_BANDS:
            text.append("██", style=colour)
        text.append("100%", style="dim")
        return text
