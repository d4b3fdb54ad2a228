"""A Llama / Mistral / Qwen2 decoder in MLX: the whole network in one short file.

Per layer (pre-norm):
    h = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = rmsnorm(x)
    x = h + down_proj(silu(gate_proj(m)) * up_proj(m))                      m = rmsnorm(h)

Every projection goes through `Projector`, so the effort path can replace the
dense `x @ W.T` for decode steps without the model knowing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import mlx.core as mx
import numpy as np

from engine.model.config import ModelConfig

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# (layer index, projection name, input [L, in]) -> output [L, out]
Projector = Callable[[int, str, mx.array], mx.array]


def weight_name(layer: int, proj: str) -> str:
    group = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{group}.{proj}.weight"


def split_weight_name(name: str) -> tuple[int, str]:
    """(layer, projection) of a projection's HF weight name; the inverse of weight_name."""
    parts = name.split(".")
    return int(parts[2]), parts[4]


@dataclass
class LayerCache:
    """Keys and values of one layer, grown in steps so decode never re-allocates per token."""

    keys: mx.array | None = None  # [1, kv_heads, capacity, head_dim]
    values: mx.array | None = None
    offset: int = 0
    step: int = 256

    def update(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        n = k.shape[2]
        end = self.offset + n
        if self.keys is None or end > self.keys.shape[2]:
            grow = ((end + self.step - 1) // self.step) * self.step
            shape = (1, k.shape[1], grow, k.shape[3])
            new_k, new_v = mx.zeros(shape, k.dtype), mx.zeros(shape, v.dtype)
            if self.keys is not None and self.offset:
                new_k[:, :, : self.offset] = self.keys[:, :, : self.offset]
                new_v[:, :, : self.offset] = self.values[:, :, : self.offset]
            self.keys, self.values = new_k, new_v
        self.keys[:, :, self.offset : end] = k
        self.values[:, :, self.offset : end] = v
        self.offset = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def trim(self, length: int) -> None:
        """Forget everything after the first `length` positions (the data stays, it is overwritten later)."""
        self.offset = min(self.offset, length)


@dataclass
class Cache:
    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def for_model(cls, config: ModelConfig) -> "Cache":
        return cls([LayerCache() for _ in range(config.num_layers)])

    @property
    def offset(self) -> int:
        return self.layers[0].offset if self.layers else 0

    def trim(self, length: int) -> None:
        for layer in self.layers:
            layer.trim(length)


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """Angle per position of each rotated pair (float64 [head_dim/2]), rope scaling applied."""
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    dims = config.head_dim
    inv_freq = config.rope_theta ** (-np.arange(0, dims, 2, dtype=np.float64) / dims)
    if kind in ("default", None) or not scaling:
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        smooth = np.clip((old_len / wavelen - low) / (high - low), 0.0, 1.0)
        return (1 - smooth) * inv_freq / factor + smooth * inv_freq
    raise ValueError(f"unsupported rope scaling type {kind!r}")


def rope_frequencies(config: ModelConfig) -> mx.array | None:
    """Per-pair rotation periods for `mx.fast.rope`, or None when plain `base` suffices."""
    if not config.rope_scaling or config.rope_scaling.get("rope_type", config.rope_scaling.get("type")) in (
        "default", None,
    ):
        return None
    return mx.array((1.0 / rope_inverse_frequencies(config)).astype(np.float32))


class Model:
    """The decoder. `weights` maps Hugging Face tensor names to MLX arrays."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, mx.array]) -> None:
        self.config = config
        self.w = dict(weights)
        self.dtype = self.w["model.embed_tokens.weight"].dtype
        self._rope_freqs = rope_frequencies(config)
        self._rope_base = None if self._rope_freqs is not None else config.rope_theta

    # -- pieces ---------------------------------------------------------------------------
    def dense(self, layer: int, proj: str, x: mx.array) -> mx.array:
        return x @ self.w[weight_name(layer, proj)].T

    def _norm(self, x: mx.array, name: str) -> mx.array:
        return mx.fast.rms_norm(x, self.w[name], self.config.rms_norm_eps)

    def _rope(self, x: mx.array, offset: int) -> mx.array:
        return mx.fast.rope(
            x, self.config.head_dim, traditional=False, base=self._rope_base, scale=1.0,
            offset=offset, freqs=self._rope_freqs,
        )

    def _mask(self, length: int, offset: int) -> mx.array | str | None:
        window = self.config.sliding_window
        total = offset + length
        if window is None or total <= window:
            return "causal" if length > 1 else None
        q_pos = mx.arange(offset, total)[:, None]
        k_pos = mx.arange(total)[None, :]
        return (k_pos <= q_pos) & (k_pos > q_pos - window)

    def _attention(self, i: int, n: mx.array, cache: LayerCache, project: Projector) -> mx.array:
        c = self.config
        length = n.shape[0]
        prefix = f"model.layers.{i}.self_attn."
        q, k, v = (project(i, p, n) for p in ("q_proj", "k_proj", "v_proj"))
        if c.attention_bias:
            q, k, v = q + self.w[prefix + "q_proj.bias"], k + self.w[prefix + "k_proj.bias"], v + self.w[prefix + "v_proj.bias"]
        q = q.reshape(length, c.num_heads, c.head_dim).transpose(1, 0, 2)[None]
        k = k.reshape(length, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)[None]
        v = v.reshape(length, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)[None]
        offset = cache.offset
        q, k = self._rope(q, offset), self._rope(k, offset)
        keys, values = cache.update(k, v)
        mask = self._mask(length, offset)
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=c.head_dim**-0.5, mask=mask)
        out = out[0].transpose(1, 0, 2).reshape(length, c.num_heads * c.head_dim)
        return project(i, "o_proj", out)

    def _mlp(self, i: int, m: mx.array, project: Projector) -> mx.array:
        gate, up = project(i, "gate_proj", m), project(i, "up_proj", m)
        return project(i, "down_proj", nn_silu(gate) * up)

    # -- the network ----------------------------------------------------------------------
    def hidden(self, tokens: mx.array, cache: Cache, project: Projector | None = None) -> mx.array:
        """Final-normed hidden states [L, hidden] for `tokens` [L], appended to `cache`."""
        project = project or self.dense
        x = self.w["model.embed_tokens.weight"][tokens]
        # on a GPU, start each layer as soon as it is built: the device runs layer i while
        # Python builds layer i+1 (a decode step is hundreds of small launches)
        pipeline = len(tokens) == 1 and mx.default_device() == mx.gpu
        for i in range(self.config.num_layers):
            p = f"model.layers.{i}."
            x = x + self._attention(i, self._norm(x, p + "input_layernorm.weight"), cache.layers[i], project)
            x = x + self._mlp(i, self._norm(x, p + "post_attention_layernorm.weight"), project)
            if pipeline:
                mx.async_eval(x)
        return self._norm(x, "model.norm.weight")

    def logits(self, h: mx.array) -> mx.array:
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return (h @ head.T).astype(mx.float32)

    def __call__(
        self, tokens: mx.array, cache: Cache, project: Projector | None = None, last_only: bool = True
    ) -> mx.array:
        h = self.hidden(tokens, cache, project)
        return self.logits(h[-1:] if last_only else h)


def projection_inputs(model: Model, tokens: list[int]) -> dict[str, np.ndarray]:
    """The input vector of every projection at each position of `tokens`, from one dense pass:
    {weight name: float32 [len(tokens), in]} (for per-matrix measurements)."""
    seen: dict[str, np.ndarray] = {}

    def capture(layer: int, proj: str, x: mx.array) -> mx.array:
        seen[weight_name(layer, proj)] = np.array(x.astype(mx.float32))
        return model.dense(layer, proj, x)

    model.hidden(mx.array(tokens, dtype=mx.int32), Cache.for_model(model.config), capture)
    return seen


def nn_silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def to_mlx(array: np.ndarray, dtype: mx.Dtype) -> mx.array:
    """A float32 numpy tensor as an evaluated MLX array of the backend's dtype."""
    out = mx.array(array.astype(np.float16 if dtype == mx.float16 else np.float32, copy=False))
    mx.eval(out)
    return out
