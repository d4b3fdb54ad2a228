"""Which matrices spend the byte budget of an effort: a share of its plane bytes for every matrix.

Every matrix of one kind (q, k, v, o, gate, up, down, head) reads the same share of its bytes; the
shares of the kinds come from their measured cost curves (`calibrate`: the KL each kind adds at a few
shares), spread by a convex-hull Lagrangian (`engine.effort.allocation.lagrangian_table`, the same
solver bucketMul's allocation uses) so that the bytes read are exactly the effort's share of the
layout's and the summed cost is least. Inside a matrix the rows and levels are the best by marginal
error per byte (`layout`): per token, either exactly the share (a per-token byte budget), or at a
static threshold per matrix set from the calibration text's score histograms so that it reads that
share on average (nothing to compute per token). `thresholds`/`shares` interpolate the table: one
lookup per effort change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.io.atomic import write_text

GRID = np.round(np.arange(0.05, 1.0001, 0.05), 4)


@dataclass
class Allocation:
    names: list[str]  # matrices, in the runtime's order (projections per layer, then the head)
    grid: np.ndarray  # [G] global efforts (shares of the layout's plane bytes), ascending, last 1.0
    share: np.ndarray  # [G, M] the share of each matrix's plane bytes read at each effort
    tau: np.ndarray  # [G, M] static thresholds reading those shares on the calibration text (negative: all)
    kinds: list[str]  # the kinds whose cost was measured
    levels: np.ndarray  # [J] the shares it was measured at
    cost: np.ndarray  # [K, J] KL to the dense model with one kind at one share (calibration text)

    def thresholds(self, effort: float) -> np.ndarray:
        """Per-matrix thresholds for a global effort: the table interpolated between grid points (in
        log space, where scores are spread evenly); below the grid, the lowest row."""
        e = float(effort)
        if e >= 1.0:
            return np.full(len(self.names), -1.0)
        g = self.grid
        if e <= g[0]:
            return self.tau[0].copy()
        j = min(int(np.searchsorted(g, e, side="right")) - 1, len(g) - 2)
        a = (e - g[j]) / (g[j + 1] - g[j])
        lo, hi = self.tau[j], self.tau[j + 1]
        if g[j + 1] >= 1.0:  # the top row reads everything: blend towards reading all
            return np.where(a >= 1.0, -1.0, lo * (1.0 - a))
        safe = (lo > 0) & (hi > 0)
        mixed = np.exp((1 - a) * np.log(np.where(safe, lo, 1.0)) + a * np.log(np.where(safe, hi, 1.0)))
        return np.where(safe, mixed, (1 - a) * lo + a * hi)

    def shares(self, effort: float) -> np.ndarray:
        """Per-matrix shares of plane bytes for a global effort (linear between grid points)."""
        e = float(effort)
        if e >= 1.0:
            return np.ones(len(self.names))
        g = self.grid
        if e <= g[0]:
            return self.share[0] * (e / g[0])
        j = min(int(np.searchsorted(g, e, side="right")) - 1, len(g) - 2)
        a = (e - g[j]) / (g[j + 1] - g[j])
        return (1 - a) * self.share[j] + a * self.share[j + 1]

    def save(self, path: Path) -> None:
        write_text(path, json.dumps({
            "names": self.names, "grid": self.grid.tolist(), "share": self.share.tolist(), "tau": self.tau.tolist(),
            "kinds": self.kinds, "levels": self.levels.tolist(), "cost": self.cost.tolist(),
        }))

    @classmethod
    def load(cls, path: Path) -> "Allocation":
        d = json.loads(path.read_text(encoding="utf-8"))
        arr = lambda k: np.asarray(d[k], float)  # noqa: E731
        return cls(list(d["names"]), arr("grid"), arr("share"), arr("tau"), list(d["kinds"]), arr("levels"), arr("cost"))


def bytes_at(hist: np.ndarray, bin_edges: np.ndarray, tau: float) -> float:
    """Plane rows per token above threshold `tau` from a [planes, bins] histogram of log2 scores per
    token (bins whose lower edge is above log2(tau) count fully; the bin holding it, in part)."""
    if tau <= 0:
        return float(hist.sum())
    t = np.log2(tau)
    width = bin_edges[1] - bin_edges[0]
    above = np.clip((bin_edges[:-1] + width - t) / width, 0.0, 1.0)
    return float((hist * above[None, :]).sum())


def threshold_for(hist: np.ndarray, bin_edges: np.ndarray, share: float) -> float:
    """The static threshold that reads `share` of a matrix's plane rows on average (from its histogram):
    `bytes_at` solved exactly. Rows above a threshold inside bin j are the bins above it plus the part
    of bin j above it, so the bin where the count passes share x total gives the threshold directly."""
    if share >= 1.0:
        return -1.0
    counts = hist.reshape(-1, hist.shape[-1]).sum(axis=0).astype(float)
    from_top = np.cumsum(counts[::-1])  # from_top[k]: rows in the top k + 1 bins
    target = share * from_top[-1]
    k = int(np.searchsorted(from_top, target, side="right"))  # the first k whose top k + 1 bins exceed it
    if k >= len(counts):  # nothing recorded: read nothing
        return float(2.0 ** (bin_edges[-1] + 1.0))
    j = len(counts) - 1 - k
    higher = from_top[k - 1] if k else 0.0  # rows in the bins above bin j
    width = bin_edges[1] - bin_edges[0]
    return float(2.0 ** (bin_edges[j] + width * (1.0 - (target - higher) / counts[j])))


FINE = np.round(np.linspace(0.0, 1.0, 51), 4)
COST_FLOOR = 1e-6  # the KL taken for reading all of a kind (0) on the log scale


def cost_curves(levels: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each kind's measured costs spread over a fine grid of shares: interpolated in log KL (costs
    fall roughly exponentially with the share read), extrapolated below the lowest measured share along
    its last slope, zero at 1; never cheaper when reading less. A coarse curve would put every kind on
    the same few measured shares, whatever their slopes."""
    xs = np.concatenate([levels, [1.0]])
    out = np.empty((cost.shape[0], len(FINE)))
    for k, row in enumerate(cost):
        ys = np.log(np.maximum(np.concatenate([row, [COST_FLOOR]]), COST_FLOOR))
        curve = np.interp(FINE, xs, ys)
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        low = FINE < xs[0]
        curve[low] = ys[0] + slope * (FINE[low] - xs[0])
        out[k] = np.exp(curve)
        out[k, -1] = 0.0
    return FINE, np.maximum.accumulate(out[:, ::-1], axis=1)[:, ::-1]


def build(names: list[str], kinds: np.ndarray, kind_names: tuple[str, ...], levels: np.ndarray, cost: np.ndarray,
          hist: np.ndarray, row_bytes: np.ndarray, bin_edges: np.ndarray, grid: np.ndarray = GRID) -> Allocation:
    """The allocation from measured kind cost curves.

    kinds [M]: each matrix's kind; cost [K, J]: KL with kind k at share levels[j]; hist [M, planes, bins]:
    each matrix's log2 row scores per token; row_bytes [M]: bytes of one plane row."""
    from engine.effort.allocation import lagrangian_table

    rows = hist.sum(axis=(1, 2))  # plane rows per token (planes x inputs)
    sizes = np.array([(rows * row_bytes)[kinds == k].sum() for k in kind_names])
    shares, curves = cost_curves(levels, cost)
    by_kind = lagrangian_table(curves, shares, sizes, grid)  # [G, K]
    index = {k: i for i, k in enumerate(kind_names)}
    share = by_kind[:, [index[k] for k in kinds]]
    tau = np.array([[threshold_for(hist[m], bin_edges, share[g, m]) for m in range(len(names))] for g in range(len(grid))])
    return Allocation(list(names), np.asarray(grid, float), share, tau, list(kind_names), np.asarray(levels, float), cost)
