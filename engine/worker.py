"""The engine's own thread: every MLX call happens here, callers get plain-Python callbacks.

MLX streams are per thread, so loading and generating on one long-lived
thread keeps all arrays on the stream that made them. Jobs run one at a time
in submission order; a cancel takes effect before the next token.
"""

from __future__ import annotations

import queue
import threading
import traceback
from typing import Callable

from engine.api import ChatRequest, EffortSetting, ModelInfo
from engine.errors import EngineError
from engine.events import GenerationResult, LoadProgress, TokenEvent


class _Handle:
    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def finish(self, result: GenerationResult) -> None:
        self.result = result
        self._done.set()

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        self._done.wait(timeout)
        return self.result


def failed_result(request_ids: list[int], message: str) -> GenerationResult:
    return GenerationResult(
        text="", token_ids=[], prompt_token_ids=request_ids, prompt_tokens=len(request_ids),
        generated_tokens=0, prompt_tps=0.0, decode_tps=0.0, ttft_s=0.0, finish_reason="error", error=message,
    )


class EngineWorker:
    """The real `ChatEngine`."""

    def __init__(self, effort: float = 1.0, debug: bool = False, load_ranks: int | None = None) -> None:
        self.effort = EffortSetting(effort)
        self.debug = debug
        self.load_ranks = load_ranks
        self.loaded = None  # engine.session.LoadedModel once a load succeeded
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="effort-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, EngineError):
            return str(exc)
        if self.debug:
            traceback.print_exc()
        return f"internal error: {type(exc).__name__}: {exc}"

    def load(
        self,
        model: str,
        on_progress: Callable[[LoadProgress], None],
        on_done: Callable[[ModelInfo | None, str | None], None],
    ) -> None:
        def job() -> None:
            from engine import session  # imported here so constructing a worker stays cheap

            try:
                self.loaded = session.load(model, on_progress, load_ranks=self.load_ranks, keep_mlx_weights=False)
            except Exception as exc:  # noqa: BLE001 - reported to the caller as one line
                on_done(None, self._explain(exc))
                return
            self.effort.set_cap(self.loaded.info.effort_cap)
            on_done(self.loaded.info, None)

        self._jobs.put(job)

    def generate(
        self,
        request: ChatRequest,
        on_token: Callable[[TokenEvent], None],
        on_done: Callable[[GenerationResult], None],
        on_prefill: Callable[[LoadProgress], None] | None = None,
    ) -> _Handle:
        """`on_prefill` (optional) gets LoadProgress("prefill", done, total) while the prompt is read."""
        handle = _Handle()

        def job() -> None:
            ids: list[int] = []
            try:
                if self.loaded is None:
                    raise EngineError("no model is loaded")
                tok = self.loaded.tokenizer
                if request.raw_prompt is not None:
                    ids = tok.encode(request.raw_prompt, add_bos=tok.add_bos)
                else:
                    ids = tok.encode_chat(request.messages)
                result = self.loaded.generator.generate(
                    ids, request.sampling, self.effort, cancel=handle.cancelled, on_token=on_token,
                    on_prefill=on_prefill,
                )
            except Exception as exc:  # noqa: BLE001
                result = failed_result(ids, self._explain(exc))
            handle.finish(result)
            on_done(result)

        self._jobs.put(job)
        return handle

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)
