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
    for tile in (128, 512):
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


@pytest.mark.parametrize("kind", ["q4", "q8"])
def test_a_batch_of_tokens_gets_the_bits_each_token_gets_alone(lib, kind):
    """ee_matmul_multi (the prompt, drafted tokens to verify) reads the weights once for all tokens and
    gives every token exactly what ee_matvec_multi gives it."""
    mats = [_matrix(kind, 576, 576, 31, 512), _matrix(kind, 1536, 576, 32, 512)]
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
