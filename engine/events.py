"""Plain-Python values that cross from the engine's worker thread to its callers.

Nothing here holds an MLX array: the UI (and any other caller) only ever sees
str / int / float, so it can never block on, or race with, MLX work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "context", "error"]

# how an answer ended, as front ends say it (a cut answer says so)
FINISH_TEXT: dict[str, str] = {
    "stop": "done",
    "length": "cut: max_tokens reached",
    "context": "cut: the context is full",
    "cancelled": "stopped",
    "error": "error",
}


@dataclass(frozen=True)
class SpeculativeStats:
    """Where speculative decoding (`engine.speculative`, the dial's lossless mode) stands: as of the
    draft-and-verify cycle that made a token (`TokenEvent.speculative`), or over a whole answer
    (`GenerationResult.speculative`)."""

    drafted: int  # tokens drafted at low effort so far in this answer
    accepted: int  # of those, the ones full effort kept
    cycles: int  # draft-and-verify cycles so far
    draft_effort: float  # the effort the latest draft ran at
    k: int  # the latest draft's length (0: that cycle was one plain full-effort step)
    mean_draft_effort: float  # over every drafted token so far

    @property
    def acceptance(self) -> float:
        """The share of drafted tokens that full effort kept (0 before anything was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_k(self) -> float:
        """Drafted tokens per cycle."""
        return self.drafted / self.cycles if self.cycles else 0.0

    def summary(self) -> dict[str, float]:
        """The figures `effort generate --json` and `effort bench --json` report."""
        return {
            "acceptance": round(self.acceptance, 4), "drafted": self.drafted, "accepted": self.accepted,
            "cycles": self.cycles, "draft_effort": round(self.mean_draft_effort, 4), "k": round(self.mean_k, 3),
        }


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, reported as soon as it exists."""

    text: str  # the text this token completes (may be "" while UTF-8 is incomplete)
    token_id: int
    step_s: float  # wall-clock seconds between this token and the previous one (TTFT for the first)
    effort: float  # the effort the user asked for when this token was computed
    effective_effort: float  # share of projection weights actually multiplied for this token
    index: int  # 1 for the first generated token
    prompt_tokens: int
    prompt_tps: float
    ttft_s: float
    context_used: int  # tokens in the KV cache after this token
    context_limit: int
    prompt_cached: int = 0  # prompt tokens whose K/V were reused from the previous turn (not prefilled)
    # lossless mode: the figures as of the cycle that made this token (None: a plain step made it). A
    # cycle's tokens arrive together: its first carries the cycle's time in step_s, the rest ~0
    speculative: SpeculativeStats | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The whole answer, delivered once after the last TokenEvent."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    prompt_tokens: int
    generated_tokens: int
    prompt_tps: float
    decode_tps: float
    ttft_s: float
    finish_reason: FinishReason
    effort_trace: list[float] = field(default_factory=list)  # requested effort per generated token
    effective_trace: list[float] = field(default_factory=list)
    step_trace: list[float] = field(default_factory=list)  # seconds per generated token
    peak_memory_bytes: int = 0
    error: str | None = None
    prompt_cached: int = 0  # prompt tokens reused from the cache; prompt_tps is over the others
    speculative: SpeculativeStats | None = None  # over the answer, when lossless mode ran a cycle

    @classmethod
    def failed(cls, error: str, prompt_ids: list[int] | None = None) -> GenerationResult:
        """An answer that could not be made: no tokens, finish reason "error", `error` one line."""
        ids = list(prompt_ids or [])
        return cls(
            text="", token_ids=[], prompt_token_ids=ids, prompt_tokens=len(ids), generated_tokens=0,
            prompt_tps=0.0, decode_tps=0.0, ttft_s=0.0, finish_reason="error", error=error,
        )


@dataclass(frozen=True)
class LoadProgress:
    """Progress of a long load step: downloading, reading, converting."""

    stage: str  # "download" | "verify" | "read" | "load" | "convert" | "calibrate" | "eval" | "prefill"
    # | "notice": no progress, a one-line message the user should see (shown as a note)
    # | "effort": the background conversion of a model loaded dense (the step it is on, its own
    #   count), then "effort-ready" or "effort-failed" (the message says why)
    done: float  # bytes or items done
    total: float  # bytes or items in all (0 when unknown)
    unit: str = "B"  # "B" for bytes, "" for items
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0
