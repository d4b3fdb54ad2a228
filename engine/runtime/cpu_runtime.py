"""The CPU path: every token goes through one C call over the planes layout (metal/cpu/decode.c).

The weights are the memory-mapped layout file (`engine.effort.planes.store`): the C side points into
it, nothing is copied. Embeddings are read per token from the model file itself (a row of the
file's own tensor, exactly its values). The runtime alone turns the one effort the user chose into
per-matrix work: thresholds from the calibrated allocation, or, until the model is calibrated, a
per-token byte budget of the same share in every matrix.
"""

from __future__ import annotations

import ctypes
import mmap
import time
from typing import Callable, Sequence

import numpy as np

from engine.effort.planes.allocation import Allocation
from engine.effort.planes.store import HEAD, PlanesModel, matrix_names
from engine.errors import EngineError
from engine.model.decoder import PROJECTIONS, rope_inverse_frequencies, weight_name
from engine.runtime import native
from engine.runtime.native import array_ptr as _ptr, planes_struct  # planes_struct: re-exported

STRATEGIES = ("planes", "activation")


def lazy_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros whose pages become resident only when written, 4 KB at a time: the KV cache holds a
    whole context but a chat uses its start. (numpy asks for 2 MB pages on large arrays, so writing the
    first position of each (layer, head) row would make the whole cache resident.)"""
    size = int(np.prod(shape)) * 4
    buf = mmap.mmap(-1, max(size, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, np.float32, count=size // 4).reshape(shape)


def kv_cache(lib: ctypes.CDLL, layers: int, n_kv: int, context: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The KV cache in decode.c's layout, lazily resident: per layer and kv head, K transposed in blocks of
    `ee_kv_block()` positions ([blocks][head_dim][block]: K[l, h, p // block, :, p % block] is position p's
    key) and V by position ([context][head_dim])."""
    block = lib.ee_kv_block()
    k = lazy_zeros((layers, n_kv, -(-context // block), head_dim, block))
    return k, lazy_zeros((layers, n_kv, context, head_dim))


class CPURuntime:
    """`engine.runtime.base.Runtime` over the planes layout, backed by the C decode step."""

    times_own_calls = False  # each call is synchronous: callers time `project` on the host
    strategies = STRATEGIES

    def __init__(
        self,
        planes: PlanesModel,
        embed: Callable[[np.ndarray], np.ndarray],
        context_limit: int,
        allocation: Allocation | None = None,
        lib: ctypes.CDLL | None = None,
    ) -> None:
        """`embed(ids) -> float32 [len(ids), hidden]`: the embedding rows, read from the model file."""
        self.lib = lib or native.library()
        if self.lib is None:
            raise EngineError(f"the native CPU path is unavailable: {native.build_error()}")
        self.planes = planes
        self.config = c = planes.config
        self.embed = embed
        self.context_limit = context_limit
        self.strategy = "planes"
        self.selection = "static"  # "static": calibrated thresholds; "budget": each matrix's share read exactly per token
        self.allocation: Allocation | None = None
        self.names = matrix_names(c)
        self.kcache, self.vcache = kv_cache(self.lib, c.num_layers, c.num_kv_heads, context_limit, c.head_dim)
        self._structs = {name: planes_struct(planes.matrices[name]) for name in self.names}
        layers = (native.Layer * c.num_layers)()
        for i in range(c.num_layers):
            for j, proj in enumerate(PROJECTIONS):
                layers[i].proj[j] = self._structs[weight_name(i, proj)]
            if c.attention_bias:
                for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    layers[i].bias[j] = _ptr(planes.vectors[f"model.layers.{i}.self_attn.{proj}.bias"])
            layers[i].attn_norm = _ptr(planes.vectors[f"model.layers.{i}.input_layernorm.weight"])
            layers[i].ffn_norm = _ptr(planes.vectors[f"model.layers.{i}.post_attention_layernorm.weight"])
        head = planes.matrices[HEAD]
        self._inv_freq = rope_inverse_frequencies(c).astype(np.float32)
        dims = native.Dims(
            c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
            head.out_dim, context_limit, c.sliding_window or 0, c.rms_norm_eps,
        )
        self._handle = self.lib.ee_model_new(
            ctypes.byref(dims), ctypes.addressof(layers), ctypes.byref(self._structs[HEAD]),
            _ptr(planes.vectors["model.norm.weight"]), _ptr(self._inv_freq), _ptr(self.kcache), _ptr(self.vcache),
            native.threads(),
        )
        if not self._handle:
            raise EngineError("the native CPU path cannot run this model (a shape its kernels do not take)")
        self._logits = np.zeros(head.out_dim, np.float32)
        self._effort_arrays: dict[tuple[str, float], tuple[native.Effort, tuple]] = {}
        self.length = 0  # positions valid in the KV cache
        # tokens per batched call: a chunk of the prompt; smaller for wide models (activations grow with it)
        self.batch = int(min(native.MAX_BATCH, max(16, (64 << 20) // (4 * (c.hidden_size * 6 + c.intermediate_size * 2)))))
        self.last_read = 1.0
        if allocation is not None:
            self.attach(allocation)

    def attach(self, allocation: Allocation) -> None:
        """Give the runtime its calibrated allocation (at construction, or later for a model whose
        calibration ran in the background); call between steps, from the thread that runs them."""
        if allocation.names != self.names:
            raise EngineError("the calibration does not belong to this model's layout")
        self.allocation = allocation
        self._effort_arrays = {}

    @property
    def calibrated(self) -> bool:
        return self.allocation is not None

    # -- effort -------------------------------------------------------------------------------------
    def set_strategy(self, strategy: str) -> None:
        """"planes" (rows and levels by marginal error per byte) or "activation" (whole rows by |x|,
        the TEAL-like baseline)."""
        if strategy not in STRATEGIES:
            raise EngineError(f"the CPU path runs the strategies {', '.join(STRATEGIES)}, not {strategy!r}")
        self.strategy = strategy

    def _effort(self, effort: float) -> native.Effort | None:
        """The C side's view of one global effort (cached: a step runs at one of a few efforts)."""
        if effort >= 1.0:
            return None
        key = (self.strategy, round(float(effort), 6))
        if key not in self._effort_arrays:
            tau = share = None
            if self.strategy == "planes" and self.allocation is not None and self.selection == "static":
                tau = self.allocation.thresholds(effort).astype(np.float32)
            elif self.strategy == "planes" and self.allocation is not None:
                share = self.allocation.shares(effort).astype(np.float32)
            else:
                share = np.full(len(self.names), effort, np.float32)
            e = native.Effort(_ptr(tau), _ptr(share), int(self.strategy == "activation"))
            self._effort_arrays[key] = (e, (tau, share))  # the arrays live as long as the struct
        return self._effort_arrays[key][0]

    # -- the token loop -----------------------------------------------------------------------------
    def reset(self, keep: int) -> None:
        self.length = min(self.length, keep)

    def logits(self) -> np.ndarray:
        """The last step's logits (a copy, the vocabulary without the layout's padding)."""
        return self._logits[: self.config.vocab_size].copy()

    def run_batch(self, ids: Sequence[int], effort: native.Effort | None) -> np.ndarray:
        """Every position's logits with the C side's effort given directly (calibration measures single
        kinds of matrix this way)."""
        return self._forward(ids, effort, True)

    def _step(self, token: int, effort: native.Effort | None) -> None:
        if self.length >= self.context_limit:
            raise EngineError(f"position {self.length} is past the context of {self.context_limit} tokens")
        vocab = self.config.vocab_size
        if not 0 <= token < vocab:
            raise EngineError(f"token id {token} is outside the model's vocabulary of {vocab}")
        x0 = np.ascontiguousarray(self.embed(np.array([token]))[0], np.float32)
        rc = self.lib.ee_step(self._handle, _ptr(x0), self.length, ctypes.byref(effort) if effort else None, _ptr(self._logits))
        if rc != 0:
            raise EngineError(f"the native step refused position {self.length}")
        self.length += 1
        total = self.lib.ee_bytes_total(self._handle)
        self.last_read = self.lib.ee_bytes_read(self._handle) / total if total else 1.0

    def _forward(self, ids: Sequence[int], effort: native.Effort | None, all_logits: bool) -> np.ndarray:
        """`ids` through the batched step (every matrix read once per chunk of up to `batch` tokens): the
        last position's logits, or every position's; each position gets the bits a decode step gives it."""
        ids = [int(t) for t in ids]
        vocab, padded = self.config.vocab_size, self._logits.size
        rows, read, total = [], 0.0, 0.0
        for start in range(0, len(ids), self.batch):
            part = ids[start : start + self.batch]
            if self.length + len(part) > self.context_limit:
                raise EngineError(f"position {self.context_limit} is past the context of {self.context_limit} tokens")
            for token in part:
                if not 0 <= token < vocab:
                    raise EngineError(f"token id {token} is outside the model's vocabulary of {vocab}")
            x0 = np.ascontiguousarray(self.embed(np.array(part)), np.float32)
            out = np.empty((len(part) if all_logits else 1, padded), np.float32)
            rc = self.lib.ee_forward(self._handle, _ptr(x0), self.length, len(part),
                                     ctypes.byref(effort) if effort else None, _ptr(out), int(all_logits))
            if rc != 0:
                raise EngineError(f"the native step refused {len(part)} tokens at position {self.length}")
            self.length += len(part)
            read += self.lib.ee_bytes_read(self._handle)
            total += self.lib.ee_bytes_total(self._handle)
            rows.append(out[:, :vocab])
        self.last_read = read / total if total else 1.0
        if not all_logits:
            return rows[-1][0].copy()
        return rows[0] if len(rows) == 1 else np.concatenate(rows)  # one chunk: no second copy

    def forward(self, ids: Sequence[int], effort: float) -> tuple[np.ndarray, float]:
        """Every position's logits of `ids` appended at `effort` (a text scored teacher-forced), with the
        share of the plane bytes read; batched, and the bits one decode step after another would give."""
        return self._forward(ids, self._effort(effort), True), self.last_read

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """The prompt, batched: every matrix read once per chunk of up to `batch` tokens."""
        return self._forward(ids, None, all_logits=False)

    def step(self, token: int, effort: float) -> tuple[np.ndarray, float]:
        self._step(int(token), self._effort(effort))
        return self._logits[: self.config.vocab_size].copy(), self.last_read

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, self.config.vocab_size), np.float32)
        return self._forward(ids, None, all_logits=True)

    # -- one projection, outside a decode step --------------------------------------------------------
    def project(self, name: str, x: np.ndarray, effort: float) -> tuple[np.ndarray, float]:
        """One matrix (HF weight name, or "lm_head.weight") of `x` as a decode step at global `effort`
        would run it: (output, share of its plane bytes read)."""
        pm = self.planes.matrices[name]
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != (pm.in_dim,):
            raise EngineError(f"{name} takes {pm.in_dim} inputs, got an array of shape {x.shape}")
        y = np.zeros(pm.out_dim, np.float32)
        e = self._effort(effort)
        j = self.names.index(name)
        tau = share = -1.0
        if e is not None:
            tau_array, share_array = self._effort_arrays[(self.strategy, round(float(effort), 6))][1]
            if tau_array is not None:
                tau = float(tau_array[j])
            else:
                share = float(share_array[j])
        rows = self.lib.ee_project(self._handle, ctypes.byref(self._structs[name]), _ptr(x), _ptr(y), tau, share,
                                   int(self.strategy == "activation"))
        if rows < 0:
            raise EngineError(f"the native step refused {name}")
        self._last_rows = (name, rows)
        return y, rows / (pm.in_dim * pm.n_planes)

    def projection_inputs(self, tokens: Sequence[int]) -> dict[str, np.ndarray]:
        """Every matrix's input at each position of `tokens`, from one dense pass (from position 0):
        {name: float32 [len(tokens), in]} (for per-matrix measurements)."""
        ins = [self.planes.matrices[n].in_dim for n in self.names]
        at = np.concatenate([[0], np.cumsum(ins)[:-1]]).astype(np.int64)
        buf = np.zeros(int(sum(ins)), np.float32)
        rows = []
        self.lib.ee_set_capture(self._handle, _ptr(buf), _ptr(at))
        try:
            self.reset(0)
            for token in tokens:
                self._step(int(token), None)
                rows.append(buf.copy())
        finally:
            self.lib.ee_set_capture(self._handle, None, None)
            self.reset(0)
        seen = np.stack(rows) if rows else np.zeros((0, buf.size), np.float32)
        return {n: np.ascontiguousarray(seen[:, a : a + i]) for n, a, i in zip(self.names, at, ins)}

    def time_projection(self, name: str, x: np.ndarray, effort: float, repeats: int = 20) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            self.project(name, x, effort)
        return (time.perf_counter() - start) / repeats

    def bytes_read(self, name: str) -> float:
        """Plane bytes the last `project` of this matrix read (scales not counted)."""
        pm = self.planes.matrices[name]
        last, rows = getattr(self, "_last_rows", (None, 0))
        return rows * pm.out_dim / 2 if last == name else 0.0

    # -- memory ---------------------------------------------------------------------------------------
    def layout_bytes(self) -> int:
        return self.planes.nbytes()

    def stream_seconds(self) -> tuple[int, float]:
        """(bytes, seconds) of a plain streaming read, on the step's threads, of every byte a dense step
        reads (each matrix's planes and scales): the yardstick for the step's memory speed."""
        spans = [a for m in self.planes.matrices.values() for a in (*m.planes, m.d, m.m) if a is not None]
        ptrs = (ctypes.c_void_p * len(spans))(*[a.ctypes.data for a in spans])
        sizes = (ctypes.c_size_t * len(spans))(*[a.nbytes for a in spans])
        start = time.perf_counter()
        self.lib.ee_stream_read(ptrs, sizes, len(spans))
        return sum(a.nbytes for a in spans), time.perf_counter() - start

    def peak_memory(self) -> int:
        blocks = -(-self.length // self.kcache.shape[-1])
        return self.planes.nbytes() + self.kcache[:, :, :blocks].nbytes + self.vcache[:, :, : self.length].nbytes

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self.lib.ee_model_free(handle)
