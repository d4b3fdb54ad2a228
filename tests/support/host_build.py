"""The host build of the portable GPU kernels: test support, never shipped in the engine.

The very kernel bodies the GPU runs (``metal/kernels``) as one C++17 translation unit through
``metal/preludes/c.h``: one ``extern "C"`` function per kernel that runs the threadgroups one
after another and each phase as a loop over the threads, optionally with a race / bounds
checker (``checked=True``). ``HostExec`` runs ``engine.runtime.effort_gpu``'s launch sequence on
it, so the tests cover the orchestration as well as the kernels without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.io.atomic import atomic_path
from engine.runtime import effort_gpu as eg
from engine.runtime import kernel_source as ks
from engine.runtime.kernel_files import kernel_path
from engine.runtime.native import find_compiler

NP_TYPES = {"float32": np.float32, "uint16": np.uint16, "uint8": np.uint8, "int32": np.int32}


def host_function_text(spec: ks.KernelSpec) -> str:
    """One kernel as an extern "C" function running the grid sequentially."""
    args = [f"const {ks.C_TYPES[a.dtype]}* {a.name}_ptr, int64_t {a.name}_len" for a in spec.inputs]
    args += [f"{ks.C_TYPES[a.dtype]}* {a.name}_ptr, int64_t {a.name}_len" for a in spec.outputs]
    args += ["uint32_t ef_ngx", "uint32_t ef_ngy"]
    lines = [f'extern "C" void {spec.name}({", ".join(args)}) {{']
    lines += [f"    EF_IN({ks.C_TYPES[a.dtype]}, {a.name});" for a in spec.inputs]
    lines += [f"    EF_OUT({ks.C_TYPES[a.dtype]}, {a.name});" for a in spec.outputs]
    lines += [
        "    ::ef::launch_begin((uint32_t)(EF_TGS));",
        "    for (uint32_t GY_ = 0; GY_ < ef_ngy; ++GY_) {",
        "    for (uint32_t GX_ = 0; GX_ < ef_ngx; ++GX_) {",
        "    ::ef::group_begin((uint64_t)GY_ * ef_ngx + GX_);",
        f'#line 1 "{spec.body}"',
        ks.body_text(spec),
        "    }}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def host_translation_unit(specs: list[ks.KernelSpec], checked: bool = False) -> str:
    text = f"#define EF_CHECKED {int(checked)}\n" + ks.kernel_text(ks.PRELUDES["host"]) + "\n"
    seen = set()
    for spec in specs:
        if spec.name in seen:
            continue
        seen.add(spec.name)
        text += f"// ---- {spec.name}\n" + ks.defines_text(spec) + ks.kernel_text(ks.COMMON) + "\n"
        text += host_function_text(spec) + ks.undefines_text(spec) + "\n"
    return text


# --------------------------------------------------------------------------- host build / run

HOST_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno",
              "-Wall", "-Wno-unused-variable", "-Wno-unused-but-set-variable")


def host_compiler() -> str | None:
    return find_compiler("CXX", ("g++", "clang++", "c++"))


def build_cache_dir() -> Path:
    d = Path(os.environ.get("EFFORT_KERNEL_CACHE", Path(tempfile.gettempdir()) / "effort_portable_kernels"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_host(specs: list[ks.KernelSpec], checked: bool = False, cache: Path | None = None) -> Path:
    """Compile the host instantiation of ``specs`` into a shared library (cached by hash)."""
    cxx = host_compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++/clang++) found")
    tu = host_translation_unit(specs, checked)
    flags = list(HOST_FLAGS) + (["-O1"] if checked else [])
    digest = hashlib.sha256((tu + " ".join([cxx, *flags])).encode()).hexdigest()[:16]
    out_dir = (cache or build_cache_dir()) / digest
    lib = out_dir / "kernels.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "kernels.cpp"
    src.write_text(tu)
    with atomic_path(lib) as tmp:
        proc = subprocess.run([cxx, *flags, "-I", str(kernel_path()), str(src), "-o", str(tmp), "-lm"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"host kernel build failed:\n{proc.stderr[-6000:]}")
    return lib


class HostKernels:
    """ctypes front end to a host build: ``run(spec, (ngx, ngy), inputs, outputs)``."""

    def __init__(self, specs: list[ks.KernelSpec], checked: bool = False, cache: Path | None = None):
        self.specs = {s.name: s for s in specs}
        self.checked = checked
        self.path = build_host(specs, checked, cache)
        self.lib = ctypes.CDLL(str(self.path))
        self.lib.ef_check_errors.restype = ctypes.c_long
        self.lib.ef_check_first_error.restype = ctypes.c_char_p

    def errors(self) -> tuple[int, str]:
        return int(self.lib.ef_check_errors()), self.lib.ef_check_first_error().decode()

    def reset_errors(self) -> None:
        self.lib.ef_check_reset()

    def run(self, spec: ks.KernelSpec, groups: tuple[int, int], inputs: list[np.ndarray],
            outputs: list[int], fill: float = np.nan) -> list[np.ndarray]:
        """Launch ``spec`` on a grid of ``groups`` = (ngx, ngy) threadgroups.

        ``inputs`` are 1-D-able arrays of exactly the declared dtypes; ``outputs`` are element
        counts (outputs start as ``fill`` converted to their dtype, like uninitialized memory)."""
        if spec.name not in self.specs:
            raise KeyError(f"{spec.name} is not in this build")
        if len(inputs) != len(spec.inputs) or len(outputs) != len(spec.outputs):
            raise ValueError("wrong number of inputs / outputs")
        argv: list = []
        keep = []
        for a, arr in zip(spec.inputs, inputs):
            arr = np.ascontiguousarray(arr).reshape(-1)
            if arr.dtype != NP_TYPES[a.dtype]:
                raise TypeError(f"{spec.base}: input {a.name} must be {a.dtype}, got {arr.dtype}")
            keep.append(arr)
            argv += [arr.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(arr.size)]
        outs = []
        for a, n in zip(spec.outputs, outputs):
            if a.dtype == "float32":
                o = np.full(n, fill, np.float32)
            else:
                o = np.full(n, -7, NP_TYPES[a.dtype])
            outs.append(o)
            argv += [o.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n)]
        argv += [ctypes.c_uint32(groups[0]), ctypes.c_uint32(groups[1])]
        getattr(self.lib, spec.name)(*argv)
        return outs


class HostExec(eg._Exec):
    """Runs the host instantiation of the same kernel bodies (numpy arrays; for tests/dev).

    Builds (and caches) one library with every variant it has been asked for."""

    def __init__(self, checked: bool = False, specs: Sequence[ks.KernelSpec] = ()):
        self.checked = checked
        self._specs = {s.name: s for s in (*ks.all_specs(), *specs)}
        self._lib: HostKernels | None = None
        self.launches: list[tuple[str, tuple[int, int]]] = []  # (kernel base name, groups)

    def host(self, spec: ks.KernelSpec | None = None) -> HostKernels:
        if spec is not None and spec.name not in self._specs:
            self._specs[spec.name] = spec
            self._lib = None
        if self._lib is None:
            self._lib = HostKernels(list(self._specs.values()), checked=self.checked)
        return self._lib

    def const(self, a):
        return np.asarray(a)

    def is_half(self, a):
        return a.dtype == np.float16

    def half_bits(self, a):
        return np.ascontiguousarray(a).view(np.uint16)

    def to_f32(self, a):
        return np.asarray(a, np.float32)

    def flat(self, a):
        return np.ascontiguousarray(a).reshape(-1)

    def size(self, a):
        return a.size

    def reshape(self, a, shape):
        return a.reshape(shape)

    def launch(self, spec, groups, inputs, sizes):
        self.launches.append((spec.base, tuple(groups)))
        return self.host(spec).run(spec, groups, inputs, sizes)
