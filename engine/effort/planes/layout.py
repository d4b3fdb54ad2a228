"""Effort as bytes read: the CPU layout of a projection matrix, defined once, with its numpy reference.

This module is the executable spec of `metal/cpu/planes.c`: the kernels there are tested against
`matvec` here. A matrix W [out, in] (y = W x) is kept at the precision of the file it came from:

* **q4** — a 4-bit file (Q4_0, Q4_1, Q4_K) stays 4-bit: ``w = d * q + m``, q in 0..15 (one plane;
  a Q4_0 file stores no m: ``m = -8 d``);
* **q8** — an 8- or 16-bit file (Q8_0, Q5/Q6, F16, BF16, F32) becomes Q8_0-style codes
  ``w = d * c``, c in -127..127 (exact for Q8_0), split into two nested 4-bit planes: the high
  nibble ``u = (c >> 4) + 8`` and the low nibble ``l = c & 15``, so ``c = 16 (u - 8) + l``.

``d`` (and ``m``) are per output and block of 32 inputs, as in the file. Both planes are stored
input-major in tiles of ``TILE`` outputs: inside a tile, row i (the tile's codes for input i) is
``tile/2`` contiguous bytes and the rows follow each other, so a thread that owns a tile streams through
one contiguous region, and the effort can pick, per token and per input row, a **level**: 0 (skip the row), 1 (read plane 0 only; for q8 the
code's low nibble is taken as its midpoint 7.5), 2 (q8 only: both planes, the exact code). Effort 1.0
reads every row at its top level: the dense product, through the same kernel.

Rows and levels are chosen by marginal output error per byte: reading plane p of row i removes
``x_i^2 * gain[p, i]`` of output error energy (``gain`` precomputed here: for q4 the row's squared
norm; for q8 ``E0 - E1`` and ``E1``, with ``E1`` the error of the level-1 values), and every plane row
costs the same bytes, so one threshold ``tau`` per matrix decides: level = [x²·gain0 > tau] +
[x²·gain1 > tau]. x is quantized per block of 32 (``xq = round(x / dx)``, ``dx = max|x| / 127``, as
llama.cpp does) and the kernels sum integer products, which this reference reproduces exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

BLOCK = 32
# Outputs per tile: a row's read inside a tile is 2 KB of contiguous bytes (the last tile may be wider, a
# matrix narrower than two tiles is one). Long reads are what skipping rows needs: on a random Mistral-7B
# shape (4 layers, Q8, 2 threads) tiles of 4096 against 512 took a dense step 52 -> 47 ms and effort
# 0.5 / 0.25 from 1.41x / 2.0x to 1.6x / 2.7x of it (docs/measurements.md).
TILE = 4096
KINDS = ("q4", "q8")
# GGML types kept at 4 bits (exactly, but for Q4_K's scales, which are rounded to fp16); every other
# type is read as floats and re-quantized to the q8 layout (exact for Q8_0).
FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")
LEVEL1_LOW = 7.5  # the value a level-1 read assumes for a q8 code's low nibble


@dataclass
class PlaneMatrix:
    """One projection in the planes layout (numpy arrays; the C runtime points into them)."""

    kind: str  # "q4" | "q8"
    out_dim: int
    in_dim: int
    planes: list[np.ndarray]  # uint8 [in * out / 2] each (one for q4, two for q8): `tiles`, rows in `row_order`
    d: np.ndarray  # float16 [in/32, out]
    m: np.ndarray | None  # float16 [in/32, out] for q4 (None for Q4_0: m = -8 d), else None
    gains: np.ndarray  # float32 [n_planes, in]

    @property
    def n_planes(self) -> int:
        return 1 if self.kind == "q4" else 2

    tile: int = TILE

    def plane_bytes(self) -> int:
        """Bytes of one plane row times rows: what reading every row of one plane costs."""
        return self.in_dim * self.out_dim // 2

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.planes) + self.d.nbytes + (self.m.nbytes if self.m is not None else 0) + self.gains.nbytes

    def offsets(self) -> np.ndarray:
        """q4: m per weight [out, in] as float32 (-8 d where the file stores none)."""
        m = self.m.astype(np.float32) if self.m is not None else -8.0 * self.d.astype(np.float32)
        return np.repeat(m, BLOCK, axis=0).T

    def codes(self, plane: int = 0) -> np.ndarray:
        """The 4-bit codes of one plane in natural order, uint8 [out, in]."""
        return unpack(self.planes[plane], self.out_dim, self.in_dim, self.tile).T

    def dense(self, level: int | None = None) -> np.ndarray:
        """The weights [out, in] as float32 with every row read at `level` (default: the top level)."""
        top = self.n_planes
        level = top if level is None else level
        d = np.repeat(self.d.astype(np.float32), BLOCK, axis=0).T  # [out, in]
        if level == 0:
            return np.zeros((self.out_dim, self.in_dim), np.float32)
        if self.kind == "q4":
            return d * self.codes(0).astype(np.float32) + self.offsets()
        high = 16.0 * (self.codes(0).astype(np.float32) - 8.0)
        low = self.codes(1).astype(np.float32) if level >= 2 else LEVEL1_LOW
        return d * (high + low)


# -- the byte order of a row -----------------------------------------------------------------------


def _chunk_order(width: int) -> tuple[np.ndarray, np.ndarray]:
    """(output of each byte's low nibble, of its high nibble) inside one chunk of `width` outputs.

    Byte b = 16L + 4k + j holds output S·k + 4L + j in its low nibble and that + width/2 in its high
    nibble (S = 16 for 128-output chunks, 8 for the 64-output last chunk): what two unpack steps of
    four rows (bytes, then 16-bit pairs) turn into natural output order in 16- or 8-lane accumulators."""
    half = width // 2
    b = np.arange(half)
    L, k, j = b // 16, (b % 16) // 4, b % 4
    lo = (16 if width == 128 else 8) * k + 4 * L + j
    return lo, lo + half


@functools.lru_cache(maxsize=64)
def row_order(out_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """For each byte of a row of `out_dim` outputs: the outputs in its low and high nibbles."""
    if out_dim % 64:
        raise ValueError(f"the planes layout needs a multiple of 64 outputs, got {out_dim}")
    los, his = [], []
    for base in range(0, out_dim, 128):
        width = 128 if base + 128 <= out_dim else 64
        lo, hi = _chunk_order(width)
        los.append(base + lo)
        his.append(base + hi)
    return np.concatenate(los), np.concatenate(his)


def tiles(out_dim: int, tile: int = TILE) -> list[tuple[int, int]]:
    """(first output, width) of each tile: out // tile of them (at least one), `tile` outputs each but the
    last, which takes the rest; so no tile is narrower than `tile` unless the matrix is (a narrow tile's
    rows would be shorter than the lines the CPU reads, and skipping them would save nothing)."""
    if tile % 128:
        raise ValueError(f"a tile holds a multiple of 128 outputs, not {tile}")
    n = max(1, out_dim // tile)
    return [(t * tile, tile if t < n - 1 else out_dim - t * tile) for t in range(n)]


def pack(codes: np.ndarray, tile: int = TILE) -> np.ndarray:
    """4-bit codes [out, in] (natural order) -> a plane: tile after tile, each [in, width/2] in the byte
    order of `row_order` (flat uint8 [in * out / 2])."""
    out_dim, in_dim = codes.shape
    spans = tiles(out_dim, tile)
    parts = []
    full = len(spans) - 1  # every tile but the last has the same width: packed together
    if full:
        lo, hi = row_order(tile)
        blocks = codes[: full * tile].reshape(full, tile, in_dim)
        both = (blocks[:, lo] & 15) | ((blocks[:, hi] & 15) << 4)  # [full, tile/2, in]
        parts.append(np.ascontiguousarray(both.transpose(0, 2, 1)).astype(np.uint8).reshape(-1))
    t0, width = spans[-1]
    lo, hi = row_order(width)
    last = codes[t0 : t0 + width]
    parts.append(np.ascontiguousarray(((last[lo] & 15) | ((last[hi] & 15) << 4)).T).astype(np.uint8).reshape(-1))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def unpack(plane: np.ndarray, out_dim: int, in_dim: int, tile: int = TILE) -> np.ndarray:
    """A plane (flat, tile after tile) -> codes [in, out] in natural output order."""
    codes = np.empty((in_dim, out_dim), np.uint8)
    at = 0
    for t0, width in tiles(out_dim, tile):
        lo, hi = row_order(width)
        rows = plane[at : at + in_dim * width // 2].reshape(in_dim, width // 2)
        codes[:, t0 + lo] = rows & 15
        codes[:, t0 + hi] = rows >> 4
        at += in_dim * width // 2
    return codes


def place(plane_slice: np.ndarray, out_dim: int, rows: int, first_row: int, in_dim: int, tile: int = TILE):
    """Where the tiles of a plane built from inputs [first_row, first_row + rows) go in the whole matrix's
    plane: (offset in the whole plane, the slice's bytes) per tile."""
    at = 0
    for t0, width in tiles(out_dim, tile):
        n = rows * width // 2
        yield t0 // 2 * in_dim + first_row * width // 2, plane_slice[at : at + n]
        at += n


# -- building the layout from a file's tensors -----------------------------------------------------


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16)


def parse_blocks(ggml_type: str, raw: np.ndarray, in_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A GGUF tensor's stored blocks (uint8 [out, row bytes]) -> (codes [out, in], d, m [out, in/32]).

    q4 types give 4-bit codes q with w = d q + m (m None for Q4_0: -8 d); Q8_0 gives signed codes c
    with w = d c (m None)."""
    out_dim = raw.shape[0]
    nb = in_dim // BLOCK
    if ggml_type == "Q8_0":
        blk = raw.reshape(out_dim, nb, 34)
        d = _f16(blk[:, :, :2]).reshape(out_dim, nb)
        c = blk[:, :, 2:].view(np.int8).reshape(out_dim, in_dim)
        return c, d, None
    if ggml_type in ("Q4_0", "Q4_1"):
        size = 18 if ggml_type == "Q4_0" else 20
        blk = raw.reshape(out_dim, nb, size)
        d = _f16(blk[:, :, :2]).reshape(out_dim, nb)
        qs = blk[:, :, size - 16:]
        q = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(out_dim, in_dim)  # llama.cpp: low nibbles first
        m = None if ggml_type == "Q4_0" else _f16(blk[:, :, 2:4]).reshape(out_dim, nb)  # Q4_0: m = -8 d
        return q, d, m
    if ggml_type == "Q4_K":
        return _parse_q4_k(raw, in_dim)
    raise ValueError(f"no 4-bit or 8-bit block parser for {ggml_type}")


def _parse_q4_k(raw: np.ndarray, in_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K super-blocks of 256 (fp16 d, dmin; 8 six-bit sub-scales and mins; 128 bytes of nibbles) ->
    per-32 scale d·sc and offset −dmin·m, rounded to fp16 (the codes are kept exactly)."""
    out_dim = raw.shape[0]
    ns = in_dim // 256
    blk = raw.reshape(out_dim, ns, 144)
    d = _f16(blk[:, :, 0:2]).astype(np.float32).reshape(out_dim, ns, 1)
    dmin = _f16(blk[:, :, 2:4]).astype(np.float32).reshape(out_dim, ns, 1)
    s = blk[:, :, 4:16].astype(np.uint8)
    sc = np.empty((out_dim, ns, 8), np.uint8)
    mn = np.empty((out_dim, ns, 8), np.uint8)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    qs = blk[:, :, 16:].reshape(out_dim, ns, 4, 32)  # 4 groups of 32 bytes: low nibbles = sub-block 2g, high = 2g+1
    q = np.stack([qs & 15, qs >> 4], axis=3).reshape(out_dim, ns, 8, 32).reshape(out_dim, in_dim)
    scale = (d * sc).reshape(out_dim, ns * 8).astype(np.float16)
    offset = (-dmin * mn).reshape(out_dim, ns * 8).astype(np.float16)
    return q, scale, offset


def quantize_q8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float weights [out, in] -> Q8_0-style (codes int8 [out, in], d fp16 [out, in/32]), as llama.cpp's
    quantizer does: d = max|w| / 127 per block, c = round(w / d)."""
    out_dim, in_dim = w.shape
    blocks = w.astype(np.float32).reshape(out_dim, in_dim // BLOCK, BLOCK)
    d = (np.abs(blocks).max(axis=2) / 127.0).astype(np.float16)
    df = d.astype(np.float32)[:, :, None]
    inv = np.divide(1.0, df, out=np.zeros_like(df), where=df > 0)
    c = np.clip(np.rint(blocks * inv), -127, 127).astype(np.int8)
    return c.reshape(out_dim, in_dim), d


def _column_energy(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """sum over outputs of (scale[o, b] * values[o, i])**2 for each input i (block b = i // 32), float32
    (the gains rank rows; four digits are plenty). values [out, in], scale [out, in/32]."""
    out_dim, in_dim = values.shape
    v = values.reshape(out_dim, in_dim // BLOCK, BLOCK).astype(np.float32)
    s2 = np.square(scale.astype(np.float32))
    return np.einsum("ob,obj,obj->bj", s2, v, v, optimize=True).reshape(in_dim)


def from_codes(kind: str, codes: np.ndarray, d: np.ndarray, m: np.ndarray | None, tile: int = TILE) -> PlaneMatrix:
    """The layout of one matrix from its codes [out, in] and per-block scales [out, in/32] (file order)."""
    out_dim, in_dim = codes.shape
    if in_dim % BLOCK:
        raise ValueError(f"the planes layout needs a multiple of {BLOCK} inputs, got {in_dim}")
    d_t = np.ascontiguousarray(d.T).astype(np.float16)
    if kind == "q4":
        q = codes.astype(np.uint8, copy=False)
        m_t = None if m is None else np.ascontiguousarray(m.T).astype(np.float16)
        mf = -8.0 * d.astype(np.float32) if m is None else m.astype(np.float32)
        # w = d q + m per block: the row's energy, with m as the code of a constant term
        w = q.reshape(out_dim, in_dim // BLOCK, BLOCK) * d.astype(np.float32)[:, :, None] + mf[:, :, None]
        gains = np.einsum("obj,obj->bj", w, w).reshape(1, in_dim)
        return PlaneMatrix("q4", out_dim, in_dim, [pack(q, tile)], d_t, m_t, gains.astype(np.float32), tile)
    c = codes.astype(np.int8, copy=False)
    u = ((c >> 4) + 8).astype(np.uint8)
    low = (c & 15).astype(np.uint8)
    e0 = _column_energy(c, d)
    e1 = _column_energy(low.astype(np.float32) - np.float32(LEVEL1_LOW), d)
    gains = np.stack([np.maximum(e0 - e1, 0.0), e1]).astype(np.float32)
    return PlaneMatrix("q8", out_dim, in_dim, [pack(u, tile), pack(low, tile)], d_t, None, gains, tile)


def keeps_blocks(ggml_type: str | None) -> bool:
    """Whether a tensor of this GGML type goes into the layout from its stored blocks (no floats)."""
    return ggml_type in FOUR_BIT or ggml_type == "Q8_0"


def from_blocks(ggml_type: str, raw: np.ndarray, in_dim: int) -> PlaneMatrix:
    """The layout of one matrix from its stored GGUF blocks (uint8 [out, row bytes]): Q4_0, Q4_1, Q4_K
    stay 4-bit (q4), Q8_0 becomes the q8 planes exactly."""
    codes, d, m = parse_blocks(ggml_type, raw, in_dim)
    return from_codes("q4" if ggml_type in FOUR_BIT else "q8", codes, d, m)


def from_weights(w: np.ndarray) -> PlaneMatrix:
    """The layout of one matrix from float weights [out, in] (F16, BF16, F32, 5- and 6-bit files):
    re-quantized to Q8_0-style codes in the q8 planes."""
    codes, d = quantize_q8(w)
    return from_codes("q8", codes, d, None)


# -- the reference of the kernels ------------------------------------------------------------------


RESIDUAL = 256  # the second int8 level of x is its residual in 1/256 steps


def quantize_x(x: np.ndarray, precise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x [in] -> (x in units of its block's dx: xq + xr/256, or xq alone when not `precise`, exactly as
    ee_quantize_x computes them; dx float32 [in/32]). Two int8 levels per input (xq, and the residual xr)
    carry about 16 bits: int8 alone moves SmolLM2's logits by ~2%, and its greedy text off float
    references within a few tokens. A matrix read under effort loses far more than that, so there the
    kernels multiply xq alone (`precise` False)."""
    x = np.asarray(x, np.float32)
    blocks = x.reshape(-1, BLOCK)
    top = np.abs(blocks).max(axis=1)
    dx = (top / np.float32(127.0)).astype(np.float32)
    inv = np.divide(np.float32(127.0), top, out=np.zeros_like(top), where=top > 0).astype(np.float32)
    s = (blocks * inv[:, None]).astype(np.float32)
    xq = np.rint(s)  # rint: ties to even, as lrintf
    xr = np.clip(np.rint(((s - xq).astype(np.float32) * np.float32(RESIDUAL)).astype(np.float32)), -127, 127)
    return (xq + xr / RESIDUAL if precise else xq).reshape(-1), dx


def levels(pm: PlaneMatrix, x: np.ndarray, tau: float, top: int | None = None) -> np.ndarray:
    """Each row's level for input x at threshold tau (ee_select): [x²·gain0 > tau] + [x²·gain1 > tau]."""
    s = np.asarray(x, np.float32) ** 2
    lv = (s * pm.gains[0] > tau).astype(np.int64)
    if pm.kind == "q8" and (top is None or top >= 2):
        lv += lv * (s * pm.gains[1] > tau)
    return lv


def matvec(pm: PlaneMatrix, x: np.ndarray, lv: np.ndarray | None = None, precise: bool | None = None) -> np.ndarray:
    """y = the matrix at per-row levels `lv` (default: every row at its top level) times x, float64, with
    x's residual level when `precise` (default: when every row is read at its top level, as the kernels
    decide).

    The integer sums per block are exact; the kernels differ from this only in the rounding of the fold
    (fp32)."""
    lv = np.full(pm.in_dim, pm.n_planes) if lv is None else np.asarray(lv)
    precise = bool((lv >= pm.n_planes).all()) if precise is None else precise
    xq, dx = quantize_x(x, precise)  # exact multiples of 1/256: the integer sums stay exact in float64
    nb = pm.in_dim // BLOCK
    d = pm.d.astype(np.float64)  # [nb, out]
    on1 = (lv >= 1).reshape(nb, BLOCK)
    xb = xq.reshape(nb, BLOCK)
    if pm.kind == "q4":
        q = pm.codes(0).astype(np.float64).T.reshape(nb, BLOCK, pm.out_dim)  # [nb, 32, out]
        acc = np.einsum("bj,bjo->bo", xb * on1, q)
        s = (xb * on1).sum(1)
        if pm.m is None:  # Q4_0: m = -8 d, folded into the integer sum's constant
            y = d * (dx[:, None] * acc + (-8.0 * dx * s)[:, None])
        else:
            y = d * (dx[:, None] * acc) + pm.m.astype(np.float64) * (dx * s)[:, None]
        return y.sum(0)
    on2 = (lv >= 2).reshape(nb, BLOCK)
    u = pm.codes(0).astype(np.float64).T.reshape(nb, BLOCK, pm.out_dim)
    low = pm.codes(1).astype(np.float64).T.reshape(nb, BLOCK, pm.out_dim)
    acc = 16 * np.einsum("bj,bjo->bo", xb * on1, u) + np.einsum("bj,bjo->bo", xb * on2, low)
    s12 = (xb * on1).sum(1)
    s1 = (xb * (on1 & ~on2)).sum(1)
    c0 = dx * (-128.0 * s12 + LEVEL1_LOW * s1)
    y = d * (dx[:, None] * acc + c0[:, None])
    return y.sum(0)


def rows_read(pm: PlaneMatrix, lv: np.ndarray) -> int:
    """Plane rows a product at these levels reads (each is out/2 bytes)."""
    return int(np.minimum(np.asarray(lv), pm.n_planes).sum())
