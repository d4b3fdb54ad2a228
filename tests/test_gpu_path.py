"""The MLX runtime's GPU effort path.

Everywhere: the decode-step logic of `engine.runtime.effort_mlx` on the GPU branch (grouped selects for
q/k/v and gate/up, per-matrix efforts, products summed lazily, one sync per step) runs with the
kernels' host instantiation standing in for the GPU, against the numpy path.

On a machine with MLX's Metal or CUDA backend (skipped elsewhere): the real kernels through
`mx.fast.metal_kernel` / `mx.fast.cuda_kernel` against the numpy reference, on many shapes and
efforts, decode attention against numpy, and a tiny model's effort steps against the numpy path.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.runtime import effort_gpu as eg
from engine.effort import reference as ref
from engine import session
from engine.effort.bucket import convert_matrix, k_for_effort
from engine.runtime.effort_mlx import MLXEffortPath
from support.host_build import HostExec, host_compiler

GPU = eg.available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs MLX's Metal or CUDA backend")
needs_cc = pytest.mark.skipif(host_compiler() is None, reason="needs a C++ compiler")


class HostAsGpu(HostExec):
    """The host kernels behind MLX arrays: what MlxExec receives, converted at each launch."""

    is_half = eg.MlxExec.is_half
    half_bits = eg.MlxExec.half_bits
    to_f32 = eg.MlxExec.to_f32
    flat = eg.MlxExec.flat

    def const(self, a):
        return mx.array(np.asarray(a))

    def launch(self, spec, groups, inputs, sizes):
        outs = super().launch(spec, groups, [np.array(a) for a in inputs], sizes)
        return [mx.array(o) for o in outs]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def host_as_gpu(monkeypatch):
    ex = HostAsGpu()
    monkeypatch.setattr(eg, "available", lambda: True)
    monkeypatch.setattr(eg, "_exec", lambda backend=None: ex)
    return ex


def _steps(loaded, ids, efforts):
    rt = loaded.runtime
    rt.reset(0)
    rt.prefill(ids[:-1])
    out = []
    for e in efforts:
        rt.reset(len(ids) - 1)
        out.append(rt.step(ids[-1], e))
    return out


@needs_cc
def test_gpu_branch_of_the_mlx_path_matches_numpy(tiny_gguf, cache, host_as_gpu):
    loaded = session.load(str(tiny_gguf("F16")), runtime="mlx")
    ids = loaded.tokenizer.encode("hello world, this is a test of effort")
    efforts = [1.0, 0.75, 0.5, 0.25]
    gpu = _steps(loaded, ids, efforts)
    names = [name for name, _ in host_as_gpu.launches]
    # one select per shared-input group (q/k/v, gate/up) and one for o and for down, per layer
    layers = loaded.model.config.num_layers
    assert names.count("effort_select") == 4 * layers * (len(efforts) - 1)
    loaded.runtime.effort_path.gpu = False  # the same path through numpy
    cpu = _steps(loaded, ids, efforts)
    for (lg, ug), (lc, uc) in zip(gpu, cpu):
        assert abs(ug - uc) < 1e-9
        np.testing.assert_allclose(lg, lc, rtol=2e-3, atol=2e-3 * np.abs(lc).max())


@needs_cc
def test_group_with_a_member_at_full_effort(host_as_gpu):
    rng = np.random.default_rng(3)
    mats = [convert_matrix(rng.standard_normal((o, 96)).astype(np.float32)) for o in (64, 32, 32)]
    group = eg.layout_group_of([eg.make_layout(bm) for bm in mats])
    x = rng.standard_normal(96).astype(np.float32)
    efforts = [0.5, 1.0, 0.2]
    results = eg.bucket_matvec_group_gpu(group, mx.array(x), efforts)
    for bm, e, (y, k) in zip(mats, efforts, results):
        want, _ = ref.bucket_matvec(bm, x, e)
        np.testing.assert_allclose(np.array(y), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        eg.bucket_matvec_group_gpu(group, mx.array(x), [0.5, 0.5])


# --------------------------------------------------------------------------- on a real GPU

GPU_SHAPES = [(64, 64), (576, 576), (1536, 576), (576, 1536), (1024, 4096), (4096, 1024), (14336, 4096)]
GPU_EFFORTS = [1.0, 0.75, 0.5, 0.25, 0.1, 0.01, 0.0]


@needs_gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_kernels_match_reference(shape):
    rng = np.random.default_rng(shape[0] + shape[1])
    out_dim, in_dim = shape
    bm = convert_matrix((rng.standard_normal(shape) / np.sqrt(in_dim)).astype(np.float32))
    lay = eg.gpu_layout(bm)
    x = rng.standard_normal(in_dim).astype(np.float32) * np.exp(rng.standard_normal(in_dim)).astype(np.float32)
    for e in GPU_EFFORTS:
        y, k = eg.bucket_matvec_gpu(lay, mx.array(x), e)
        want_k = k_for_effort(bm, x, e)
        np.testing.assert_array_equal(np.array(k), want_k)
        want = ref.matvec_k(bm, x, want_k)
        scale = max(float(np.abs(want).max()), 1e-6)
        np.testing.assert_allclose(np.array(y), want, rtol=1e-3, atol=1e-4 * scale)
        # half input: the same selection on the fp16-rounded x
        xh = x.astype(np.float16)
        yh, kh = eg.bucket_matvec_gpu(lay, mx.array(xh), e)
        np.testing.assert_array_equal(np.array(kh), k_for_effort(bm, xh.astype(np.float32), e))


@needs_gpu
def test_gpu_results_are_deterministic():
    rng = np.random.default_rng(7)
    bm = convert_matrix(rng.standard_normal((4096, 4096)).astype(np.float32))
    lay = eg.gpu_layout(bm)
    x = mx.array(rng.standard_normal(4096).astype(np.float32))
    first = np.array(eg.bucket_matvec_gpu(lay, x, 0.3)[0])
    for _ in range(5):
        assert np.array_equal(np.array(eg.bucket_matvec_gpu(lay, x, 0.3)[0]), first)


@needs_gpu
@pytest.mark.parametrize("n_heads,n_kv,hd,length", [(9, 3, 64, 1), (9, 3, 64, 300), (32, 8, 128, 4000)])
def test_gpu_decode_attention(n_heads, n_kv, hd, length):
    rng = np.random.default_rng(length)
    t_cap = length + 7
    q = rng.standard_normal((n_heads, hd)).astype(np.float32)
    keys = rng.standard_normal((n_kv, t_cap, hd)).astype(np.float32) * 3
    values = rng.standard_normal((n_kv, t_cap, hd)).astype(np.float32)
    scale = hd ** -0.5
    out = np.array(eg.decode_attention_gpu(mx.array(q), mx.array(keys), mx.array(values), length, scale))
    group = n_heads // n_kv
    want = np.zeros_like(q)
    for h in range(n_heads):
        s = keys[h // group, :length] @ q[h] * scale
        p = np.exp(s - s.max())
        want[h] = (p / p.sum()) @ values[h // group, :length]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    half = eg.decode_attention_gpu(mx.array(q).astype(mx.float16), mx.array(keys).astype(mx.float16),
                                   mx.array(values).astype(mx.float16), length, scale)
    np.testing.assert_allclose(np.array(half), want, rtol=2e-2, atol=2e-2)


@needs_gpu
def test_gpu_effort_steps_match_numpy(tiny_gguf, cache):
    loaded = session.load(str(tiny_gguf("F16")), runtime="mlx")
    assert isinstance(loaded.runtime.effort_path, MLXEffortPath) and loaded.runtime.effort_path.gpu
    ids = loaded.tokenizer.encode("hello world, this is a test of effort")
    efforts = [1.0, 0.5, 0.25]
    gpu = _steps(loaded, ids, efforts)
    loaded.runtime.effort_path.gpu = False
    cpu = _steps(loaded, ids, efforts)
    for (lg, ug), (lc, uc) in zip(gpu, cpu):
        assert abs(ug - uc) < 0.02  # fp16 activations on the GPU can move a product across the cutoff
        assert np.corrcoef(lg, lc)[0, 1] > 0.99
