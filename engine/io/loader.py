"""Open a model file or folder: config, lazy tensors (HF names, float32) and tokenizer.

    files = open_model("SmolLM2-135M-Instruct.Q4_1.gguf")   # or an HF folder
    files.config.num_layers, files.tokenizer.encode("hi"), files.tensors.get("model.norm.weight")

Every problem with the input (missing path, not a model, truncated or corrupt file,
unsupported architecture / tensor type, no tokenizer) raises
`engine.errors.ModelFileError(path, problem)`, whose str() is one line.

Tensor names are always Hugging Face names (`model.layers.{i}.self_attn.q_proj.weight`, ...),
arrays are float32 in HF orientation ([out, in] for linears), and GGUF Q/K weights are
un-permuted so one (non-traditional, rotate_half) RoPE works for every source.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.errors import ModelFileError
from engine.model.config import ModelConfig

if TYPE_CHECKING:
    from engine.io.gguf_file import StoredMatrix
    from engine.io.tokenizer import Tokenizer


class TensorSource(Protocol):
    """Lazy access to a model's weights: nothing big is read until `get`."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...  # float32, HF orientation ([out, in] for linears)

    def stored(self, name: str) -> "StoredMatrix": ...  # a 2-D weight as stored (GGUF blocks or floats), in memory

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray: ...  # float32 rows of a 2-D weight (embeddings)


@dataclass
class ModelFiles:
    path: Path  # the GGUF file or HF folder
    config: ModelConfig
    tensors: TensorSource
    tokenizer: "Tokenizer"
    source_format: str  # "gguf" | "hf"
    file_type: str  # e.g. "Q4_1", "F16", "BF16", "F32", "mixed"
    fingerprint: str  # sha256 of the GGUF file / of the HF folder's model files
    metadata: dict = field(default_factory=dict, repr=False)  # raw GGUF metadata or config.json

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parameters(self) -> int:
        """Weights in the model (tied embeddings counted once)."""
        total = 0
        for n in self.tensors.names():
            total += int(np.prod(self.tensors.shape(n)))
        return total


# -- fingerprints --------------------------------------------------------------------------------

_FP_LOCK = threading.Lock()
_FP_CACHE: dict[tuple, str] = {}
_CHUNK = 16 << 20


def _stat_key(paths: list[Path]) -> tuple:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def fingerprint_files(paths: list[Path], *, names_relative_to: Path | None = None) -> str:
    """sha256 over the files' names (relative) and contents; memoized by path+size+mtime."""
    key = _stat_key(paths)
    with _FP_LOCK:
        hit = _FP_CACHE.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    single = len(paths) == 1 and names_relative_to is None
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    for p in paths:
        if not single:
            rel = p.name if names_relative_to is None else str(p.relative_to(names_relative_to))
            h.update(f"{rel}\0{p.stat().st_size}\0".encode())
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    digest = h.hexdigest()
    with _FP_LOCK:
        _FP_CACHE[key] = digest
    return digest


# -- validation ----------------------------------------------------------------------------------


def _check_tensors(path: Path, config: ModelConfig, tensors: TensorSource) -> None:
    problems = config.problems()
    if problems:
        raise ModelFileError(path, problems[0])
    expected = config.expected_shapes()
    have = set(tensors.names())
    missing = [n for n in expected if n not in have]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(path, f"missing tensor {missing[0]}{more}")
    extra = sorted(have - set(expected))
    if extra:
        raise ModelFileError(path, f"unexpected tensor {extra[0]} for a {config.architecture} model")
    for name, shape in expected.items():
        got = tuple(tensors.shape(name))
        if got != shape:
            raise ModelFileError(path, f"tensor {name} has shape {list(got)}, expected {list(shape)}")


# -- openers -------------------------------------------------------------------------------------


def _open_gguf(path: Path) -> ModelFiles:
    from engine.io.gguf_file import GGUFFile, GGUFFormatError, GGUFTensorSource, file_type_name, gguf_model_config
    from engine.io.tokenizer import tokenizer_from_gguf_metadata

    try:
        g = GGUFFile(path)
    except GGUFFormatError as exc:
        raise ModelFileError(path, str(exc)) from exc
    split = g.get("split.count")
    if isinstance(split, int) and split > 1:
        raise ModelFileError(path, f"split GGUF files ({split} parts) are not supported; merge them first")
    config = gguf_model_config(g, str(path))
    tensors = GGUFTensorSource(g, config, str(path))
    _check_tensors(path, config, tensors)
    tokenizer = tokenizer_from_gguf_metadata(g.metadata, str(path))

    ft = g.get("general.file_type")
    file_type = file_type_name(ft) if isinstance(ft, int) else None
    if file_type is None:
        kinds = {tensors.gguf_type(n) for n in tensors.names() if len(tensors.shape(n)) == 2}
        file_type = kinds.pop() if len(kinds) == 1 else "mixed"
    return ModelFiles(
        path=path,
        config=config,
        tensors=tensors,
        tokenizer=tokenizer,
        source_format="gguf",
        file_type=file_type,
        fingerprint=fingerprint_files([path]),
        metadata=g.metadata,
    )


def _open_hf(folder: Path) -> ModelFiles:
    from engine.io.hf_folder import SafetensorsSource, hf_model_config, read_config, weight_files
    from engine.io.tokenizer import tokenizer_from_hf_folder

    cfg = read_config(folder)
    config = hf_model_config(cfg, folder)
    tensors = SafetensorsSource(folder, config)
    names = set(tensors.names())
    if not config.tie_word_embeddings and "lm_head.weight" not in names and "model.embed_tokens.weight" in names:
        # some checkpoints leave the head out and rely on tying
        from dataclasses import replace

        config = replace(config, tie_word_embeddings=True)
    emb = "model.embed_tokens.weight"
    if emb in names and tensors.shape(emb)[0] != config.vocab_size:
        from dataclasses import replace

        config = replace(config, vocab_size=tensors.shape(emb)[0])
    _check_tensors(folder, config, tensors)
    tokenizer = tokenizer_from_hf_folder(folder, cfg)
    return ModelFiles(
        path=folder,
        config=config,
        tensors=tensors,
        tokenizer=tokenizer,
        source_format="hf",
        file_type=tensors.file_type(),
        fingerprint=fingerprint_files(weight_files(folder), names_relative_to=folder),
        metadata=cfg,
    )


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except PermissionError:
        raise  # reported as "permission denied", not as a file that is not a GGUF
    except OSError:
        return False


def open_model(path: str | Path) -> ModelFiles:
    """Open a GGUF file or a Hugging Face model folder (config.json + safetensors + tokenizer).

    A folder holding exactly one .gguf file (and no config.json) opens that file.
    Raises ModelFileError for every bad input.
    """
    p = Path(os.path.expanduser(str(path)))
    try:
        if not p.exists():
            raise ModelFileError(p, "no such file or folder")
        if p.is_dir():
            if (p / "config.json").is_file():
                return _open_hf(p)
            ggufs = sorted(q for q in p.glob("*.gguf") if q.is_file())
            if len(ggufs) == 1:
                return open_model(ggufs[0])
            if len(ggufs) > 1:
                listed = ", ".join(q.name for q in ggufs[:3]) + (", ..." if len(ggufs) > 3 else "")
                raise ModelFileError(p, f"the folder holds {len(ggufs)} GGUF files ({listed}); name one")
            raise ModelFileError(p, "no model in the folder (need a .gguf file, or config.json + *.safetensors)")
        if not p.is_file():
            raise ModelFileError(p, "not a regular file")
        if _is_gguf(p):
            return _open_gguf(p)
        if p.suffix.lower() == ".gguf":
            raise ModelFileError(p, "not a GGUF file (no GGUF signature; the file is corrupt or not a model)")
        if p.name == "config.json":
            return open_model(p.parent)
        raise ModelFileError(p, "not a model (expected a .gguf file or a Hugging Face model folder)")
    except ModelFileError:
        raise
    except PermissionError as exc:
        which = "" if str(exc.filename or p) == str(p) else f" on {exc.filename}"
        raise ModelFileError(p, f"permission denied{which} (check the file's permissions)") from exc
    except (OSError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, MemoryError) as exc:
        # anything a malformed file can still provoke deep inside a parser
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelFileError(p, f"cannot read the model: {text}") from exc
