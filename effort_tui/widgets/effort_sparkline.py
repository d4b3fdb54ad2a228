"""Per-token speed as a one-line bar chart, each bar coloured by the effort it ran at."""

from __future__ import annotations

from rich.text import Text
from textual.color import Color, Gradient
from textual.widget import Widget

from effort_tui.stats import TokenSample
from themes import effort_colours

BARS = "▁▂▃▄▅▆▇█"
MIN_EFFORT = 0.05


def effort_gradient(variables: dict[str, str]) -> Gradient:
    low, mid, high = effort_colours(variables)
    return Gradient((0.0, low), (0.5, mid), (1.0, high), quality=40)


def effort_colour(gradient: Gradient, effort: float) -> Color:
    position = (min(1.0, max(MIN_EFFORT, effort)) - MIN_EFFORT) / (1.0 - MIN_EFFORT)
    return gradient.get_color(position)


def scale_top(values: list[float]) -> float:
    """The speed drawn as a full bar: the maximum, or with 20+ samples the 95th percentile,
    so one outlier (a token that came back at once) does not flatten all the others."""
    ordered = sorted(values)
    if not ordered:
        return 1.0
    top = ordered[-1] if len(ordered) < 20 else ordered[int(0.95 * (len(ordered) - 1))]
    return top if top > 0 else 1.0


class EffortSparkline(Widget):
    """The newest samples that fit, right-aligned; the scale comes from the whole answer."""

    DEFAULT_CSS = """
    EffortSparkline {
        height: 1;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._samples: list[TokenSample] = []

    @property
    def samples(self) -> list[TokenSample]:
        return self._samples

    def set_samples(self, samples: list[TokenSample]) -> None:
        self._samples = samples
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width)
        if not self._samples:
            return Text("per-token speed, coloured by effort, appears here", style="italic dim")
        gradient = effort_gradient(self.app.theme_variables)
        top = scale_top([s.tps for s in self._samples])
        visible = self._samples[-width:]
        text = Text(" " * (width - len(visible)))
        for sample in visible:
            level = min(len(BARS) - 1, max(0, round(sample.tps / top * len(BARS)) - 1))
            text.append(BARS[level], style=effort_colour(gradient, sample.effort).rich_color.name)
        return text


class EffortLegend(Widget):
    """A tiny key for the sparkline colours: ``5% ▇▇▇▇▇ 100%``."""

    DEFAULT_CSS = """
    EffortLegend {
        height: 1;
        width: 16;
    }
    """

    def render(self) -> Text:
        gradient = effort_gradient(self.app.theme_variables)
        text = Text(" 5% ", style="dim")
        for i in range(7):
            effort = MIN_EFFORT + (1.0 - MIN_EFFORT) * i / 6
            text.append("█", style=effort_colour(gradient, effort).rich_color.name)
        text.append(" 100%", style="dim")
        return text
