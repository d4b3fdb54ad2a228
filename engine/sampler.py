"""Choosing the next token from logits: greedy at temperature 0, else temperature / top-k / top-p.

Works on a float32 numpy vector (one vocab row is small), so sampling is
identical on every backend and reproducible with a seed.
"""

from __future__ import annotations

import numpy as np

from engine.api import SamplingSettings


class Sampler:
    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self._rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray) -> int:
        s = self.settings
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if s.temperature <= 0.0:
            return int(np.argmax(logits))
        logits = logits / s.temperature
        candidates = np.arange(logits.size)
        if 0 < s.top_k < logits.size:
            candidates = np.argpartition(-logits, s.top_k - 1)[: s.top_k]
        order = candidates[np.argsort(-logits[candidates], kind="stable")]
        probs = np.exp(logits[order] - logits[order[0]])
        probs /= probs.sum()
        if s.top_p < 1.0:
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = int(np.searchsorted(np.cumsum(probs), s.top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self._rng.choice(order.size, p=probs)])
