"""The shape of a decoder-only transformer, independent of the file it came from.

`engine.io.loader.open_model` fills a `ModelConfig` from GGUF metadata or from a
Hugging Face ``config.json``; the model code builds itself from it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_SCALING = ("linear", "llama3")  # rope_scaling["rope_type"] values the model implements

# The largest value of each dimension a model file may claim (a few times the largest real
# models': Llama 3.1 405B has 126 layers, hidden 16384, FFN 53248, 128 heads, vocabulary 128k).
# Checked before anything is sized from the numbers; the context is clamped to memory later.
LIMITS = {
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 19,
    "num_layers": 1024,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "head_dim": 1024,
    "vocab_size": 1 << 23,
    "context_length": (1 << 31) - 1,
}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # "llama" | "mistral" | "qwen2"
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # HF-style rope_scaling dict (e.g. {"rope_type": "llama3", ...}) or None
    context_length: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v biases (Qwen2)
    sliding_window: int | None  # Mistral sliding window, None if none

    def problems(self) -> list[str]:
        """What is inconsistent about these numbers (empty when the config is usable)."""
        out: list[str] = []
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            out.append(
                f"unsupported architecture {self.architecture!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
            "context_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                out.append(f"{name} must be a positive integer, got {value!r}")
            elif value > LIMITS[name]:
                out.append(f"{name} is {value:,}, out of range (at most {LIMITS[name]:,})")
        if not out and self.num_heads % self.num_kv_heads:
            out.append(f"num_heads ({self.num_heads}) is not a multiple of num_kv_heads ({self.num_kv_heads})")
        if not out and self.head_dim % 2:
            out.append(f"head_dim ({self.head_dim}) must be even for RoPE")
        if not (self.rms_norm_eps > 0):
            out.append(f"rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not (self.rope_theta > 0):
            out.append(f"rope_theta must be positive, got {self.rope_theta!r}")
        return out

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor this config needs, by Hugging Face name, with its [out, in] shape."""
        h, kv, hd = self.hidden_size, self.num_kv_heads, self.head_dim
        q_out, kv_out = self.num_heads * hd, kv * hd
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, h),
            "model.norm.weight": (h,),
        }
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (q_out, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv_out, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv_out, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, q_out)
            if self.attention_bias:
                shapes[p + "self_attn.q_proj.bias"] = (q_out,)
                shapes[p + "self_attn.k_proj.bias"] = (kv_out,)
                shapes[p + "self_attn.v_proj.bias"] = (kv_out,)
            shapes[p + "mlp.gate_proj.weight"] = (self.intermediate_size, h)
            shapes[p + "mlp.up_proj.weight"] = (self.intermediate_size, h)
            shapes[p + "mlp.down_proj.weight"] = (h, self.intermediate_size)
        return shapes

    def parameter_count(self) -> int:
        """Number of weights (tied embeddings counted once)."""
        total = 0
        for shape in self.expected_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def normalize_rope_scaling(raw: Any) -> dict | None:
    """An HF rope_scaling / rope_parameters dict with the type under "rope_type"; None for plain RoPE."""
    if not isinstance(raw, dict):
        return None
    out = {k: v for k, v in raw.items() if k not in ("rope_theta",)}
    kind = out.pop("rope_type", None) or out.pop("type", None)
    out.pop("type", None)
    if kind in (None, "default"):
        return None
    return {"rope_type": kind, **out}


def kv_bytes_per_token(config: ModelConfig, itemsize: int = 4) -> int:
    """Bytes of K and V cache one position takes (float32 on the CPU path)."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize


def physical_memory_bytes() -> int:
    """RAM in this machine (0 when the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


KV_MEMORY_SHARE = 0.25  # at most this share of RAM goes to the KV cache


def context_for_memory(config: ModelConfig, memory_bytes: int | None = None) -> tuple[int, str | None]:
    """(context to allocate, notice or None): the model's context, clamped so that its KV cache
    takes at most `KV_MEMORY_SHARE` of RAM (a file may claim 10^8 positions: 2 TiB of cache)."""
    memory = physical_memory_bytes() if memory_bytes is None else memory_bytes
    wanted = config.context_length
    if memory <= 0:
        return wanted, None
    per_token = kv_bytes_per_token(config)
    fits = int(memory * KV_MEMORY_SHARE) // max(1, per_token)
    if wanted <= fits:
        return wanted, None
    limit = max(256, fits // 256 * 256) if fits >= 256 else max(1, fits)
    gib = per_token * wanted / (1 << 30)
    notice = (
        f"context clamped to {limit:,} tokens: the model claims {wanted:,}, whose KV cache "
        f"({gib:,.1f} GiB) does not fit in memory"
    )
    return limit, notice
