"""Which MLX device we compute on, and the settings that follow from it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from dataclasses import dataclass

import mlx.core as mx

# The CPU allocator keeps at most 32 MB of freed buffers by default; any op whose
# output is larger is re-allocated and page-faulted on every step (~10x slower).
CPU_CACHE_LIMIT = 8 << 30


@dataclass(frozen=True)
class Backend:
    name: str  # "metal" | "cuda" | "cpu"
    device: str  # human-readable device name
    dtype: mx.Dtype  # compute / weight dtype for the dense MLX path


def _cpu_name() -> str:
    """The CPU's model name and its widest vector extension, e.g. "AMD EPYC, AVX-512" (the same
    model name covers Zen 3 and Zen 4 machines, whose kernels differ)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    isa = "AVX-512" if {"avx512f", "avx512bw"} <= flags else "AVX2" if "avx2" in flags else ""
    return f"{name}, {isa}" if isa else name


@functools.cache
def detect() -> Backend:
    """Pick Metal, then CUDA, then the CPU, and configure MLX for it (once)."""
    forced = os.environ.get("EFFORT_BACKEND", "").lower()
    if forced not in ("", "cpu", "metal", "cuda"):
        forced = ""
    if forced in ("", "metal") and mx.metal.is_available():
        info = mx.device_info()
        return Backend("metal", str(info.get("device_name", "Apple GPU")), mx.float16)
    if forced in ("", "cuda") and mx.cuda.is_available():
        info = mx.device_info()
        return Backend("cuda", str(info.get("device_name", "NVIDIA GPU")), mx.float16)
    mx.set_default_device(mx.cpu)
    mx.set_cache_limit(CPU_CACHE_LIMIT)
    # the machine's CPUs, not a thread count: how many threads decode is the runtime's business
    return Backend("cpu", f"{_cpu_name()} · {os.cpu_count() or 1} CPUs", mx.float32)


def return_freed_memory() -> None:
    """Hand memory that was freed (MLX's buffer cache, glibc's heap) back to the OS, so the
    process's resident size shows what it really holds after a large load."""
    mx.clear_cache()
    libc_name = ctypes.util.find_library("c")
    if libc_name and platform.system() == "Linux":
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
