"""The forward-only measurements the planes allocation is built from, run on the C decode step.

On a short calibration text (never one of the evaluation texts), teacher-forced:

1. one dense pass: the reference next-token distributions, and, per matrix, how its rows' scores
   ``x_i² · gain`` are spread (histograms of log2 scores, per plane; what static thresholds need);
2. for each kind of matrix (q, k, v, o, gate, up, down, head) and each of a few shares of its bytes,
   one pass with every matrix of that kind reading that share (the best rows, per token) and all
   others whole: the KL to the dense pass it costs. These are the kind's cost curve.

Each pass is one batched forward over the text (every matrix read once per pass, each token at its own
rows), so a pass costs about one decode step's memory traffic plus the tokens' arithmetic.

`allocation.build` spreads each global effort over the kinds where it costs least (a convex-hull
Lagrangian over the measured curves), every matrix of a kind at the kind's share. No backward pass and
no second copy of the weights: only forward passes over the layout, (kinds × shares + 1) of them, and
the memory is the histograms.

Why kinds and not single matrices: proxies that tell matrices apart without measuring each (their
output energy, the residual stream's) starved single matrices and cost 2-5x the KL of a uniform
split (docs/measurements.md); a kind measured as a whole cannot be starved by a bad proxy.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine.effort.planes import allocation as alloc
from engine.effort.planes.store import HEAD, layout_path
from engine.events import LoadProgress
from engine.io.loader import ModelFiles
from engine.model.decoder import PROJECTIONS
from engine.runtime import native

CALIBRATION_TEXT = Path(__file__).resolve().parents[2] / "data" / "calibration.txt"
CALIBRATION_TOKENS = 96
KINDS = (*PROJECTIONS, "lm_head")
LEVELS = (0.1, 0.175, 0.25, 0.35, 0.5, 0.75)  # shares of a kind's bytes whose cost is measured (1.0 costs nothing)
FORMAT_VERSION = 3

ProgressFn = Callable[[LoadProgress], None]


def allocation_path(files: ModelFiles) -> Path:
    return layout_path(files).with_suffix(f".calibration-v{FORMAT_VERSION}.json")


def load(files: ModelFiles) -> alloc.Allocation | None:
    """The model's calibrated allocation, or None when it has not been calibrated (or the file is unreadable)."""
    path = allocation_path(files)
    try:
        return alloc.Allocation.load(path) if path.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def calibration_tokens(tokenizer, limit: int = CALIBRATION_TOKENS) -> list[int]:
    return tokenizer.encode(CALIBRATION_TEXT.read_text(encoding="utf-8"))[:limit]


def token_budget(parameters: int, limit: int = CALIBRATION_TOKENS) -> int:
    """Fewer calibration tokens for larger models, so calibration stays within a few minutes on two
    cores: 96 up to 0.3B, down to 16 at 7B and beyond."""
    return int(np.clip(limit * 3e8 / max(parameters, 1), 16, limit))


def kind_of(name: str) -> str:
    return "lm_head" if name == HEAD else name.split(".")[4]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """In place, float32, a position at a time: a large vocabulary times the calibration tokens is tens
    of MB (Llama-1B: 12 MB a pass), and the first use's peak memory is counted against the weights."""
    for row in z:
        row -= row.max()
        row -= np.float32(np.log(np.exp(row).sum(dtype=np.float64)))
    return z


def _kl(dense: np.ndarray, lp: np.ndarray) -> float:
    """Mean KL(dense || lp) over positions, a position at a time (no copy of the logits)."""
    return float(np.mean([np.dot(np.exp(dense[t]), dense[t] - lp[t]) for t in range(len(lp))]))


def calibrate(runtime, tokens: list[int], on_progress: ProgressFn | None = None) -> alloc.Allocation:
    """Measure on `tokens` and build the allocation (`runtime`: an engine.runtime.cpu_runtime.CPURuntime)."""
    progress = on_progress or (lambda p: None)
    names = runtime.names
    kinds = np.array([kind_of(n) for n in names])
    m_count, steps = len(names), len(tokens) - 1
    passes = 1 + len(KINDS) * len(LEVELS)
    start = time.monotonic()
    hist = np.zeros((m_count, 2, native.HIST_BINS), np.uint32)
    stats = native.Stats(hist.ctypes.data)

    def run(effort, label: str, n: int) -> np.ndarray:
        progress(LoadProgress("calibrate", n, passes, "passes", f"{label} ({time.monotonic() - start:.0f}s)"))
        runtime.reset(0)
        return _log_softmax(runtime.run_batch(tokens[:-1], effort).astype(np.float32, copy=False))

    # every pass, the reference included, with int8 activations alone ("coarse"): half the arithmetic,
    # and allocations as good on held-out text (SmolLM2 Q8_0 at 0.5: KL 0.059 against 0.062 measured
    # with both activation levels; Q4_1 within the texts' spread)
    whole = np.ones(m_count, np.float32)
    runtime.lib.ee_set_stats(runtime._handle, ctypes.byref(stats))
    try:
        dense = run(native.Effort(None, whole.ctypes.data, 0, 1), "dense pass", 0)
    finally:
        runtime.lib.ee_set_stats(runtime._handle, None)
    cost = np.zeros((len(KINDS), len(LEVELS)))
    try:
        n = 1
        for k, kind in enumerate(KINDS):
            for j, level in enumerate(LEVELS):
                share = np.where(kinds == kind, level, 1.0).astype(np.float32)
                lp = run(native.Effort(None, share.ctypes.data, 0, 1), f"what {kind} costs at {level:.0%}", n)
                cost[k, j] = max(_kl(dense, lp), 0.0)
                n += 1
    finally:
        runtime.reset(0)
    row_bytes = np.array([runtime.planes.matrices[n].out_dim / 2 for n in names])
    edges = native.HIST_LOW + np.arange(native.HIST_BINS + 1) / native.HIST_PER_OCTAVE
    progress(LoadProgress("calibrate", passes, passes, "passes", "building the allocation"))
    return alloc.build(names, kinds, KINDS, np.array(LEVELS), cost, hist / steps, row_bytes, edges)


def calibrate_model(files: ModelFiles, runtime, on_progress: ProgressFn | None = None) -> alloc.Allocation:
    """Calibrate (with the token budget for the model's size), save beside the layout, return it."""
    parameters = sum(m.out_dim * m.in_dim for m in runtime.planes.matrices.values())
    budget = min(token_budget(parameters) + 1, runtime.context_limit)  # a short context holds fewer
    tokens = calibration_tokens(files.tokenizer, budget)
    result = calibrate(runtime, tokens, on_progress)
    result.save(allocation_path(files))
    return result
