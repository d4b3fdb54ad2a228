"""The native CPU kernels (metal/cpu/*.c, built on first use) against the numpy reference."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from engine.runtime import native
from engine.effort import reference
from engine.effort.bucket import B, convert_matrix, cutoff_for_effort, k_from_cutoff
from engine.runtime.cpu_runtime import Bucket, Dims, _ptr

SHAPES = [(64, 80), (192, 576), (576, 576), (1536, 576), (576, 1536)]
EFFORTS = [1.0, 0.75, 0.5, 0.25, 0.05]


def _cpu_has(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


@pytest.fixture(scope="module", params=["native", "portable"])
def lib(request):
    """The library as this machine builds it (its widest kernels), and the plain-C build that
    non-x86 machines compile."""
    if request.param == "native":
        lib = native.library()
        assert lib is not None, native.build_error()
        return lib
    built = native.load(native.build(variant="portable"))
    assert built.ecpu_isa().decode() == "scalar"
    return built


def test_native_build_uses_the_widest_kernels_this_cpu_has():
    expected = "avx2" if all(_cpu_has(f) for f in ("avx2", "fma", "f16c")) else "scalar"
    assert native.library().ecpu_isa().decode() == expected


def fp16_matrix(out_dim: int, in_dim: int, seed: int) -> np.ndarray:
    """Weights that are exactly representable in fp16 (what the kernels store)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((out_dim, in_dim)) * 0.02).astype(np.float16).astype(np.float32)


def activations(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed + 100).standard_t(3, n).astype(np.float32)
    x[::7] = 0.0  # exact zeros are never dispatched
    return x


class Layout:
    """The C kernel layout of one matrix plus its reference twin."""

    def __init__(self, lib, w: np.ndarray) -> None:
        self.bm = convert_matrix(w, "nibble", 4)
        out_dim, in_dim = w.shape
        self.w16 = np.ascontiguousarray(w.astype(np.float16))
        self.blk = np.zeros(lib.ecpu_effort_blk_bytes(out_dim, in_dim) // 2, np.uint16)
        self.c_stats = np.zeros(B * in_dim, np.float32)
        lib.ecpu_effort_build(_ptr(self.w16), out_dim, in_dim, _ptr(self.blk), _ptr(self.c_stats))
        self.stats = np.ascontiguousarray(self.bm.stats)
        self.probes = np.ascontiguousarray(self.bm.probes)
        self.struct = Bucket(
            _ptr(self.blk), _ptr(self.stats), _ptr(self.probes), self.probes.shape[0],
            out_dim, in_dim, B,
        )


def assert_matches(ours, ref, x, w):
    scale = (np.abs(w) @ np.abs(x)).max() + 1e-12
    assert np.abs(ours - ref).max() <= 2e-6 * scale


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_f16(lib, shape):
    w = fp16_matrix(*shape, seed=1)
    x = activations(shape[1], 1)
    y = np.zeros(shape[0], np.float32)
    w16 = np.ascontiguousarray(w.astype(np.float16))
    lib.ecpu_dense_f16(_ptr(w16), _ptr(x), _ptr(y), *shape)
    assert_matches(y, w.astype(np.float64) @ x, x, w)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("effort", EFFORTS)
def test_effort_kernel_matches_reference(lib, shape, effort):
    w = fp16_matrix(*shape, seed=hash(shape) % 1000)
    x = activations(shape[1], 2)
    lay = Layout(lib, w)
    cutoff = cutoff_for_effort(lay.bm.probes, x, effort)
    k_ref = k_from_cutoff(lay.bm.stats2d, x, cutoff)
    k = np.zeros(shape[1], np.uint8)
    total = lib.ecpu_effort_k(_ptr(lay.stats), _ptr(x), shape[1], cutoff, _ptr(k))
    assert np.array_equal(k, k_ref) and total == k_ref.sum()
    y = np.zeros(shape[0], np.float32)
    lib.ecpu_effort_matvec(_ptr(lay.blk), shape[0], shape[1], _ptr(x), _ptr(k), _ptr(y))
    assert_matches(y, reference.matvec_k(lay.bm, x, k_ref), x, w)
    if effort == 1.0:
        assert_matches(y, w.astype(np.float64) @ x, x, w)


@pytest.fixture(scope="module")
def scratch_model(lib):
    dims = Dims(1536, 1536, 0, 1, 1, 64, 8, 1, 0, 1e-5)
    handle = lib.ee_model_new(ctypes.addressof(dims), None, None, None, None, None, None, None)
    yield handle
    lib.ee_model_free(handle)


@pytest.mark.parametrize("shape", [(192, 576), (1536, 576), (576, 1536)])
@pytest.mark.parametrize("effort", [0.75, 0.5, 0.3, 0.1])
def test_whole_effort_path_matches_reference(lib, scratch_model, shape, effort):
    """probes -> cutoff -> k -> bucket multiply, all in C, against reference.bucket_matvec."""
    w = fp16_matrix(*shape, seed=7)
    x = activations(shape[1], 3)
    lay = Layout(lib, w)
    effort = float(np.float32(effort))  # the C side reads a float
    lib.ee_set_strategy(scratch_model, 0)
    y = np.zeros(shape[0], np.float32)
    used = lib.ee_project(scratch_model, ctypes.addressof(lay.struct), _ptr(x), _ptr(y), effort)
    y_ref, k_ref = reference.bucket_matvec(lay.bm, x, effort)
    assert used == k_ref.sum() * shape[0] // B
    assert_matches(y, y_ref, x, w)
    assert abs(reference.effective_effort(k_ref, lay.bm) - effort) < 0.12


def test_activation_strategy_keeps_whole_columns(lib, scratch_model):
    w = fp16_matrix(576, 576, seed=9)
    x = activations(576, 4)
    lay = Layout(lib, w)
    lib.ee_set_strategy(scratch_model, 1)
    y = np.zeros(576, np.float32)
    used = lib.ee_project(scratch_model, ctypes.addressof(lay.struct), _ptr(x), _ptr(y), 0.25)
    lib.ee_set_strategy(scratch_model, 0)
    keep = np.argsort(-np.abs(x), kind="stable")[: round(0.25 * 576)]
    mask = np.zeros(576, bool)
    mask[keep] = True
    assert used == mask.sum() * 576
    assert_matches(y, w.astype(np.float64) @ np.where(mask, x, 0), x, w)


@pytest.mark.parametrize("effort", [0.9, 0.5, 0.37, 0.1, 0.01])
def test_selection_with_heavy_ties(lib, scratch_model, effort):
    """The C cutoff (histogram of the top key bits, then quickselect inside one bin) on products
    with many exact ties and a spread of magnitudes: the same k as the reference."""
    w = fp16_matrix(192, 576, seed=11)
    lay = Layout(lib, w)
    rng = np.random.default_rng(5)
    x = rng.choice(np.array([0.0, 0.25, 0.5, 1.0, 1e-3, 40.0], np.float32), 576)
    effort = float(np.float32(effort))
    lib.ee_set_strategy(scratch_model, 0)
    y = np.zeros(192, np.float32)
    used = lib.ee_project(scratch_model, ctypes.addressof(lay.struct), _ptr(x), _ptr(y), effort)
    _, k_ref = reference.bucket_matvec(lay.bm, x, effort)
    assert used == k_ref.sum() * 192 // B


@pytest.mark.parametrize("n", [1, 5, 33, 1000])
@pytest.mark.parametrize("head_dim", [64, 80, 12])
def test_attention_matches_numpy(lib, n, head_dim):
    """One head of decode attention over n cached positions, scores large enough that a softmax
    without max subtraction would overflow."""
    rng = np.random.default_rng(n + head_dim)
    q = (rng.standard_normal(head_dim) * 30).astype(np.float32)
    K = rng.standard_normal((n, head_dim)).astype(np.float32)
    V = rng.standard_normal((n, head_dim)).astype(np.float32)
    scale = float(np.float32(1 / np.sqrt(head_dim)))
    out, scores = np.zeros(head_dim, np.float32), np.zeros(n, np.float32)
    lib.ecpu_attend(_ptr(q), _ptr(K), _ptr(V), n, head_dim, scale, _ptr(scores), _ptr(out))
    s = K.astype(np.float64) @ q * scale
    p = np.exp(s - s.max())
    ref = (p / p.sum()) @ V
    assert np.all(np.isfinite(out))
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(V).max()


def q8_0_blocks(out_dim: int, in_dim: int, seed: int) -> np.ndarray:
    """GGUF Q8_0 rows: per 32 weights an fp16 scale then 32 int8."""
    rng = np.random.default_rng(seed)
    d = (rng.random((out_dim, in_dim // 32)) * 0.01).astype(np.float16)
    q = rng.integers(-127, 128, (out_dim, in_dim // 32, 32), dtype=np.int8)
    blocks = np.concatenate([d[..., None].view(np.uint8), q.view(np.uint8)], axis=-1)
    return np.ascontiguousarray(blocks.reshape(out_dim, in_dim // 32 * 34))


@pytest.mark.parametrize("shape", [(64, 64), (1000, 576), (4096, 128)])
def test_q8_head_and_embedding_rows_use_the_files_values(lib, shape):
    out_dim, in_dim = shape
    blocks = q8_0_blocks(out_dim, in_dim, seed=out_dim)
    qs, scales = np.zeros(shape, np.int8), np.zeros((out_dim, in_dim // 32), np.float32)
    lib.ecpu_q8_from_gguf(_ptr(blocks), out_dim, in_dim, _ptr(qs), _ptr(scales))
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    w = dequantize(blocks, GGMLQuantizationType.Q8_0).reshape(shape).astype(np.float64)
    row = np.zeros(in_dim, np.float32)
    lib.ecpu_q8_row(_ptr(qs), _ptr(scales), out_dim - 1, in_dim, _ptr(row))
    assert np.array_equal(row, w[-1].astype(np.float32))
    x = activations(in_dim, 2)
    y = np.zeros(out_dim, np.float32)
    lib.ecpu_head_q8(_ptr(qs), _ptr(scales), _ptr(x), _ptr(y), out_dim, in_dim)
    assert_matches(y, w @ x, x, w)
