"""From what the user typed to a model ready to answer: resolve → open → load → runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine import backend as backends
from engine import registry
from engine.api import ModelInfo
from engine.errors import EngineError
from engine.events import LoadProgress
from engine.generate import Generator, Runtime
from engine.loader import ModelFiles, open_model
from engine.model import Model, to_mlx
from engine.runtime_mlx import MLXRuntime
from engine.tokenizer import Tokenizer

ProgressFn = Callable[[LoadProgress], None]


@dataclass
class LoadedModel:
    info: ModelInfo
    files: ModelFiles
    model: Model
    runtime: Runtime
    tokenizer: Tokenizer
    generator: Generator


def display_name(spec: str | None, path: Path) -> str:
    spec = spec or registry.DEFAULT_MODEL
    return spec if spec in registry.KNOWN_MODELS else path.name


def make_runtime(model: Model, context_limit: int, kind: str, backend: str) -> Runtime:
    """`kind`: "auto" (the C decode path on a CPU when it builds, else MLX), "mlx" or "cpu"."""
    if kind == "mlx" or (kind == "auto" and backend != "cpu"):
        return MLXRuntime(model, context_limit)
    from engine import native
    from engine.runtime_cpu import CPURuntime

    lib = native.library()
    if lib is None:
        if kind == "cpu":
            raise EngineError(f"the native CPU path is unavailable: {native.build_error()}")
        return MLXRuntime(model, context_limit)
    return CPURuntime(model, context_limit, lib)


def load(spec: str | None, on_progress: ProgressFn | None = None, runtime: str = "auto") -> LoadedModel:
    """Resolve, fetch if needed, read and load a model for the detected backend."""
    progress = on_progress or (lambda p: None)
    path = registry.resolve(spec, progress)
    progress(LoadProgress("read", 0, 0, "", f"reading {path.name}"))
    files = open_model(path)
    be = backends.detect()
    names = files.tensors.names()
    weights = {}
    for n, name in enumerate(names, 1):
        weights[name] = to_mlx(files.tensors.get(name), be.dtype)
        progress(LoadProgress("load", n, len(names), "", f"loading {name}"))
    model = Model(files.config, weights)
    run = make_runtime(model, files.config.context_length, runtime, be.name)
    params = sum(int(w.size) for w in weights.values())
    info = ModelInfo(
        name=display_name(spec, path), path=str(path), architecture=files.config.architecture,
        backend=be.name, device=be.device, context_limit=files.config.context_length, parameters=params,
    )
    generator = Generator(run, files.tokenizer.stop_ids, files.tokenizer.stream)
    return LoadedModel(info, files, model, run, files.tokenizer, generator)
