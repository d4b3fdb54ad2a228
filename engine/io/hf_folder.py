"""Hugging Face model folders: config.json + *.safetensors (single file or sharded).

Safetensors are read lazily: each file's header is parsed once (names, dtypes, shapes,
byte ranges, all checked against the file size, and the file is opened once with
`safetensors.safe_open` to validate it); a tensor's bytes are memory-mapped and converted
to float32 only when asked for. bf16 has no numpy dtype, so it is widened by hand
(uint16 << 16 reinterpreted as float32, exact).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFileError
from engine.model.config import SUPPORTED_ROPE_SCALING, ModelConfig, normalize_rope_scaling

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
_DEFAULT_CONTEXT = {"llama": 2048, "mistral": 32768, "qwen2": 32768}

_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
SUPPORTED_DTYPES = ("F32", "F16", "BF16", "F64")

# HF tensors that are buffers, not weights
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(folder, f"config.json cannot be read: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(folder, "config.json is not a JSON object")
    return data


def _int(cfg: dict[str, Any], key: str, folder: Path, default: int | None = None) -> int:
    value = cfg.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise ModelFileError(folder, f"config.json has no {key}")
        raise ModelFileError(folder, f"config.json: {key} is {value!r}, expected an integer")
    return value


def hf_model_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    archs = cfg.get("architectures") or []
    arch = next((HF_ARCHITECTURES[a] for a in archs if a in HF_ARCHITECTURES), None)
    if arch is None and not archs:
        arch = _MODEL_TYPES.get(cfg.get("model_type", ""))
    if arch is None:
        what = ", ".join(map(str, archs)) or repr(cfg.get("model_type"))
        raise ModelFileError(
            folder, f"unsupported architecture {what} (supported: {', '.join(HF_ARCHITECTURES)})"
        )
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ModelFileError(folder, f"unsupported activation {act!r} (need silu)")
    if cfg.get("mlp_bias"):
        raise ModelFileError(folder, "MLP biases (mlp_bias) are not supported")
    hidden = _int(cfg, "hidden_size", folder)
    heads = _int(cfg, "num_attention_heads", folder)
    if heads <= 0:
        raise ModelFileError(folder, f"config.json: num_attention_heads is {heads}")
    head_dim = _int(cfg, "head_dim", folder, hidden // heads)
    rope_params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    rope_theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    rope_scaling = normalize_rope_scaling(cfg.get("rope_scaling") or rope_params)
    if rope_scaling is not None and rope_scaling["rope_type"] not in SUPPORTED_ROPE_SCALING:
        raise ModelFileError(folder, f"unsupported RoPE scaling {rope_scaling['rope_type']!r}")

    sliding = None
    if arch == "mistral":
        sliding = cfg.get("sliding_window")
    elif arch == "qwen2" and cfg.get("use_sliding_window"):
        raise ModelFileError(folder, "Qwen2 sliding-window attention (use_sliding_window) is not supported")
    attention_bias = True if arch == "qwen2" else bool(cfg.get("attention_bias", False))
    return ModelConfig(
        architecture=arch,
        hidden_size=hidden,
        intermediate_size=_int(cfg, "intermediate_size", folder),
        num_layers=_int(cfg, "num_hidden_layers", folder),
        num_heads=heads,
        num_kv_heads=_int(cfg, "num_key_value_heads", folder, heads),
        head_dim=head_dim,
        vocab_size=_int(cfg, "vocab_size", folder),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        context_length=_int(cfg, "max_position_embeddings", folder, _DEFAULT_CONTEXT[arch]),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        sliding_window=sliding if isinstance(sliding, int) and sliding > 0 else None,
    )


class _SafetensorsFile:
    """Header of one .safetensors file; tensor bytes memory-mapped on demand."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        size = os.path.getsize(path)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("file too short")
                (n,) = struct.unpack("<Q", head)
                if n > min(size - 8, 100 << 20):
                    raise ValueError("header length is larger than the file")
                header = json.loads(f.read(n).decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ModelFileError(folder, f"{path.name} is not a safetensors file: {' '.join(str(exc).split())}") from exc
        if not isinstance(header, dict):
            raise ModelFileError(folder, f"{path.name} is not a safetensors file (bad header)")
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (start, end) = spec["dtype"], tuple(int(d) for d in spec["shape"]), spec["data_offsets"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelFileError(folder, f"{path.name}: bad header entry for {name!r}") from exc
            if self.data_start + end > size or start > end:
                raise ModelFileError(
                    folder, f"{path.name} is truncated (tensor {name!r} ends past the end of the file)"
                )
            self.entries[name] = (dtype, shape, self.data_start + start, self.data_start + end)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                f.keys()
        except Exception as exc:
            raise ModelFileError(folder, f"{path.name} is not a valid safetensors file: {' '.join(str(exc).split())}") from exc
        self._mm: np.memmap | None = None

    def read(self, name: str) -> np.ndarray:
        dtype, shape, start, end = self.entries[name]
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mm[start:end]
        if dtype == "BF16":
            out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.view(_NUMPY_DTYPES[dtype]).astype(np.float32)  # astype copies: detached from the map
        return out.reshape(shape)


class SafetensorsSource:
    """TensorSource over a folder's safetensors files (HF names as stored)."""

    def __init__(self, folder: Path, config: ModelConfig) -> None:
        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ModelFileError(folder, f"{index.name} cannot be read: {exc}") from exc
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ModelFileError(folder, f"missing weight file {missing[0]} (listed in {index.name})")
            paths = [folder / f for f in files]
        else:
            paths = sorted(folder.glob("*.safetensors"))
        if not paths:
            raise ModelFileError(folder, "no *.safetensors weights in the folder")
        self.files = [_SafetensorsFile(p, folder) for p in paths]
        self._where: dict[str, _SafetensorsFile] = {}
        for f in self.files:
            for name, (dtype, _, _, _) in f.entries.items():
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: the model uses the embedding
                if dtype not in SUPPORTED_DTYPES:
                    raise ModelFileError(
                        folder, f"tensor {name!r} has dtype {dtype}, which is not supported ({', '.join(SUPPORTED_DTYPES)})"
                    )
                self._where[name] = f

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].entries[name][1]

    def dtype(self, name: str) -> str:
        """The stored dtype, e.g. "BF16"."""
        return self._where[name].entries[name][0]

    def get(self, name: str) -> np.ndarray:
        return self._where[name].read(name)

    def stored(self, name: str):
        from engine.io.gguf_file import StoredMatrix

        w = self.get(name)
        return StoredMatrix(self.dtype(name), w.shape[0], w.shape[1], 1, 0, w)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        dtype, shape, start, end = self._where[name].entries[name]
        f = self._where[name]
        if f._mm is None:
            f._mm = np.memmap(f.path, dtype=np.uint8, mode="r")
        width = 2 if dtype == "BF16" else np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        table = f._mm[start:end].reshape(shape[0], shape[1] * width)[np.asarray(ids, np.int64)]
        if dtype == "BF16":
            return (table.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(len(ids), shape[1])
        return table.view(_NUMPY_DTYPES[dtype]).astype(np.float32).reshape(len(ids), shape[1])

    def file_type(self) -> str:
        kinds = {self.dtype(n) for n in self._where if len(self.shape(n)) == 2} or {
            self.dtype(n) for n in self._where
        }
        return kinds.pop() if len(kinds) == 1 else "mixed"


def weight_files(folder: Path) -> list[Path]:
    """The files whose content defines the model (fingerprinted)."""
    names = [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
        "chat_template.json",
    ]
    out = [folder / n for n in names if (folder / n).is_file()]
    out += sorted(folder.glob("*.safetensors"))
    return sorted(out, key=lambda p: p.name)
