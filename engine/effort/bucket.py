"""bucketMul conversion: the bucket-list layout of one projection matrix (pure numpy).

Layout (the single definition; everything else in the engine refers to this docstring)
--------------------------------------------------------------------------------------
A projection ``W`` is given as ``[out, in]`` (HF / GGUF row order, ``y = W @ x``).
With bucket size ``B``, ``nb = out // B`` buckets; bucket ``c`` holds outputs ``c*B .. c*B+B-1``.
The bucket size is a property of the matrix (``BucketMatrix.bucket``); every kernel in the project
takes ``B = 16`` (the CPU kernels rank their own fp16 copy the same way), and everything below
holds for 8 as well (the tests check both).

For every input ``i`` and bucket ``c`` the ``B`` weights ``W[c*B + p, i]`` (p = 0..B-1) are
sorted by descending ``|w|`` (stable: ties keep ascending ``p``).  The rank-th of them goes to

    row  r = rank * in + i            (rank-major: all rank-0 rows, then all rank-1 rows, ...)
    col  c

of the *bucket list* ``[in * B, nb]``; its position ``p`` (0..B-1) is stored with it.  The least
important weights are therefore at the end of the buffer, so a prefix of ranks can be loaded
alone, and every ``(i, c)`` holds a permutation of ``0..B-1`` across the ranks.

Packings (how value and 4-bit position are stored), ``BucketMatrix.packing``:

* ``"nibble"``  (default) values fp16, round-to-nearest from fp32 (exact up to fp16 rounding);
  positions in a separate nibble array ``pos_packed [in*B, nb//2]`` uint8, low nibble = even
  column, high nibble = odd column.  Memory 1.25x fp16.
* ``"nearest"`` one fp16 word per weight; the low 4 mantissa bits ARE the position (``B = 16`` only).  The value
  is the fp16 number nearest to the fp32 weight among those whose low 4 bits equal the
  position (error <= 8 ulp of fp16, <= ~0.8% relative).  Memory 1.0x fp16.
* ``"truncate"`` like ``nearest`` but the low 4 bits are simply overwritten (the original
  kolinko/effort scheme; error up to 15 ulp, ~1.5%).  Memory 1.0x fp16.
* ``"fp32"``  values float32 + nibble positions: exact, for tests and research only.

``BucketMatrix.values()`` decodes to float32 ``[in*B, nb]`` and ``positions()`` to uint8
``[in*B, nb]`` whatever the packing.

Stats: ``stats [in*B]`` float32, ``stats[r] = mean_c |W_orig(r, c)|`` computed from the original
(unpacked) fp32 weights, then made non-increasing in rank for each input by a running minimum
(a no-op up to float rounding).  Viewed as ``stats.reshape(B, in)``: ``stats2d[rank, i]``.

Probes: ``probes [P, in]`` float32 with ``P = n_probes`` (divides B): probe ``j`` of input ``i``
is the mean of the stats at the two middle ranks of the stratum ``j*B/P .. (j+1)*B/P - 1`` of
that input (for P = B the probes are exactly the stats).  Every input is covered and probe
``[j, i]`` is multiplied by ``|x[i]|``; the cutoff for effort ``e`` is the value that leaves
``round(e * P * in)`` probe products strictly above it (see ``cutoff_for_effort``).

Dispatch: row ``r = rank*in + i`` is multiplied iff ``stats[r] * |x[i]| > cutoff``.  Since stats
do not increase with rank, the dispatched rows of input ``i`` are ranks ``0..k[i]-1``; a
selection is the vector ``k [in]`` of ints in 0..B (``k_from_cutoff``).  Effort 1.0 gives
cutoff ``-inf``, hence ``k == B`` everywhere: the dense product (up to the packing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

B = 16            # the bucket size of every kernel
PACKINGS = ("nibble", "nearest", "truncate", "fp32")


@dataclass
class BucketMatrix:
    out_dim: int
    in_dim: int
    packing: str
    data: np.ndarray          # fp16 [in*B, nb] (nibble/nearest/truncate) or fp32 [in*B, nb] (fp32)
    pos_packed: np.ndarray | None  # uint8 [in*B, nb//2] for nibble/fp32, None when in the mantissa
    stats: np.ndarray         # float32 [in*B]
    probes: np.ndarray        # float32 [P, in]
    bucket: int = B           # outputs per bucket = ranks per input and bucket

    @property
    def n_buckets(self) -> int:
        return self.out_dim // self.bucket

    @property
    def stats2d(self) -> np.ndarray:
        """stats as [rank, in]."""
        return self.stats.reshape(self.bucket, self.in_dim)

    def positions(self) -> np.ndarray:
        """uint8 [in*B, nb]: output offset inside the bucket of every stored weight."""
        if self.pos_packed is None:
            return (self.data.view(np.uint16) & 0xF).astype(np.uint8)
        p = np.empty(self.data.shape, np.uint8)
        p[:, 0::2] = self.pos_packed & 0xF
        p[:, 1::2] = self.pos_packed >> 4
        return p

    def values(self) -> np.ndarray:
        """float32 [in*B, nb]: the weight values that are multiplied (packing noise included)."""
        return self.data.astype(np.float32)

    def nbytes(self) -> int:
        n = self.data.nbytes + self.stats.nbytes + self.probes.nbytes
        return n + (0 if self.pos_packed is None else self.pos_packed.nbytes)

    def dense(self) -> np.ndarray:
        """float32 [out, in]: the matrix the bucket list represents (what effort 1.0 computes)."""
        vals, pos = self.values(), self.positions()
        ins = np.arange(self.data.shape[0]) % self.in_dim
        out_idx = np.arange(self.n_buckets)[None, :] * self.bucket + pos
        w = np.zeros((self.out_dim, self.in_dim), np.float32)
        w[out_idx, np.broadcast_to(ins[:, None], out_idx.shape)] = vals
        return w

    def rank_matrix(self) -> np.ndarray:
        """uint8 [out, in]: rank of each weight W[o, i] inside its bucket (research helper)."""
        pos = self.positions()
        ins = np.arange(self.data.shape[0]) % self.in_dim
        ranks = np.arange(self.data.shape[0]) // self.in_dim
        out_idx = np.arange(self.n_buckets)[None, :] * self.bucket + pos
        r = np.empty((self.out_dim, self.in_dim), np.uint8)
        r[out_idx, np.broadcast_to(ins[:, None], out_idx.shape)] = np.broadcast_to(
            ranks[:, None], out_idx.shape).astype(np.uint8)
        return r


def _pack_low_bits(w: np.ndarray, pos: np.ndarray, mode: str) -> np.ndarray:
    """fp16 words whose low 4 bits equal ``pos``; ``nearest`` picks the closest such value."""
    h = w.astype(np.float16)
    bits = h.view(np.uint16)
    if mode == "truncate":
        return ((bits & np.uint16(0xFFF0)) | pos.astype(np.uint16)).view(np.float16)
    sign = bits & np.uint16(0x8000)
    mag = (bits & np.uint16(0x7FFF)).astype(np.int32)
    base = (mag & ~0xF) | pos.astype(np.int32)
    target = np.abs(w.astype(np.float64))
    best, best_err = None, None
    for d in (-16, 0, 16):  # three candidates, vectorized over all weights
        cand = np.clip(base + d, 0, 0x7BFF)
        cand = (cand & ~0xF) | pos.astype(np.int32)  # clipping must not change the low bits
        cand = np.where(cand > 0x7BFF, cand - 16, cand)
        err = np.abs(cand.astype(np.uint16).view(np.float16).astype(np.float64) - target)
        if best is None:
            best, best_err = cand, err
        else:
            better = err < best_err
            best = np.where(better, cand, best)
            best_err = np.where(better, err, best_err)
    return (best.astype(np.uint16) | sign).view(np.float16)


def convert_matrix(w: np.ndarray, packing: str = "nibble", n_probes: int = 4, bucket: int = B) -> BucketMatrix:
    """Convert a dense ``[out, in]`` matrix to the bucket-list layout (see module docstring)."""
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}")
    if bucket not in (8, 16) or (bucket != 16 and packing in ("nearest", "truncate")):
        raise ValueError("bucket must be 8 or 16 (16 for the mantissa packings)")
    B = bucket
    w = np.asarray(w, np.float32)
    out_dim, in_dim = w.shape
    if out_dim % (2 * B):
        raise ValueError(f"out_dim must be a multiple of {2 * B}")
    if B % n_probes:
        raise ValueError(f"n_probes must divide {B}")
    nb = out_dim // B
    wt = w.T.reshape(in_dim, nb, B)                           # [in, bucket, p]
    # rank by the magnitude that is stored (fp16), so every kernel that ranks its own fp16
    # copy (the native CPU layout) selects exactly the same weights; ties keep position order
    order = np.argsort(-np.abs(wt.astype(np.float16)), axis=2, kind="stable")  # [in, bucket, rank] -> p
    vals = np.take_along_axis(wt, order, axis=2)               # [in, bucket, rank]
    # rank-major rows: [rank, in, bucket] -> [rank*in + i, bucket]
    vals = np.ascontiguousarray(vals.transpose(2, 0, 1)).reshape(B * in_dim, nb)
    pos = np.ascontiguousarray(order.transpose(2, 0, 1)).reshape(B * in_dim, nb).astype(np.uint8)

    stats2d = np.abs(vals).mean(axis=1, dtype=np.float64).astype(np.float32).reshape(B, in_dim)
    stats2d = np.minimum.accumulate(stats2d, axis=0)
    stats = np.ascontiguousarray(stats2d).reshape(-1)

    s = B // n_probes
    lo, hi = (s - 1) // 2, s // 2                              # middle rank(s) of each stratum
    starts = np.arange(n_probes) * s
    probes = (0.5 * (stats2d[starts + lo] + stats2d[starts + hi])).astype(np.float32)

    pos_packed = None
    if packing in ("nibble", "fp32"):
        data = vals.astype(np.float16) if packing == "nibble" else vals.copy()
        pos_packed = (pos[:, 0::2] | (pos[:, 1::2] << 4)).astype(np.uint8)
    else:
        data = _pack_low_bits(vals, pos, packing)
    return BucketMatrix(out_dim, in_dim, packing, data, pos_packed, stats, probes, B)


def cutoff_for_effort(probes: np.ndarray, x: np.ndarray, effort: float) -> float:
    """The cutoff leaving ``round(effort * probes.size)`` probe products ``probes*|x|`` strictly above it.

    effort >= 1 -> -inf (everything dispatched, exactly dense); effort <= 0 -> +inf (nothing).
    """
    p = (probes * np.abs(np.asarray(x, np.float32))[None, :]).ravel()
    n = p.size
    k = int(round(float(effort) * n))
    if effort >= 1.0 or k >= n:
        return -np.inf
    if k <= 0:
        return np.inf
    return float(np.partition(p, n - k - 1)[n - k - 1])


def k_from_cutoff(stats2d: np.ndarray, x: np.ndarray, cutoff: float) -> np.ndarray:
    """k[i] = number of ranks of input i with stats*|x[i]| > cutoff (= dispatched prefix length)."""
    return (stats2d * np.abs(np.asarray(x, np.float32))[None, :] > cutoff).sum(0).astype(np.int32)


def k_for_effort(bm: BucketMatrix, x: np.ndarray, effort: float) -> np.ndarray:
    return k_from_cutoff(bm.stats2d, x, cutoff_for_effort(bm.probes, x, effort))
