"""A deterministic `ChatEngine` for the TUI tests.

* Loads and answers on its own threads, like the real `EngineWorker`.
* Token pacing is controllable: with ``gated=True`` a token is produced only
  after `release()` (so a test decides exactly how many tokens exist before
  it presses a key; see the Pilot gotcha in the notes); otherwise one token
  every ``token_delay_s`` seconds of real time.
* The *reported* speed depends on the effort only: ``step_s`` for a token is
  ``step_at(effort)``, so tok/s in the status bar is a pure function of the
  effort each token ran at (and snapshots are stable).
* The effort is read from ``self.effort`` before every token, as the real
  engine does.
* Load: a fixed list of `LoadProgress` events, then success, a failure
  (``load_error``) or a wait on ``load_gate``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from engine.api import ChatRequest, EffortSetting, ModelInfo
from engine.events import GenerationResult, LoadProgress, TokenEvent

DEFAULT_INFO = ModelInfo(
    name="fake-135m",
    path="/models/fake-135m.gguf",
    architecture="llama",
    backend="cpu",
    device="Fake CPU · 2 CPUs",
    context_limit=2048,
    parameters=135_000_000,
)

MB = 1024 * 1024

DEFAULT_LOAD_PLAN = (
    LoadProgress("download", 0, 270 * MB, "B", "fetching fake-135m.gguf"),
    LoadProgress("download", 108 * MB, 270 * MB, "B", "fetching fake-135m.gguf"),
    LoadProgress("convert", 30, 30, "", "converting layers"),
)

PROMPT_TTFT_S = 0.25


def step_at(effort: float) -> float:
    """Seconds per token at `effort`: 50 tok/s at 100 %, 100 tok/s at 50 %, 200 tok/s at 25 %…"""
    return 0.02 * max(effort, 0.05)


def words(text: str) -> list[str]:
    """Split into word-ish tokens that join back into `text`."""
    out: list[str] = []
    current = ""
    for ch in text:
        if ch in " \n" and current.strip():
            out.append(current)
            current = ""
        current += ch
    if current:
        out.append(current)
    return out


def default_reply(request: ChatRequest) -> str:
    last = request.messages[-1]["content"] if request.messages else ""
    return f"You said: {last}"


@dataclass
class FakeHandle:
    wakeup: threading.Condition
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None

    def cancel(self) -> None:
        self.cancelled.set()
        with self.wakeup:
            self.wakeup.notify_all()

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        self.finished.wait(timeout)
        return self.result


class FakeEngine:
    def __init__(
        self,
        *,
        reply: Callable[[ChatRequest], str] | str | None = None,
        gated: bool = False,
        token_delay_s: float = 0.0,
        info: ModelInfo = DEFAULT_INFO,
        effort_cap: float = 1.0,
        load_plan: tuple[LoadProgress, ...] = DEFAULT_LOAD_PLAN,
        load_error: str | None = None,
        load_gate: threading.Event | None = None,
        gated_load: bool = False,
        fail_generation: str | None = None,
        prompt_tokens: int = 40,
        after_load: tuple[LoadProgress, ...] = (),
    ) -> None:
        self.effort = EffortSetting(1.0, 1.0)
        self.info = ModelInfo(**{**info.__dict__, "effort_cap": effort_cap})
        self._cap = effort_cap
        self.reply = reply
        self.gated = gated
        self.token_delay_s = token_delay_s
        self.load_plan = load_plan
        self.load_error = load_error
        self.load_gate = load_gate
        self.gated_load = gated_load
        self.fail_generation = fail_generation
        self.prompt_tokens = prompt_tokens
        self.after_load = after_load  # progress after the load (the effort conversion in the background)
        self.requests: list[ChatRequest] = []
        self.loaded_models: list[str] = []
        self.handles: list[FakeHandle] = []
        self.events: list[TokenEvent] = []  # every TokenEvent emitted, in order
        # Gates: counters guarded by one condition, so waiting threads never poll
        # (polling would keep Pilot's wait_for_idle from ever seeing an idle process).
        self._cond = threading.Condition()
        self._tokens_allowed = 0
        self._load_steps_allowed = 0
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self.closed = False

    # -- test controls -------------------------------------------------------------------------

    def release(self, n: int = 1) -> None:
        """Let `n` more tokens through (gated mode)."""
        with self._cond:
            self._tokens_allowed += n
            self._cond.notify_all()

    def release_all(self) -> None:
        self.release(10_000)

    def release_load(self, n: int = 1) -> None:
        """Let `n` more load steps through (``gated_load``): each progress event, then the end."""
        with self._cond:
            self._load_steps_allowed += n
            self._cond.notify_all()

    @property
    def busy(self) -> bool:
        return any(not h.finished.is_set() for h in self.handles)

    # -- ChatEngine ----------------------------------------------------------------------------

    def load(self, model, on_progress, on_done) -> None:
        self.loaded_models.append(model)
        self._start(self._load, model, on_progress, on_done)

    def _load(self, model, on_progress, on_done) -> None:
        for p in self.load_plan:
            if not self._wait_load_step():
                return
            on_progress(p)
        if not self._wait_load_step():
            return
        if self.load_gate is not None:
            while not self.load_gate.wait(0.2):
                if self._closed.is_set():
                    return
        if self.load_error is not None:
            on_done(None, self.load_error)
            return
        self.effort.set_cap(self._cap)
        on_done(self.info, None)
        for p in self.after_load:
            on_progress(p)

    def _wait_load_step(self) -> bool:
        if not self.gated_load:
            return True
        with self._cond:
            self._cond.wait_for(lambda: self._load_steps_allowed > 0 or self._closed.is_set())
            if self._closed.is_set():
                return False
            self._load_steps_allowed -= 1
            return True

    def generate(self, request, on_token, on_done, on_prefill=None) -> FakeHandle:
        self.requests.append(request)
        self.on_prefill = on_prefill  # a test may report prompt progress through it
        handle = FakeHandle(self._cond)
        self.handles.append(handle)
        self._start(self._generate, request, on_token, on_done, handle)
        return handle

    def _generate(self, request: ChatRequest, on_token, on_done, handle: FakeHandle) -> None:
        if callable(self.reply):
            text = self.reply(request)
        elif isinstance(self.reply, str):
            text = self.reply
        else:
            text = default_reply(request)
        pieces = words(text)[: request.sampling.max_tokens]
        emitted: list[str] = []
        efforts: list[float] = []
        effective: list[float] = []
        steps: list[float] = []
        used = self.prompt_tokens
        finish = "stop" if len(words(text)) <= request.sampling.max_tokens else "length"
        error = None
        for index, piece in enumerate(pieces, 1):
            if not self._wait_for_token(handle):
                finish = "cancelled"
                break
            if self.fail_generation is not None and index == 3:
                finish, error = "error", self.fail_generation
                break
            effort = self.effort.get()
            step = PROMPT_TTFT_S if index == 1 else step_at(effort)
            used += 1
            event = TokenEvent(
                text=piece,
                token_id=1000 + index,
                step_s=step,
                effort=effort,
                effective_effort=round(effort * 0.9, 4),
                index=index,
                prompt_tokens=self.prompt_tokens,
                prompt_tps=self.prompt_tokens / PROMPT_TTFT_S,
                ttft_s=PROMPT_TTFT_S,
                context_used=used,
                context_limit=self.info.context_limit,
            )
            self.events.append(event)
            emitted.append(piece)
            efforts.append(effort)
            effective.append(event.effective_effort)
            steps.append(step)
            on_token(event)
        decode = steps[1:]
        result = GenerationResult(
            text="".join(emitted),
            token_ids=[1000 + i for i in range(1, len(emitted) + 1)],
            prompt_token_ids=list(range(self.prompt_tokens)),
            prompt_tokens=self.prompt_tokens,
            generated_tokens=len(emitted),
            prompt_tps=self.prompt_tokens / PROMPT_TTFT_S,
            decode_tps=(len(decode) / sum(decode)) if decode else 0.0,
            ttft_s=PROMPT_TTFT_S if emitted else 0.0,
            finish_reason=finish,  # type: ignore[arg-type]
            effort_trace=efforts,
            effective_trace=effective,
            step_trace=steps,
            error=error,
        )
        handle.result = result
        on_done(result)
        handle.finished.set()

    def _wait_for_token(self, handle: FakeHandle) -> bool:
        """False when cancelled (or the engine closed) before the next token may run."""
        if self.gated:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._tokens_allowed > 0 or handle.cancelled.is_set() or self._closed.is_set()
                )
                if handle.cancelled.is_set() or self._closed.is_set():
                    return False
                self._tokens_allowed -= 1
                return True
        elif self.token_delay_s:
            if handle.cancelled.wait(self.token_delay_s):
                return False
        return not (handle.cancelled.is_set() or self._closed.is_set())

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="fake-engine")
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        self.closed = True
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=2)
