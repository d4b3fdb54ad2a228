"""The executable spec of bucketMul (plain numpy, readable, deterministic).

    effort e in (0, 1]
      -> cutoff  = value leaving round(e * P * in) probe products probes[j, i] * |x[i]| above it
      -> dispatch: row r = rank*in + i  iff  stats[r] * |x[i]| > cutoff
      -> k[i]    = number of dispatched rows of input i (they are ranks 0..k[i]-1)
      -> y[c*B + pos[r, c]] += x[i] * value[r, c]    for every dispatched row r, every bucket c

Every faster path (CPU / GPU kernels taking ``x`` and ``k``) must match ``matvec_k`` element by
element.  The layout is defined in ``engine.effort.bucket``.
"""

from __future__ import annotations

import numpy as np

from engine.effort.bucket import BucketMatrix, cutoff_for_effort, k_from_cutoff


def dispatch_rows(bm: BucketMatrix, x: np.ndarray, cutoff: float) -> np.ndarray:
    """Indices of the dispatched bucket-list rows, ascending (brute-force definition)."""
    r = np.arange(bm.in_dim * bm.bucket)
    return r[bm.stats * np.abs(np.asarray(x, np.float32))[r % bm.in_dim] > cutoff]


def rows_from_k(k: np.ndarray, in_dim: int, bucket: int) -> np.ndarray:
    """The rows that the selection ``k`` dispatches, ascending: rank*in + i for rank < k[i]."""
    ranks = np.arange(bucket)[:, None]
    return np.nonzero((ranks < np.asarray(k)[None, :]).ravel())[0]


def matvec_rows(bm: BucketMatrix, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Bucket multiply of the given rows: scatter x[i]*value to output c*B+pos (float64 sum)."""
    x = np.asarray(x, np.float32)
    vals = bm.values()[rows]                                   # [n, nb]
    pos = bm.positions()[rows].astype(np.int64)                # [n, nb]
    contrib = x[rows % bm.in_dim][:, None] * vals              # fp32 products, like a kernel
    out_idx = np.arange(bm.n_buckets)[None, :] * bm.bucket + pos
    y = np.bincount(out_idx.ravel(), weights=contrib.ravel().astype(np.float64),
                    minlength=bm.out_dim)
    return y.astype(np.float32)


def matvec_k(bm: BucketMatrix, x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y for the selection k[in] (ints 0..B): what the fast kernels compute."""
    return matvec_rows(bm, x, rows_from_k(k, bm.in_dim, bm.bucket))


def bucket_matvec(bm: BucketMatrix, x: np.ndarray, effort: float,
                  cutoff: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole algorithm for one matrix: returns (y [out], k [in]).

    ``cutoff`` overrides the probe-derived cutoff (e.g. a cutoff shared by q/k/v)."""
    if cutoff is None:
        cutoff = cutoff_for_effort(bm.probes, x, effort)
    k = k_from_cutoff(bm.stats2d, x, cutoff)
    return matvec_k(bm, x, k), k


def effective_effort(k: np.ndarray | list, mats: BucketMatrix | list) -> float:
    """Share of weights actually multiplied.

    One matrix: ``effective_effort(k, bm)`` = sum(k) / (B * in).  Several matrices:
    ``effective_effort([k1, k2, ...], [bm1, bm2, ...])`` weights each by its size (in*out)."""
    if isinstance(mats, BucketMatrix):
        k = np.asarray(k)
        return float(k.sum()) / (mats.bucket * k.size)
    done = sum(float(np.sum(kk)) * bm.out_dim / bm.bucket for kk, bm in zip(k, mats))
    total = sum(bm.in_dim * bm.out_dim for bm in mats)
    return done / total
