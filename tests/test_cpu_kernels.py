"""The native CPU kernels (metal/cpu/planes.c, built on first use) against the layout's numpy reference:
every kernel family this machine can run (AVX-512 VNNI, AVX2, plain C), and the portable build that
non-x86 machines compile."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from engine.effort.planes import layout
from engine.runtime import native
from engine.runtime.cpu_runtime import planes_struct

SHAPES = [(64, 32), (192, 576), (576, 576), (1536, 576), (576, 1536), (1600, 96)]


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _widest() -> str:
    flags = _cpu_flags()
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx512vnni" if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags else "avx2"
    return "scalar"


FAMILIES = native.ISA_FAMILIES[native.ISA_FAMILIES.index(_widest()):]


@pytest.fixture(scope="module", params=[f"native-{f}" for f in FAMILIES] + ["portable"])
def lib(request):
    """The library as this machine builds it, once per kernel family the CPU can run, and the plain-C
    build that non-x86 machines compile."""
    if request.param == "portable":
        built = native.load(native.build(variant="portable"))
        assert built.ee_isa().decode() == "scalar"
        yield built
        return
    built = native.library()
    assert built is not None, native.build_error()
    assert built.ee_use_isa(request.param.split("-", 1)[1].encode()) == 0
    yield built
    built.ee_use_isa(_widest().encode())


def test_native_build_uses_the_widest_kernels_this_cpu_has():
    lib = native.library()
    lib.ee_use_isa(_widest().encode())
    assert lib.ee_isa().decode() == _widest()
    narrower = {"avx512vnni": None, "avx2": "avx512vnni", "scalar": "avx2"}[_widest()]
    if narrower:
        assert lib.ee_use_isa(narrower.encode()) == -1  # a family the CPU cannot run is refused
        assert lib.ee_isa().decode() == _widest()


def _matrix(kind: str, out_dim: int, in_dim: int, seed: int, tile: int) -> layout.PlaneMatrix:
    rng = np.random.default_rng(seed)
    if kind == "q8":
        return layout.from_codes("q8", rng.integers(-127, 128, (out_dim, in_dim)), (rng.random((out_dim, in_dim // 32)) * 0.01).astype(np.float16), None, tile)
    d = (rng.random((out_dim, in_dim // 32)) * 0.01).astype(np.float16)
    m = None if kind == "q4_0" else (-rng.random((out_dim, in_dim // 32)) * 0.08).astype(np.float16)
    return layout.from_codes("q4", rng.integers(0, 16, (out_dim, in_dim)), d, m, tile)


def _x(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed + 100).standard_t(3, n).astype(np.float32)
    x[::7] = 0.0
    return x


class Work:
    """A work list and the quantized activations, freed with the object."""

    def __init__(self, lib, x: np.ndarray) -> None:
        self.lib = lib
        self.x = x
        self.xq = np.zeros(2 * x.size, np.int8)
        self.dx = np.zeros(x.size // 32, np.float32)
        lib.ee_quantize_x(x.ctypes.data, x.size, self.xq.ctypes.data, self.dx.ctypes.data)
        self.handle = lib.ee_work_new(x.size)

    def __del__(self) -> None:
        self.lib.ee_work_free(self.handle)


def test_activations_are_quantized_as_the_reference_says(lib):
    x = _x(576, 1)
    w = Work(lib, x)
    xs, dx = layout.quantize_x(x)
    assert np.array_equal(w.xq[:576] + w.xq[576:] / 256, xs) and np.array_equal(w.dx, dx)
    bad = x.copy()
    bad[3] = np.nan
    assert lib.ee_quantize_x(bad.ctypes.data, 576, w.xq.ctypes.data, w.dx.ctypes.data) == 1  # said, not hidden
    assert lib.ee_quantize_x(x.ctypes.data, 576, w.xq.ctypes.data, w.dx.ctypes.data) == 0


@pytest.mark.parametrize("kind", ["q4", "q4_0", "q8"])
@pytest.mark.parametrize("shape", SHAPES)
def test_products_at_any_levels_equal_the_reference(lib, kind, shape):
    out_dim, in_dim = shape
    for tile in (128, 512, 1024):
        pm = _matrix(kind, out_dim, in_dim, out_dim + in_dim, tile)
        s = planes_struct(pm)
        x = _x(in_dim, in_dim)
        work = Work(lib, x)
        rng = np.random.default_rng(3)
        for levels in (np.full(in_dim, pm.n_planes), rng.integers(0, pm.n_planes + 1, in_dim), np.zeros(in_dim)):
            lv = levels.astype(np.uint8)
            read = lib.ee_work_from_levels(ctypes.byref(s), work.xq.ctypes.data, work.dx.ctypes.data, lv.ctypes.data, work.handle)
            y = np.full(out_dim, 9.0, np.float32)
            lib.ee_matvec(ctypes.byref(s), work.handle, y.ctypes.data)
            want = layout.matvec(pm, x, lv)
            assert np.abs(y - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-6), (kind, shape, tile)
            assert read == layout.rows_read(pm, lv)


@pytest.mark.parametrize("kind", ["q4", "q8"])
def test_the_selection_equals_the_reference(lib, kind):
    pm = _matrix(kind, 576, 576, 5, 512)
    s = planes_struct(pm)
    x = _x(576, 9)
    work = Work(lib, x)
    scores = np.sort(np.concatenate([x**2 * g for g in pm.gains]))
    for tau in (-1.0, float(scores[len(scores) // 2]), float(scores[-10]), float("inf")):
        got = np.zeros(576, np.uint8)
        read = lib.ee_select(ctypes.byref(s), x.ctypes.data, work.xq.ctypes.data, work.dx.ctypes.data, tau, 0, 0,
                             work.handle, got.ctypes.data)
        want = layout.levels(pm, x, tau)
        assert np.array_equal(got, want) and read == layout.rows_read(pm, want), tau
        y = np.zeros(576, np.float32)
        lib.ee_matvec(ctypes.byref(s), work.handle, y.ctypes.data)
        assert np.allclose(y, layout.matvec(pm, x, want, precise=tau < 0), rtol=1e-5, atol=1e-5 * np.abs(y).max())
    whole = np.zeros(576, np.uint8)  # the activation baseline: rows by x^2 alone, every plane or none
    cut = float(np.sort(x**2)[288])
    lib.ee_select(ctypes.byref(s), x.ctypes.data, work.xq.ctypes.data, work.dx.ctypes.data, cut, 0, 1, work.handle,
                  whole.ctypes.data)
    assert np.array_equal(whole, np.where(x**2 > cut, pm.n_planes, 0))


def test_a_per_token_budget_reads_at_most_its_rows_and_the_best_ones(lib):
    pm = _matrix("q8", 576, 576, 11, 512)
    s = planes_struct(pm)
    x = _x(576, 4)
    work = Work(lib, x)
    scratch = np.zeros(2 * 576, np.float32)
    first, second = x**2 * pm.gains[0], np.minimum(x**2 * pm.gains[1], x**2 * pm.gains[0])  # level 2 needs level 1
    scores = np.concatenate([first, second])
    for budget in (0, 1, 300, 576, 1151, 1152):
        tau = lib.ee_budget_tau(ctypes.byref(s), x.ctypes.data, budget, 0, 0, scratch.ctypes.data)
        read = layout.rows_read(pm, layout.levels(pm, x, tau))
        assert read == (scores > tau).sum() <= budget, (budget, read)
        assert budget == 0 or (scores >= tau).sum() >= budget  # no better row left out (only ties at tau)


def test_several_matrices_in_one_job_equal_one_at_a_time(lib):
    mats = [_matrix("q4", 576, 576, 1, 512), _matrix("q4", 192, 576, 2, 512), _matrix("q8", 1536, 576, 3, 512)]
    x = _x(576, 12)
    works = [Work(lib, x) for _ in mats]
    structs = [planes_struct(pm) for pm in mats]
    rng = np.random.default_rng(0)
    outs, levels = [], []
    for pm, s, w in zip(mats, structs, works):
        lv = rng.integers(0, pm.n_planes + 1, 576).astype(np.uint8)
        lib.ee_work_from_levels(ctypes.byref(s), w.xq.ctypes.data, w.dx.ctypes.data, lv.ctypes.data, w.handle)
        outs.append(np.zeros(pm.out_dim, np.float32))
        levels.append(lv)
    mv = (native.MatVec * 3)(*[native.MatVec(ctypes.addressof(s), w.handle, y.ctypes.data) for s, w, y in zip(structs, works, outs)])
    lib.ee_matvec_multi(3, mv)
    for pm, y, lv in zip(mats, outs, levels):
        want = layout.matvec(pm, x, lv)
        assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()


def test_results_do_not_depend_on_the_thread_count(lib):
    """Units are tiles or block ranges summed in a fixed order: one thread or two, the same bits."""
    pm = _matrix("q8", 1536, 576, 21, 512)
    s = planes_struct(pm)
    work = Work(lib, _x(576, 2))
    lib.ee_select(ctypes.byref(s), work.x.ctypes.data, work.xq.ctypes.data, work.dx.ctypes.data, -1.0, 0, 0, work.handle, None)
    results = []
    for threads in (1, 2, 1):
        lib.ecpu_init(threads)
        y = np.zeros(1536, np.float32)
        lib.ee_matvec(ctypes.byref(s), work.handle, y.ctypes.data)
        results.append(y)
    lib.ecpu_init(native.threads())
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


@pytest.mark.parametrize("tile", [512, 1024])
@pytest.mark.parametrize("kind", ["q4", "q8"])
def test_a_batch_of_tokens_gets_the_bits_each_token_gets_alone(lib, kind, tile):
    """ee_matmul_multi (the prompt, drafted tokens to verify) reads the weights once for all tokens and
    gives every token exactly what ee_matvec_multi gives it (tile 1024: the 1536 outputs are one tile,
    which a batch walks in groups of 512 outputs, and cut into ranges of blocks whose partials are
    merged token by token on every thread)."""
    mats = [_matrix(kind, 576, 576, 31, tile), _matrix(kind, 1536, 576, 32, tile)]
    structs = [planes_struct(pm) for pm in mats]
    ntok = 5
    xs = [_x(576, 40 + j) for j in range(ntok)]
    works = [[Work(lib, x) for x in xs] for _ in mats]
    for s, row in zip(structs, works):
        for w in row:
            lib.ee_select(ctypes.byref(s), w.x.ctypes.data, w.xq.ctypes.data, w.dx.ctypes.data, -1.0, 0, 0, w.handle, None)
    batched = [[np.zeros(pm.out_dim, np.float32) for _ in range(ntok)] for pm in mats]
    mv = (native.MatVec * (2 * ntok))(*[native.MatVec(ctypes.addressof(s), w.handle, y.ctypes.data)
                                        for s, row, ys in zip(structs, works, batched) for w, y in zip(row, ys)])
    lib.ee_matmul_multi(2, ntok, mv, 1)
    for k, (s, row) in enumerate(zip(structs, works)):
        for j, w in enumerate(row):
            alone = np.zeros(mats[k].out_dim, np.float32)
            lib.ee_matvec(ctypes.byref(s), w.handle, alone.ctypes.data)
            assert np.array_equal(batched[k][j], alone), (k, j)


@pytest.mark.parametrize("kind", ["q4", "q4_0", "q8"])
@pytest.mark.parametrize("shape", [(64, 32), (576, 576), (1600, 96), (1536, 64)])
def test_the_native_packer_lays_out_what_the_reference_does(kind, shape):
    from engine.effort.planes import store

    out_dim, in_dim = shape
    rng = np.random.default_rng(out_dim)
    d = (rng.random((out_dim, in_dim // 32)) * 0.01).astype(np.float16)
    if kind == "q8":
        codes, m = rng.integers(-127, 128, (out_dim, in_dim)).astype(np.int8), None
    else:
        codes = rng.integers(0, 16, (out_dim, in_dim)).astype(np.uint8)
        m = None if kind == "q4_0" else (-rng.random((out_dim, in_dim // 32)) * 0.08).astype(np.float16)
    want = layout.from_codes("q4" if kind != "q8" else "q8", codes, d, m)
    got = store._build("q4" if kind != "q8" else "q8", codes, d, m)
    for a, b in zip(got.planes, want.planes):
        assert np.array_equal(a, b)
    assert np.array_equal(got.d, want.d) and (got.m is None) == (want.m is None)
    assert got.m is None or np.array_equal(got.m, want.m)
    assert np.allclose(got.gains, want.gains, rtol=1e-4, atol=1e-12)  # float32 vs double sums: same ranking


# -- attention (decode.c): the KV cache layout, every kernel family, batch and thread independence ------


def _cache(lib, k: np.ndarray, v: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's cache as decode.c lays it out, from keys and values [n_kv][positions][head_dim]."""
    from engine.runtime.cpu_runtime import kv_cache

    n_kv, n, hd = k.shape
    kc, vc = (a[0] for a in kv_cache(lib, 1, n_kv, context, hd))
    block = kc.shape[-1]
    for p in range(n):
        kc[:, p // block, :, p % block] = k[:, p]
    vc[:, :n] = v
    return kc, vc


def _attention(lib, kc, vc, q: np.ndarray, pos: int, n_kv: int, window: int = 0) -> np.ndarray:
    """ee_attention for q [ntok][n_heads][head_dim] at positions pos.. over one layer's cache"""
    ntok, n_heads, hd = q.shape
    dims = native.Dims(0, 0, 1, n_heads, n_kv, hd, 0, vc.shape[1], window, 0.0)
    q = np.ascontiguousarray(q, np.float32)
    out = np.full(q.shape, np.nan, np.float32)
    assert lib.ee_attention(ctypes.byref(dims), kc.ctypes.data, vc.ctypes.data, q.ctypes.data, pos, ntok, out.ctypes.data) == 0
    return out


def _attention_reference(q, k, v, pos, window=0):
    """softmax(q K^T / sqrt(head_dim)) V in float64, each token over the positions up to its own (the
    last `window` of them if set), q head h reading kv head h // (n_heads / n_kv)"""
    ntok, n_heads, hd = q.shape
    group = n_heads // k.shape[0]
    out = np.zeros(q.shape)
    for j in range(ntok):
        at = pos + j
        first = max(0, at + 1 - window) if window else 0
        for h in range(n_heads):
            s = k[h // group, first : at + 1].astype(np.float64) @ q[j, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[j, h] = p @ v[h // group, first : at + 1] / p.sum()
    return out


def _qkv(n_heads, n_kv, hd, n, seed):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((n_kv, n, hd)).astype(np.float32)
    v = rng.standard_normal((n_kv, n, hd)).astype(np.float32)
    q = (3 * rng.standard_normal((n, n_heads, hd))).astype(np.float32)  # peaked: some weights near 1, most near 0
    return q, k, v


HEADS = [(4, 4, 64), (9, 3, 64), (8, 2, 128), (6, 2, 80), (4, 1, 40)]  # (q heads, kv heads, head_dim): groups 1, 3, 4


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("length", [1, 15, 16, 17, 300])
def test_attention_equals_the_reference(lib, heads, length):
    """One token attending `length` positions, and a batch of tokens ending there."""
    n_heads, n_kv, hd = heads
    q, k, v = _qkv(n_heads, n_kv, hd, length, length)
    kc, vc = _cache(lib, k, v, 320)
    got = _attention(lib, kc, vc, q[-1:], length - 1, n_kv)
    want = _attention_reference(q[-1:], k, v, length - 1)
    assert np.abs(got - want).max() < 2e-5 * np.abs(want).max()
    ntok = min(length, 37)
    got = _attention(lib, kc, vc, q[-ntok:], length - ntok, n_kv)
    want = _attention_reference(q[-ntok:], k, v, length - ntok)
    assert np.abs(got - want).max() < 2e-5 * np.abs(want).max()


@pytest.mark.parametrize("window", [1, 16, 100])
def test_attention_keeps_to_the_window(lib, window):
    q, k, v = _qkv(9, 3, 64, 300, window)
    kc, vc = _cache(lib, k, v, 300)
    for pos, ntok in ((299, 1), (250, 50), (0, 300)):
        got = _attention(lib, kc, vc, q[pos : pos + ntok], pos, 3, window)
        want = _attention_reference(q[pos : pos + ntok], k, v, pos, window)
        assert np.abs(got - want).max() < 2e-5 * np.abs(want).max(), (pos, ntok)


def test_attention_reads_only_the_tokens_own_positions(lib):
    """A stale cache past the tokens and before their window, NaN here, changes nothing (its blocks hold
    positions the tokens do read)."""
    q, k, v = _qkv(9, 3, 64, 200, 5)
    calls = ((140, 1, 100), (138, 3, 98), (130, 11, 90))  # (pos, ntok, window): positions 41..140 at most
    kc, vc = _cache(lib, k, v, 256)
    clean = [_attention(lib, kc, vc, q[pos : pos + ntok], pos, 3, window) for pos, ntok, window in calls]
    k[:, :41], v[:, :41], k[:, 141:], v[:, 141:] = np.nan, np.nan, np.nan, np.nan
    kc, vc = _cache(lib, k, v, 256)
    kc[:, 200 // 16 :], vc[:, 200:] = np.nan, np.nan
    for (pos, ntok, window), want in zip(calls, clean):
        assert np.array_equal(_attention(lib, kc, vc, q[pos : pos + ntok], pos, 3, window), want), pos


@pytest.mark.parametrize("heads", [(9, 3, 64), (8, 2, 128), (4, 4, 64)])
def test_a_token_gets_the_same_attention_bits_alone_in_a_batch_and_on_any_thread_count(lib, heads):
    """The chunks' partials are folded in position order whatever the batch, the split over the threads
    or the thread count: a prompt chunk or drafted tokens get the decode step's bits."""
    n_heads, n_kv, hd = heads
    q, k, v = _qkv(n_heads, n_kv, hd, 700, 7)
    kc, vc = _cache(lib, k, v, 704)
    for window in (0, 200):
        alone = np.stack([_attention(lib, kc, vc, q[p : p + 1], p, n_kv, window)[0] for p in range(0, 700, 7)])
        for threads in (1, 2):
            lib.ecpu_init(threads)
            for pos, ntok in ((0, 700), (7, 3), (140, 4), (301, 5), (350, 17), (385, 300)):
                got = _attention(lib, kc, vc, q[pos : pos + ntok], pos, n_kv, window)
                for p in range(pos + (-pos) % 7, pos + ntok, 7):
                    assert np.array_equal(got[p - pos], alone[p // 7]), (window, threads, pos, ntok, p)
        lib.ecpu_init(native.threads())


def test_simd_attention_is_close_to_the_plain_c_one():
    """The plain-C kernel is the reference of the SIMD ones (a different order of the same sums)."""
    built = native.library()
    q, k, v = _qkv(9, 3, 64, 500, 9)
    kc, vc = _cache(built, k, v, 512)
    results = {}
    for family in FAMILIES:
        assert built.ee_use_isa(family.encode()) == 0
        results[family] = _attention(built, kc, vc, q[400:], 400, 3)
    built.ee_use_isa(_widest().encode())
    for family, got in results.items():
        assert np.abs(got - results["scalar"]).max() < 1e-5 * np.abs(results["scalar"]).max(), family
