"""The CPU kernels (C): built on first use with the system compiler, and their C interface, declared once.

The library is cached under the cache dir, keyed by a hash of the sources and the compiler command,
and written atomically, so a crash mid-build never leaves a broken library behind. Without a C compiler
the engine still runs (on MLX alone), just without the fast CPU path; `build_error()` says why.

A cached library is trusted only after two checks at every load: its sha256 record (engine.io.checksum,
written when it was built) and a self-test of its kernels against a small numpy product. A library that
fails either (garbage bytes, a damaged or foreign file) is built again, once; if that one fails too the
path is `broken()`, and the session refuses to start rather than fall back to MLX, whose greedy text
differs.

Everything Python passes to C is declared here: the structs of `metal/cpu/planes.h` and
`metal/cpu/decode.c` as ctypes structures, and every function's signature. The projection order of the
per-matrix arrays is read from the library itself (`ee_projections`), not assumed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.io import checksum
from engine.runtime.kernel_files import kernel_path
from engine.io.atomic import atomic_path
from engine.io.paths import cache_dir

if TYPE_CHECKING:
    from engine.effort.planes.layout import PlaneMatrix

FLAGS = ["-O3", "-shared", "-fPIC", "-std=c11", "-fno-math-errno", "-D_GNU_SOURCE"]
SOURCES = ("cpu/pool.c", "cpu/planes.c", "cpu/decode.c")
HEADERS = ("cpu/planes.h", "cpu/pool.h")
LIBRARY_NAME = "libeffort-planes." + ("dylib" if sys.platform == "darwin" else "so")
VARIANTS = {"native": [], "portable": ["-DECPU_NO_SIMD"]}

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the loaded library; "error": why there is none; "broken": its checks failed

c_ptr, c_int, c_float, c_long, c_double = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long, ctypes.c_double


# -- the C structs --------------------------------------------------------------------------------


class Dims(ctypes.Structure):
    _fields_ = [
        *[(n, c_int) for n in ("dim", "ffn", "n_layers", "n_heads", "n_kv", "head_dim", "vocab", "max_ctx", "window")],
        ("eps", c_float),
    ]


class Planes(ctypes.Structure):
    """ee_planes: one matrix in the planes layout (pointers into numpy arrays)."""

    _fields_ = [("kind", c_int), ("out", c_int), ("in_", c_int), ("tile", c_int), ("plane", c_ptr * 2), ("d", c_ptr),
                ("m", c_ptr), ("gain", c_ptr * 2)]


N_PROJ = 7


class Layer(ctypes.Structure):
    _fields_ = [("proj", Planes * N_PROJ), ("bias", c_ptr * 3), ("attn_norm", c_ptr), ("ffn_norm", c_ptr)]


class Effort(ctypes.Structure):
    """ee_effort: per-matrix thresholds, or per-token budgets, or neither (dense); `coarse`: the
    activations at their int8 level alone (calibration's measurements, at half the arithmetic)."""

    _fields_ = [("tau", c_ptr), ("share", c_ptr), ("whole_rows", c_int), ("coarse", c_int)]


class Stats(ctypes.Structure):
    """ee_stats: where the rows' scores fall, per matrix and plane (calibration)."""

    _fields_ = [("hist", c_ptr)]


HIST_BINS, HIST_PER_OCTAVE, HIST_LOW = 1024, 8, -96  # decode.c's EE_HIST_*
MAX_BATCH = 512  # planes.h's EE_MAX_BATCH: tokens one ee_forward takes


class MatVec(ctypes.Structure):
    _fields_ = [("P", c_ptr), ("w", c_ptr), ("y", c_ptr)]


def _declare(lib: ctypes.CDLL) -> None:
    signatures = {
        "ee_projections": (ctypes.c_char_p, []),
        "ee_isa": (ctypes.c_char_p, []),
        "ee_use_isa": (c_int, [ctypes.c_char_p]),
        "ee_model_new": (c_ptr, [c_ptr, c_ptr, c_ptr, c_ptr, c_ptr, c_ptr, c_ptr, c_int]),
        "ee_model_free": (None, [c_ptr]),
        "ee_set_stats": (None, [c_ptr, c_ptr]),
        "ee_set_capture": (None, [c_ptr, c_ptr, c_ptr]),
        "ee_step": (c_int, [c_ptr, c_ptr, c_int, c_ptr, c_ptr]),
        "ee_forward": (c_int, [c_ptr, c_ptr, c_int, c_int, c_ptr, c_ptr, c_int]),
        "ee_project": (c_long, [c_ptr, c_ptr, c_ptr, c_ptr, c_float, c_float, c_int]),
        "ee_kv_block": (c_int, []),
        "ee_attention": (c_int, [c_ptr, c_ptr, c_ptr, c_ptr, c_int, c_int, c_ptr]),
        "ee_bytes_read": (c_double, [c_ptr]),
        "ee_bytes_total": (c_double, [c_ptr]),
        "ee_work_new": (c_ptr, [c_int]),
        "ee_work_free": (None, [c_ptr]),
        "ee_quantize_x": (c_int, [c_ptr, c_int, c_ptr, c_ptr]),
        "ee_select": (c_long, [c_ptr, c_ptr, c_ptr, c_ptr, c_float, c_int, c_int, c_ptr, c_ptr]),
        "ee_work_from_levels": (c_long, [c_ptr, c_ptr, c_ptr, c_ptr, c_ptr]),
        "ee_budget_tau": (c_float, [c_ptr, c_ptr, c_long, c_int, c_int, c_ptr]),
        "ee_stream_read": (ctypes.c_uint64, [c_ptr, c_ptr, c_int]),
        "ee_matvec": (None, [c_ptr, c_ptr, c_ptr]),
        "ee_matvec_multi": (None, [c_int, c_ptr]),
        "ee_matmul_multi": (None, [c_int, c_int, c_ptr, c_int]),
        "ee_pack": (c_int, [c_int, c_ptr, c_ptr, c_ptr, c_int, c_int, c_int, c_ptr, c_ptr, c_ptr, c_ptr, c_ptr]),
        "ecpu_init": (c_int, [c_int]),
        "ecpu_threads": (c_int, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    order = tuple(lib.ee_projections().decode().split(","))
    from engine.model.decoder import PROJECTIONS

    if order != PROJECTIONS:
        raise RuntimeError(f"the CPU kernels order the projections {order}, the engine {PROJECTIONS}")


# -- building -------------------------------------------------------------------------------------


def find_compiler(variable: str, names: tuple[str, ...]) -> str | None:
    """The compiler named by the environment variable (CC, CXX) or the first of `names` on PATH."""
    for candidate in (os.environ.get(variable), *names):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _compiler() -> str | None:
    return find_compiler("CC", ("cc", "gcc", "clang"))


def build(force: bool = False, variant: str = "native") -> Path:
    """Compile the kernels (or reuse the cached build); raises RuntimeError with the compiler's message.

    "native" picks the kernel family at run time from the CPU (AVX-512 VNNI, AVX2 or plain C);
    "portable" compiles the plain-C kernels only (what a non-x86 machine, e.g. an Apple Silicon Mac,
    runs). The tests check every build the machine can execute against the reference."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc/clang)")
    files = [kernel_path(s) for s in SOURCES]
    include = kernel_path("cpu")
    digest = hashlib.sha256()
    for f in [*files, *(kernel_path(h) for h in HEADERS)]:
        digest.update(f.read_bytes())
    command = [cc, *FLAGS, *VARIANTS[variant], f"-I{include}", *map(str, files), "-o"]
    digest.update(" ".join(command).encode())
    target = cache_dir() / "native" / digest.hexdigest()[:16] / LIBRARY_NAME
    if target.exists() and not force:
        return target
    with atomic_path(target) as tmp:
        proc = subprocess.run([*command, str(tmp), "-lm", "-lpthread"], capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise RuntimeError(f"compiling the CPU kernels failed: {first}")
    checksum.record(target)
    return target


def array_ptr(a: np.ndarray | None) -> int | None:
    """The address of a C-contiguous array, None for None (what the structs below hold)."""
    if a is None:
        return None
    if not a.flags.c_contiguous:
        raise ValueError("the C kernels need C-contiguous arrays")
    return a.ctypes.data


def planes_struct(pm: PlaneMatrix) -> Planes:
    """The C view of one matrix (pointers into its arrays, which must outlive the struct)."""
    s = Planes()
    s.kind = 0 if pm.kind == "q4" else 1
    s.out, s.in_, s.tile = pm.out_dim, pm.in_dim, pm.tile
    s.plane[0] = array_ptr(pm.planes[0])
    s.plane[1] = array_ptr(pm.planes[1]) if len(pm.planes) > 1 else None
    s.d = array_ptr(pm.d)
    s.m = array_ptr(pm.m)
    s.gain[0] = array_ptr(pm.gains[0])
    s.gain[1] = array_ptr(pm.gains[1]) if pm.gains.shape[0] > 1 else None
    return s


def load(path: Path) -> ctypes.CDLL:
    """A built kernel library, with its C signatures declared."""
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return lib


def self_test(lib: ctypes.CDLL) -> None:
    """Raise RuntimeError unless the library's kernels give a small numpy reference product."""
    from engine.effort.planes import layout

    rng = np.random.default_rng(24)
    for kind in ("q4", "q8"):
        if kind == "q8":
            pm = layout.from_weights(rng.standard_normal((64, 96)).astype(np.float32))
        else:
            d = (rng.random((64, 3)) * 0.01).astype(np.float16)
            pm = layout.from_codes("q4", rng.integers(0, 16, (64, 96)), d, (-8 * d.astype(np.float32)).astype(np.float16))
        x = rng.standard_normal(96).astype(np.float32)
        xq, dx = np.zeros(2 * 96, np.int8), np.zeros(3, np.float32)  # the levels, then the residuals
        lib.ee_quantize_x(x.ctypes.data, 96, xq.ctypes.data, dx.ctypes.data)
        work = lib.ee_work_new(96)
        try:
            s = planes_struct(pm)
            lib.ee_select(ctypes.byref(s), x.ctypes.data, xq.ctypes.data, dx.ctypes.data, -1.0, 0, 0, work, None)
            got = np.zeros(64, np.float32)
            lib.ee_matvec(ctypes.byref(s), work, got.ctypes.data)
        finally:
            lib.ee_work_free(work)
        want = layout.matvec(pm, x)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max())):
            raise RuntimeError(f"its {kind} kernel fails the self-test (max error {float(np.abs(got - want).max()):.3g})")


def _checked(path: Path) -> ctypes.CDLL:
    """Load `path` if its checksum and self-test pass (RuntimeError or OSError otherwise)."""
    if checksum.verify(path) is False:
        raise RuntimeError("it does not match the checksum recorded when it was built")
    lib = load(path)
    try:
        self_test(lib)
    except RuntimeError:
        import _ctypes

        if hasattr(_ctypes, "dlclose"):
            _ctypes.dlclose(lib._handle)  # so the rebuilt file at this path is loaded, not this one again
        raise
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (see `build_error()` and `broken()`)."""
    with _lock:
        if "lib" in _state or "error" in _state:
            return _state.get("lib")
        if os.environ.get("EFFORT_NATIVE", "1") == "0":
            _state["error"] = "disabled by EFFORT_NATIVE=0"
            return None
        try:
            path = build()
        except (RuntimeError, OSError) as exc:  # no compiler, or it failed: MLX alone (documented)
            _state["error"] = str(exc)
            return None
        try:
            _state["lib"] = _checked(path)
        except (RuntimeError, OSError) as exc:
            try:  # damaged or foreign: build it again, once
                _state["lib"] = _checked(build(force=True))
            except (RuntimeError, OSError) as again:
                _state["error"] = (
                    f"the CPU kernels in {path.parent} are broken ({' '.join(str(exc).split())[:120]}) "
                    f"and a rebuild failed too ({' '.join(str(again).split())[:120]})"
                )
                _state["broken"] = True
        return _state.get("lib")


def build_error() -> str | None:
    library()
    return _state.get("error")


def broken() -> bool:
    """The kernels were built but fail their checks: refuse, rather than run another backend."""
    library()
    return bool(_state.get("broken"))


ISA_FAMILIES = ("avx512vnni", "avx2", "scalar")  # widest first: what planes.c dispatches between


def threads() -> int:
    """Threads the CPU kernels use: EFFORT_THREADS, else every core this process may run on."""
    env = os.environ.get("EFFORT_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
