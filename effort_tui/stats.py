"""Speed bookkeeping of the answer in flight, and the figures the status bar shows of it (plain
Python, no Textual)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.events import TokenEvent


@dataclass(frozen=True)
class TokenSample:
    tps: float  # 1 / step_s
    effort: float
    effective: float


@dataclass
class SpeedStats:
    """Everything the status bar shows about the answer in flight (or the last one)."""

    samples: list[TokenSample] = field(default_factory=list)
    latest_tps: float | None = None
    ttft_s: float | None = None
    prompt_tokens: int = 0
    prompt_tps: float | None = None
    context_used: int = 0
    context_limit: int = 0
    effective_effort: float | None = None
    prompt_cached: int = 0  # prompt tokens reused from the previous turn's cache
    count: int = 0  # tokens so far, the first included
    _decode_steps_s: float = 0.0
    _decode_tokens: int = 0

    def add(self, event: TokenEvent) -> None:
        step = max(event.step_s, 1e-9)
        self.count += 1
        if event.index > 1:  # the first step is the time to first token, not decode speed
            tps = 1.0 / step
            self.samples.append(TokenSample(tps, event.effort, event.effective_effort))
            self.latest_tps = tps
            self._decode_steps_s += step
            self._decode_tokens += 1
        self.ttft_s = event.ttft_s
        self.prompt_tokens = event.prompt_tokens
        self.prompt_tps = event.prompt_tps
        self.prompt_cached = event.prompt_cached
        self.context_used = event.context_used
        self.context_limit = event.context_limit or self.context_limit
        self.effective_effort = event.effective_effort

    @property
    def average_tps(self) -> float | None:
        if self._decode_tokens == 0:
            return None
        return self._decode_tokens / self._decode_steps_s

    @property
    def tokens(self) -> int:
        return self.count

    @property
    def prompt_new_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.prompt_cached)


def prompt_text(prompt_tokens: int, cached: int, tps: float | None) -> str:
    """'prompt 55 tok/s', or with most of it cached 'prompt 12 new + 226 cached' (a speed over a
    handful of tokens, most of the time spent on the first decode step, reads as nonsense)."""
    new = max(0, prompt_tokens - cached)
    if cached and new < 32:
        return f"prompt {new} new + {cached:,} cached"
    return f"prompt {tps or 0.0:.0f} tok/s"


def quality_at(table: list[tuple[float, float]], effort: float) -> float | None:
    """Expected top-1 agreement with full effort at `effort`, interpolated in `table`
    [(effort, top1), …]; None without a table."""
    points = sorted(table)
    if not points:
        return None
    if effort <= points[0][0]:
        return points[0][1]
    for (e0, q0), (e1, q1) in zip(points, points[1:]):
        if effort <= e1:
            return q0 + (q1 - q0) * (effort - e0) / (e1 - e0) if e1 > e0 else q1
    return points[-1][1]


def collapse_effort(table: list[tuple[float, float]], floor: float = 0.6) -> float | None:
    """The effort below which the expected top-1 agreement falls under `floor` (None: never)."""
    points = sorted(table)
    below = [e for e, q in points if q < floor]
    if not below:
        return None
    return max(below)


def percent(value: float) -> str:
    return f"{round(value * 100):d}%"


def tps_text(value: float | None) -> str:
    return "– tok/s" if value is None else f"{value:.1f} tok/s"
