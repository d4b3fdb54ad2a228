"""The GGUF models already on this machine: the Hugging Face hub cache, LM Studio's and ollama's
model stores, the folders named by `model_dirs` in config.toml, and this app's own cache.

`find()` lists them with what a user chooses by (name, size, quantization, whether the effort
conversion is cached yet); `effort models` and the chat's model picker both show this list. Only
file names and GGUF headers are read; a file's content is hashed only when it is small (the
conversion cache is keyed by the content's sha256, which ollama and the hub cache keep in their
blob names and this app records beside its own downloads).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from engine import validation
from engine.io import checksum, paths, registry
from engine.units import human_bytes

HASH_AT_MOST = 512 << 20  # bytes: hash smaller files to see whether they are converted
MAX_DEPTH = 6  # how deep a configured folder is searched
QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_[A-Z0-9_]+|I?Q\d|F16|BF16|F32)(?![A-Za-z0-9])", re.IGNORECASE)
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


@dataclass(frozen=True)
class LocalModel:
    name: str  # how the user knows it, e.g. "llama3.2:1b" or "bartowski/Llama-3.2-1B: Q4_K_M.gguf"
    path: Path
    source: str  # "cache" | "huggingface" | "lm-studio" | "ollama" | "folder"
    size: int  # bytes
    quantization: str  # e.g. "Q4_K_M", "" when unknown
    converted: int | None  # bytes of its cached effort conversion, 0 if none; None: not known without hashing

    @property
    def conversion(self) -> str:
        """Whether its effort conversion is cached, and then what the loaded model holds (the runtime
        maps that file: its weights' resident size), in words (both model lists show this)."""
        if self.converted is None:
            return "converted?"
        return f"converted, resident {human_bytes(self.converted)}" if self.converted else "not converted"

    @property
    def spec(self) -> str:
        """What to load it by (an alias for this app's own models, else the path)."""
        return self.name if self.source == "cache" else str(self.path)


# -- where the stores are --------------------------------------------------------------------------


def hf_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def lm_studio_dirs() -> list[Path]:
    return [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]


def ollama_dir() -> Path:
    return Path(os.environ["OLLAMA_MODELS"]) if os.environ.get("OLLAMA_MODELS") else Path.home() / ".ollama" / "models"


def configured_dirs(config: Path | None = None) -> list[Path]:
    """The folders config.toml names under `model_dirs` (the chat's settings file; problems with
    the key are the chat's to report, here they only leave the list empty)."""
    from engine.io.toml import read_toml

    data = read_toml(config or paths.config_path())
    try:
        return [Path(d).expanduser() for d in validation.folder_list(data.get("model_dirs", []), "model_dirs")]
    except validation.SettingError:
        return []


# -- finding -----------------------------------------------------------------------------------------


def find(extra_dirs: Iterable[Path] = ()) -> list[LocalModel]:
    """Every GGUF model found, each file once (the first store that has it names it)."""
    found: dict[Path, LocalModel] = {}
    for model in _all(list(extra_dirs)):
        key = model.path.resolve()
        if key not in found and model.size > 0:
            found[key] = model
    return sorted(found.values(), key=lambda m: (m.source != "cache", m.name.lower()))


def _all(extra_dirs: list[Path]) -> Iterator[LocalModel]:
    for alias, path, size in registry.cached_models():
        yield _described(alias, path, "cache", size=size)
    yield from _hf_hub(hf_hub_dir())
    for folder in lm_studio_dirs():
        yield from _lm_studio(folder)
    yield from _ollama(ollama_dir())
    for folder in extra_dirs:
        for path in _ggufs(folder, MAX_DEPTH):
            yield _described(str(Path(folder.name) / path.relative_to(folder)), path, "folder")


def _ggufs(folder: Path, depth: int) -> Iterator[Path]:
    if depth < 0 or not folder.is_dir():
        return
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_dir():
            yield from _ggufs(entry, depth - 1)
        elif entry.suffix.lower() == ".gguf" and entry.is_file():
            yield entry


def _hf_hub(hub: Path) -> Iterator[LocalModel]:
    """models--{org}--{name}/snapshots/{revision}/…/*.gguf, symlinks into blobs/ named by sha256."""
    for repo in sorted(hub.glob("models--*")):
        repo_name = repo.name[len("models--"):].replace("--", "/")
        for path in _ggufs(repo / "snapshots", MAX_DEPTH):
            blob = path.resolve()
            digest = blob.name if re.fullmatch(r"[0-9a-f]{64}", blob.name) else None
            yield _described(f"{repo_name}: {path.name}", path, "huggingface", digest=digest)


def _lm_studio(root: Path) -> Iterator[LocalModel]:
    """{publisher}/{model}/*.gguf."""
    for path in _ggufs(root, 3):
        yield _described("/".join(path.relative_to(root).parts[:-1]) + f": {path.name}", path, "lm-studio")


def _ollama(root: Path) -> Iterator[LocalModel]:
    """manifests/{registry}/{namespace}/{model}/{tag}: JSON naming the model's GGUF blob by digest
    (blobs/sha256-{hex}) and a config blob that says its quantization."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts
        if len(parts) != 4:
            continue
        _registry, namespace, model, tag = parts
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            layer = next(l for l in data["layers"] if l.get("mediaType") == OLLAMA_MODEL_LAYER)
            digest = str(layer["digest"]).split(":", 1)[1]
        except (OSError, ValueError, KeyError, StopIteration, IndexError, TypeError, AttributeError):
            continue
        blob = root / "blobs" / f"sha256-{digest}"
        if not blob.is_file():
            continue
        name = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
        yield _described(name, blob, "ollama", digest=digest, quantization=_ollama_quantization(root, data))


def _ollama_quantization(root: Path, manifest: dict) -> str:
    try:
        digest = str(manifest["config"]["digest"]).split(":", 1)[1]
        config = json.loads((root / "blobs" / f"sha256-{digest}").read_text(encoding="utf-8"))
        return str(config.get("file_type", ""))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


# -- what each one is --------------------------------------------------------------------------------


def _described(name: str, path: Path, source: str, *, size: int | None = None, digest: str | None = None,
               quantization: str = "") -> LocalModel:
    try:
        size = path.stat().st_size if size is None else size
    except OSError:
        size = 0
    fingerprint = digest or checksum.recorded(path)
    if fingerprint is None and 0 < size <= HASH_AT_MOST:
        fingerprint = checksum.sha256_file(path)
    return LocalModel(name, path, source, size, quantization or _quantization(path), converted_size(fingerprint))


def _quantization(path: Path) -> str:
    """The GGUF header's file type, else what the file's name says (e.g. "…Q4_K_M.gguf")."""
    from engine.io.gguf_file import GGUFFile, file_type_name

    try:
        file_type = GGUFFile(path).get("general.file_type")
        name = file_type_name(file_type) if isinstance(file_type, int) else None
    except Exception:  # noqa: BLE001 - a file that is not a readable GGUF is still listed
        name = None
    if name:
        return name
    match = QUANT_IN_NAME.search(path.name)
    return match.group(1).upper() if match else ""


def conversion_file(fingerprint: str) -> Path:
    """The cached file whose presence means the effort conversion of the content with this
    fingerprint (its sha256) is made: on a CPU the planes layout of the native path
    (engine/effort/planes/store.py; its calibration follows in the chat's background), on a GPU the
    bucketMul conversion. Both caches key a file by the source's fingerprint alone. (A model whose
    shapes do not suit the planes layout runs on MLX even on a CPU; the list does not open models
    to tell.)"""
    from engine.runtime import backend

    if backend.detect().name == "cpu":
        from engine.effort.planes import store

        return store.layout_file(fingerprint)
    from engine.effort import convert

    return convert.converted_file(fingerprint)


def converted_size(fingerprint: str | None) -> int | None:
    """Bytes of the cached effort conversion of the file with this content (its sha256), 0 when there is
    none, None when the content is not known. The one place the model list asks the conversion caches."""
    if fingerprint is None:
        return None
    try:
        return conversion_file(fingerprint).stat().st_size
    except OSError:
        return 0
