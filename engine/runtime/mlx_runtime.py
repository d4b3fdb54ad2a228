"""Running the MLX model: batched dense prefill and single-token decode steps."""

from __future__ import annotations

import time
from typing import Sequence

import mlx.core as mx
import numpy as np

from engine.model.decoder import Cache, Model, split_weight_name

PREFILL_CHUNK = 512


class MLXRuntime:
    """`engine.runtime.base.Runtime` on MLX: dense prefill in chunks; decode through the effort path
    when one is plugged in."""

    times_own_calls = True  # time_projection queues the calls and waits once (the kernels' time on a GPU)
    strategies = ("bucket", "activation")

    def __init__(self, model: Model, context_limit: int, effort_path=None) -> None:
        """`effort_path`: an `engine.runtime.effort_mlx.MLXEffortPath`, or None for the dense model only."""
        self.model = model
        self.config = model.config
        self.context_limit = context_limit
        self.effort_path = effort_path
        self.cache = Cache.for_model(model.config)
        self._last_share: dict[str, float] = {}

    def reset(self, keep: int) -> None:
        self.cache.trim(keep)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        logits = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = mx.array(list(ids[start : start + PREFILL_CHUNK]), dtype=mx.int32)
            logits = self.model(chunk, self.cache)
            mx.eval(logits, *[c.keys for c in self.cache.layers], *[c.values for c in self.cache.layers])
        assert logits is not None
        return np.array(logits[-1])

    def forward(self, ids: Sequence[int], effort: float) -> tuple[np.ndarray, float]:
        rows, used = [], []
        for token in ids:
            logits, share = self.step(int(token), effort)
            rows.append(logits)
            used.append(share)
        return np.stack(rows), float(np.mean(used))

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        logits = self.model(mx.array(list(ids), dtype=mx.int32), self.cache, last_only=False)
        mx.eval(logits)
        return np.array(logits.astype(mx.float32))

    def step(self, token: int, effort: float) -> tuple[np.ndarray, float]:
        tokens = mx.array([token], dtype=mx.int32)
        if effort >= 1.0 or self.effort_path is None:
            logits = self.model(tokens, self.cache)
            return np.array(logits[-1]), 1.0
        project, products = self.effort_path(effort)
        logits = self.model(tokens, self.cache, project=project)
        done = products()
        if isinstance(done, mx.array):
            mx.eval(logits, done)  # one synchronisation per step
            done = done.item()
        return np.array(logits[-1]), float(done) / self.effort_path.total_size

    def projection_inputs(self, tokens: Sequence[int]) -> dict[str, np.ndarray]:
        from engine.model.decoder import projection_inputs

        return projection_inputs(self.model, list(tokens))

    def _local(self, name: str, effort: float) -> float:
        """The local effort a decode step at global `effort` gives this matrix."""
        local = None if self.effort_path is None else self.effort_path.local_efforts(effort)
        if local is None:
            return 1.0
        return float(local[self.effort_path.index_of(name)])

    def project(self, name: str, x: np.ndarray, effort: float) -> tuple[np.ndarray, float]:
        """One projection (HF weight name) as a decode step at global `effort` runs it: (output,
        share of its weights used). Effort 1.0 (or no effort path) is MLX's dense product."""
        effort = self._local(name, effort)
        y, done = self._project(name, mx.array(np.asarray(x, np.float32)).astype(self.model.dtype), effort)
        mx.eval(y, done if isinstance(done, mx.array) else y)
        self._last_share[name] = float(done.item() if isinstance(done, mx.array) else done) / self._size(name)
        return np.array(y.astype(mx.float32)).reshape(-1), self._last_share[name]

    def time_projection(self, name: str, x: np.ndarray, effort: float, repeats: int = 20) -> float:
        """Seconds per call of one projection. On a GPU the calls are queued together and waited
        for once, so the figure is the kernels' time rather than a round trip per call."""
        effort = self._local(name, effort)
        xm = mx.array(np.asarray(x, np.float32)).astype(self.model.dtype)
        mx.eval(xm)
        for _ in range(2):
            mx.eval(self._project(name, xm, effort)[0])
        start = time.perf_counter()
        mx.eval([self._project(name, xm, effort)[0] for _ in range(repeats)])
        return (time.perf_counter() - start) / repeats

    def bytes_read(self, name: str) -> float:
        """Weight bytes the last `project` of this matrix read: fp16 values of the dense matrix,
        or the dispatched share of the bucket lists (fp16 value + 4-bit position) plus stats."""
        out_dim, in_dim = self._shape(name)
        share = self._last_share.get(name, 1.0)
        if share >= 1.0 or self.effort_path is None:
            return 2.0 * out_dim * in_dim
        return 2.5 * share * out_dim * in_dim + 4.0 * 16 * in_dim

    def _project(self, name: str, x: mx.array, effort: float):
        layer, proj = split_weight_name(name)
        if effort >= 1.0 or self.effort_path is None:
            return self.model.dense(layer, proj, x.reshape(1, -1)).reshape(-1), float(self._size(name))
        return self.effort_path.matvec(name, x, effort)

    def _shape(self, name: str) -> tuple[int, int]:
        out_dim, in_dim = self.model.w[name].shape
        return int(out_dim), int(in_dim)

    def _size(self, name: str) -> int:
        out_dim, in_dim = self._shape(name)
        return out_dim * in_dim

    def set_strategy(self, strategy: str) -> None:
        if self.effort_path is not None:
            self.effort_path.strategy = strategy

    def layout_bytes(self) -> int:
        """MLX runs from the model's own weights (and the converted arrays): nothing of its own."""
        return 0

    def peak_memory(self) -> int:
        return int(mx.get_peak_memory())
