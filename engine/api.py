"""The engine's public surface for front ends (the TUI, the CLI, tests).

A front end talks to a `ChatEngine`: it asks for a model to be loaded and for
answers to be generated, and receives plain-Python events through callbacks.
The callbacks run on the engine's own worker thread, so a UI must hand them
over to its event loop (Textual: ``post_message``, which is thread-safe).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from engine.events import GenerationResult, LoadProgress, TokenEvent
from engine.validation import MIN_EFFORT


class EffortSetting:
    """The live effort dial: written by the UI thread, read by the engine before every token.

    `lossless` is the dial's lossless position: the answer is exactly full effort's (token for token
    when greedy, the same distribution when sampling), sped up by drafts at low effort that full
    effort checks (`engine.speculative`); the value is then not used."""

    def __init__(self, value: float = 1.0, cap: float = 1.0, lossless: bool = False) -> None:
        self._lock = threading.Lock()
        self._cap = cap
        self._value = self._clamp(value)
        self._lossless = bool(lossless)

    def _clamp(self, value: float) -> float:
        return max(MIN_EFFORT, min(self._cap, float(value)))

    def get(self) -> float:
        with self._lock:
            return self._value

    def set(self, value: float) -> float:
        """Set the effort (clamped to [MIN_EFFORT, cap]); returns the value now in force."""
        with self._lock:
            self._value = self._clamp(value)
            return self._value

    def step(self, delta: float) -> float:
        with self._lock:
            self._value = self._clamp(round(self._value + delta, 4))
            return self._value

    @property
    def lossless(self) -> bool:
        with self._lock:
            return self._lossless

    def set_lossless(self, on: bool) -> bool:
        """Turn lossless mode on or off; it applies from the next token. Returns the mode now in force."""
        with self._lock:
            self._lossless = bool(on)
            return self._lossless

    @property
    def cap(self) -> float:
        """The highest effort the loaded weights allow (below 1.0 with --load-ranks)."""
        return self._cap

    def set_cap(self, cap: float) -> None:
        with self._lock:
            self._cap = max(MIN_EFFORT, min(1.0, cap))
            self._value = self._clamp(self._value)


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen. These field defaults are plain greedy (the exact argmax, what
    the reference tests compare); `engine.sampler.CHAT_DEFAULTS` is what chat and generate use."""

    temperature: float = 0.0  # 0 = greedy (no penalties either: the exact argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    max_tokens: int = 512
    min_p: float = 0.0  # drop tokens below min_p × the top token's probability; 0 = off
    repetition_penalty: float = 1.0  # >1 discourages tokens seen in the last `repetition_window`
    repetition_window: int = 64  # tokens (prompt included) the penalty looks back over

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def label(self) -> str:
        """Short, for the status bar: 'greedy' or 'T0.7 p0.9 min-p0.05 rep1.1'."""
        if self.greedy:
            return "greedy"
        parts = [f"T{self.temperature:g}"]
        if self.top_p < 1.0:
            parts.append(f"p{self.top_p:g}")
        if self.top_k:
            parts.append(f"k{self.top_k}")
        if self.min_p > 0.0:
            parts.append(f"min-p{self.min_p:g}")
        if self.repetition_penalty != 1.0:
            parts.append(f"rep{self.repetition_penalty:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class ChatRequest:
    """What to answer: chat messages rendered through the model's template, or a raw prompt."""

    messages: list[dict[str, str]] = field(default_factory=list)  # [{"role": ..., "content": ...}]
    raw_prompt: str | None = None  # used verbatim when set: no chat template, special-token text is those tokens
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    # the start of the answer, already written: the model goes on from it (the result's text is
    # what follows it); the chat uses it to write an answer again from where its quality broke
    answer_prefix: str = ""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # alias or file/folder name shown to the user
    path: str
    architecture: str
    backend: str  # "metal" | "cuda" | "cpu"
    device: str  # e.g. "Apple M2 Pro", "NVIDIA H100", "AMD EPYC 9R14, AVX-512 · 2 CPUs"
    context_limit: int
    parameters: int
    effort_cap: float = 1.0  # < 1.0 when loaded with --load-ranks
    resident_bytes: int = 0
    sampling: SamplingSettings | None = None  # the model's generation defaults (engine.sampler.defaults_for)
    quality: tuple[tuple[float, float], ...] = ()  # (effort, expected top-1 agreement with full effort)


class GenerationHandle(Protocol):
    def cancel(self) -> None: ...

    def wait(self, timeout: float | None = None) -> GenerationResult | None: ...


class ChatEngine(Protocol):
    """What a front end needs from an engine; `engine.worker.EngineWorker` is the real one."""

    effort: EffortSetting

    def load(
        self,
        model: str,
        on_progress: Callable[[LoadProgress], None],
        on_done: Callable[[ModelInfo | None, str | None], None],
    ) -> None:
        """Load `model` (alias, GGUF path or HF folder) on the worker thread.

        `on_done(info, None)` on success, `on_done(None, one_line_error)` on failure.
        """

    def generate(
        self,
        request: ChatRequest,
        on_token: Callable[[TokenEvent], None],
        on_done: Callable[[GenerationResult], None],
        on_prefill: Callable[[LoadProgress], None] | None = None,
    ) -> GenerationHandle:
        """Start answering; returns at once. `on_done` is always called exactly once; `on_prefill`
        (optional) gets LoadProgress("prefill", done, total) while the prompt is read."""

    def close(self) -> None: ...
