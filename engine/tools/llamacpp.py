"""llama.cpp on the same file, timed the way `effort bench` times the engine (`effort bench --llama-cpp`).

The comparison the README's speed tables make is only fair on the same file, the same prompt, the same
greedy tokens and the same threads, measured in the same minute on a shared machine: so `effort bench`
times llama.cpp (through llama-cpp-python) in the same rounds as every effort, decoding the same number of
steps after the same prompt, and reading the same long prompt for the prompt speed.

llama.cpp runs in a child process of its own (an interpreter that has llama-cpp-python: this one, or the
one `--llama-cpp PYTHON` names), so its threads never share a process with the engine's (in one process
the two thread pools slowed each other down tenfold). llama-cpp-python is not a dependency of this
project: install it to compare (on x86 built from source with the CPU's instruction sets, as the README
says).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from engine.errors import EngineError

# The child: loads the model, then answers one JSON request per line on stdin.
_CHILD = r"""
import json, sys, time
import numpy as np
import llama_cpp
path, threads, context = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=context, n_batch=512,
                        verbose=False)
def last():
    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits(model.ctx), shape=(model.n_vocab(),))))
print(json.dumps({"version": getattr(llama_cpp, "__version__", "?")}), flush=True)
for line in sys.stdin:
    ask = json.loads(line)
    model.reset()
    if "prompt" in ask:
        start = time.perf_counter()
        model.eval(ask["prompt"])
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
        continue
    model.eval(ask["decode"])
    token, times = last(), []
    for n in range(ask["warmup"] + ask["tokens"]):
        start = time.perf_counter()
        model.eval([token])
        token = last()
        if n >= ask["warmup"]:
            times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": float(np.median(times))}), flush=True)
"""


class LlamaCpp:
    """llama.cpp in a child process, for timing: greedy decode steps and prompt reading."""

    def __init__(self, path: Path, threads: int, context: int, python: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [python or sys.executable, "-c", _CHILD, str(path), str(threads), str(context)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        hello = self.proc.stdout.readline()
        if not hello:
            err = self.proc.stderr.read().strip().splitlines()
            why = err[-1] if err else f"exit code {self.proc.wait()}"
            if "No module named 'llama_cpp'" in why:
                why = "llama-cpp-python is not installed there (pip install llama-cpp-python, or --llama-cpp PYTHON)"
            raise EngineError(f"llama.cpp did not start: {why}")
        self.version = json.loads(hello)["version"]

    def _ask(self, request: dict) -> float:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise EngineError(f"llama.cpp stopped: {self.proc.stderr.read().strip()[-200:]}")
        return float(json.loads(answer)["seconds"])

    def decode_speed(self, prompt_ids: Sequence[int], tokens: int, warmup: int = 4) -> float:
        """Median seconds per greedy decode step after reading `prompt_ids` (as engine.tools.bench does)."""
        return self._ask({"decode": [int(t) for t in prompt_ids], "tokens": tokens, "warmup": warmup})

    def prompt_seconds(self, ids: Sequence[int]) -> float:
        """Seconds to read `ids` from an empty cache (llama.cpp's batched prompt path)."""
        return self._ask({"prompt": [int(t) for t in ids]})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
