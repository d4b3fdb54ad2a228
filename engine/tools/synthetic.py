"""Random models of real shapes, for speed measurements at sizes no bundled model has.

`effort bench --synthetic mistral-7b --layers 8` times the dense path and the effort path on a
stack of Mistral-7B-shaped layers with random weights. Speed depends on the shapes, not on the
values, so this shows what a 7B model would decode at on this machine without needing one.
Quality numbers from such a model mean nothing: it has no calibration (every matrix gets the
global effort) and no tokenizer (the bench feeds token ids).

To keep the first use short, one layer is generated and bucketed; every layer then holds its
own copy of those arrays (separate buffers, so every layer's weights are read from memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.effort.allocation import Allocation
from engine.effort.bucket import B, BucketMatrix, convert_matrix
from engine.effort.convert import N_PROBES, PACKING, Converted, projection_names
from engine.errors import EngineError
from engine.model.decoder import PROJECTIONS, weight_name
from engine.model.config import ModelConfig


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int


SHAPES = {
    "mistral-7b": Shape(4096, 14336, 32, 8, 128, 32000, 32),
    "llama-3-8b": Shape(4096, 14336, 32, 8, 128, 128256, 32),
    "smollm2-135m": Shape(576, 1536, 9, 3, 64, 49152, 30),
}


def config_for(name: str, layers: int | None = None) -> ModelConfig:
    if name not in SHAPES:
        raise EngineError(f"unknown synthetic shape {name!r} (known: {', '.join(SHAPES)})")
    s = SHAPES[name]
    n = s.layers if layers is None else layers
    if n < 1:
        raise EngineError("--layers must be at least 1")
    return ModelConfig(
        architecture="mistral" if name.startswith("mistral") else "llama",
        hidden_size=s.hidden, intermediate_size=s.intermediate, num_layers=n,
        num_heads=s.heads, num_kv_heads=s.kv_heads, head_dim=s.head_dim, vocab_size=s.vocab,
        rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, context_length=4096,
        tie_word_embeddings=False, attention_bias=False, sliding_window=None,
    )


def random_matrix(rng: np.random.Generator, out_dim: int, in_dim: int) -> np.ndarray:
    """Gaussian weights scaled by 1/sqrt(in), with per-input scales spread like a trained
    model's (a few inputs matter much more than others), so bucketing has something to rank."""
    col_scale = np.exp(0.5 * rng.standard_normal(in_dim)).astype(np.float32)
    w = rng.standard_normal((out_dim, in_dim), dtype=np.float32) * (col_scale / np.sqrt(in_dim))
    return w.astype(np.float32)


def uniform_allocation(names: list[str], sizes: np.ndarray) -> Allocation:
    """Every matrix at the global effort (no calibration data exists for random weights)."""
    grid = np.linspace(0.05, 1.0, 20)
    levels = np.linspace(0.0, 1.0, 21)
    return Allocation(list(names), np.asarray(sizes, np.float64), grid,
                      np.repeat(grid[:, None], len(names), axis=1), levels,
                      np.repeat(levels[None, :], len(names), axis=0))


def build(name: str, layers: int | None = None, seed: int = 0, progress=None) -> tuple[ModelConfig, dict[str, np.ndarray], Converted]:
    """(config, float32 numpy weights by HF name, converted bucket side).

    Layers share the numpy arrays; runtimes upload each layer to its own buffers."""
    note = progress or (lambda s: None)
    config = config_for(name, layers)
    rng = np.random.default_rng(seed)
    c = config
    one_layer: dict[str, np.ndarray] = {}
    buckets_one: dict[str, BucketMatrix] = {}
    shapes = config.expected_shapes()
    for proj in PROJECTIONS:
        out_dim, in_dim = shapes[weight_name(0, proj)]
        note(f"bucketing a random {out_dim}x{in_dim} {proj}")
        one_layer[proj] = random_matrix(rng, out_dim, in_dim)
        buckets_one[proj] = convert_matrix(one_layer[proj], PACKING, N_PROBES)
    weights = {
        "model.embed_tokens.weight": rng.standard_normal((c.vocab_size, c.hidden_size), dtype=np.float32),
        "lm_head.weight": random_matrix(rng, c.vocab_size, c.hidden_size),
        "model.norm.weight": np.ones(c.hidden_size, np.float32),
    }
    buckets = {}
    for i in range(c.num_layers):
        weights[f"model.layers.{i}.input_layernorm.weight"] = weights["model.norm.weight"]
        weights[f"model.layers.{i}.post_attention_layernorm.weight"] = weights["model.norm.weight"]
        for proj in PROJECTIONS:
            weights[weight_name(i, proj)] = one_layer[proj]
            buckets[weight_name(i, proj)] = buckets_one[proj]
    names = projection_names(c.num_layers)
    sizes = np.array([buckets[n].out_dim * buckets[n].in_dim for n in names])
    return config, weights, Converted(buckets, uniform_allocation(names, sizes), B, None)


def load(name: str, layers: int | None, runtime: str = "auto", progress=None):
    """(runtime, model, backend) for a synthetic model, on the detected backend."""
    from engine.runtime import backend as backends
    from engine.model.decoder import Model, to_mlx
    from engine.session import make_runtime, runtime_kind

    config, weights, converted = build(name, layers, progress=progress)
    be = backends.detect()
    model = Model(config, {n: to_mlx(w, be.dtype) for n, w in weights.items()})
    kind = runtime_kind(runtime, be.name, config)
    return make_runtime(model, config.context_length, kind, converted), model, be
