"""`effort eval`: what each effort costs in quality, measured against the dense model.

Teacher-forced decode over a text: the first token is prefilled, then every
following token is fed through a decode step at the effort under test, so each
position's own keys and values were computed under effort, exactly as in a
real answer. The next-token distributions are compared with the dense model's
at the same positions: mean KL(dense || effort), top-1 agreement, perplexity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from engine.errors import EngineError
from engine.events import LoadProgress


@dataclass
class EffortQuality:
    effort: float
    effective_effort: float
    strategy: str
    kl_mean: float
    top1_agreement: float
    ppl: float
    ppl_dense: float
    cosine: dict[str, float] = field(default_factory=dict)  # per projection kind, mean over layers

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def teacher_forced(runtime, ids: Sequence[int], effort: float) -> tuple[np.ndarray, float]:
    """Log-probabilities [len(ids)-1, vocab] of ids[1:] given the prefix, and the mean effective effort."""
    runtime.reset(0)
    rows = [runtime.prefill(ids[:1])]
    effective = []
    for token in ids[1:-1]:
        logits, used = runtime.step(token, effort)
        rows.append(logits)
        effective.append(used)
    return log_softmax(np.stack(rows)), float(np.mean(effective)) if effective else 1.0


def compare(dense_lp: np.ndarray, lp: np.ndarray, targets: np.ndarray) -> tuple[float, float, float]:
    """(mean KL(dense || effort), top-1 agreement, perplexity of the targets under `lp`)."""
    p = np.exp(dense_lp)
    kl = float((p * (dense_lp - lp)).sum(axis=-1).mean())
    top1 = float((dense_lp.argmax(-1) == lp.argmax(-1)).mean())
    ppl = float(np.exp(-lp[np.arange(len(targets)), targets].mean()))
    return max(kl, 0.0), top1, ppl


def evaluate(
    runtime,
    ids: Sequence[int],
    efforts: Sequence[float],
    strategies: Sequence[str] = ("bucket",),
    cosine: Callable[[float, str], dict[str, float]] | None = None,
    on_progress: Callable[[LoadProgress], None] | None = None,
) -> tuple[list[EffortQuality], float]:
    """Quality at every (strategy, effort); returns (results, dense perplexity)."""
    if len(ids) < 3:
        raise EngineError("the evaluation text is too short (need at least 3 tokens)")
    progress = on_progress or (lambda p: None)
    targets = np.asarray(ids[1:])
    runs = [(s, e) for s in strategies for e in efforts]
    progress(LoadProgress("eval", 0, len(runs) + 1, "", "dense reference"))
    dense_lp, _ = teacher_forced(runtime, ids, 1.0)
    _, _, ppl_dense = compare(dense_lp, dense_lp, targets)
    results = []
    for n, (strategy, effort) in enumerate(runs, 1):
        progress(LoadProgress("eval", n, len(runs) + 1, "", f"{strategy} at effort {effort:g}"))
        runtime.set_strategy(strategy)
        lp, effective = teacher_forced(runtime, ids, effort)
        kl, top1, ppl = compare(dense_lp, lp, targets)
        cos = cosine(effort, strategy) if cosine else {}
        results.append(EffortQuality(effort, effective, strategy, kl, top1, ppl, ppl_dense, cos))
    runtime.set_strategy("bucket")
    return results, ppl_dense
