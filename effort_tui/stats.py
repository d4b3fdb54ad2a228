"""Speed bookkeeping and number formatting for the status bar (plain Python, no Textual)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.events import GenerationResult, LoadProgress, TokenEvent


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


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def percent(value: float) -> str:
    return f"{round(value * 100):d}%"


def tps_text(value: float | None) -> str:
    return "– tok/s" if value is None else f"{value:.1f} tok/s"


def amount_text(p: LoadProgress) -> str:
    if p.unit == "B":
        return f"{human_bytes(p.done)} / {human_bytes(p.total)}" if p.total else human_bytes(p.done)
    unit = f" {p.unit}" if p.unit else ""
    return f"{p.done:.0f} / {p.total:.0f}{unit}" if p.total else f"{p.done:.0f}{unit}"


def effort_range_text(trace: list[float]) -> str:
    """'effort 60%', or 'effort 30–100%' when it moved."""
    if not trace:
        return ""
    low, high = min(trace), max(trace)
    if abs(high - low) < 0.005:
        return f"effort {percent(low)}"
    return f"effort {round(low * 100)}–{percent(high)}"


FINISH_TEXT = {
    "stop": "done",
    "length": "hit max_tokens",
    "context": "context full",
    "cancelled": "stopped",
    "error": "error",
}


def summary_line(result: GenerationResult) -> str:
    """The one line that stays under the sparkline after an answer."""
    mark = {"stop": "✓", "cancelled": "■", "error": "✗"}.get(result.finish_reason, "…")
    parts = [f"{mark} {FINISH_TEXT.get(result.finish_reason, result.finish_reason)}"]
    if result.generated_tokens and result.decode_tps > 0:
        parts.append(f"{result.generated_tokens} tok @ {result.decode_tps:.1f} tok/s")
        parts.append(f"ttft {result.ttft_s:.2f}s")
    elif result.generated_tokens:  # one token: its time is the ttft, there is no decode speed
        parts.append(f"{result.generated_tokens} tok")
        parts.append(f"ttft {result.ttft_s:.2f}s")
    else:
        parts.append("0 tok")
    if result.prompt_tokens:
        parts.append(prompt_text(result.prompt_tokens, result.prompt_cached, result.prompt_tps))
    effort = effort_range_text(result.effort_trace)
    if effort:
        extras = []
        if len(set(result.effort_trace)) > 1:
            extras.append(f"mean {percent(sum(result.effort_trace) / len(result.effort_trace))}")
        if result.effective_trace:
            extras.append(f"eff {percent(sum(result.effective_trace) / len(result.effective_trace))}")
        parts.append(effort + (f" ({', '.join(extras)})" if extras else ""))
    if result.peak_memory_bytes:
        parts.append(f"peak {human_bytes(result.peak_memory_bytes)}")
    if result.finish_reason == "error" and result.error:
        parts.append(result.error)
    return " · ".join(parts)


def result_meta(result: GenerationResult, model: str) -> dict:
    """What the history keeps with an answer."""
    return {
        "model": model,
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "prompt_tokens": result.prompt_tokens,
        "prompt_cached": result.prompt_cached,
        "tok_s": round(result.decode_tps, 3),
        "prompt_tok_s": round(result.prompt_tps, 3),
        "ttft_s": round(result.ttft_s, 4),
        "effort_trace": [round(e, 4) for e in result.effort_trace],
        "effective_trace": [round(e, 4) for e in result.effective_trace],
        "step_trace": [round(s, 5) for s in result.step_trace],
        "peak_memory_bytes": result.peak_memory_bytes,
        **({"error": result.error} if result.error else {}),
    }
