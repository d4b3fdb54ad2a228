"""Portable GPU kernels: one body, three instantiations (Metal, CUDA, host C/C++).

Every kernel body lives once under ``metal/kernels/*.h``, written against a small ``EF_*``
vocabulary (thread ids, threadgroup arrays, phases separated by barriers, threadgroup atomics,
fp16 bit loads, fma/exp).  A backend prelude (``metal/preludes/{metal,cuda,c}.h``) defines that
vocabulary:

* **metal**: ``header`` and ``source`` for ``mx.fast.metal_kernel`` (the product's target);
* **cuda**: ``header`` and ``source`` for ``mx.fast.cuda_kernel`` (MLX's CUDA backend);
* **host**: a C++17 translation unit with one ``extern "C"`` function per kernel that runs the
  threadgroups one after another, so the test suite executes the very text that ships for the
  GPU. Building and running it is test support (``tests/support/host_build.py``), as are the
  emulations of MLX's source generation (``tests/support/mlx_codegen.py``).

A kernel's MLX name carries a hash of everything in its text (body, preludes, defines): MLX
caches compiled libraries by name, so two variants must never share one.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from engine.runtime.kernel_files import kernel_path

BACKENDS = ("metal", "cuda", "host")
PRELUDES = {"metal": "preludes/metal.h", "cuda": "preludes/cuda.h", "host": "preludes/c.h"}
COMMON = "kernels/common.h"

# the first statements of every body: thread / threadgroup indices per backend
PROLOGUES = {
    "metal": (
        "const uint32_t GX_ = threadgroup_position_in_grid.x;\n"
        "const uint32_t GY_ = threadgroup_position_in_grid.y;\n"
        "const uint32_t LID_ = thread_position_in_threadgroup.x;\n"
    ),
    "cuda": (
        "const uint32_t GX_ = blockIdx.x;\n"
        "const uint32_t GY_ = blockIdx.y;\n"
        "const uint32_t LID_ = threadIdx.x;\n"
    ),
}

DTYPES = ("float32", "uint16", "uint8", "int32")
C_TYPES = {"float32": "float", "uint16": "uint16_t", "uint8": "uint8_t", "int32": "int32_t"}
@dataclass(frozen=True)
class Arg:
    name: str
    dtype: str  # one of DTYPES

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}")


@dataclass(frozen=True)
class KernelSpec:
    """One compiled variant of a portable kernel body."""

    base: str                                  # e.g. "effort_select"
    body: str                                  # path under metal/, e.g. "kernels/select.h"
    inputs: tuple[Arg, ...]
    outputs: tuple[Arg, ...]
    tgs: int                                   # threads per threadgroup (EF_TGS)
    defines: tuple[tuple[str, str], ...] = field(default=())  # extra #defines (name, text)

    @property
    def all_defines(self) -> tuple[tuple[str, str], ...]:
        return (("EF_TGS", str(self.tgs)), *self.defines)

    @property
    def input_names(self) -> list[str]:
        return [a.name for a in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [a.name for a in self.outputs]

    @functools.cached_property
    def name(self) -> str:
        """MLX kernel name: base + hash of the whole text of every instantiation."""
        return _spec_name(self)


@functools.lru_cache(maxsize=None)
def kernel_text(relative: str) -> str:
    """A kernel source file (read once per process)."""
    return kernel_path(relative).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _spec_name(spec: KernelSpec) -> str:
    h = hashlib.sha256()
    for part in (spec.body, COMMON, *PRELUDES.values()):
        h.update(part.encode())
        h.update(kernel_text(part).encode())
    h.update(repr((spec.inputs, spec.outputs, spec.all_defines)).encode())
    h.update(repr(PROLOGUES).encode())
    return f"{spec.base}_{h.hexdigest()[:12]}"


# --------------------------------------------------------------------------- kernel variants

def _load_macro(macro: str, half: bool) -> tuple[str, str]:
    text = "EF_H2F((p)[(i)])" if half else "((float)(p)[(i)])"
    return (f"{macro}(p, i)", text)


@functools.lru_cache(maxsize=None)
def select_spec(x_half: bool = False, tgs: int = 1024) -> KernelSpec:
    """Probe cutoff (radix select), one threadgroup per matrix."""
    return KernelSpec(
        "effort_select", "kernels/select.h",
        (Arg("probes", "float32"), Arg("x", "uint16" if x_half else "float32"), Arg("params", "int32")),
        (Arg("cutoff", "float32"),),
        tgs, (("EF_X_HALF", str(int(x_half))), _load_macro("EF_LOAD_X", x_half)))


@functools.lru_cache(maxsize=None)
def bucket_mul_spec(pos_nibble: bool = True, x_half: bool = False, tgs: int = 128,
                    ipg_max: int = 64) -> KernelSpec:
    """Dispatch + bucket multiply into partial sums [G, out]."""
    ins = [Arg("w", "uint16")]
    if pos_nibble:
        ins.append(Arg("pos", "uint8"))
    ins += [Arg("stats", "float32"), Arg("x", "uint16" if x_half else "float32"),
            Arg("cutoff", "float32"), Arg("params", "int32")]
    return KernelSpec(
        "effort_bucket_mul", "kernels/bucket_mul.h", tuple(ins),
        (Arg("partial", "float32"), Arg("k", "int32")),
        tgs, (("EF_POS_NIBBLE", str(int(pos_nibble))), ("EF_IPG_MAX", str(ipg_max)),
              ("EF_X_HALF", str(int(x_half))), _load_macro("EF_LOAD_X", x_half)))


@functools.lru_cache(maxsize=None)
def reduce_spec(tgs: int = 256) -> KernelSpec:
    """Sum of the partial rows in a fixed order (the body assumes 256 threads: 32 outputs x 8 lanes)."""
    if tgs != 256:
        raise ValueError("effort_reduce runs 256 threads per threadgroup")
    return KernelSpec("effort_reduce", "kernels/reduce.h",
                      (Arg("partial", "float32"), Arg("params", "int32")),
                      (Arg("y", "float32"),), tgs)


@functools.lru_cache(maxsize=None)
def attention_spec(head_dim: int, final: bool, q_half: bool = False, kv_half: bool = False,
                   tgs: int = 256) -> KernelSpec:
    """Decode attention over one chunk of positions per threadgroup (online softmax)."""
    if tgs % head_dim:
        raise ValueError("the threadgroup size must be a multiple of head_dim")
    outs = (Arg("out", "float32"),) if final else (Arg("o_part", "float32"), Arg("ml_part", "float32"))
    return KernelSpec(
        "effort_attention", "kernels/attention.h",
        (Arg("q", "uint16" if q_half else "float32"), Arg("keys", "uint16" if kv_half else "float32"),
         Arg("values", "uint16" if kv_half else "float32"), Arg("scale", "float32"),
         Arg("params", "int32")),
        outs, tgs,
        (("EF_HD", str(head_dim)), ("EF_ATTN_FINAL", str(int(final))),
         _load_macro("EF_LOAD_Q", q_half), _load_macro("EF_LOAD_KV", kv_half)))


@functools.lru_cache(maxsize=None)
def attn_combine_spec(head_dim: int) -> KernelSpec:
    """Merge of the per-chunk softmax states."""
    return KernelSpec("effort_attn_combine", "kernels/attn_combine.h",
                      (Arg("o_part", "float32"), Arg("ml_part", "float32"), Arg("params", "int32")),
                      (Arg("out", "float32"),), head_dim, (("EF_HD", str(head_dim)),))


def all_specs() -> list[KernelSpec]:
    """Every variant the engine can launch with its default sizes (for source checks)."""
    specs = []
    for xh in (False, True):
        specs.append(select_spec(xh))
        specs += [bucket_mul_spec(nib, xh, tgs) for nib in (True, False) for tgs in (32, 64, 128)]
    specs.append(reduce_spec())
    for hd in (64, 128):
        for final in (True, False):
            for kvh in (False, True):
                specs.append(attention_spec(hd, final, q_half=kvh, kv_half=kvh))
        specs.append(attn_combine_spec(hd))
    return specs


# --------------------------------------------------------------------------- assembly

def body_text(spec: KernelSpec) -> str:
    return kernel_text(spec.body)


def defines_text(spec: KernelSpec) -> str:
    return "".join(f"#define {k} {v}\n" for k, v in spec.all_defines)


def undefines_text(spec: KernelSpec) -> str:
    return "".join(f"#undef {k.split('(')[0]}\n" for k, _ in spec.all_defines)


def header(spec: KernelSpec, backend: str) -> str:
    """Prelude + this variant's #defines + the shared helpers (the `header=` argument)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}")
    return (kernel_text(PRELUDES[backend]) + "\n// ---- variant " + spec.name + "\n"
            + defines_text(spec) + "\n" + kernel_text(COMMON) + "\n")


def source(spec: KernelSpec, backend: str) -> str:
    """The kernel body with the backend's index prologue (the `source=` argument)."""
    if backend not in PROLOGUES:
        raise ValueError("source() is for the GPU backends; the host unit is tests/support/host_build.py")
    return PROLOGUES[backend] + body_text(spec)


def mlx_kernel_kwargs(spec: KernelSpec, backend: str) -> dict:
    """Keyword arguments for mx.fast.metal_kernel / mx.fast.cuda_kernel."""
    return dict(name=spec.name, input_names=spec.input_names, output_names=spec.output_names,
                source=source(spec, backend), header=header(spec, backend))
