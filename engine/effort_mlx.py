"""The effort path for the MLX runtime: GPU kernels on Metal/CUDA, the numpy reference elsewhere.

On a GPU every projection of a decode step goes through `engine.effort_gpu`
(cutoff, k and the bucket multiply stay on the device). Without a GPU and
without the native CPU path (no C compiler), the numpy reference runs instead:
slow, but the same selection and the same result, so effort still works.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from engine import effort_gpu, reference
from engine.bucket import B, k_for_effort
from engine.convert import Converted, projection_names
from engine.model import PROJECTIONS, Projector, weight_name


class MLXEffortPath:
    """effort -> (projector for one decode step, effective effort of that step)."""

    def __init__(self, converted: Converted, num_layers: int, dense: Callable[[int, str, mx.array], mx.array]) -> None:
        self.converted = converted
        self.dense = dense
        self.strategy = "bucket"
        index = {n: j for j, n in enumerate(converted.allocation.names)}
        self.order = np.array([index[n] for n in projection_names(num_layers)])
        self.gpu = effort_gpu.available()
        self.layouts = (
            {name: effort_gpu.gpu_layout(bm) for name, bm in converted.buckets.items()} if self.gpu else {}
        )

    def local_efforts(self, effort: float) -> np.ndarray | None:
        if effort >= 1.0:
            return None
        if self.strategy == "activation":
            return np.full(len(self.order), effort)
        return self.converted.allocation.request(effort)[self.order]

    def __call__(self, effort: float) -> tuple[Projector, Callable[[], float]]:
        local = self.local_efforts(effort)
        used: list = []
        sizes: list[int] = []

        def project(layer: int, proj: str, x: mx.array) -> mx.array:
            e = 1.0 if local is None else float(local[layer * len(PROJECTIONS) + PROJECTIONS.index(proj)])
            name = weight_name(layer, proj)
            bm = self.converted.buckets[name]
            sizes.append(bm.out_dim * bm.in_dim)
            if e >= 1.0:
                used.append(float(bm.out_dim * bm.in_dim))
                return self.dense(layer, proj, x)
            if self.gpu and self.strategy == "bucket":
                y, k = effort_gpu.bucket_matvec_gpu(self.layouts[name], x.reshape(-1), e)
                used.append(k.sum() * (bm.out_dim // B))
                return y.reshape(1, -1).astype(x.dtype)
            y, k = self._numpy(bm, np.array(x.astype(mx.float32)).reshape(-1), e)
            used.append(float(k.sum()) * (bm.out_dim // B))
            return mx.array(y).reshape(1, -1).astype(x.dtype)

        def effective() -> float:
            done = sum(float(u.item()) if isinstance(u, mx.array) else u for u in used)
            return done / max(sum(sizes), 1)

        return project, effective

    def _numpy(self, bm, x: np.ndarray, effort: float) -> tuple[np.ndarray, np.ndarray]:
        if self.strategy == "activation":
            keep = np.argsort(-np.abs(x), kind="stable")[: int(round(effort * x.size))]
            k = np.zeros(x.size, np.int32)
            k[keep] = B
        else:
            k = k_for_effort(bm, x, effort)
        k = np.minimum(k, self.converted.load_ranks)
        return reference.matvec_k(bm, x, k), k
