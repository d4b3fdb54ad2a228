"""Where the effort budget goes: a per-matrix allocation calibrated once, at conversion.

Matrices differ a lot in what skipping a weight costs. For every projection m
and effort level e we estimate the KL it adds alone as

    cost[m, e] ~ fisher[m] * error[m, e]

* error[m, e]: the energy of the products bucketMul skips in m at effort e, on the
  calibration text's own activations (`allocation.error_curves`, exact selection,
  diagonal error model);
* fisher[m]: the mean squared gradient of the text's log-likelihood with respect to
  m's output, from ONE backward pass (a diagonal, isotropic Fisher approximation).
  Measuring each matrix's KL directly takes 210 forward passes (~20 min here); this
  takes seconds.

`allocation.lagrangian_table` then spreads each global effort over the matrices at the
lowest summed cost with the size-weighted share exactly equal to the global effort.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from engine.effort.allocation import Allocation, error_curves, lagrangian_table
from engine.effort.bucket import BucketMatrix
from engine.events import LoadProgress
from engine.model.decoder import PROJECTIONS, Cache, Model, weight_name

CALIBRATION_TEXT = Path(__file__).resolve().parents[1] / "data" / "calibration.txt"
CALIBRATION_TOKENS = 128
LEVELS = np.array([0.02, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
GRID = np.round(np.arange(0.05, 1.0001, 0.05), 4)

ProgressFn = Callable[[LoadProgress], None]


def output_fisher(model: Model, tokens: list[int]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean squared gradient of the summed next-token log-likelihood w.r.t. each projection's output,
    and each projection's inputs [len(tokens)-1, in] from the same forward pass."""
    inputs = mx.array(tokens[:-1], dtype=mx.int32)
    targets = mx.array(tokens[1:], dtype=mx.int32)
    c = model.config
    length = len(tokens) - 1
    outs = {weight_name(i, p): model.w[weight_name(i, p)].shape[0] for i in range(c.num_layers) for p in PROJECTIONS}
    zeros = {name: mx.zeros((length, out), dtype=mx.float32) for name, out in outs.items()}
    seen: dict[str, mx.array] = {}

    def nll(perturb: dict[str, mx.array]) -> mx.array:
        def project(i: int, p: str, x: mx.array) -> mx.array:
            seen[weight_name(i, p)] = mx.stop_gradient(x)
            return model.dense(i, p, x) + perturb[weight_name(i, p)]

        logits = model.logits(model.hidden(inputs, Cache.for_model(c), project))
        picked = mx.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        return (mx.logsumexp(logits, axis=-1) - picked).sum()

    grads = mx.grad(nll)(zeros)
    mx.eval(grads, seen)
    fisher = {name: float(mx.mean(g.astype(mx.float32) ** 2).item()) for name, g in grads.items()}
    return fisher, {name: np.array(x.astype(mx.float32)) for name, x in seen.items()}


def calibrate(
    model: Model,
    buckets: dict[str, BucketMatrix],
    tokens: list[int],
    on_progress: ProgressFn | None = None,
) -> Allocation:
    progress = on_progress or (lambda p: None)
    names = list(buckets)
    start = time.monotonic()
    progress(LoadProgress("calibrate", 0, len(names) + 1, "", "sensitivity (one backward pass)"))
    fisher, inputs = output_fisher(model, tokens)
    sizes = np.array([buckets[n].out_dim * buckets[n].in_dim for n in names], float)
    cost = np.zeros((len(names), len(LEVELS)))
    achieved = np.zeros_like(cost)
    for m, name in enumerate(names, 0):
        bm, X = buckets[name], inputs[name]
        relerr, achieved[m] = error_curves(bm, X, LEVELS)
        y = X @ np.array(model.w[name].astype(mx.float32)).T
        energy = float((y.astype(np.float64) ** 2).sum()) / len(X)
        cost[m] = fisher[name] * relerr * energy
        progress(LoadProgress("calibrate", m + 1, len(names) + 1, "", f"error curves ({time.monotonic() - start:.0f}s)"))
    cost[:, LEVELS >= 1.0] = 0.0
    cost = np.maximum.accumulate(cost[:, ::-1], axis=1)[:, ::-1]  # never cheaper at lower effort
    achieved = np.maximum.accumulate(achieved, axis=1)
    achieved[:, LEVELS >= 1.0] = 1.0
    table = lagrangian_table(cost, achieved, sizes, GRID)
    return Allocation(names, sizes, GRID, table, LEVELS.copy(), achieved)


def calibration_tokens(tokenizer, limit: int = CALIBRATION_TOKENS) -> list[int]:
    """The bundled calibration text (distinct from the evaluation text), tokenized."""
    return tokenizer.encode(CALIBRATION_TEXT.read_text(encoding="utf-8"))[:limit]
