"""The engine's own thread: every MLX call happens here, callers get plain-Python callbacks.

MLX streams are per thread, so loading and generating on one long-lived
thread keeps all arrays on the stream that made them. Jobs run one at a time
in submission order; a cancel takes effect before the next token.

A model that has never been converted loads dense on the native CPU path and is
usable at once; its effort conversion and calibration (a minute or more) run in
a child process (`effort convert`, so MLX work never shares this thread), and
the worker attaches the result between jobs. Until then every token is dense;
the front end hears LoadProgress("effort", ...) as it goes.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import IO, Callable

from engine.api import ChatRequest, EffortSetting, ModelInfo
from engine.errors import EngineError, os_error_message
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


EFFORT_PREPARE_S = 75  # what a first conversion + calibration of SmolLM2 takes on 2 cores (measured 67 s)


class EngineWorker:
    """The real `ChatEngine`."""

    def __init__(self, effort: float = 1.0, debug: bool = False, load_ranks: int | None = None) -> None:
        self.effort = EffortSetting(effort)
        self.debug = debug
        self.load_ranks = load_ranks
        self.loaded = None  # engine.session.LoadedModel once a load succeeded
        self._conversion: tuple[subprocess.Popen, IO[bytes], float, Callable[[LoadProgress], None]] | None = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="effort-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=0.5 if self._conversion else None)
            except queue.Empty:
                self._poll_conversion()
                continue
            if job is None:
                break
            job()
            self._poll_conversion()
        self._stop_conversion()

    # -- the effort conversion of a model loaded dense ------------------------------------------

    def _start_conversion(self, on_progress: Callable[[LoadProgress], None]) -> None:
        path = str(self.loaded.files.path)
        log = tempfile.TemporaryFile()  # a pipe could fill up with progress lines and stall the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "convert", "--model", path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
        self._conversion = (proc, log, time.monotonic(), on_progress)
        on_progress(LoadProgress("effort", 0, EFFORT_PREPARE_S, "s", "preparing the effort dial in the background"))

    def _poll_conversion(self) -> None:
        if self._conversion is None:
            return
        proc, log, started, on_progress = self._conversion
        elapsed = time.monotonic() - started
        if proc.poll() is None:
            on_progress(LoadProgress("effort", min(elapsed, EFFORT_PREPARE_S - 1), EFFORT_PREPARE_S, "s",
                                     "preparing the effort dial in the background"))
            return
        self._conversion = None
        log.seek(0)
        lines = [ln for ln in log.read().decode("utf-8", "replace").replace("\r", "\n").splitlines() if ln.strip()]
        log.close()
        try:
            if proc.returncode != 0:
                raise EngineError(lines[-1] if lines else f"effort convert exited with {proc.returncode}")
            from engine.effort.planes import calibrate

            allocation = calibrate.load(self.loaded.files)
            if allocation is None:
                raise EngineError("the calibration left no allocation behind")
            self.loaded.runtime.attach(allocation)
            self.loaded.effort_pending = False
        except Exception as exc:  # noqa: BLE001 - the chat goes on dense
            on_progress(LoadProgress("effort", 0, 0, "failed", f"the effort dial is unavailable: {self._explain(exc)}"))
            return
        on_progress(LoadProgress("effort", 1, 1, "", f"the effort dial is ready ({elapsed:.0f} s)"))

    def _stop_conversion(self) -> None:
        if self._conversion is not None:
            proc, log, _, _ = self._conversion
            proc.terminate()  # its cache write is atomic: nothing half-written stays
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            self._conversion = None

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, EngineError):
            return str(exc)
        if isinstance(exc, OSError):  # an unreadable cache, a full disk: the machine's word, one line
            return os_error_message(exc)
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
                self._stop_conversion()  # a conversion for the previous model
                self.loaded = session.load(model, on_progress, load_ranks=self.load_ranks,
                                           defer_effort=True)
            except Exception as exc:  # noqa: BLE001 - reported to the caller as one line
                on_done(None, self._explain(exc))
                return
            self.effort.set_cap(self.loaded.info.effort_cap)
            if self.loaded.effort_pending:
                self._start_conversion(on_progress)
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
            from engine.model.diagnose import locating

            ids: list[int] = []
            try:
                if self.loaded is None:
                    raise EngineError("no model is loaded")
                tok = self.loaded.tokenizer
                if request.raw_prompt is not None:
                    ids = tok.encode(request.raw_prompt, add_bos=tok.add_bos, special=True)
                else:
                    ids = tok.encode_chat(request.messages)
                with locating(self.loaded.files):
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
