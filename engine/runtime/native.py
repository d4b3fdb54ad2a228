"""Building and loading the CPU kernels (C), compiled on first use with the system compiler.

The library is cached under the cache dir, keyed by a hash of the sources and
the compiler command, and written atomically, so a crash mid-build never leaves
a broken library behind. Without a C compiler the engine still runs (on MLX
alone), just without the fast CPU path; `build_error()` says why.
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

from engine.runtime.kernel_files import kernel_path
from engine.io.atomic import atomic_path
from engine.io.paths import cache_dir

SOURCES = ("cpu/effort_cpu.c", "cpu/decode.c")
HEADERS = ("cpu/effort_cpu.h",)
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c11", "-fno-math-errno", "-D_GNU_SOURCE"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def find_compiler(variable: str, names: tuple[str, ...]) -> str | None:
    """The compiler named by the environment variable (CC, CXX) or the first of `names` on PATH."""
    for candidate in (os.environ.get(variable), *names):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _compiler() -> str | None:
    return find_compiler("CC", ("cc", "gcc", "clang"))


def _library_name() -> str:
    return "libeffort.dylib" if sys.platform == "darwin" else "libeffort.so"


VARIANTS = {"native": [], "portable": ["-DECPU_NO_SIMD"]}


def build(force: bool = False, variant: str = "native") -> Path:
    """Compile the kernels (or reuse the cached build); raises RuntimeError with the compiler's message.

    "native" picks the kernel family at run time from the CPU (AVX2 or plain C); "portable"
    compiles the plain-C kernels only (what a non-x86 machine, e.g. an Apple Silicon Mac, runs). The tests check every build the machine can
    execute against the reference."""
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
    target = cache_dir() / "native" / digest.hexdigest()[:16] / _library_name()
    if target.exists() and not force:
        return target
    with atomic_path(target) as tmp:
        proc = subprocess.run([*command, str(tmp), "-lm", "-lpthread"], capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise RuntimeError(f"compiling the CPU kernels failed: {first}")
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The C ABI of metal/cpu (decode.c, effort_cpu.h), declared once for every caller."""
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    signatures = {
        "ee_model_new": (p, [p] * 8),
        "ee_model_free": (None, [p]),
        "ee_step": (ctypes.c_double, [p, i, i, p, p]),
        "ee_set_strategy": (None, [p, i]),
        "ee_project": (ctypes.c_double, [p, p, p, p, f]),
        "ee_set_head_q8": (None, [p, p, p, i]),
        "ecpu_q8_from_gguf": (None, [p, i, i, p, p]),
        "ecpu_head_q8": (None, [p, p, p, p, i, i]),
        "ecpu_q8_row": (None, [p, p, i, i, p]),
        "ecpu_attend": (None, [p, p, p, i, i, f, p, p]),
        "ee_active_inputs": (i, [p, i]),
        "ecpu_dense_f16": (None, [p, p, p, i, i]),
        "ecpu_effort_blk_bytes": (ctypes.c_size_t, [i, i]),
        "ecpu_effort_build": (None, [p, i, i, p, p]),
        "ecpu_effort_k": (ctypes.c_long, [p, p, i, f, p]),
        "ecpu_effort_matvec": (None, [p, i, i, p, p, p]),
        "ecpu_isa": (ctypes.c_char_p, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def load(path: Path) -> ctypes.CDLL:
    """A built kernel library, with its C signatures declared."""
    return _declare(ctypes.CDLL(str(path)))


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (see `build_error()`)."""
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("EFFORT_NATIVE", "1") == "0":
            _error = "disabled by EFFORT_NATIVE=0"
            return None
        try:
            _lib = load(build())
        except (RuntimeError, OSError) as exc:
            _error = str(exc)
        return _lib


def build_error() -> str | None:
    library()
    return _error
