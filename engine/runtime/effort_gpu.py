"""bucketMul and decode attention on the GPU through MLX custom kernels.

Backends: ``mx.fast.metal_kernel`` when ``mx.metal.is_available()`` (Apple Silicon, the main
target), ``mx.fast.cuda_kernel`` when ``mx.cuda.is_available()`` (MLX's CUDA backend), else
none: importing this module on a CPU-only machine does nothing and ``available()`` is False.

The kernels are the portable bodies of ``metal/kernels`` (see ``engine.runtime.kernel_source`` and
``metal/README.md``).  The launch sequence lives here once and runs on an *executor*: the MLX
one (GPU) here, or the tests' host build of the same bodies (``tests/support/host_build.py``),
so the tests cover the parameter packing, grid shapes and group planning as well as the kernels.

Per matrix (``bucket_matvec_gpu``):
  effort_select (1 threadgroup; skipped when the cutoff is +-inf, i.e. effort >= 1 or <= 0,
  or given) -> effort_bucket_mul (dispatch fused in, partials [G, out]) -> effort_reduce
  (skipped when G == 1).  3 launches, no CPU readback: the effort is a Python float, the cutoff
  and k never leave the GPU.
Matrices sharing their input (q/k/v, gate/up): ``bucket_matvec_group_gpu`` computes all their
cutoffs in ONE select launch (one threadgroup per matrix).
Decode attention (``decode_attention_gpu``): 1 launch (``n_chunks == 1``) or 2 (split over
the context + combine). Not yet launched by the decode step (only the tests run it); the GPU
issue wires it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import mlx.core as mx
import numpy as np

from engine.runtime import backend as backends
from engine.runtime import kernel_source as ks
from engine.effort.bucket import B, BucketMatrix

SELECT_TGS = 1024
BMUL_TGS = 128
BMUL_IPG_MAX = 64              # inputs per threadgroup at most (its row list is 16x that)
BMUL_TARGET_THREADS = 8192     # threads per bucket-mul launch we aim for (G is derived from it)
# An H100 has 132 SMs of up to 2048 threads: with 8192 threads (2 warps per SM) the bucket
# multiply reached ~1 TB/s; the loads need many warps in flight to cover their latency.
TARGET_THREADS = {"metal": BMUL_TARGET_THREADS, "cuda": 131072}
REDUCE_TGS = 256
REDUCE_OUTPUTS = 32            # outputs per reduce threadgroup (8 lanes each)
ATTN_TGS = 256
ATTN_TARGET_GROUPS = 64        # threadgroups per attention launch we aim for at long context


class GpuUnavailable(RuntimeError):
    """No Metal or CUDA backend in this MLX build / on this machine."""


def gpu_backend() -> str | None:
    """"metal" or "cuda" when `engine.runtime.backend.detect` (which honours EFFORT_BACKEND) chose a
    GPU, else None."""
    name = backends.detect().name
    return name if name in ("metal", "cuda") else None


BACKEND: str | None = gpu_backend()


def available() -> bool:
    return BACKEND is not None


# --------------------------------------------------------------------------- layout

@dataclass
class GpuLayout:
    """One bucket matrix as kernel inputs (mx arrays on the GPU path, numpy on the host path)."""

    in_dim: int
    out_dim: int
    n_probe_rows: int
    pos_nibble: bool
    w: Any            # uint16 [in*16*nb]  fp16 bits (low 4 bits = position unless pos_nibble)
    pos: Any | None   # uint8 [in*16*nb/2] (pos_nibble only)
    stats: Any        # float32 [16*in]
    probes: Any       # float32 [P*in]

    @property
    def n_buckets(self) -> int:
        return self.out_dim // B


@dataclass
class GpuLayoutGroup:
    """Matrices that share their input x: one select launch computes all their cutoffs."""

    layouts: list[GpuLayout]
    probes: Any           # all probes, concatenated
    probe_offsets: list[int]


def _layout_arrays(bm: BucketMatrix) -> dict[str, np.ndarray]:
    if bm.packing == "fp32":
        raise ValueError("the GPU kernels take fp16 bucket lists; convert with packing "
                         "'nibble', 'nearest' or 'truncate'")
    nibble = bm.packing == "nibble"
    return dict(
        w=np.ascontiguousarray(bm.data).view(np.uint16).reshape(-1),
        pos=np.ascontiguousarray(bm.pos_packed).reshape(-1) if nibble else None,
        stats=np.ascontiguousarray(bm.stats, np.float32).reshape(-1),
        probes=np.ascontiguousarray(bm.probes, np.float32).reshape(-1),
    )


def make_layout(bm: BucketMatrix, to_array=None) -> GpuLayout:
    """Kernel inputs of ``bm``; ``to_array`` = mx.array (default) or np.asarray (host path)."""
    conv = mx.array if to_array is None else to_array
    a = _layout_arrays(bm)
    return GpuLayout(bm.in_dim, bm.out_dim, int(bm.probes.shape[0]), bm.packing == "nibble",
                     conv(a["w"]), None if a["pos"] is None else conv(a["pos"]),
                     conv(a["stats"]), conv(a["probes"]))


def make_layout_group(bms: Sequence[BucketMatrix], to_array=None) -> GpuLayoutGroup:
    return layout_group_of([make_layout(bm, to_array) for bm in bms])


def layout_group_of(layouts: Sequence[GpuLayout]) -> GpuLayoutGroup:
    """A group of already uploaded layouts (their probes concatenated once more: they are tiny)."""
    if len({lay.in_dim for lay in layouts}) != 1:
        raise ValueError("a layout group needs one input dimension")
    on_host = isinstance(layouts[0].probes, np.ndarray)
    probes = [lay.probes.reshape(-1) for lay in layouts]
    offsets = [0]
    for lay in layouts[:-1]:
        offsets.append(offsets[-1] + lay.n_probe_rows * lay.in_dim)
    joined = np.concatenate(probes) if on_host else mx.concatenate(probes)
    return GpuLayoutGroup(list(layouts), joined, offsets)


# --------------------------------------------------------------------------- planning (pure)

def probe_rank(n: int, effort: float) -> int:
    """Rank (ascending) of the cutoff among the n probe products; -1 = -inf, n = +inf.

    The same arithmetic as engine.effort.bucket.cutoff_for_effort (Python's round)."""
    keep = int(round(float(effort) * n))
    if float(effort) >= 1.0 or keep >= n:
        return -1
    if keep <= 0:
        return n
    return n - keep - 1


def bmul_tgs(n_buckets: int) -> int:
    """Threads (= buckets) per bucket-mul threadgroup: small matrices get small threadgroups
    (out = 192 has 12 buckets) so that few threads idle."""
    return 32 if n_buckets <= 32 else (64 if n_buckets <= 64 else BMUL_TGS)


def plan_groups(in_dim: int, n_buckets: int, ipg_max: int = BMUL_IPG_MAX,
                target_threads: int = BMUL_TARGET_THREADS) -> tuple[int, int, int, int]:
    """(tgs, n_bx, G, ipg) of a bucket-mul launch: threads per threadgroup, bucket blocks,
    input groups and inputs per group.

    Enough threads to fill the GPU (n_bx*G*tgs ~ target_threads) without making the partial
    sums (G*out floats) large: G grows only as far as needed, ipg never exceeds ipg_max."""
    tgs = bmul_tgs(n_buckets)
    n_bx = -(-n_buckets // tgs)
    g = max(1, -(-target_threads // (n_bx * tgs)))
    g = min(g, max(1, in_dim // 16))          # at least 16 inputs per group
    g = max(g, -(-in_dim // ipg_max))        # at most ipg_max inputs per group
    ipg = -(-in_dim // g)
    g = -(-in_dim // ipg)                    # no empty group
    return tgs, n_bx, g, ipg


def plan_attention(n_heads: int, length: int, tgs: int = ATTN_TGS,
                   target_groups: int = ATTN_TARGET_GROUPS) -> tuple[int, int]:
    """(chunk_len, n_chunks) for decode attention over `length` positions."""
    want = max(1, -(-target_groups // n_heads))
    chunk = max(tgs, -(-length // want))
    chunk = -(-chunk // tgs) * tgs
    return chunk, max(1, -(-length // chunk))


# --------------------------------------------------------------------------- executors

class _Exec:
    """Runs kernel launches; subclasses hold the arrays (mx or numpy)."""

    target_threads = BMUL_TARGET_THREADS
    _memo: dict | None = None

    def memo(self, key: tuple, make):
        """Launch plans and parameter arrays, computed once per key (shapes, ranks): the
        Python side of a launch runs 200+ times per decoded token."""
        if self._memo is None:
            self._memo = {}
        value = self._memo.get(key)
        if value is None:
            if len(self._memo) > 4096:
                self._memo.clear()
            value = self._memo[key] = make()
        return value

    def const(self, a: np.ndarray) -> Any: ...
    def is_half(self, a) -> bool: ...
    def half_bits(self, a) -> Any: ...
    def to_f32(self, a) -> Any: ...
    def flat(self, a) -> Any: ...
    def size(self, a) -> int: ...
    def reshape(self, a, shape) -> Any: ...
    def launch(self, spec: ks.KernelSpec, groups: tuple[int, int], inputs: list, sizes: list[int]) -> list: ...


class MlxExec(_Exec):
    """Launches through mx.fast.metal_kernel / mx.fast.cuda_kernel (kernels built once, cached)."""

    def __init__(self, backend: str):
        if backend not in ("metal", "cuda"):
            raise ValueError("backend must be 'metal' or 'cuda'")
        self.backend = backend
        self.target_threads = TARGET_THREADS[backend]
        self._kernels: dict[str, Any] = {}
        self._consts: dict[tuple, mx.array] = {}   # params / +-inf cutoffs, reused across calls

    def kernel(self, spec: ks.KernelSpec):
        k = self._kernels.get(spec.name)
        if k is None:
            kw = ks.mlx_kernel_kwargs(spec, self.backend)
            if self.backend == "metal":
                try:
                    k = mx.fast.metal_kernel(**kw, ensure_row_contiguous=True,
                                             compile_options={"math_mode": "safe"})
                except TypeError:  # MLX without compile_options: safe math is the default
                    k = mx.fast.metal_kernel(**kw, ensure_row_contiguous=True)
            else:
                k = mx.fast.cuda_kernel(**kw, ensure_row_contiguous=True)
            self._kernels[spec.name] = k
        return k

    _DT = {"float32": mx.float32, "int32": mx.int32, "uint16": mx.uint16, "uint8": mx.uint8}

    def const(self, a):
        a = np.ascontiguousarray(a)
        key = (a.dtype.str, a.shape, a.tobytes())
        c = self._consts.get(key)
        if c is None:
            if len(self._consts) > 4096:
                self._consts.clear()
            c = self._consts[key] = mx.array(a)
        return c

    def is_half(self, a):
        return a.dtype == mx.float16

    def half_bits(self, a):
        return a.view(mx.uint16)

    def to_f32(self, a):
        return a if a.dtype == mx.float32 else a.astype(mx.float32)

    def flat(self, a):
        return a.reshape(-1)

    def size(self, a):
        return a.size

    def reshape(self, a, shape):
        return a.reshape(shape)

    def launch(self, spec, groups, inputs, sizes):
        return self.kernel(spec)(
            inputs=inputs,
            output_shapes=[(n,) for n in sizes],
            output_dtypes=[self._DT[a.dtype] for a in spec.outputs],
            grid=(groups[0] * spec.tgs, groups[1], 1),
            threadgroup=(spec.tgs, 1, 1),
        )


_EXECS: dict[str, MlxExec] = {}


def _exec(backend: str | None) -> MlxExec:
    b = backend or BACKEND
    if b is None:
        raise GpuUnavailable("no Metal or CUDA backend in this MLX (CPU only): use the CPU path")
    if b not in _EXECS:
        _EXECS[b] = MlxExec(b)
    return _EXECS[b]


# --------------------------------------------------------------------------- pipeline

def _x_input(ex: _Exec, x, in_dim: int):
    x = ex.flat(x)
    if ex.size(x) != in_dim:
        raise ValueError(f"x has {ex.size(x)} elements, the matrix takes {in_dim}")
    if ex.is_half(x):
        return ex.half_bits(x), True
    return ex.to_f32(x), False


def _per_matrix(effort: float | Sequence[float], m: int) -> list[float]:
    if isinstance(effort, (int, float)):
        return [float(effort)] * m
    efforts = [float(e) for e in effort]
    if len(efforts) != m:
        raise ValueError(f"{len(efforts)} efforts for {m} matrices")
    return efforts


def select_cutoffs(ex: _Exec, probes, probe_offsets: Sequence[int], probe_rows: Sequence[int],
                   in_dim: int, x, effort: float | Sequence[float]):
    """Cutoffs [M] of M matrices sharing x (one effort, or one per matrix): one select launch,
    or a constant (+-inf)."""
    m = len(probe_offsets)
    ranks = [probe_rank(p * in_dim, e) for p, e in zip(probe_rows, _per_matrix(effort, m))]
    if all(r < 0 for r in ranks):
        return ex.const(np.full(m, -np.inf, np.float32))
    if all(r >= p * in_dim for r, p in zip(ranks, probe_rows)):
        return ex.const(np.full(m, np.inf, np.float32))
    xin, xh = _x_input(ex, x, in_dim)
    key = ("select", in_dim, tuple(probe_offsets), tuple(probe_rows), tuple(ranks))
    params = ex.memo(key, lambda: ex.const(np.array(
        [[o, p, in_dim, r] for o, p, r in zip(probe_offsets, probe_rows, ranks)], np.int32).reshape(-1)))
    (cut,) = ex.launch(ks.select_spec(xh, SELECT_TGS), (1, m), [probes, xin, params], [m])
    return cut


def _bucket_mul_plan(ex: _Exec, in_dim: int, out_dim: int, pos_nibble: bool, xh: bool, cutoff_index: int):
    """(spec, groups, params, reduce params or None, G) of one matrix's bucket-mul launch."""
    nb = out_dim // B
    tgs, n_bx, g, ipg = plan_groups(in_dim, nb, target_threads=ex.target_threads)
    spec = ks.bucket_mul_spec(pos_nibble, xh, tgs, BMUL_IPG_MAX)
    params = ex.const(np.array([in_dim, nb, ipg, cutoff_index], np.int32))
    reduce_params = ex.const(np.array([out_dim, g], np.int32)) if g > 1 else None
    return spec, (n_bx, g), params, reduce_params, g


def _bucket_mul(ex: _Exec, lay: GpuLayout, xin, xh: bool, cutoff, cutoff_index: int):
    key = ("bmul", lay.in_dim, lay.out_dim, lay.pos_nibble, xh, cutoff_index)
    spec, groups, params, rp, g = ex.memo(
        key, lambda: _bucket_mul_plan(ex, lay.in_dim, lay.out_dim, lay.pos_nibble, xh, cutoff_index))
    ins = [lay.w] + ([lay.pos] if lay.pos_nibble else []) + [lay.stats, xin, cutoff, params]
    partial, k = ex.launch(spec, groups, ins, [g * lay.out_dim, lay.in_dim])
    if rp is None:
        return partial, k
    (y,) = ex.launch(ks.reduce_spec(REDUCE_TGS), (-(-lay.out_dim // REDUCE_OUTPUTS), 1), [partial, rp],
                     [lay.out_dim])
    return y, k


def bucket_matvec(ex: _Exec, lay: GpuLayout, x, effort: float, cutoff=None):
    """(y [out] float32, k [in] int32) of one matrix on executor ``ex``.

    ``cutoff``: optional array of one float (e.g. shared by several matrices) replacing the
    probe cutoff."""
    if cutoff is None:
        cutoff = select_cutoffs(ex, lay.probes, [0], [lay.n_probe_rows], lay.in_dim, x, effort)
    xin, xh = _x_input(ex, x, lay.in_dim)
    return _bucket_mul(ex, lay, xin, xh, cutoff, 0)


def bucket_matvec_group(ex: _Exec, group: GpuLayoutGroup, x, effort: float | Sequence[float]):
    """[(y, k)] for matrices sharing x (one effort, or one per matrix), with one select launch
    for all the cutoffs."""
    lays = group.layouts
    cut = select_cutoffs(ex, group.probes, group.probe_offsets, [l.n_probe_rows for l in lays],
                         lays[0].in_dim, x, effort)
    xin, xh = _x_input(ex, x, lays[0].in_dim)
    return [_bucket_mul(ex, lay, xin, xh, cut, m) for m, lay in enumerate(lays)]


def decode_attention(ex: _Exec, q, keys, values, length: int, scale: float):
    """Attention of one query token: q [n_heads, hd], keys/values [n_kv, t_cap, hd] (leading
    size-1 axes allowed), positions 0..length-1.  Returns [n_heads, hd] float32."""
    kshape = tuple(int(s) for s in keys.shape)
    while len(kshape) > 3 and kshape[0] == 1:
        kshape = kshape[1:]
    if len(kshape) != 3 or tuple(int(s) for s in values.shape)[-3:] != kshape:
        raise ValueError("keys and values must be [n_kv, t_cap, head_dim]")
    n_kv, t_cap, hd = kshape
    n_heads = ex.size(q) // hd
    if n_heads * hd != ex.size(q) or n_heads % n_kv:
        raise ValueError("q must be [n_heads, head_dim] with n_heads a multiple of n_kv")
    length = int(length)
    if not 1 <= length <= t_cap:
        raise ValueError(f"length must be in 1..{t_cap}")

    def prep(a):
        a = ex.flat(a)
        return (ex.half_bits(a), True) if ex.is_half(a) else (ex.to_f32(a), False)

    qin, qh = prep(q)
    kin, kh = prep(keys)
    vin, vh = prep(values)
    if kh != vh:
        raise ValueError("keys and values must have the same dtype")
    chunk, n_chunks = plan_attention(n_heads, length)
    params = ex.const(np.array([n_heads, n_kv, t_cap, length, chunk, n_chunks], np.int32))
    sc = ex.const(np.array([scale], np.float32))
    final = n_chunks == 1
    spec = ks.attention_spec(hd, final, qh, kh, ATTN_TGS)
    outs = ex.launch(spec, (n_chunks, n_heads), [qin, kin, vin, sc, params],
                     [n_heads * hd] if final else [n_heads * n_chunks * hd, n_heads * n_chunks * 2])
    if final:
        return ex.reshape(outs[0], (n_heads, hd))
    cp = ex.const(np.array([n_heads, n_chunks], np.int32))
    (out,) = ex.launch(ks.attn_combine_spec(hd), (1, n_heads), [outs[0], outs[1], cp], [n_heads * hd])
    return ex.reshape(out, (n_heads, hd))


# --------------------------------------------------------------------------- public GPU API

def gpu_layout(bm: BucketMatrix) -> GpuLayout:
    """Upload a bucket matrix once (mx arrays); pass the result to bucket_matvec_gpu."""
    return make_layout(bm)


def gpu_layout_group(bms: Sequence[BucketMatrix]) -> GpuLayoutGroup:
    return make_layout_group(bms)


def bucket_matvec_gpu(layout: GpuLayout | BucketMatrix, x: mx.array, effort: float, cutoff=None,
                      *, backend: str | None = None) -> tuple[mx.array, mx.array]:
    """y = the effort-``effort`` bucketMul of x, and used = k [in] (int32: ranks dispatched per
    input; ``engine.effort.reference.effective_effort(k)`` is the share of weights multiplied).

    Lazy MLX arrays; nothing is read back.  ``layout`` should come from ``gpu_layout`` (a
    BucketMatrix is uploaded on every call).  Raises GpuUnavailable without Metal/CUDA."""
    ex = _exec(backend)
    if isinstance(layout, BucketMatrix):
        layout = make_layout(layout)
    return bucket_matvec(ex, layout, x, effort, cutoff)


def bucket_matvec_group_gpu(group: GpuLayoutGroup, x: mx.array, effort: float | Sequence[float],
                            *, backend: str | None = None) -> list[tuple[mx.array, mx.array]]:
    return bucket_matvec_group(_exec(backend), group, x, effort)


def decode_attention_gpu(q: mx.array, keys: mx.array, values: mx.array, length: int, scale: float,
                         *, backend: str | None = None) -> mx.array:
    """softmax(scale * q K^T) V for one token over the first ``length`` cache positions."""
    return decode_attention(_exec(backend), q, keys, values, length, scale)


def launches_per_matrix(in_dim: int, out_dim: int, effort: float, n_probe_rows: int = 4,
                        cutoff_given: bool = False) -> int:
    """Kernel launches of one bucket_matvec_gpu call (select + bucket mul + reduce)."""
    n = n_probe_rows * in_dim
    r = probe_rank(n, effort)
    select = 0 if cutoff_given or r < 0 or r >= n else 1
    _, _, g, _ = plan_groups(in_dim, out_dim // B)
    return select + 1 + (1 if g > 1 else 0)
