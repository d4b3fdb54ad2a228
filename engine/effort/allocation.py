"""Effort allocation: global effort -> per-matrix local effort (pure numpy, plain arrays).

The user picks one global effort ``e``.  Matrices differ a lot in how much quality they lose
per skipped weight (gate/up and the first and last layers are the most sensitive), so the
budget is spread unevenly.  At conversion time a calibration text is run once and yields, for
every projection matrix ``m`` (all layers x q,k,v,o,gate,up,down):

* ``cost[m, j]``: the estimated KL added when ``m`` alone runs at local effort ``levels[j]``
  (``engine.effort.calibrate``: the output-error curve of ``error_curves`` scaled by a
  diagonal Fisher weight from one backward pass);
* ``achieved[m, j]``: the share of weights the probe cutoff really dispatches on the
  calibration text when ``levels[j]`` is requested (probes are a stratified sample, so this is
  close to, but not exactly, ``levels[j]``).

``lagrangian_table`` then solves, for each grid point ``g`` of global effort,

    minimise  sum_m cost_m(e_m)   subject to   sum_m size_m * e_m = g * sum_m size_m

(convex-hull Lagrangian relaxation; the two allocations that bracket ``g`` are blended so the
constraint holds exactly).  The result is a table ``[G, M]`` of local efforts.  At run time
``Allocation.local(e)`` interpolates the table linearly (the size-weighted mean of the result
is exactly ``e``, so effort stays honest) and ``Allocation.request(e)`` maps it through the
inverse of ``achieved`` to the effort to hand to ``cutoff_for_effort`` for each matrix.
Runtime cost: one interpolation of M numbers per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Allocation:
    names: list            # matrix names, e.g. "blk.3.ffn_gate"
    sizes: np.ndarray      # [M] in*out
    grid: np.ndarray       # [G] ascending global efforts, last is 1.0
    table: np.ndarray      # [G, M] local effort of each matrix at each grid point
    levels: np.ndarray     # [J] requested probe efforts used at calibration
    achieved: np.ndarray   # [M, J] measured share actually dispatched (non-decreasing in j)

    def local(self, effort: float) -> np.ndarray:
        """Per-matrix local effort (share of its weights to multiply) for a global effort."""
        e = float(np.clip(effort, 0.0, 1.0))
        g = self.grid
        if e <= g[0]:
            return self.table[0] * (e / g[0])
        j = min(int(np.searchsorted(g, e, side="right")) - 1, len(g) - 2)
        a = (e - g[j]) / (g[j + 1] - g[j])
        return (1 - a) * self.table[j] + a * self.table[j + 1]

    def request(self, effort: float) -> np.ndarray:
        """Per-matrix effort to pass to ``cutoff_for_effort`` so that the achieved share is ``local``."""
        loc = self.local(effort)
        ach, lv = self.achieved, np.asarray(self.levels, float)
        j = np.clip((ach < loc[:, None]).sum(1), 1, len(lv) - 1)      # ach[j-1] < loc <= ach[j]
        rows = np.arange(len(loc))
        a0, a1 = ach[rows, j - 1], ach[rows, j]
        t = np.clip((loc - a0) / np.where(a1 > a0, a1 - a0, 1.0), 0.0, 1.0)
        out = lv[j - 1] + t * (lv[j] - lv[j - 1])
        out = np.where(loc <= ach[:, 0], lv[0] * loc / np.maximum(ach[:, 0], 1e-12), out)
        return np.where(loc >= 1.0, 1.0, out)

    def global_of(self, local: np.ndarray) -> float:
        return float((self.sizes * local).sum() / self.sizes.sum())

    def to_arrays(self) -> dict:
        return {"names": np.array(self.names), "sizes": self.sizes, "grid": self.grid,
                "table": self.table, "levels": self.levels, "achieved": self.achieved}

    @classmethod
    def from_arrays(cls, a: dict) -> "Allocation":
        return cls([str(n) for n in a["names"]], np.asarray(a["sizes"]), np.asarray(a["grid"]),
                   np.asarray(a["table"]), np.asarray(a["levels"]), np.asarray(a["achieved"]))


def error_curves(bm, X: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative output-error energy and achieved share of one matrix at each requested level.

    bm: ``engine.effort.bucket.BucketMatrix``; X [N, in]: its inputs on the calibration text.
    relerr[j] = sum_t sum_i x_ti^2 * tail[k_ti, i] / sum_t |W x_t|^2, where tail[k, i] is the
    energy of the weights of input i at ranks >= k (cross terms between inputs are ignored:
    the skipped weights of different inputs are nearly uncorrelated).  achieved[j] = mean
    share of rows the probe cutoff dispatches."""
    B = bm.bucket
    X = np.asarray(X, np.float32)
    vals = bm.values()
    energy = (vals.astype(np.float64) ** 2).sum(1).reshape(B, bm.in_dim)       # [rank, in]
    tail = np.concatenate([np.cumsum(energy[::-1], 0)[::-1], np.zeros((1, bm.in_dim))])
    ynorm = float(((X @ bm.dense().T).astype(np.float64) ** 2).sum())
    cols = np.arange(bm.in_dim)[None, :]
    ax = np.abs(X)
    # every token at once: the probe products [T, P*in], their cutoffs, then k [T, in]
    products = (bm.probes[None, :, :] * ax[:, None, :]).reshape(len(X), -1)
    n = products.shape[1]
    scores = bm.stats2d[None, :, :] * ax[:, None, :]                              # [T, rank, in]
    relerr, achieved = np.zeros(len(levels)), np.zeros(len(levels))
    for j, e in enumerate(levels):
        keep = int(round(float(e) * n))
        if e >= 1.0 or keep >= n:
            cutoff = np.full(len(X), -np.inf, np.float32)
        elif keep <= 0:
            cutoff = np.full(len(X), np.inf, np.float32)
        else:
            cutoff = np.partition(products, n - keep - 1, axis=1)[:, n - keep - 1]
        K = (scores > cutoff[:, None, None]).sum(1)                                 # [T, in]
        relerr[j] = float((X.astype(np.float64) ** 2 * tail[K, cols]).sum()) / max(ynorm, 1e-30)
        achieved[j] = K.sum() / (B * K.size)
    return relerr, achieved


def _hull(levels: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of (levels, cost) (levels non-decreasing)."""
    h = []
    for j in range(len(levels)):
        while len(h) >= 2:
            a, b = h[-2], h[-1]
            if (cost[b] - cost[a]) * (levels[j] - levels[a]) >= (cost[j] - cost[a]) * (levels[b] - levels[a]):
                h.pop()
            else:
                break
        h.append(j)
    return np.array(h)


def lagrangian_table(cost: np.ndarray, share: np.ndarray, sizes: np.ndarray,
                     grid: np.ndarray) -> np.ndarray:
    """Optimal local efforts [G, M] for each global effort in ``grid`` (exact budget).

    cost [M, J] at shares ``share`` [M, J] (or [J]) of each matrix's weights, non-decreasing in j."""
    sizes = np.asarray(sizes, float)
    total = sizes.sum()
    share = np.broadcast_to(np.asarray(share, float), cost.shape)
    hulls = [_hull(share[m], cost[m]) for m in range(len(sizes))]

    def choose(lam):
        e = np.empty(len(sizes))
        for m, h in enumerate(hulls):
            e[m] = share[m, h][np.argmin(cost[m, h] + lam * sizes[m] / total * share[m, h])]
        return e

    table = np.empty((len(grid), len(sizes)))
    for gi, g in enumerate(grid):
        if g >= 1.0:
            table[gi] = 1.0
            continue
        lo, hi = 1e-12, 1e6                    # lambda: low -> high effort, high -> low effort
        for _ in range(100):
            mid = np.sqrt(lo * hi)
            if (sizes * choose(mid)).sum() / total > g:
                lo = mid
            else:
                hi = mid
        e_hi, e_lo = choose(lo), choose(hi)    # effort above / below g
        s_hi, s_lo = (sizes * e_hi).sum() / total, (sizes * e_lo).sum() / total
        a = 0.0 if s_hi == s_lo else (g - s_lo) / (s_hi - s_lo)
        table[gi] = a * e_hi + (1 - a) * e_lo
    return table
