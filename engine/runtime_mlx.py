"""Running the MLX model: batched dense prefill and single-token decode steps."""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import numpy as np

from engine.model import Cache, Model

PREFILL_CHUNK = 512

class MLXRuntime:
    """Dense prefill in chunks; decode through the effort path when one is plugged in."""

    def __init__(self, model: Model, context_limit: int, effort_path=None) -> None:
        """`effort_path`: an `engine.effort_mlx.MLXEffortPath`, or None for the dense model only."""
        self.model = model
        self.context_limit = context_limit
        self.effort_path = effort_path
        self.cache = Cache.for_model(model.config)

    def reset(self, keep: int) -> None:
        self.cache.trim(keep)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        logits = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = mx.array(list(ids[start : start + PREFILL_CHUNK]), dtype=mx.int32)
            logits = self.model(chunk, self.cache)
            mx.eval(logits, *[c.keys for c in self.cache.layers], *[c.values for c in self.cache.layers])
        assert logits is not None
        return np.array(logits[-1])

    def step(self, token: int, effort: float) -> tuple[np.ndarray, float]:
        tokens = mx.array([token], dtype=mx.int32)
        if effort >= 1.0 or self.effort_path is None:
            logits = self.model(tokens, self.cache)
            return np.array(logits[-1]), 1.0
        project, effective = self.effort_path(effort)
        logits = self.model(tokens, self.cache, project=project)
        out = np.array(logits[-1])
        return out, effective()

    def set_strategy(self, strategy: str) -> None:
        if self.effort_path is not None:
            self.effort_path.strategy = strategy

    def local_efforts(self, effort: float):
        return None if self.effort_path is None else self.effort_path.local_efforts(effort)

    def peak_memory(self) -> int:
        return int(mx.get_peak_memory())
