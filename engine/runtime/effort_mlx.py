"""The effort path for the MLX runtime: GPU kernels on Metal/CUDA, the numpy reference elsewhere.

On a GPU every projection of a decode step goes through `engine.runtime.effort_gpu`: cutoff, k and the
bucket multiply stay on the device, and the matrices that share an input (q/k/v, gate/up) get
their cutoffs from one select launch. The products actually done are summed on the device too
and read back with the logits, so a decode step still synchronises once.

Without a GPU and without the native CPU path (no C compiler), the numpy reference runs
instead: slow, but the same selection and the same result, so effort still works.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from engine.runtime import effort_gpu
from engine.effort import reference
from engine.effort.bucket import B, k_for_effort
from engine.effort.convert import Converted, projection_names
from engine.model.decoder import PROJECTIONS, Projector, weight_name

# projections that read the same input vector: one select launch computes all their cutoffs
SHARED_INPUT = {"q_proj": ("q_proj", "k_proj", "v_proj"), "gate_proj": ("gate_proj", "up_proj")}


class MLXEffortPath:
    """effort -> (projector for one decode step, products done in that step)."""

    def __init__(self, converted: Converted, num_layers: int, dense: Callable[[int, str, mx.array], mx.array]) -> None:
        self.converted = converted
        self.dense = dense
        self.strategy = "bucket"
        index = {n: j for j, n in enumerate(converted.allocation.names)}
        self.order = np.array([index[n] for n in projection_names(num_layers)])
        self._positions = {n: j for j, n in enumerate(projection_names(num_layers))}
        self.total_size = sum(self.size(n) for n in projection_names(num_layers))
        self.gpu = effort_gpu.available()
        self.layouts = {}
        self.groups = {}
        if self.gpu:
            self.layouts = {name: effort_gpu.gpu_layout(bm) for name, bm in converted.buckets.items()}
            for layer in range(num_layers):
                for members in SHARED_INPUT.values():
                    names = [weight_name(layer, p) for p in members]
                    self.groups[names[0]] = (names, effort_gpu.layout_group_of([self.layouts[n] for n in names]))

    def local_efforts(self, effort: float) -> np.ndarray | None:
        if effort >= 1.0:
            return None
        if self.strategy == "activation":
            return np.full(len(self.order), effort)
        return self.converted.allocation.request(effort)[self.order]

    def index_of(self, name: str) -> int:
        """Position of a matrix in `local_efforts`' array."""
        return self._positions[name]

    def size(self, name: str) -> int:
        bm = self.converted.buckets[name]
        return bm.out_dim * bm.in_dim

    def matvec(self, name: str, x: mx.array, effort: float) -> tuple[mx.array, mx.array | float]:
        """(y [out] float32, products done) of one matrix at a local effort; lazy on the GPU."""
        bm = self.converted.buckets[name]
        if self.gpu and self.strategy == "bucket":
            y, k = effort_gpu.bucket_matvec_gpu(self.layouts[name], x.reshape(-1), effort)
            return y, self._done(name, k)
        y, k = self._numpy(bm, np.array(x.astype(mx.float32)).reshape(-1), effort)
        return mx.array(y), self._done(name, k)

    def _done(self, name: str, k) -> mx.array | float:
        """Products done for k [in] (ranks per input; a rank is one weight per bucket)."""
        per_rank = self.converted.buckets[name].out_dim // B
        return k.sum() * per_rank if isinstance(k, mx.array) else float(k.sum()) * per_rank

    def __call__(self, effort: float) -> tuple[Projector, Callable[[], mx.array | float]]:
        local = self.local_efforts(effort)
        used: list = []
        pending: dict[str, tuple[mx.array, mx.array | float]] = {}

        def local_effort(layer: int, proj: str) -> float:
            return 1.0 if local is None else float(local[layer * len(PROJECTIONS) + PROJECTIONS.index(proj)])

        def project(layer: int, proj: str, x: mx.array) -> mx.array:
            name = weight_name(layer, proj)
            if name in pending:
                y, done = pending.pop(name)
            elif local_effort(layer, proj) >= 1.0:
                used.append(float(self.size(name)))
                return self.dense(layer, proj, x)
            elif self.gpu and self.strategy == "bucket" and name in self.groups:
                y, done = self._group(layer, proj, x, local_effort, pending)
            else:
                y, done = self.matvec(name, x, local_effort(layer, proj))
            used.append(done)
            return y.reshape(1, -1).astype(x.dtype)

        def products() -> mx.array | float:
            arrays = [u for u in used if isinstance(u, mx.array)]
            plain = sum(u for u in used if not isinstance(u, mx.array))
            if not arrays:
                return plain
            return mx.sum(mx.stack([a.astype(mx.float32) for a in arrays])) + plain

        return project, products

    def _group(self, layer, proj, x, local_effort, pending):
        """(y, products done) of the group starting at `proj`, all its members computed with one
        select launch; the members after the first whose effort is below 1 wait in `pending`
        for their own calls (the others go dense)."""
        names, group = self.groups[weight_name(layer, proj)]
        efforts = [local_effort(layer, p) for p in SHARED_INPUT[proj]]
        results = effort_gpu.bucket_matvec_group_gpu(group, x.reshape(-1), efforts)
        done = [(y, self._done(name, k)) for name, (y, k) in zip(names, results)]
        for name, e, result in zip(names[1:], efforts[1:], done[1:]):
            if e < 1.0:
                pending[name] = result
        return done[0]

    def _numpy(self, bm, x: np.ndarray, effort: float) -> tuple[np.ndarray, np.ndarray]:
        if self.strategy == "activation":
            keep = np.argsort(-np.abs(x), kind="stable")[: int(round(effort * x.size))]
            k = np.zeros(x.size, np.int32)
            k[keep] = B
        else:
            k = k_for_effort(bm, x, effort)
        k = np.minimum(k, self.converted.load_ranks)
        return reference.matvec_k(bm, x, k), k
