"""`effort eval`: what each effort costs in quality, measured against the dense model.

Teacher-forced decode over a text: the first token is prefilled, then every
following token is fed through a decode step at the effort under test, so each
position's own keys and values were computed under effort, exactly as in a
real answer. The next-token distributions are compared with the dense model's
at the same positions: mean KL(dense || effort), top-1 agreement, perplexity.

Quality is judged on held-out text: the bundled evaluation texts in `engine/data/eval/` (prose,
a conversation, technical prose, source code), none of them the calibration text, each scored on
its own and then averaged. With `--speed` the same run also times decode at every effort and
strategy (engine.tools.bench) and puts both side by side: the speed-quality frontier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.errors import EngineError
from engine.events import LoadProgress
from engine.model.diagnose import require_finite
from engine.runtime.base import check_room, check_tokens


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
    check_tokens(runtime, ids)
    check_room(runtime, len(ids) - 1, f"scoring {len(ids) - 1} tokens", f"use --tokens {runtime.context_limit} or fewer")
    runtime.reset(0)
    first = runtime.prefill(ids[:1])
    require_finite(first, "at position 0 of the evaluation text", ids[:1])
    if len(ids) <= 2:
        return log_softmax(first[None, :]), 1.0
    rest, effective = runtime.forward(ids[1:-1], effort)  # each position as a decode step at `effort` gives it
    require_finite(rest, f"in the evaluation text (effort {effort:g})", ids)
    return log_softmax(np.concatenate([first[None, :], rest])), effective


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
    runtime.set_strategy(runtime.strategies[0])
    return results, ppl_dense


EVAL_DIR = Path(__file__).resolve().parents[1] / "data" / "eval"
DEFAULT_TEXT = EVAL_DIR / "prose.txt"  # one of the default texts, for callers that want a single one


def default_texts() -> list[Path]:
    """The bundled evaluation texts, in name order (none of them is the calibration text)."""
    texts = sorted(EVAL_DIR.glob("*.txt"))
    if not texts:
        raise EngineError(f"no evaluation texts in {EVAL_DIR} (a broken install?); pass --text-file")
    return texts


def mean_results(per_text: Sequence[Sequence[EffortQuality]]) -> list[EffortQuality]:
    """The mean over texts of each (strategy, effort): arithmetic for KL, top-1, effective effort
    and cosines, geometric for perplexities (a mean of per-token log-likelihoods)."""
    if not per_text:
        return []
    groups: dict[tuple[str, float], list[EffortQuality]] = {}
    for results in per_text:
        for r in results:
            groups.setdefault((r.strategy, r.effort), []).append(r)
    out = []
    for (strategy, effort), rows in groups.items():
        kinds = [k for k in rows[0].cosine if all(k in r.cosine for r in rows)]
        out.append(EffortQuality(
            effort, float(np.mean([r.effective_effort for r in rows])), strategy,
            float(np.mean([r.kl_mean for r in rows])), float(np.mean([r.top1_agreement for r in rows])),
            float(np.exp(np.mean([np.log(r.ppl) for r in rows]))),
            float(np.exp(np.mean([np.log(r.ppl_dense) for r in rows]))),
            {k: round(float(np.mean([r.cosine[k] for r in rows])), 5) for k in kinds},
        ))
    return out


@dataclass
class FrontierPoint:
    """One (strategy, effort): decode speed next to quality (the mean over the texts)."""

    strategy: str
    effort: float
    effective_effort: float  # share of weights multiplied during the timed decode
    speedup: float  # vs the dense path, timed in the same rounds
    spread: float  # (slowest - fastest round) / median
    decode_tps: float
    kl_mean: float
    top1_agreement: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def frontier(speed: dict[str, tuple], quality: Sequence[EffortQuality]) -> list[FrontierPoint]:
    """Join speed runs ({strategy: (dense SpeedResult, [per-effort SpeedResult])}, from bench.run)
    with mean quality rows. Effort 1.0 is the dense path itself (speedup 1 by definition)."""
    points = []
    for strategy, (dense, results) in speed.items():
        timed = {r.effort: r for r in results}
        for q in quality:
            if q.strategy != strategy:
                continue
            r = dense if q.effort >= 1.0 else timed.get(q.effort)
            if r is None:
                continue
            points.append(FrontierPoint(
                strategy, q.effort, r.effective_effort, 1.0 if r is dense else r.speedup,
                r.spread, r.decode_tps, q.kl_mean, q.top1_agreement,
            ))
    return points


def matrix_cosines(
    runtime, inputs: dict[str, np.ndarray], effort: float, strategy: str, dense: dict | None = None
) -> dict[str, float]:
    """Mean cosine similarity between each projection's effort output and its dense output,
    per projection kind, over the captured inputs (same input for both). `dense` caches the
    dense outputs across calls (they do not depend on the effort)."""
    dense = {} if dense is None else dense
    from engine.tools.bench import matrix_kind

    runtime.set_strategy(strategy)
    sums: dict[str, list[float]] = {}
    for name, rows in inputs.items():
        for n, x in enumerate(rows):
            y, _ = runtime.project(name, x, effort)
            if (name, n) not in dense:
                dense[name, n] = runtime.project(name, x, 1.0)[0]
            d = dense[name, n]
            denom = float(np.linalg.norm(y) * np.linalg.norm(d))
            sums.setdefault(matrix_kind(name), []).append(float(y @ d) / denom if denom > 0 else 1.0)
    runtime.set_strategy(runtime.strategies[0])
    return {p: round(float(np.mean(v)), 5) for p, v in sums.items()}


def format_table(results: list[EffortQuality], model: str, tokens: int, label: str | None = None) -> str:
    where = f"{label}, " if label else ""
    lines = [
        f"quality vs the dense model — {model}, {where}{tokens} tokens teacher-forced",
        f"{'strategy':<11}{'effort':>7}{'effective':>10}{'KL':>9}{'top-1':>8}{'ppl':>9}{'dense ppl':>10}  cosine (q k v o gate up down)",
    ]
    for r in results:
        cos = " ".join(f"{v:.3f}" for v in r.cosine.values()) if r.cosine else "-"
        lines.append(
            f"{r.strategy:<11}{r.effort:>7.2f}{r.effective_effort:>10.3f}{r.kl_mean:>9.4f}"
            f"{r.top1_agreement:>8.1%}{r.ppl:>9.2f}{r.ppl_dense:>10.2f}  {cos}"
        )
    return "\n".join(lines)


def format_frontier(points: list[FrontierPoint], model: str, texts: int) -> str:
    lines = [
        f"speed-quality frontier — {model}; quality is the mean over {texts} text{'s' if texts != 1 else ''}",
        f"{'strategy':<11}{'effort':>7}{'effective':>10}{'vs dense':>9}{'spread':>8}{'tok/s':>8}{'KL':>9}{'top-1':>8}",
    ]
    for p in points:
        lines.append(
            f"{p.strategy:<11}{p.effort:>7.2f}{p.effective_effort:>10.3f}{p.speedup:>8.2f}x"
            f"{100 * p.spread:>7.0f}%{p.decode_tps:>8.1f}{p.kl_mean:>9.4f}{p.top1_agreement:>8.1%}"
        )
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EngineError("--plot needs matplotlib: pip install matplotlib (or this project's [plot] extra)") from None
    return plt


def _label(strategy: str) -> str:
    return {"bucket": "bucketMul", "planes": "planes (bytes read)"}.get(strategy, "activation-only (TEAL-like)")


def _save(fig, plt, path: str) -> None:
    from engine.io.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_frontier(points: list[FrontierPoint], path: str, model: str) -> None:
    """Mean KL (log) against speedup vs dense, one curve per strategy, each point labelled with
    its effort: the picture for choosing an effort (needs matplotlib)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for strategy in dict.fromkeys(p.strategy for p in points):
        # the dense point (KL 0) has no place on a log axis: it is the dashed line at 1x
        rows = sorted((p for p in points if p.strategy == strategy and p.kl_mean > 0), key=lambda p: -p.effort)
        xs, ys = [p.speedup for p in rows], [p.kl_mean for p in rows]
        ax.plot(xs, ys, "o-", label=_label(strategy))
        for p, x, y in zip(rows, xs, ys):
            ax.annotate(f"{p.effort:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="dense (KL 0)")
    if any(p.kl_mean > 0 for p in points):
        ax.set_yscale("log")
    ax.set_xlabel("decode speed vs dense (×)")
    ax.set_ylabel("mean KL to the dense model (held-out texts)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Speed-quality frontier — {model}")
    fig.tight_layout()
    _save(fig, plt, path)


def plot(results: list[EffortQuality], path: str, model: str) -> None:
    """KL and top-1 agreement against effort, one curve per strategy (needs matplotlib)."""
    plt = _pyplot()
    fig, (ax_kl, ax_top) = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in dict.fromkeys(r.strategy for r in results):
        rows = sorted((r for r in results if r.strategy == strategy), key=lambda r: r.effort)
        label = _label(strategy)
        ax_kl.plot([r.effort for r in rows], [max(r.kl_mean, 1e-6) for r in rows], "o-", label=label)
        ax_top.plot([r.effort for r in rows], [100 * r.top1_agreement for r in rows], "o-", label=label)
    ax_kl.set_yscale("log")
    ax_kl.set_xlabel("effort (share of weights multiplied)")
    ax_kl.set_ylabel("mean KL to the dense model")
    ax_top.set_xlabel("effort (share of weights multiplied)")
    ax_top.set_ylabel("top-1 agreement with the dense model (%)")
    for ax in (ax_kl, ax_top):
        ax.grid(alpha=0.3)
        ax.invert_xaxis()
        ax.legend()
    fig.suptitle(f"Quality vs effort — {model}")
    fig.tight_layout()
    _save(fig, plt, path)
