"""The fast CPU path: every token, prompt or answer, goes through one C call.

MLX on a Linux CPU runs a matrix-vector product at a fraction of memory
bandwidth (a decode step in MLX is ~20x slower than it needs to be) and its
batched matmul is slower than our per-token C step, so here one ctypes call per
token runs the whole network in C (metal/cpu/decode.c) with the KV cache in numpy.
"""

from __future__ import annotations

import ctypes
import time
from typing import Sequence

import mlx.core as mx
import numpy as np

from engine.effort.bucket import B
from engine.effort.convert import Converted, projection_names
from engine.errors import EngineError
from engine.model.decoder import PROJECTIONS, Model, rope_inverse_frequencies, weight_name

c_ptr = ctypes.c_void_p


class Dims(ctypes.Structure):
    _fields_ = [
        *[(n, ctypes.c_int) for n in ("dim", "ffn", "n_layers", "n_heads", "n_kv", "head_dim", "vocab", "max_ctx", "window")],
        ("eps", ctypes.c_float),
    ]


class Bucket(ctypes.Structure):
    _fields_ = [
        ("blk", c_ptr), ("stats", c_ptr), ("probes", c_ptr),
        ("n_probes", ctypes.c_int), ("out", ctypes.c_int), ("in_", ctypes.c_int), ("max_rank", ctypes.c_int),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("bucket", c_ptr * len(PROJECTIONS)),
        ("bias", c_ptr * 3),
        ("attn_norm", c_ptr),
        ("ffn_norm", c_ptr),
    ]


def _ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


def _numpy(w: mx.array, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.array(w.astype(mx.float32)), dtype=dtype)


class CPURuntime:
    """`engine.runtime.base.Runtime` backed by the C decode step."""

    times_own_calls = False  # each call is synchronous: callers time `project` on the host

    def __init__(
        self,
        model: Model,
        context_limit: int,
        lib: ctypes.CDLL,
        converted: Converted | None = None,
        head_q8: np.ndarray | None = None,
    ) -> None:
        """`head_q8`: the head's Q8_0 blocks as stored in the file (see session.stored_q8_head); the
        head (and a tied embedding) is then multiplied from them instead of an fp16 copy."""
        self.lib = lib
        self.converted: Converted | None = None  # set by `attach`
        self.strategy = "bucket"
        self.model = model
        self.context_limit = context_limit
        c = model.config
        self._keep: list[np.ndarray] = []  # numpy buffers the C side points into
        keep = lambda a: (self._keep.append(a), _ptr(a))[1]  # noqa: E731

        self.kcache = np.zeros((c.num_layers, c.num_kv_heads, context_limit, c.head_dim), np.float32)
        self.vcache = np.zeros(self.kcache.shape, np.float32)  # np.zeros maps fresh pages lazily; zeros_like would write (and keep resident) all of them
        layers = (Layer * c.num_layers)()
        self._structs: dict[str, Bucket] = {}  # ctypes structs the layers point to, by weight name
        self._shapes: dict[str, tuple[int, int]] = {}
        for i in range(c.num_layers):
            layer = layers[i]
            for p, proj in enumerate(PROJECTIONS):
                name = weight_name(i, proj)
                layer.bucket[p] = self._layout(name, _numpy(model.w[name], np.float16), keep)
            if c.attention_bias:
                for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    layer.bias[j] = keep(_numpy(model.w[f"model.layers.{i}.self_attn.{proj}.bias"], np.float32))
            layer.attn_norm = keep(_numpy(model.w[f"model.layers.{i}.input_layernorm.weight"], np.float32))
            layer.ffn_norm = keep(_numpy(model.w[f"model.layers.{i}.post_attention_layernorm.weight"], np.float32))
        tied = "lm_head.weight" not in model.w
        q8 = head_q8 is not None
        embed = head = None  # read from the Q8_0 head instead
        if not (q8 and tied):
            embed = keep(_numpy(model.w["model.embed_tokens.weight"], np.float16))
        if not q8:
            head = embed if tied else keep(_numpy(model.w["lm_head.weight"], np.float16))
        final_norm = keep(_numpy(model.w["model.norm.weight"], np.float32))
        inv_freq = keep(rope_inverse_frequencies(c).astype(np.float32))
        dims = Dims(
            c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
            c.vocab_size, context_limit, c.sliding_window or 0, c.rms_norm_eps,
        )
        self._handle = lib.ee_model_new(
            ctypes.byref(dims), ctypes.addressof(layers), embed, head, final_norm, inv_freq,
            _ptr(self.kcache), _ptr(self.vcache),
        )
        if q8:
            qs = keep(np.empty((c.vocab_size, c.hidden_size), np.int8))
            scales = keep(np.empty((c.vocab_size, c.hidden_size // 32), np.float32))
            blocks = np.ascontiguousarray(head_q8)
            lib.ecpu_q8_from_gguf(_ptr(blocks), c.vocab_size, c.hidden_size, qs, scales)
            lib.ee_set_head_q8(self._handle, qs, scales, int(tied))
        self.head_format = "q8_0" if q8 else "fp16"
        self._efforts: dict[tuple[str, float], np.ndarray] = {}
        self.logits = np.zeros(c.vocab_size, np.float32)
        if converted is not None:
            self.attach(converted)
        self.length = 0  # positions valid in the C cache

    def _layout(self, name: str, dense: np.ndarray, keep) -> int:
        """The kernel layout of one projection, built in C from its fp16 weights. It serves the
        dense product (every rank) and, once `attach` gives it stats and probes, the effort path."""
        out_dim, in_dim = dense.shape
        lib = self.lib
        blk = np.zeros(lib.ecpu_effort_blk_bytes(out_dim, in_dim) // 2, np.uint16)
        scratch_stats = np.zeros(B * in_dim, np.float32)
        lib.ecpu_effort_build(_ptr(dense), out_dim, in_dim, _ptr(blk), _ptr(scratch_stats))
        self._shapes[name] = (out_dim, in_dim)
        struct = Bucket(keep(blk), None, None, 0, out_dim, in_dim, B)
        self._structs[name] = struct
        return ctypes.addressof(struct)

    def attach(self, converted: Converted) -> None:
        """Give the runtime its effort side: the stats and probes go into the structs the C layers
        already point to, so the next step selects. At construction, or later for a model loaded
        dense whose conversion was made in the background; call between steps, from the thread
        that runs them."""
        for name, struct in self._structs.items():
            bm = converted.buckets[name]
            stats = np.ascontiguousarray(bm.stats, np.float32)
            probes = np.ascontiguousarray(bm.probes, np.float32)
            self._keep.extend((stats, probes))
            struct.stats, struct.probes = _ptr(stats), _ptr(probes)
            struct.n_probes, struct.max_rank = probes.shape[0], converted.load_ranks
        index = {n: j for j, n in enumerate(converted.allocation.names)}
        self._order = np.array([index[n] for n in projection_names(self.model.config.num_layers)])
        self._efforts = {}
        self.converted = converted

    def project(self, name: str, x: np.ndarray, effort: float) -> tuple[np.ndarray, float]:
        """One projection (HF weight name) of input `x` at a local effort, outside a decode step:
        (output, share of its weights used). Effort 1.0 (or no conversion) is the dense product."""
        out_dim, in_dim = self._shapes[name]
        x = np.ascontiguousarray(x, np.float32)
        y = np.zeros(out_dim, np.float32)
        e = float(effort) if self.converted is not None else 1.0
        if x.shape != (in_dim,):
            raise EngineError(f"{name} takes {in_dim} inputs, got an array of shape {x.shape}")
        used = self.lib.ee_project(self._handle, ctypes.addressof(self._structs[name]), _ptr(x), _ptr(y), e)
        if used < 0:
            raise EngineError(f"the native kernels refused {name} ({out_dim}x{in_dim})")
        return y, used / (out_dim * in_dim)

    def time_projection(self, name: str, x: np.ndarray, effort: float, repeats: int = 20) -> float:
        """Seconds per call of one projection, timed on the host (the call is synchronous)."""
        start = time.perf_counter()
        for _ in range(repeats):
            self.project(name, x, effort)
        return (time.perf_counter() - start) / repeats

    def bytes_read(self, name: str) -> float:
        """Weight bytes the last `project` of this matrix read: the kernel reads the whole
        (masked) row of every input it uses, so this follows active inputs, not kept weights."""
        out_dim, in_dim = self._shapes[name]
        active = self.lib.ee_active_inputs(self._handle, in_dim)
        layout = self.lib.ecpu_effort_blk_bytes(out_dim, in_dim)
        return layout * active / in_dim

    def set_strategy(self, strategy: str) -> None:
        """"bucket" (bucketMul) or "activation" (whole input columns by |x|, the TEAL-like baseline)."""
        self.strategy = strategy
        self.lib.ee_set_strategy(self._handle, 1 if strategy == "activation" else 0)

    def local_efforts(self, effort: float) -> np.ndarray | None:
        """Per-(layer, projection) effort handed to the kernels, or None for the dense model."""
        if effort >= 1.0 or self.converted is None:
            return None
        key = (self.strategy, float(effort))
        if key not in self._efforts:  # a step runs at one of a few efforts: solve each allocation once
            if self.strategy == "activation":
                self._efforts[key] = np.full(len(self._order), effort, np.float32)
            else:
                self._efforts[key] = self.converted.allocation.request(effort)[self._order].astype(np.float32)
        return self._efforts[key]

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self.lib.ee_model_free(handle)

    def reset(self, keep: int) -> None:
        self.length = min(self.length, keep)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Dense, one position at a time in C. MLX's batched CPU matmul is slower than that here
        (44-token prompt on SmolLM2: 5.3 s batched in MLX, 1.0 s through the C step)."""
        for token in ids:
            self._checked(self.lib.ee_step(self._handle, int(token), self.length, None, _ptr(self.logits)), token)
            self.length += 1
        return self.logits.copy()

    def _checked(self, used: float, token: int) -> None:
        """The C step refuses (returns < 0, touching nothing) a token past the embedding or a
        position past the KV cache; say which in one line."""
        if used < 0:
            raise EngineError(
                f"the native step refused token {int(token)} at position {self.length} (the embedding has "
                f"{self.model.config.vocab_size:,} rows, the KV cache {self.context_limit:,} positions)"
            )

    def step(self, token: int, effort: float) -> tuple[np.ndarray, float]:
        local = self.local_efforts(effort)
        used = self.lib.ee_step(self._handle, int(token), self.length, None if local is None else _ptr(local), _ptr(self.logits))
        self._checked(used, token)
        self.length += 1
        return self.logits.copy(), float(used)

    def layout_bytes(self) -> int:
        """Bytes of the weights this runtime holds itself (kernel layouts, norms, embedding)."""
        return sum(a.nbytes for a in self._keep)

    def peak_memory(self) -> int:
        return int(mx.get_peak_memory()) + sum(a.nbytes for a in self._keep) + 2 * self.kcache[:, :, : self.length].nbytes
