"""A small, fast, lazy GGUF reader.

`gguf.GGUFReader` builds a numpy view for every metadata item, which takes seconds
on a vocabulary of 50k tokens; this reader parses the header with `struct` (strings
and numeric arrays in bulk) and memory-maps the tensor data, so opening a file
costs milliseconds and nothing big is read until a tensor is asked for.
Dequantization is `gguf.quants.dequantize` (vectorized numpy).

Layout (GGUF v2/v3, little-endian):
    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv  x (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types
_SCALAR_FORMATS = {
    0: ("<B", np.uint8),
    1: ("<b", np.int8),
    2: ("<H", np.uint16),
    3: ("<h", np.int16),
    4: ("<I", np.uint32),
    5: ("<i", np.int32),
    6: ("<f", np.float32),
    7: ("<?", np.bool_),
    10: ("<Q", np.uint64),
    11: ("<q", np.int64),
    12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9

_MAX_COUNT = 1 << 40  # sanity bound for counts read from the file
# Limits on what the header may claim, checked before anything is built from it.
MAX_METADATA_DEPTH = 4  # arrays of arrays: real files use at most 2 levels
MAX_STRING_BYTES = 64 << 20  # one metadata string (chat templates are ~10 KB)
MAX_ARRAY_ITEMS = 1 << 26  # one metadata array (vocabularies are ~10^5-10^6)
MAX_METADATA_ITEMS = 1 << 16
MAX_TENSORS = 1 << 20


class GGUFFormatError(Exception):
    """The file is not a readable GGUF; the message is one line for the user."""


def _ggml_types() -> tuple[dict[int, str], dict[int, tuple[int, int]], set[int]]:
    """(type id -> name, type id -> (block size, bytes per block), ids we can dequantize)."""
    import gguf
    from gguf import quants

    names = {int(t): t.name for t in gguf.GGMLQuantizationType}
    sizes = {int(t): tuple(v) for t, v in gguf.GGML_QUANT_SIZES.items()}
    traits = getattr(quants, "_type_traits", {})
    supported = {int(gguf.GGMLQuantizationType.F32), int(gguf.GGMLQuantizationType.F16)}
    supported |= {int(t) for t in traits}
    return names, sizes, supported


_TYPE_NAMES, _TYPE_SIZES, _SUPPORTED_TYPES = _ggml_types()


def ggml_type_name(type_id: int) -> str:
    return _TYPE_NAMES.get(type_id, f"unknown type #{type_id}")


def file_type_name(file_type: int) -> str | None:
    """`general.file_type` (llama.cpp's LlamaFileType) as a short name like "Q4_1"; None if unknown."""
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return None
    if name == "GUESSED":
        return None
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, ..., cols); GGUF's `ne` reversed
    ggml_type: int
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def supported(self) -> bool:
        return self.ggml_type in _SUPPORTED_TYPES


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.pos = 0
        self.size = size

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(f"truncated GGUF file (ends inside {what} at byte {self.pos})")

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def count(self, what: str) -> int:
        n = self.u64(what)
        if n > _MAX_COUNT:
            raise GGUFFormatError(f"corrupt GGUF file (impossible {what} {n})")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"{what} length")
        if n > MAX_STRING_BYTES:
            raise GGUFFormatError(f"corrupt GGUF file ({what} claims {n:,} bytes, more than {MAX_STRING_BYTES:,})")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            fmt, dtype = _SCALAR_FORMATS[vtype]
            size = np.dtype(dtype).itemsize
            v = self.unpack(fmt, size, what)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            item_type = self.u32(f"{what} item type")
            n = self.count(f"{what} item count")
            if n > MAX_ARRAY_ITEMS:
                raise GGUFFormatError(f"corrupt GGUF file ({what} claims {n:,} items, more than {MAX_ARRAY_ITEMS:,})")
            if item_type in _SCALAR_FORMATS:
                dtype = np.dtype(_SCALAR_FORMATS[item_type][1]).newbyteorder("<")
                nbytes = n * dtype.itemsize
                self.need(nbytes, what)
                arr = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
                self.pos += nbytes
                return arr.tolist()
            if item_type == _STRING:
                self.need(n * 8, what)  # every string has an 8-byte length
                return self._string_array(n, what)
            if item_type == _ARRAY and depth + 1 >= MAX_METADATA_DEPTH:
                raise GGUFFormatError(
                    f"corrupt GGUF file ({what} nests arrays more than {MAX_METADATA_DEPTH} levels deep)"
                )
            self.need(n * 12 if item_type == _ARRAY else n, what)  # an array item is at least 12 bytes
            return [self.value(item_type, what, depth + 1) for _ in range(n)]
        raise GGUFFormatError(f"corrupt GGUF file (unknown metadata type {vtype} in {what})")

    def _string_array(self, n: int, what: str) -> list[str]:
        out: list[str] = []
        buf, pos, size = self.buf, self.pos, self.size
        unpack = struct.Struct("<Q").unpack_from
        append = out.append
        for _ in range(n):
            if pos + 8 > size:
                self.pos = pos
                raise GGUFFormatError(f"truncated GGUF file (ends inside {what} at byte {pos})")
            length = unpack(buf, pos)[0]
            pos += 8
            end = pos + length
            if end > size:
                self.pos = pos
                raise GGUFFormatError(f"truncated GGUF file (ends inside {what} at byte {pos})")
            append(bytes(buf[pos:end]).decode("utf-8", errors="replace"))
            pos = end
        self.pos = pos
        return out


def _check_disjoint(tensors: dict[str, GGUFTensorInfo]) -> None:
    """No two tensors share bytes. A tensor whose type claims more bytes per value than were
    written for it (F32 where F16 data sits) runs into its neighbour: refuse it here rather than
    read the neighbour's bytes as weights."""
    spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in tensors.values())
    for (_, end, name), (start, _, following) in zip(spans, spans[1:]):
        if start < end:
            raise GGUFFormatError(
                f"corrupt GGUF file (tensor {name!r} overlaps {following!r}: its type or shape does not "
                "match the bytes written for it)"
            )


class GGUFFile:
    """Metadata and lazily read tensors of one GGUF file.

    Raises `GGUFFormatError` (one-line message) for anything that is not a complete GGUF v2/v3 file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file_size = os.path.getsize(self.path)
        self._data: np.memmap | None = None
        with open(self.path, "rb") as f:
            if self.file_size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise GGUFFormatError("not a GGUF file (no GGUF signature)")
                raise GGUFFormatError("truncated GGUF file (header incomplete)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                self._parse(mm)

    # -- parsing -------------------------------------------------------------------------------
    def _parse(self, mm: mmap.mmap) -> None:
        cur = _Cursor(mm, self.file_size)
        if bytes(mm[:4]) != GGUF_MAGIC:
            raise GGUFFormatError("not a GGUF file (no GGUF signature)")
        cur.pos = 4
        version = cur.u32("version")
        if version not in (2, 3):
            if struct.unpack("<I", struct.pack(">I", version))[0] in (2, 3):
                raise GGUFFormatError("big-endian GGUF files are not supported")
            raise GGUFFormatError(f"unsupported GGUF version {version} (need 2 or 3)")
        self.version = version
        n_tensors = cur.count("tensor count")
        n_kv = cur.count("metadata count")
        if n_tensors > MAX_TENSORS:
            raise GGUFFormatError(f"corrupt GGUF file (tensor count {n_tensors:,} is more than {MAX_TENSORS:,})")
        if n_kv > MAX_METADATA_ITEMS:
            raise GGUFFormatError(f"corrupt GGUF file (metadata count {n_kv:,} is more than {MAX_METADATA_ITEMS:,})")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(f"metadata {key!r}")
            meta[key] = cur.value(vtype, f"metadata {key!r}")
        self.metadata = meta

        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            n_dims = cur.u32(f"tensor {name!r}")
            if not 1 <= n_dims <= 4:
                raise GGUFFormatError(f"corrupt GGUF file (tensor {name!r} has {n_dims} dimensions)")
            ne = [cur.count(f"tensor {name!r} shape") for _ in range(n_dims)]
            ggml_type = cur.u32(f"tensor {name!r} type")
            offset = cur.u64(f"tensor {name!r} offset")
            raw_infos.append((name, ne, ggml_type, offset))

        alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"corrupt GGUF file (alignment {alignment!r})")
        self.alignment = alignment
        data_start = cur.pos + (-cur.pos) % alignment
        self.data_start = data_start

        tensors: dict[str, GGUFTensorInfo] = {}
        for name, ne, ggml_type, offset in raw_infos:
            if name in tensors:
                raise GGUFFormatError(f"corrupt GGUF file (tensor {name!r} appears twice)")
            if ggml_type not in _TYPE_SIZES:
                raise GGUFFormatError(f"tensor {name!r} has {ggml_type_name(ggml_type)}, which is not supported")
            block, block_bytes = _TYPE_SIZES[ggml_type]
            if any(d <= 0 for d in ne) or ne[0] % block:
                raise GGUFFormatError(f"corrupt GGUF file (tensor {name!r} has shape {ne})")
            n_elements = 1
            for d in ne:
                n_elements *= d
            n_bytes = n_elements // block * block_bytes
            if offset % alignment:
                raise GGUFFormatError(
                    f"corrupt GGUF file (tensor {name!r} starts at offset {offset:,}, not a multiple of the "
                    f"alignment {alignment})"
                )
            start = data_start + offset
            if start + n_bytes > self.file_size:
                raise GGUFFormatError(
                    f"truncated GGUF file (tensor {name!r} needs bytes up to {start + n_bytes:,}, "
                    f"the file has {self.file_size:,})"
                )
            tensors[name] = GGUFTensorInfo(name, tuple(reversed(ne)), ggml_type, start, n_bytes)
        _check_disjoint(tensors)
        self.tensors = tensors

    # -- access --------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def _memmap(self) -> np.memmap:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._data

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 (rows..., bytes_per_row): a memory-mapped view, no copy."""
        info = self.tensors[name]
        block, block_bytes = _TYPE_SIZES[info.ggml_type]
        row_bytes = info.shape[-1] // block * block_bytes
        flat = self._memmap()[info.offset : info.offset + info.n_bytes]
        return flat.reshape(*info.shape[:-1], row_bytes)

    def read(self, name: str) -> np.ndarray:
        """The tensor's bytes (rows..., bytes_per_row) read into memory: a copy, so nothing of the file
        stays mapped (and counted as resident) after the caller drops it."""
        info = self.tensors[name]
        block, block_bytes = _TYPE_SIZES[info.ggml_type]
        row_bytes = info.shape[-1] // block * block_bytes
        out = np.empty(info.n_bytes, np.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(info.offset)
            view, done = memoryview(out), 0
            while done < info.n_bytes:
                n = f.readinto(view[done:])
                if not n:
                    raise GGUFFormatError(f"truncated GGUF file (tensor {name!r} ends early)")
                done += n
        return out.reshape(*info.shape[:-1], row_bytes)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as a fresh float32 array in numpy order (rows, ..., cols)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensors[name]
        if not info.supported:
            raise GGUFFormatError(f"tensor {name!r} has type {info.type_name}, which cannot be dequantized")
        out = dequantize(self.raw(name), GGMLQuantizationType(info.ggml_type))
        out = np.array(out, dtype=np.float32, copy=True)  # detach from the memory map
        return out.reshape(info.shape)

    def close(self) -> None:
        self._data = None


# ======================================================================================
# GGUF -> ModelConfig and Hugging Face tensor names
# ======================================================================================

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# tensors that carry no weights the model needs (rope_freqs is folded into the config)
_IGNORED = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}
_IGNORED_LAYER = {"attn_rot_embd"}

GGUF_ARCHITECTURES = ("llama", "qwen2")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name; None if it is not one of ours."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name.startswith("blk."):
        _, layer, rest = gguf_name.split(".", 2) if gguf_name.count(".") >= 2 else ("", "", "")
        if layer.isdigit() and rest in _LAYER_NAMES:
            return f"model.layers.{int(layer)}.{_LAYER_NAMES[rest]}"
    return None


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> HF rotate_half halves).

    llama.cpp's converter does ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2).reshape(w.shape)``
    per head of size d; this is its inverse. Works for weights [rows, cols] and biases [rows].
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows cannot be split into {n_head} heads of even size")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_from_factors(
    factors: np.ndarray, rope_theta: float, head_dim: int
) -> dict | None:
    """Recover an HF ``{"rope_type": "llama3", ...}`` dict from llama.cpp's ``rope_freqs`` tensor.

    llama.cpp stores, per frequency, the divisor the llama3 scheme applies: 1 for short
    wavelengths, ``factor`` for long ones, a smooth blend in between. Only the ratios
    ``original_max_position_embeddings / {low,high}_freq_factor`` are identifiable, so we fix
    ``low_freq_factor = 1`` (what Meta's configs use) and fit the other two; the result reproduces
    the stored divisors exactly. Returns None when all divisors are 1 (no scaling); raises
    ValueError when they do not follow the llama3 scheme.
    """
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    if f.size != head_dim // 2:
        raise ValueError(f"rope_freqs has {f.size} values, expected {head_dim // 2}")
    if np.allclose(f, 1.0):
        return None
    inv_freq = rope_theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    factor = float(f.max())

    def divisors(orig: float, low: float, high: float) -> np.ndarray:
        low_wl, high_wl = orig / low, orig / high
        smooth = (orig / wavelen - low) / (high - low)
        mid = 1.0 / ((1 - smooth) / factor + smooth)
        return np.where(wavelen < high_wl, 1.0, np.where(wavelen > low_wl, factor, mid))

    candidates = []
    inner = (f > 1 + 1e-4) & (f < factor * (1 - 1e-4))
    if inner.sum() >= 2:
        s = (1 / f[inner] - 1 / factor) / (1 - 1 / factor)
        a, b = np.polyfit(1 / wavelen[inner], s, 1)  # s = a/wavelen + b, a = L/(h-1), b = -1/(h-1)
        if b < 0:
            high = 1 - 1 / b
            candidates.append((round(-a / b), 1.0, float(high)))
    candidates.append((8192, 1.0, 4.0))  # Llama 3.1 / 3.2
    for orig, low, high in candidates:
        if high > low and np.allclose(divisors(orig, low, high), f, rtol=1e-3, atol=1e-4):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": round(high, 6),
                "original_max_position_embeddings": int(orig),
            }
    raise ValueError("the rope_freqs tensor does not follow the llama3 RoPE scaling scheme")


def _meta_int(g: GGUFFile, key: str, source: str, default: int | None = None) -> int:
    value = g.get(key, default)
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]  # per-layer arrays with one value
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise _model_error(source, f"missing metadata {key}")
        raise _model_error(source, f"metadata {key} is {value!r}, expected an integer")
    return value


def _meta_float(g: GGUFFile, key: str, source: str, default: float) -> float:
    value = g.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _model_error(source, f"metadata {key} is {value!r}, expected a number")
    return float(value)


def _model_error(source: str, problem: str) -> Exception:
    from engine.errors import ModelFileError

    return ModelFileError(source, problem)


def _check_limits(source: str, p: str, **values: int) -> None:
    """The dimensions the rest of this function sizes things from, bounded first (ModelConfig.problems
    checks every field again)."""
    from engine.model.config import LIMITS

    keys = {
        "hidden": ("hidden_size", "embedding_length"), "heads": ("num_heads", "attention.head_count"),
        "kv_heads": ("num_kv_heads", "attention.head_count_kv"), "head_dim": ("head_dim", "attention.key_length"),
    }
    for name, value in values.items():
        field, key = keys[name]
        if value > LIMITS[field]:
            raise _model_error(source, f"{field} ({p}{key}) is {value:,}, out of range (at most {LIMITS[field]:,})")


def gguf_model_config(g: GGUFFile, source: str):
    """ModelConfig from the metadata (llama.* / qwen2.* keys) and the tensor list."""
    from engine.model.config import ModelConfig

    arch = g.get("general.architecture")
    if not isinstance(arch, str):
        raise _model_error(source, "missing metadata general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise _model_error(
            source, f"unsupported architecture {arch!r} (supported: llama, mistral, qwen2)"
        )
    name = str(g.get("general.name", "") or "") + " " + str(g.get("general.basename", "") or "")
    architecture = "mistral" if arch == "llama" and "mistral" in name.lower() else arch

    p = arch + "."
    hidden = _meta_int(g, p + "embedding_length", source)
    heads = _meta_int(g, p + "attention.head_count", source)
    kv_heads = _meta_int(g, p + "attention.head_count_kv", source, heads)
    if heads <= 0 or hidden <= 0:
        raise _model_error(source, f"impossible shape: {hidden=} {heads=}")
    head_dim = _meta_int(g, p + "attention.key_length", source, hidden // heads)
    _check_limits(source, p, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    rope_dim = g.get(p + "rope.dimension_count")
    if isinstance(rope_dim, int) and rope_dim != head_dim:
        raise _model_error(source, f"partial RoPE ({rope_dim} of {head_dim} dims) is not supported")
    rope_theta = _meta_float(g, p + "rope.freq_base", source, 10000.0)

    embd = g.tensors.get("token_embd.weight")
    if embd is None:
        raise _model_error(source, "missing tensor token_embd.weight")
    vocab = embd.shape[0]

    rope_scaling = None
    kind = g.get(p + "rope.scaling.type")
    factor = g.get(p + "rope.scaling.factor", g.get(p + "rope.scale_linear"))
    if kind is None and isinstance(factor, (int, float)) and factor not in (0, 1):
        kind = "linear"  # old files: rope.scale_linear only
    if kind not in (None, "none"):
        if not isinstance(factor, (int, float)) or factor <= 0:
            raise _model_error(source, f"RoPE scaling {kind!r} without a valid factor")
        rope_scaling = {"rope_type": kind, "factor": float(factor)}
        orig = g.get(p + "rope.scaling.original_context_length")
        if isinstance(orig, int):
            rope_scaling["original_max_position_embeddings"] = orig
        if kind != "linear":
            raise _model_error(source, f"unsupported RoPE scaling type {kind!r}")
    if "rope_freqs.weight" in g.tensors:
        try:
            freqs = g.dequantize("rope_freqs.weight")
            fitted = llama3_rope_from_factors(freqs, rope_theta, head_dim)
        except (GGUFFormatError, ValueError) as exc:
            raise _model_error(source, f"unsupported RoPE frequency factors: {exc}") from exc
        if fitted is not None:
            if rope_scaling is not None:
                raise _model_error(source, "both rope.scaling metadata and a rope_freqs tensor")
            rope_scaling = fitted

    sliding = g.get(p + "attention.sliding_window")
    return ModelConfig(
        architecture=architecture,
        hidden_size=hidden,
        intermediate_size=_meta_int(g, p + "feed_forward_length", source),
        num_layers=_meta_int(g, p + "block_count", source),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        rms_norm_eps=_meta_float(g, p + "attention.layer_norm_rms_epsilon", source, 1e-5),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        context_length=_meta_int(g, p + "context_length", source, 4096),
        tie_word_embeddings="output.weight" not in g.tensors,
        attention_bias="blk.0.attn_q.bias" in g.tensors,
        sliding_window=sliding if isinstance(sliding, int) and sliding > 0 else None,
    )


@dataclass
class StoredMatrix:
    """A 2-D weight [out, in] as its file stores it, read into memory (not mapped): GGUF blocks, or floats.

    `columns` gives the inputs [start, stop) of every output (start and stop on block boundaries),
    as stored (`blocks`) or as float32 (`floats`), so a converter can work through a large matrix
    in slices of inputs without ever holding all of it as floats."""

    type_name: str  # the GGML type ("Q4_1", "F16", ...) or the safetensors dtype ("BF16", ...)
    out_dim: int
    in_dim: int
    block: int  # inputs per stored block (1 for plain floats)
    block_bytes: int
    data: np.ndarray  # GGUF: uint8 [out, row bytes]; safetensors: float32 [out, in]

    def blocks(self, start: int, stop: int) -> np.ndarray:
        if self.data.dtype != np.uint8:
            raise ValueError(f"{self.type_name} weights are not stored in blocks")
        return self.data[:, start // self.block * self.block_bytes : stop // self.block * self.block_bytes]

    def floats(self, start: int, stop: int) -> np.ndarray:
        if self.data.dtype != np.uint8:
            return np.ascontiguousarray(self.data[:, start:stop], np.float32)
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType[self.type_name]
        raw = np.ascontiguousarray(self.blocks(start, stop))
        return np.asarray(dequantize(raw, qtype), np.float32).reshape(self.out_dim, stop - start)


class GGUFTensorSource:
    """TensorSource over a GGUF file: HF names, float32, HF orientation, Q/K un-permuted (llama)."""

    def __init__(self, g: GGUFFile, config, source: str) -> None:
        self.gguf = g
        self._map: dict[str, str] = {}
        self._heads: dict[str, int] = {}
        permuted = g.get("general.architecture") == "llama"  # llama.cpp permutes Q/K for llama only
        for name, info in g.tensors.items():
            if name in _IGNORED:
                continue
            parts = name.split(".")
            if parts[0] == "blk" and len(parts) > 2 and parts[2] in _IGNORED_LAYER:
                continue
            hf = hf_name(name)
            if hf is None:
                hint = " (mixture-of-experts models are not supported)" if "_exps" in name else ""
                raise _model_error(source, f"unexpected tensor {name!r} for a {config.architecture} model{hint}")
            if not info.supported:
                raise _model_error(
                    source, f"tensor {name!r} has type {info.type_name}, which is not supported"
                )
            self._map[hf] = name
            if permuted and ".attn_q." in name:
                self._heads[hf] = config.num_heads
            elif permuted and ".attn_k." in name:
                self._heads[hf] = config.num_kv_heads

    def names(self) -> list[str]:
        return list(self._map)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.gguf.tensors[self._map[name]].shape

    def gguf_type(self, name: str) -> str:
        """The GGML type name of the stored tensor, e.g. "Q4_1"."""
        return self.gguf.tensors[self._map[name]].type_name

    def stored(self, name: str) -> StoredMatrix:
        info = self.gguf.tensors[self._map[name]]
        raw = self.gguf.read(self._map[name])
        heads = self._heads.get(name)
        if heads is not None:
            raw = np.ascontiguousarray(unpermute_rows(raw, heads))
        block, block_bytes = _TYPE_SIZES[info.ggml_type]
        return StoredMatrix(info.type_name, info.shape[0], info.shape[1], block, block_bytes, raw)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.gguf.tensors[self._map[name]]
        raw = self.gguf.raw(self._map[name])[np.asarray(ids, np.int64)]
        return np.asarray(dequantize(raw, GGMLQuantizationType(info.ggml_type)), np.float32).reshape(len(ids), -1)

    def get(self, name: str) -> np.ndarray:
        w = self.gguf.dequantize(self._map[name])
        heads = self._heads.get(name)
        if heads is not None:
            w = np.ascontiguousarray(unpermute_rows(w, heads))
        return w
