"""Random models of real shapes, for speed measurements at sizes no bundled model has.

`effort bench --synthetic mistral-7b --dtype q8_0 --layers 4` times the dense path and the effort path
on a stack of Mistral-7B-shaped layers with random weights stored at that precision. Speed depends on
the shapes and the precision, not on the values, so this shows what a 7B model would decode at on this
machine without needing one. Quality numbers from such a model mean nothing: it has no calibration
(every matrix reads the same share of its bytes per token) and no tokenizer (the bench feeds token ids).

On the CPU the layers are built directly in the planes layout (random codes and scales, each layer its
own buffers, so every layer's weights are read from memory); on MLX (a GPU) in the bucketMul layout.
`write_gguf` writes the same shapes as a GGUF file, for measuring loading and memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.effort.allocation import Allocation
from engine.effort.planes.layout import BLOCK, PlaneMatrix
from engine.effort.planes.store import HEAD, PlanesModel, vector_names
from engine.errors import EngineError
from engine.model.config import ModelConfig
from engine.model.decoder import PROJECTIONS, weight_name


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
    "llama-1b": Shape(2048, 8192, 32, 8, 64, 128256, 16),
    "mistral-7b": Shape(4096, 14336, 32, 8, 128, 32000, 32),
    "llama-3-8b": Shape(4096, 14336, 32, 8, 128, 128256, 32),
    "smollm2-135m": Shape(576, 1536, 9, 3, 64, 49152, 30),
}
DTYPES = ("q8_0", "q4_0", "q4_1", "f16")


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
        tie_word_embeddings=name in ("llama-1b", "smollm2-135m"), attention_bias=False, sliding_window=None,
    )


def random_matrix(rng: np.random.Generator, out_dim: int, in_dim: int) -> np.ndarray:
    """Gaussian weights scaled by 1/sqrt(in), with per-input scales spread like a trained
    model's (a few inputs matter much more than others), so effort has something to rank."""
    col_scale = np.exp(0.5 * rng.standard_normal(in_dim)).astype(np.float32)
    w = rng.standard_normal((out_dim, in_dim), dtype=np.float32) * (col_scale / np.sqrt(in_dim))
    return w.astype(np.float32)


def random_planes(rng: np.random.Generator, out_dim: int, in_dim: int, dtype: str) -> PlaneMatrix:
    """A matrix in the planes layout with random codes and scales of a real file's precision (the
    layout of F16 weights is the 8-bit one, as for any 16-bit file)."""
    kind = "q4" if dtype.startswith("q4") else "q8"
    planes = [rng.integers(0, 256, in_dim * out_dim // 2, np.uint8) for _ in range(1 if kind == "q4" else 2)]
    nb = in_dim // BLOCK
    d = (rng.random((nb, out_dim), np.float32) * 2e-3 + 1e-3).astype(np.float16)
    m = (-8 * d.astype(np.float32)).astype(np.float16) if dtype == "q4_1" else None
    gains = rng.chisquare(2, (len(planes), in_dim)).astype(np.float32) * np.float32(out_dim * 1e-6)
    return PlaneMatrix(kind, out_dim, in_dim, planes, d, m, gains)


def build_planes(name: str, layers: int | None, dtype: str, seed: int = 0, progress=None) -> PlanesModel:
    """A random model in the planes layout (one layer generated, every layer its own copy)."""
    if dtype not in DTYPES:
        raise EngineError(f"unknown --dtype {dtype!r} (known: {', '.join(DTYPES)})")
    note = progress or (lambda s: None)
    config = config_for(name, layers)
    rng = np.random.default_rng(seed)
    shapes = config.expected_shapes()
    one = {}
    for proj in PROJECTIONS:
        out_dim, in_dim = shapes[weight_name(0, proj)]
        note(f"a random {out_dim}x{in_dim} {proj} at {dtype}")
        one[proj] = random_planes(rng, out_dim, in_dim, dtype)
    matrices = {}
    for i in range(config.num_layers):
        for proj in PROJECTIONS:
            pm = one[proj]
            matrices[weight_name(i, proj)] = PlaneMatrix(
                pm.kind, pm.out_dim, pm.in_dim, [p.copy() for p in pm.planes], pm.d.copy(),
                None if pm.m is None else pm.m.copy(), pm.gains.copy(),
            )
    note(f"a random {config.vocab_size}x{config.hidden_size} head")
    matrices[HEAD] = random_planes(rng, config.vocab_size, config.hidden_size, "q8_0" if dtype == "f16" else dtype)
    vectors = {n: np.ones(config.hidden_size, np.float32) for n in vector_names(config)}
    return PlanesModel(config, matrices, vectors, None)


def random_embed(config: ModelConfig, seed: int = 1):
    """Embedding rows for token ids: fixed random vectors (a synthetic model has no embedding table)."""

    def embed(ids: np.ndarray) -> np.ndarray:
        return np.stack([np.random.default_rng((seed, int(t))).standard_normal(config.hidden_size).astype(np.float32)
                         for t in np.asarray(ids).reshape(-1)])

    return embed


def uniform_allocation(names: list[str], sizes: np.ndarray) -> Allocation:
    """bucketMul: every matrix at the global effort (no calibration data exists for random weights)."""
    grid = np.linspace(0.05, 1.0, 20)
    levels = np.linspace(0.0, 1.0, 21)
    return Allocation(list(names), np.asarray(sizes, np.float64), grid,
                      np.repeat(grid[:, None], len(names), axis=1), levels,
                      np.repeat(levels[None, :], len(names), axis=0))


def build_bucket(name: str, layers: int | None = None, seed: int = 0, progress=None):
    """(config, float32 numpy weights by HF name, converted bucketMul side), for the MLX runtime."""
    from engine.effort.bucket import B, BucketMatrix, convert_matrix
    from engine.effort.convert import N_PROBES, PACKING, Converted, projection_names

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
        "model.norm.weight": np.ones(c.hidden_size, np.float32),
    }
    if not c.tie_word_embeddings:
        weights["lm_head.weight"] = random_matrix(rng, c.vocab_size, c.hidden_size)
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


def load(name: str, layers: int | None, runtime: str = "auto", progress=None, dtype: str = "q8_0"):
    """(runtime, config, backend) for a synthetic model, on the detected backend."""
    from engine.runtime import backend as backends
    from engine.session import mlx_runtime, runtime_kind

    config = config_for(name, layers)
    be = backends.detect()
    kind = runtime_kind(runtime, be.name, config)
    if kind == "cpu":
        from engine.runtime.cpu_runtime import CPURuntime

        planes = build_planes(name, layers, dtype, progress=progress)
        return CPURuntime(planes, random_embed(config), config.context_length), config, be
    from engine.model.decoder import Model, to_mlx

    config, weights, converted = build_bucket(name, layers, progress=progress)
    model = Model(config, {n: to_mlx(w, be.dtype) for n, w in weights.items()})
    return mlx_runtime(model, config.context_length, converted), config, be


GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "f16": "F16"}


def write_gguf(name: str, path: Path, dtype: str = "q8_0", layers: int | None = None, seed: int = 0,
               progress=None) -> Path:
    """A GGUF file of a real architecture's shape with random weights at `dtype` (llama.cpp's tensor
    names and metadata, a byte-level tokenizer of the shape's vocabulary), written one tensor at a time
    with the `gguf` package's writer: for measuring loading, memory and speed, never quality."""
    import gguf

    if dtype not in GGUF_TYPES:
        raise EngineError(f"unknown --dtype {dtype!r} (known: {', '.join(GGUF_TYPES)})")
    note = progress or (lambda s: None)
    config = config_for(name, layers)
    c = config
    qtype = gguf.GGMLQuantizationType[GGUF_TYPES[dtype]]
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"random {name}")
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_file_type({"q8_0": 7, "q4_0": 2, "q4_1": 3, "f16": 1}[dtype])
    _add_tokenizer(writer, c.vocab_size)
    shapes = config.expected_shapes()
    one = {}
    for proj in PROJECTIONS:
        out_dim, in_dim = shapes[weight_name(0, proj)]
        note(f"quantizing a random {out_dim}x{in_dim} {proj} to {dtype}")
        one[proj] = gguf.quants.quantize(random_matrix(rng, out_dim, in_dim), qtype)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    embed = gguf.quants.quantize(rng.standard_normal((c.vocab_size, c.hidden_size), dtype=np.float32) * 0.02, qtype)
    writer.add_tensor("token_embd.weight", embed, raw_dtype=qtype)
    if not c.tie_word_embeddings:
        writer.add_tensor("output.weight", gguf.quants.quantize(random_matrix(rng, c.vocab_size, c.hidden_size), qtype),
                          raw_dtype=qtype)
    writer.add_tensor("output_norm.weight", np.ones(c.hidden_size, np.float32))
    for i in range(c.num_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(c.hidden_size, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(c.hidden_size, np.float32))
        for proj, short in names.items():
            writer.add_tensor(f"blk.{i}.{short}.weight", one[proj], raw_dtype=qtype)
    note(f"writing {path.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, vocab: int) -> None:
    """A byte-level BPE vocabulary of `vocab` tokens (256 bytes, then merged pairs; the last two are
    the control tokens), so the file loads and encodes text like a real one."""
    from engine.io.tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    tokens = list(byte_chars)
    merges = []
    for a in byte_chars:
        for b in byte_chars:
            if len(tokens) >= vocab - 2:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    tokens += [f"<|filler {n}|>" for n in range(vocab - 2 - len(tokens))]  # vocabularies beyond pairs of bytes
    tokens += ["<|begin|>", "<|end|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    fillers = vocab - 2 - len(byte_chars) - len(merges)
    writer.add_token_types([1] * (len(tokens) - 2 - fillers) + [4] * fillers + [3, 3])
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.tools.synthetic SHAPE DTYPE OUT.gguf [--layers N]`: write a random-weight GGUF of a
    real shape (for measuring loading, memory and speed on sizes no bundled model has)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.tools.synthetic", description=main.__doc__)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("dtype", choices=sorted(GGUF_TYPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=None)
    args = parser.parse_args(argv)
    write_gguf(args.shape, args.out, args.dtype, args.layers, progress=lambda s: print(s, flush=True))
    print(f"{args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
