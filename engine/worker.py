"""The engine's own thread: every MLX call happens here, callers get plain-Python callbacks.

MLX streams are per thread, so loading and generating on one long-lived
thread keeps all arrays on the stream that made them. Jobs run one at a time
in submission order; a cancel takes effect before the next token.

A model that has never been converted loads dense on the native CPU path and is
usable at once; its effort conversion and calibration (a minute or more) run in
a child process (`engine.conversion_child`, so MLX work never shares this thread),
and the worker attaches the result between jobs. Until then every token is dense;
the front end hears LoadProgress("effort", ...) with the child's own progress as it
goes, then "effort-ready" or "effort-failed".
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
from engine.conversion_child import read_progress
from engine.errors import EngineError, os_error_message
from engine.events import GenerationResult, LoadProgress, TokenEvent

ProgressFn = Callable[[LoadProgress], None]

# what the conversion child is doing, as the chat says it: its LoadProgress stages
CONVERSION_STEPS = {
    "read": "reading the model", "load": "reading the model", "verify": "checking the model",
    "convert": "laying out the weights", "calibrate": "calibrating",
}


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


class _Conversion:
    """The conversion child of the model loaded dense, and what it has said so far."""

    def __init__(self, model_path: str, on_progress: ProgressFn) -> None:
        # temporary files, not pipes: a pipe could fill up while this thread decodes and stall the child
        self.out: IO[bytes] = tempfile.TemporaryFile()
        self.err: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.conversion_child", model_path],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
        )
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.error: str | None = None
        self._read = 0

    def report(self) -> None:
        """Pass on the child's latest progress (lines written since the last look)."""
        self.out.seek(self._read)
        data = self.out.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._read += len(complete)
        latest: LoadProgress | None = None
        for line in complete.decode("utf-8", "replace").splitlines():
            item = read_progress(line)
            if isinstance(item, str):
                self.error = item
            elif item is not None and item.stage in CONVERSION_STEPS:
                latest = item
        if latest is not None:
            self.on_progress(LoadProgress("effort", latest.done, latest.total, latest.unit, CONVERSION_STEPS[latest.stage]))

    def failure(self) -> str:
        """Why the child failed, in one line."""
        if self.error:
            return self.error
        self.err.seek(0)
        lines = [ln for ln in self.err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else f"the conversion exited with {self.proc.returncode}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # its cache write is atomic: nothing half-written stays
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.err.close()


class EngineWorker:
    """The real `ChatEngine`. Its effort dial starts at 1.0; the front end sets the starting effort."""

    def __init__(self, debug: bool = False, load_ranks: int | None = None) -> None:
        self.effort = EffortSetting()
        self.debug = debug
        self.load_ranks = load_ranks
        self.loaded = None  # engine.session.LoadedModel once a load succeeded
        self._conversion: _Conversion | None = None
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

    def _poll_conversion(self) -> None:
        conversion = self._conversion
        if conversion is None:
            return
        running = conversion.proc.poll() is None
        conversion.report()
        if running:
            return
        self._conversion = None
        elapsed = time.monotonic() - conversion.started
        try:
            if conversion.proc.returncode != 0:
                raise EngineError(conversion.failure())
            from engine.effort.planes import calibrate

            allocation = calibrate.load(self.loaded.files)
            if allocation is None:
                raise EngineError("the calibration left no allocation behind")
            self.loaded.runtime.attach(allocation)
            self.loaded.effort_pending = False
        except Exception as exc:  # noqa: BLE001 - the chat goes on dense
            conversion.on_progress(LoadProgress("effort-failed", 0, 0, "", f"the effort dial is unavailable: {self._explain(exc)}"))
            return
        finally:
            conversion.stop()
        conversion.on_progress(LoadProgress("effort-ready", 1, 1, "", f"the effort dial is ready ({elapsed:.0f} s)"))

    def _stop_conversion(self) -> None:
        if self._conversion is not None:
            self._conversion.stop()
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
                loaded = session.load(model, on_progress, load_ranks=self.load_ranks, defer_effort=True)
            except Exception as exc:  # noqa: BLE001 - reported to the caller as one line
                on_done(None, self._explain(exc))  # a model loaded before stays loaded
                return
            self._stop_conversion()  # the previous model's
            self.loaded = loaded
            self.effort.set_cap(loaded.info.effort_cap)
            if loaded.effort_pending:
                self._conversion = _Conversion(str(loaded.files.path), on_progress)
                on_progress(LoadProgress("effort", 0, 0, "", "preparing the effort dial in the background"))
            on_done(loaded.info, None)

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
                elif request.answer_prefix:  # one text, so the prefix is split into tokens as the model would
                    ids = tok.encode_chat(request.messages, answer_prefix=request.answer_prefix)
                else:
                    ids = tok.encode_chat(request.messages)
                with locating(self.loaded.files):
                    result = self.loaded.generator.generate(
                        ids, request.sampling, self.effort, cancel=handle.cancelled, on_token=on_token,
                        on_prefill=on_prefill,
                    )
            except Exception as exc:  # noqa: BLE001
                result = GenerationResult.failed(self._explain(exc), ids)
            handle.finish(result)
            on_done(result)

        self._jobs.put(job)
        return handle

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)
