"""Choosing the next token from logits: greedy at temperature 0, else a repetition penalty, then
temperature / top-k / top-p / min-p.

Works on a float32 numpy vector (one vocab row is small), so sampling is
identical on every backend and reproducible with a seed.

`CHAT_DEFAULTS` is what chat and `effort generate` use when neither the model's files nor the
user say otherwise (`defaults_for` reads the model's own: GGUF ``general.sampling.*`` keys or a
Hugging Face folder's ``generation_config.json``). Greedy decoding of small instruct models loops
("a freezer door, a freezer, a freezer door, …"); these defaults keep SmolLM2-135M's long answers
above 60 % distinct 4-grams (tests/test_real_model.py), and temperature 0 is still the exact argmax.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from engine.api import SamplingSettings

CHAT_DEFAULTS = SamplingSettings(
    temperature=0.7, top_p=0.9, top_k=0, min_p=0.05, repetition_penalty=1.1, repetition_window=64
)

# GGUF metadata keys (llama.cpp's `general.sampling.*`) and HF generation_config.json keys.
_GGUF_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
    "general.sampling.penalty_last_n": "repetition_window",
}
_HF_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
}
_INT_FIELDS = {"top_k", "repetition_window"}


def _clean(field: str, value: Any) -> Any | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number) or number < 0:
        return None
    if field == "top_p" and not 0.0 < number <= 1.0:
        return None
    if field == "min_p" and number >= 1.0:
        return None
    if field == "repetition_penalty" and number <= 0.0:
        return None
    return int(number) if field in _INT_FIELDS else number


def model_defaults(metadata: Mapping[str, Any] | None, folder: Path | None = None) -> dict[str, Any]:
    """The generation defaults a model ships with, as SamplingSettings field values ({} if none)."""
    found: dict[str, Any] = {}
    for key, field in _GGUF_KEYS.items():
        if metadata and key in metadata and (value := _clean(field, metadata[key])) is not None:
            found[field] = value
    if folder is not None and (folder / "generation_config.json").is_file():
        try:
            config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        if isinstance(config, dict) and config.get("do_sample") is not False:
            for key, field in _HF_KEYS.items():
                if key in config and (value := _clean(field, config[key])) is not None:
                    found.setdefault(field, value)
    if found.get("top_k", 0) >= 1_000_000:
        found["top_k"] = 0
    return found


def defaults_for(metadata: Mapping[str, Any] | None, folder: Path | None = None) -> SamplingSettings:
    """`CHAT_DEFAULTS` with whatever the model's files recommend laid over it."""
    return replace(CHAT_DEFAULTS, **model_defaults(metadata, folder))


def overlay(base: SamplingSettings, user: SamplingSettings, reference: SamplingSettings = CHAT_DEFAULTS) -> SamplingSettings:
    """`base` (the model's defaults) with every field of `user` that differs from `reference`."""
    changed = {
        name: getattr(user, name)
        for name in SamplingSettings.__dataclass_fields__
        if getattr(user, name) != getattr(reference, name)
    }
    return replace(base, **changed)


def apply_repetition_penalty(logits: np.ndarray, recent: Iterable[int], penalty: float) -> np.ndarray:
    """CTRL / transformers-style: a seen token's logit is divided by `penalty` if positive, else
    multiplied. Each token is penalised once however often it occurred."""
    ids = np.fromiter(set(recent), dtype=np.int64)
    if penalty == 1.0 or ids.size == 0:
        return logits
    ids = ids[(ids >= 0) & (ids < logits.size)]
    out = logits.copy()
    seen = out[ids]
    out[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return out


def token_distribution(
    logits: np.ndarray, settings: SamplingSettings, recent: Iterable[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The final distribution of the next token: (ids, probabilities), ids by descending probability,
    probabilities summing to 1; every other token has probability 0. Greedy is the argmax alone.

    The one definition of what `settings` do to logits: the plain sampler draws from it, and
    speculative decoding (`engine.speculative`) compares two of them, the draft's and full effort's,
    so its output keeps exactly this distribution. `recent`: the tokens the repetition penalty sees
    (already cut to the window)."""
    s = settings
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if s.temperature <= 0.0:
        return np.array([int(np.argmax(logits))]), np.ones(1)
    if s.repetition_penalty != 1.0 and s.repetition_window > 0:
        logits = apply_repetition_penalty(logits, recent, s.repetition_penalty)
    logits = logits / s.temperature
    candidates = np.arange(logits.size)
    if 0 < s.top_k < logits.size:
        candidates = np.argpartition(-logits, s.top_k - 1)[: s.top_k]
    if 0.0 < s.min_p < 1.0:
        # min-p drops every token below min_p x the top one's probability, so sort only those near
        # the top (a margin above rounding; the exact test below decides): one vocabulary-sized sort
        # per token was the sampler's largest cost
        top = logits[candidates].max()
        candidates = candidates[logits[candidates] >= top + np.log(s.min_p) - 1e-6]
    order = candidates[np.argsort(-logits[candidates], kind="stable")]
    probs = np.exp(logits[order] - logits[order[0]])
    probs /= probs.sum()
    if 0.0 < s.min_p < 1.0:
        # keep the tokens at least min_p times as likely as the top one (the top one always)
        keep = max(1, int(np.count_nonzero(probs >= s.min_p * probs[0])))
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    if s.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = int(np.searchsorted(np.cumsum(probs), s.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return order, probs


class Sampler:
    """Call with each step's logits; it remembers what it chose (and the prompt given) for the
    repetition penalty. Speculative decoding uses its parts: `distribution` with drafted tokens
    not yet accepted, `draw`, and `record` for the tokens it accepts."""

    def __init__(self, settings: SamplingSettings, context: Iterable[int] = ()) -> None:
        self.settings = settings
        self._rng = np.random.default_rng(settings.seed)
        self._window = max(0, settings.repetition_window)
        self._recent: deque[int] = deque(context, maxlen=self._window or None)
        if self._window == 0:
            self._recent.clear()

    @property
    def rng(self) -> np.random.Generator:
        """The one random stream of this answer (seeded by `settings.seed`)."""
        return self._rng

    def __call__(self, logits: np.ndarray) -> int:
        token = self.draw(*self.distribution(logits))
        self.record([token])
        return token

    def distribution(self, logits: np.ndarray, pending: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """`token_distribution` after the tokens chosen so far and then `pending` (drafted, not yet
        accepted: the penalty sees them as the plain sampler would if they were)."""
        recent: Iterable[int] = self._recent
        if pending and self._window:
            recent = [*self._recent, *pending][-self._window :]
        return token_distribution(logits, self.settings, recent)

    def draw(self, ids: np.ndarray, probs: np.ndarray) -> int:
        """One token from a distribution; greedy takes the first without touching the random stream."""
        if self.settings.greedy:
            return int(ids[0])
        return int(ids[self._rng.choice(ids.size, p=probs)])

    def record(self, tokens: Iterable[int]) -> None:
        """Tokens that are now part of the answer (the repetition penalty looks back over them)."""
        if self._window:
            self._recent.extend(tokens)
