"""llama.cpp on the same file, timed the way `effort bench` times the engine (`effort bench --llama-cpp`).

The comparison the README's speed tables make is only fair on the same file, the same prompt, the same
greedy tokens and the same threads, measured in the same minute on a shared machine: so `effort bench`
times llama.cpp (through llama-cpp-python, when it is installed) in the same rounds as every effort,
decoding the same number of steps after the same prompt, and reading the same long prompt for the
prompt speed. llama-cpp-python is not a dependency of this project: install it to compare (for a fair
build on x86, from source with the CPU's instruction sets, as the README says).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import EngineError


class LlamaCpp:
    """A llama.cpp model for timing: greedy decode steps and prompt reading."""

    def __init__(self, path: Path, threads: int, context: int) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise EngineError("--llama-cpp needs llama-cpp-python (pip install llama-cpp-python)") from None
        self.llama_cpp = llama_cpp
        self.model = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads,
                                     n_ctx=context, n_batch=512, logits_all=False, verbose=False)
        self.version = getattr(llama_cpp, "__version__", "?")

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.llama_cpp.llama_get_logits(self.model.ctx), shape=(self.model.n_vocab(),))

    def decode_speed(self, prompt_ids: Sequence[int], tokens: int, warmup: int = 4) -> float:
        """Median seconds per greedy decode step after reading `prompt_ids` (as engine.tools.bench does)."""
        self.model.reset()
        self.model.eval(list(prompt_ids))
        token = int(np.argmax(self._last_logits()))
        times = []
        for n in range(warmup + tokens):
            start = time.perf_counter()
            self.model.eval([token])
            token = int(np.argmax(self._last_logits()))
            if n >= warmup:
                times.append(time.perf_counter() - start)
        return float(np.median(times))

    def prompt_seconds(self, ids: Sequence[int]) -> float:
        """Seconds to read `ids` from an empty cache (llama.cpp's batched prompt path)."""
        self.model.reset()
        start = time.perf_counter()
        self.model.eval(list(ids))
        return time.perf_counter() - start
