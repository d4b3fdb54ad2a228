"""The effort dial as the chat shows it: the keys, the gauge, what the dial says about itself.

The effort is one float from the key to the engine: a binding's action carries it
(`effort_step(0.05)`, `effort_set(0.6)`), `EffortSetting` clamps it to the model's range, and the
engine reads it before every token and hands it to `Runtime.step`. The starting effort is set
once, by the app; a model switch keeps whatever the user chose (clamped to the new model's cap).
"""

from __future__ import annotations

from typing import Callable

from engine.api import EffortSetting, ModelInfo
from engine.events import LoadProgress
from effort_tui.chat.conversation import Turn
from effort_tui.stats import collapse_effort, percent, quality_at
from effort_tui.widgets.status_bar import StatusBar

Notify = Callable[..., None]


class EffortDial:
    def __init__(self, effort: EffortSetting, status: StatusBar, notify: Notify) -> None:
        self.effort = effort
        self.status = status
        self.notify = notify
        self.info: ModelInfo | None = None
        self.hint_shown = False  # the one-time "quality drops here" hint
        self.preparing: bool | None = None  # None: never heard of; True while the conversion runs
        self.step_text = ""  # what the conversion is doing, e.g. "calibrating 40%"
        self._offered_repair: set[int | None] = set()  # answers whose collapse was pointed out

    def model_ready(self, info: ModelInfo) -> None:
        self.info = info
        self.status.quality = tuple(info.quality)
        self.show()

    @property
    def collapse(self) -> float | None:
        """The effort below which this model's answers fall apart (measured), if known."""
        return collapse_effort(list(self.info.quality)) if self.info and self.info.quality else None

    # -- the keys ------------------------------------------------------------------------------

    def step(self, delta: float) -> None:
        self._say_not_ready()
        before = self.effort.get()
        value = self.effort.step(delta)
        if delta > 0 and value <= before and self.effort.cap < 1.0:
            self.notify(f"The effort is capped at {percent(self.effort.cap)} for this model.", timeout=3)
        self.show()

    def set(self, value: float) -> None:
        self._say_not_ready()
        if self.effort.set(value) < value - 1e-9:
            self.notify(f"The effort is capped at {percent(self.effort.cap)} for this model.", timeout=3)
        self.show()

    def show(self) -> None:
        value = self.effort.get()
        self.status.effort, self.status.cap = value, self.effort.cap
        self._maybe_quality_hint(value)

    def _maybe_quality_hint(self, value: float) -> None:
        """Once per session: say so when the effort goes below where this model's quality collapses."""
        collapse, info = self.collapse, self.info
        if self.hint_shown or collapse is None or info is None or value > collapse + 1e-9:
            return
        self.hint_shown = True
        top1 = quality_at(list(info.quality), value) or 0.0
        self.notify(
            f"At {percent(value)} {info.name} agrees with full effort on only ≈{top1 * 100:.0f}% of tokens "
            f"(measured); below about {percent(collapse + 0.05)} its text falls apart. Raise it with ctrl+↑ / F8.",
            title="Quality drops here", severity="warning", timeout=8,
        )

    # -- the background conversion of a model loaded dense --------------------------------------

    def conversion(self, item: LoadProgress) -> None:
        """News of the conversion: LoadProgress "effort" (how far), "effort-ready" or "effort-failed"."""
        first = self.preparing is None
        self.preparing = item.stage == "effort"
        if self.preparing:
            share = f" {item.fraction:.0%}" if item.total else ""
            self.step_text = f"{item.message}{share}" if item.total else "starting"
            if first:
                self.notify("The chat runs at full effort until the effort dial is ready "
                            "(it is being prepared in the background; the status bar shows how far).",
                            title="Effort", timeout=6)
        elif item.stage == "effort-failed":
            self.step_text = ""
            self.notify(item.message, title="Effort", severity="warning", timeout=8)
        else:
            self.step_text = ""
            self.notify(item.message.capitalize() + ".", title="Effort", timeout=4)
        self.status.effort_note = f"effort dial: {self.step_text}" if self.preparing else ""

    def conversion_gone(self) -> None:
        """Forget a conversion in progress (another model is being loaded)."""
        self.preparing, self.step_text = None, ""
        self.status.effort_note = ""

    def _say_not_ready(self) -> None:
        if self.preparing:
            self.notify(f"The effort dial is being prepared ({self.step_text}); until then every token "
                        "runs at full effort.", title="Effort", timeout=4)


    # -- an answer that collapsed ---------------------------------------------------------------

    def repair_point(self, turns: list[Turn]) -> tuple[int, str] | None:
        """(token, text before it) when the last answer, made in this session, ran from that token
        on at or below the effort where this model's text falls apart, and the effort is above it
        now: ctrl+r then writes the answer again from there instead of from the start."""
        last = turns[-1] if turns else None
        collapse = self.collapse
        if last is None or last.role != "assistant" or not last.token_ends or collapse is None:
            return None
        point = collapse_point(list(last.meta.get("effort_trace") or []), collapse)
        if point is None or point > len(last.token_ends) or self.effort.get() <= collapse + 1e-9:
            return None
        return point, last.content[: last.token_ends[point - 1]]

    def offer_repair(self, turns: list[Turn], streaming: bool) -> None:
        """Once per answer, when the effort is above the collapse again: say that what was written
        below it stays garbage (it is context now), and that ctrl+r writes it again from there."""
        repair = self.repair_point(turns)
        if repair is None or streaming or turns[-1].message_id in self._offered_repair:
            return
        last = turns[-1]
        self._offered_repair.add(last.message_id)
        token, _ = repair
        self.notify(f"From token {token + 1} on, the last answer ran at {percent(last.meta['effort_trace'][token])}, "
                    "where this model's text falls apart; raising the effort does not mend what is written. "
                    f"ctrl+r writes it again from there at {percent(self.effort.get())}.",
                    title="Quality collapsed", severity="warning", timeout=10)


def collapse_point(trace: list[float], collapse: float | None) -> int | None:
    """The first decoded token (index into `trace`) that ran at or below `collapse`, if any: from
    there on the answer is likely garbage, and raising the effort does not mend what is written."""
    if collapse is None:
        return None
    return next((i for i, e in enumerate(trace) if i > 0 and e <= collapse + 1e-9), None)
