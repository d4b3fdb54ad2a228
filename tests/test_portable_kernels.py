"""The GPU kernels (metal/kernels/*.h) run here through their host instantiation.

What runs where (no Mac / GPU on CI):
* the kernel bodies that ship for Metal and CUDA are compiled with g++ for the host
  (metal/preludes/c.h) and run through the same launch sequence as the GPU path
  (engine.runtime.effort_gpu with tests/support/host_build.HostExec), against engine.effort.reference / numpy;
* a checked build of the same bodies looks for barrier races and out-of-bounds accesses;
* the Metal text MLX generates is captured with mx.export_function (works without a GPU),
  compared with our emulation and parsed / type-checked by g++ against a mock of MSL;
* the CUDA text (MLX's wrapper, emulated) is compiled by nvcc when it is installed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import shutil
import struct
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine.runtime import effort_gpu as eg
from engine.runtime import kernel_source as ks
from support import host_build
from support import mlx_codegen as codegen
from engine.effort import reference as ref
from engine.effort.bucket import B, convert_matrix, cutoff_for_effort

pytestmark = pytest.mark.skipif(host_build.host_compiler() is None, reason="needs a C++ compiler (g++/clang++)")

EFFORTS = [1.0, 0.9, 0.5, 0.25, 0.1, 0.03, 0.005, 1e-5, 0.0]
SHAPES = [(64, 64), (192, 576), (576, 1536), (1536, 576), (4096, 64), (64, 4096), (1024, 192)]

_NVCC = shutil.which("nvcc")
_NVCC_ARCH = "sm_90"


# ----------------------------------------------------------------------------- fixtures

def _nvcc_paths() -> tuple[Path, Path]:
    text = codegen.cuda_translation_unit(ks.all_specs())
    import hashlib
    d = host_build.build_cache_dir() / ("nvcc_" + hashlib.sha256((text + _NVCC_ARCH).encode()).hexdigest()[:16])
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernels.cu").write_text(text)
    return d, d / "ok"


@pytest.fixture(scope="session")
def nvcc_job():
    """Start nvcc in the background at the beginning (it takes seconds): (proc | None, dir)."""
    if _NVCC is None:
        return None
    d, ok = _nvcc_paths()
    if ok.exists():
        return ("cached", d)
    proc = subprocess.Popen([_NVCC, "-std=c++17", f"-arch={_NVCC_ARCH}", "-ptx", "-o", str(d / "kernels.ptx"),
                             str(d / "kernels.cu")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return (proc, d)


@pytest.fixture(scope="session")
def execs(nvcc_job):
    """(fast, checked) host executors, both libraries built in parallel (cached in tmp)."""
    fast, checked = host_build.HostExec(False), host_build.HostExec(True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda e: e.host(), (fast, checked)))
    return fast, checked


@pytest.fixture(scope="session")
def host(execs):
    return execs[0]


@pytest.fixture(scope="session")
def checked(execs):
    return execs[1]


_MATS: dict = {}


def matrix(out: int, inp: int, packing: str = "nibble", seed: int = 0, kind: str = "normal"):
    key = (out, inp, packing, seed, kind)
    if key not in _MATS:
        rng = np.random.default_rng(seed + 7 * out + inp)
        w = (rng.standard_normal((out, inp)) * rng.uniform(0.2, 2.0, size=(1, inp))).astype(np.float32) * 0.05
        if kind == "ties":
            w = np.round(w * 40) / 40          # many equal |w|: ties in the rank sort and the stats
        _MATS[key] = convert_matrix(w, packing)
    return _MATS[key]


def vector(n: int, kind: str = "normal", seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed + n)
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "zeros":
        x[rng.random(n) < 0.3] = 0.0
    elif kind == "ties":
        x = rng.choice(np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32), n)
    elif kind == "allzero":
        x = np.zeros(n, np.float32)
    elif kind == "scaled":
        x = x * np.float32(1e-3) ** rng.integers(0, 3, n).astype(np.float32)
    return x


def abs_bound(bm, x, k) -> np.ndarray:
    """sum over dispatched weights of |x*w| per output (scale for float tolerances)."""
    absbm = dataclasses.replace(bm, data=np.abs(bm.data))
    return ref.matvec_k(absbm, np.abs(x), k)


def check_y(y, want, bound, rtol=2e-6):
    assert not np.isnan(y).any(), "an output was never written"
    err = np.abs(y.astype(np.float64) - want.astype(np.float64))
    assert (err <= rtol * bound + 1e-30).all(), f"max err {err.max()} (bound {bound.max()})"


def same_float(a: float, b: float) -> bool:
    return (np.isinf(a) and np.isinf(b) and np.sign(a) == np.sign(b)) or np.float32(a) == np.float32(b)


# ----------------------------------------------------------------------------- cutoff (select)

@pytest.mark.parametrize("xkind", ["normal", "zeros", "ties", "allzero", "scaled"])
@pytest.mark.parametrize("shape", [(64, 64), (192, 576), (1536, 576), (64, 4096)])
def test_select_cutoff_is_exact(host, shape, xkind):
    bm = matrix(*shape)
    x = vector(bm.in_dim, xkind)
    for effort in EFFORTS + [0.37, 0.71]:
        cut = eg.select_cutoffs(host, bm.probes.reshape(-1), [0], [bm.probes.shape[0]], bm.in_dim, x, effort)
        want = cutoff_for_effort(bm.probes, x, effort)
        assert same_float(float(cut[0]), want), (effort, float(cut[0]), want)


def test_select_every_rank(host):
    """All ranks of a small problem, ties included: the radix select equals np.partition."""
    in_dim = 64
    rng = np.random.default_rng(5)
    probes = rng.choice(np.array([0.0, 1e-3, 0.5, 0.5, 2.0], np.float32), (4, in_dim))
    x = rng.choice(np.array([0.0, -1.0, 1.0, 3.0, 1e-20], np.float32), in_dim)
    p = np.sort((probes * np.abs(x)).ravel())
    spec = ks.select_spec(False)
    params = np.array([[0, 4, in_dim, r] for r in range(p.size)], np.int32).reshape(-1)
    # one launch, one threadgroup per rank ("matrices" with the same probes at offset 0)
    (cut,) = host.launch(spec, (1, p.size), [probes.reshape(-1), x, params], [p.size])
    assert np.array_equal(cut, p)


def test_select_group_one_launch(host):
    """q/k/v-like matrices sharing x: one select launch, each cutoff exact."""
    bms = [matrix(576, 576, seed=1), matrix(192, 576, seed=2), matrix(192, 576, seed=3)]
    grp = eg.make_layout_group(bms, np.asarray)
    x = vector(576, "zeros")
    n0 = len(host.launches)
    res = eg.bucket_matvec_group(host, grp, x, 0.3)
    names = [n for n, _ in host.launches[n0:]]
    assert names.count("effort_select") == 1
    for bm, (y, k) in zip(bms, res):
        yr, kr = ref.bucket_matvec(bm, x, 0.3)
        assert np.array_equal(k, kr)
        check_y(y, yr, abs_bound(bm, x, kr))


# ----------------------------------------------------------------------------- bucket matvec

@pytest.mark.parametrize("shape", SHAPES)
def test_bucket_matvec_matches_reference(host, shape):
    bm = matrix(*shape)
    lay = eg.make_layout(bm, np.asarray)
    for xkind in ("normal", "zeros", "ties"):
        x = vector(bm.in_dim, xkind)
        for effort in EFFORTS:
            y, k = eg.bucket_matvec(host, lay, x, effort)
            yr, kr = ref.bucket_matvec(bm, x, effort)
            assert k.dtype == np.int32 and np.array_equal(k, kr), (effort, xkind)
            check_y(y, yr, abs_bound(bm, x, kr))


@pytest.mark.parametrize("packing", ["nearest", "truncate"])
@pytest.mark.parametrize("shape", [(192, 576), (576, 1536)])
def test_bucket_matvec_low_bit_packings(host, shape, packing):
    bm = matrix(*shape, packing=packing, kind="ties")
    lay = eg.make_layout(bm, np.asarray)
    assert not lay.pos_nibble and lay.pos is None
    x = vector(bm.in_dim, "zeros")
    for effort in (1.0, 0.4, 0.05):
        y, k = eg.bucket_matvec(host, lay, x, effort)
        yr, kr = ref.bucket_matvec(bm, x, effort)
        assert np.array_equal(k, kr)
        check_y(y, yr, abs_bound(bm, x, kr))


@pytest.mark.parametrize("shape", [(576, 1536), (4096, 64), (64, 4096)])
def test_effort_one_is_exactly_dense(host, shape):
    bm = matrix(*shape)
    x = vector(bm.in_dim)
    n0 = len(host.launches)
    y, k = eg.bucket_matvec(host, eg.make_layout(bm, np.asarray), x, 1.0)
    assert (k == B).all()
    assert "effort_select" not in [n for n, _ in host.launches[n0:]]  # cutoff is a constant -inf
    dense = bm.dense().astype(np.float64) @ x.astype(np.float64)
    check_y(y, dense, np.abs(bm.dense()).astype(np.float64) @ np.abs(x).astype(np.float64))


def test_effort_zero_and_tiny(host):
    bm = matrix(576, 1536)
    lay = eg.make_layout(bm, np.asarray)
    x = vector(1536)
    y, k = eg.bucket_matvec(host, lay, x, 0.0)
    assert (k == 0).all() and (y == 0).all()
    y, k = eg.bucket_matvec(host, lay, x, 2.0 / (4 * 1536))   # two probe products above the cutoff: a few rows
    yr, kr = ref.bucket_matvec(bm, x, 2.0 / (4 * 1536))
    assert np.array_equal(k, kr) and 0 < k.sum() < 4 * B
    check_y(y, yr, abs_bound(bm, x, kr))


def test_half_input_and_cutoff_override(host):
    bm = matrix(1536, 576)
    lay = eg.make_layout(bm, np.asarray)
    xh = vector(576).astype(np.float16)
    x32 = xh.astype(np.float32)
    y, k = eg.bucket_matvec(host, lay, xh, 0.3)
    yr, kr = ref.bucket_matvec(bm, x32, 0.3)
    assert np.array_equal(k, kr)
    check_y(y, yr, abs_bound(bm, x32, kr))
    cut = np.float32(np.median(bm.stats) * 0.7)
    y, k = eg.bucket_matvec(host, lay, x32, 0.3, cutoff=np.array([cut], np.float32))
    yr, kr = ref.bucket_matvec(bm, x32, 0.3, cutoff=float(cut))
    assert np.array_equal(k, kr)
    check_y(y, yr, abs_bound(bm, x32, kr))


def test_deterministic(host):
    bm = matrix(576, 1536)
    lay = eg.make_layout(bm, np.asarray)
    x = vector(1536, "zeros")
    a = eg.bucket_matvec(host, lay, x, 0.2)
    b = eg.bucket_matvec(host, lay, x, 0.2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_plan_groups():
    for in_dim in (64, 192, 576, 1536, 4096, 14336):
        for out_dim in (64, 192, 576, 1536, 4096, 14336):
            tgs, n_bx, g, ipg = eg.plan_groups(in_dim, out_dim // B)
            assert n_bx * tgs >= out_dim // B > (n_bx - 1) * tgs and tgs in (32, 64, 128)
            assert ipg <= eg.BMUL_IPG_MAX and g * ipg >= in_dim and (g - 1) * ipg < in_dim
    assert eg.launches_per_matrix(4096, 4096, 1.0) == 2     # no select at effort 1
    assert eg.launches_per_matrix(4096, 4096, 0.3) == 3
    assert eg.launches_per_matrix(4096, 4096, 0.3, cutoff_given=True) == 2


# ----------------------------------------------------------------------------- attention

def attention_ref(q, keys, values, length, scale):
    n_kv, _, hd = keys.shape
    n_heads = q.size // hd
    q = q.reshape(n_heads, hd).astype(np.float64)
    out = np.zeros((n_heads, hd))
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        s = scale * keys[kv, :length].astype(np.float64) @ q[h]
        p = np.exp(s - s.max())
        out[h] = p @ values[kv, :length].astype(np.float64) / p.sum()
    return out


@pytest.mark.parametrize("n_heads,n_kv,hd,t_cap,length,launches", [
    (4, 4, 64, 40, 1, 1),
    (9, 3, 64, 600, 257, 2),        # SmolLM2-like GQA, 2 chunks
    (32, 8, 128, 300, 300, 2),      # Mistral-like heads
    (8, 2, 128, 2100, 2048, 2),     # 8 chunks
    (64, 8, 64, 700, 513, 1),       # many heads: one chunk of 3 blocks (online rescaling)
])
def test_decode_attention(host, n_heads, n_kv, hd, t_cap, length, launches):
    rng = np.random.default_rng(n_heads * 1000 + length)
    q = rng.standard_normal((n_heads, hd)).astype(np.float32)
    keys = rng.standard_normal((n_kv, t_cap, hd)).astype(np.float32)
    values = rng.standard_normal((n_kv, t_cap, hd)).astype(np.float32)
    keys[:, length:] = np.nan   # positions past `length` must never be read into the result
    values[:, length:] = np.nan
    n0 = len(host.launches)
    out = eg.decode_attention(host, q, keys, values, length, 1.0 / np.sqrt(hd))
    assert len(host.launches) - n0 == launches
    want = attention_ref(q, keys, values, length, 1.0 / np.sqrt(hd))
    assert out.shape == (n_heads, hd)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-5)


def test_decode_attention_stable_and_half(host):
    rng = np.random.default_rng(3)
    n_heads, n_kv, hd, t_cap, length = 8, 2, 64, 1100, 1000
    q = (rng.standard_normal((n_heads, hd)) * 60).astype(np.float32)   # scores ~ +-500: exp overflows without max subtraction
    keys = rng.standard_normal((n_kv, t_cap, hd)).astype(np.float16)
    values = rng.standard_normal((n_kv, t_cap, hd)).astype(np.float16)
    out = eg.decode_attention(host, q.astype(np.float16), keys, values, length, 1.0 / 8)
    want = attention_ref(q.astype(np.float16).astype(np.float32), keys.astype(np.float32),
                         values.astype(np.float32), length, 1.0 / 8)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=0, atol=5e-4)


def test_plan_attention():
    assert eg.plan_attention(32, 100) == (256, 1)
    for n_heads in (1, 9, 32):
        for length in (1, 255, 256, 257, 4000, 32768):
            chunk, n = eg.plan_attention(n_heads, length)
            assert chunk % eg.ATTN_TGS == 0 and (n - 1) * chunk < length <= n * chunk


# ----------------------------------------------------------------------------- checked runs

def test_checked_runs_have_no_races(host, checked):
    """The race / bounds checker over every kernel; results equal the plain build bit for bit."""
    checked.host().reset_errors()
    bm = matrix(192, 576)
    x = vector(576, "zeros")
    for effort in (1.0, 0.3):
        a = eg.bucket_matvec(checked, eg.make_layout(bm, np.asarray), x, effort)
        b = eg.bucket_matvec(host, eg.make_layout(bm, np.asarray), x, effort)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    bmt = matrix(64, 64, packing="truncate")
    eg.bucket_matvec(checked, eg.make_layout(bmt, np.asarray), vector(64).astype(np.float16), 0.5)
    grp = eg.make_layout_group([matrix(64, 192, seed=4), matrix(96, 192, seed=5)], np.asarray)
    eg.bucket_matvec_group(checked, grp, vector(192), 0.4)
    rng = np.random.default_rng(0)
    for n_heads, n_kv, hd, length in ((4, 2, 64, 300), (32, 8, 64, 600), (64, 8, 64, 300)):
        q = rng.standard_normal((n_heads, hd)).astype(np.float32)
        kv = rng.standard_normal((2, n_kv, length + 3, hd)).astype(np.float32)
        a = eg.decode_attention(checked, q, kv[0], kv[1], length, 0.125)
        b = eg.decode_attention(host, q, kv[0], kv[1], length, 0.125)
        assert np.array_equal(a, b)
    n, msg = checked.host().errors()
    assert n == 0, msg


RACY = {
    # a tree step that reads a neighbour written in the same phase (missing barrier)
    "tree": """
EF_TG_ARRAY(float, s, EF_TGS);
EF_PHASE_BEGIN s[EF_LID] = x[EF_LID]; EF_PHASE_END
EF_PHASE_BEGIN
    if (EF_LID < 32u) s[EF_LID] = s[EF_LID] + s[EF_LID + 32u];
    if (EF_LID < 16u) s[EF_LID] = s[EF_LID] + s[EF_LID + 16u];
EF_PHASE_END
EF_PHASE_BEGIN if (EF_LID == 0u) y[0] = s[0]; EF_PHASE_END
""",
    # uniform code reads s[0], the next phase rewrites it before another barrier
    "uniform": """
EF_TG_ARRAY(float, s, EF_TGS);
EF_PHASE_BEGIN s[EF_LID] = x[EF_LID]; EF_PHASE_END
const float v = s[0];
EF_PHASE_BEGIN if (EF_LID == 0u) s[0] = v + 1.0f; EF_PHASE_END
EF_PHASE_BEGIN if (EF_LID == 0u) y[0] = s[0]; EF_PHASE_END
""",
    "uninitialized": """
EF_TG_ARRAY(float, s, EF_TGS);
EF_PHASE_BEGIN if (EF_LID == 0u) y[0] = s[5]; EF_PHASE_END
""",
    "out_of_bounds": """
EF_PHASE_BEGIN if (EF_LID == 0u) y[0] = x[EF_TGS]; EF_PHASE_END
""",
    "double_write": """
EF_PHASE_BEGIN y[0] = x[EF_LID]; EF_PHASE_END
""",
}


def test_checker_catches_races(tmp_path):
    specs = {}
    for name, body in RACY.items():
        p = tmp_path / f"{name}.h"
        p.write_text(body)
        specs[name] = ks.KernelSpec(f"racy_{name}", str(p), (ks.Arg("x", "float32"),), (ks.Arg("y", "float32"),), 64)
    lib = host_build.HostKernels(list(specs.values()), checked=True, cache=tmp_path)
    expect = {"tree": "race", "uniform": "race", "uninitialized": "uninitialized",
              "out_of_bounds": "out of bounds", "double_write": "two threads"}
    for name, spec in specs.items():
        lib.reset_errors()
        lib.run(spec, (1, 1), [np.arange(64, dtype=np.float32)], [1])
        n, msg = lib.errors()
        assert n > 0 and expect[name] in msg, (name, msg)


# ----------------------------------------------------------------------------- source checks

def test_sources_assemble_and_names_match():
    specs = ks.all_specs()
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        body = ks.body_text(spec)
        assert "return" not in re.sub(r"//.*", "", body), "a body must not return (barriers)"
        assert "LID_" not in body and "GX_" not in body, "bodies use EF_LID / EF_GX / EF_GY"
        idents = set(re.findall(r"\b[A-Za-z_]\w*\b", re.sub(r"//.*", "", body)))
        for a in (*spec.inputs, *spec.outputs):
            assert a.name in idents, f"{spec.base}: {a.name} unused"
        for backend in ("metal", "cuda"):
            kw = ks.mlx_kernel_kwargs(spec, backend)
            src = kw["source"]
            for n in spec.input_names:
                for suffix in ("_shape", "_strides", "_ndim"):
                    assert n + suffix not in src
            assert set(kw["input_names"]) & set(kw["output_names"]) == set()
        assert [a for a, _ in codegen.metal_attributes(ks.source(spec, "metal"))] == [
            "thread_position_in_threadgroup", "threadgroup_position_in_grid"]
        # every array the body indexes is an input or output (of some variant of this body:
        # #if branches), a threadgroup array or a small fixed-size local (register) array
        tg = set(re.findall(r"EF_TG_(?:ARRAY\(\s*\w+\s*,|ATOMIC_U32\()\s*(\w+)", body))
        tg |= set(re.findall(r"\b(?:u?int\d+_t|float)\s+(\w+)\s*\[\s*\d+u?\s*\]\s*;", body))
        indexed = set(re.findall(r"\b([A-Za-z_]\w*)\s*\[", re.sub(r"//.*", "", body)))
        names = {a.name for s in specs if s.body == spec.body for a in (*s.inputs, *s.outputs)}
        assert indexed <= tg | names, (spec.base, indexed - tg - names)


def test_metal_kernels_construct_on_cpu():
    """mx.fast.metal_kernel accepts every variant (it only fails at launch without Metal)."""
    for spec in ks.all_specs():
        k = mx.fast.metal_kernel(**ks.mlx_kernel_kwargs(spec, "metal"))
        assert callable(k)
    if not mx.metal.is_available():
        spec = ks.reduce_spec()
        k = mx.fast.metal_kernel(**ks.mlx_kernel_kwargs(spec, "metal"))
        with pytest.raises(RuntimeError, match="Metal"):
            k(inputs=[mx.zeros((64,)), mx.array([32, 2], mx.int32)], output_shapes=[(32,)],
              output_dtypes=[mx.float32], grid=(256, 1, 1), threadgroup=(256, 1, 1))


def test_gpu_module_is_a_noop_without_gpu():
    assert eg.available() == (eg.BACKEND is not None)
    if eg.BACKEND is None:
        with pytest.raises(eg.GpuUnavailable):
            eg.bucket_matvec_gpu(matrix(64, 64), mx.zeros((64,)), 0.5)
        with pytest.raises(eg.GpuUnavailable):
            eg.decode_attention_gpu(mx.zeros((2, 64)), mx.zeros((1, 8, 64)), mx.zeros((1, 8, 64)), 4, 0.1)


class _Recording(eg.MlxExec):
    def __init__(self):
        super().__init__("metal")
        self.calls = []

    def launch(self, spec, groups, inputs, sizes):
        self.calls.append((spec, {a.name: int(x.size) for a, x in zip(spec.inputs, inputs)}))
        return super().launch(spec, groups, inputs, sizes)


MARKER = b"// effort-engine portable kernels: Metal prelude"


def _exported_sources(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    out = {}
    for m in re.finditer(re.escape(MARKER), data):
        n = struct.unpack("<Q", data[m.start() - 8:m.start()])[0]
        text = data[m.start():m.start() + n].decode()
        out[re.search(r"\[\[kernel\]\] void (\w+)\(", text).group(1)] = text
    return out


def test_metal_graph_export_and_mock_compile(tmp_path):
    """Trace the whole GPU path with the Metal backend on a CPU machine (mx.export_function
    records custom kernels without running them): the graph builds, nothing is read back, the
    source MLX generates equals our emulation, and g++ parses it against a mock of MSL."""
    rec = _Recording()
    bm = matrix(192, 576)
    bmt = matrix(64, 192, packing="nearest")
    lay, layt = eg.make_layout(bm), eg.make_layout(bmt)
    grp = eg.make_layout_group([matrix(64, 192, seed=4), matrix(96, 192, seed=5)])

    def fn(x, xs, q, keys, values):
        y, k = eg.bucket_matvec(rec, lay, x, 0.3)
        assert y.shape == (192,) and y.dtype == mx.float32 and k.shape == (576,) and k.dtype == mx.int32
        y2, _ = eg.bucket_matvec(rec, layt, xs.astype(mx.float16), 0.5)
        ys = [yy for yy, _ in eg.bucket_matvec_group(rec, grp, xs, 0.2)]
        a1 = eg.decode_attention(rec, q, keys, values, 100, 0.125)           # one chunk
        a2 = eg.decode_attention(rec, q, keys.astype(mx.float16), values.astype(mx.float16), 900, 0.125)
        y3, _ = eg.bucket_matvec_gpu(lay, x, 0.7, backend="metal")            # public API
        return [y, k, y2, *ys, a1, a2, y3]

    args = (mx.array(vector(576)), mx.array(vector(192)), mx.zeros((4, 64)), mx.zeros((2, 1000, 64)),
            mx.zeros((2, 1000, 64)))
    path = tmp_path / "trace.mlxfn"
    mx.export_function(str(path), fn, *args)
    sources = _exported_sources(path)
    bases = {spec.base for spec, _ in rec.calls}
    assert bases == {"effort_select", "effort_bucket_mul", "effort_reduce",
                     "effort_attention", "effort_attn_combine"}
    units = []
    for spec, sizes in rec.calls:
        emulated = codegen.metal_translation_unit(spec, sizes)
        name = re.search(r"\[\[kernel\]\] void (\w+)\(", emulated).group(1)
        assert name in sources, name
        assert sources[name] == emulated
        units.append(sources[name] + ks.undefines_text(spec))
    _mock_metal_compile(units, tmp_path / "traced_metal.cpp")


def _mock_metal_compile(units: list[str], path: Path) -> None:
    path.write_text("\n".join(dict.fromkeys(units)))
    proc = subprocess.run([host_build.host_compiler(), "-std=c++17", "-fsyntax-only", "-Wno-attributes", "-include",
                           str(Path(__file__).parent / "support" / "msl_mock.h"), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_all_metal_variants_parse(tmp_path):
    """Every variant's Metal text (our emulation, checked equal to MLX's above), parsed by g++
    against the MSL mock; small inputs (params, cutoff, scale) in the `constant` space."""
    small = {"params": 4, "cutoff": 1, "scale": 1}
    units = [codegen.metal_translation_unit(spec, {n: small.get(n, 4096) for n in spec.input_names})
             + ks.undefines_text(spec) for spec in ks.all_specs()]
    assert all("const constant int32_t* params" in u for u in units)
    _mock_metal_compile(units, tmp_path / "all_metal.cpp")


@pytest.mark.skipif(_NVCC is None, reason="nvcc not installed")
def test_cuda_sources_compile_with_nvcc(nvcc_job):
    """MLX's CUDA wrapper around every variant, compiled to PTX by nvcc (started at session start)."""
    proc, d = nvcc_job
    if proc != "cached":
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        (d / "ok").write_text("ok")
    ptx = (d / "kernels.ptx").read_text()
    for spec in ks.all_specs():
        assert f"custom_kernel_{spec.name}" in ptx
