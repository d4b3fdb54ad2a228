"""From what the user typed to a model ready to answer: resolve → open → load → runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.runtime import backend as backends
from engine import quality
from engine.effort import convert
from engine.io import registry
from engine.effort.bucket import B
from engine.effort.convert import Converted
from engine.api import ModelInfo
from engine.errors import EngineError
from engine.events import LoadProgress
from engine.generate import Generator
from engine.runtime.base import Runtime
from engine.io.loader import ModelFiles, open_model
from engine.model.config import ModelConfig, context_for_memory
from engine.model.decoder import Model, to_mlx
from engine.runtime.mlx_runtime import MLXRuntime
from engine.io.tokenizer import Tokenizer

ProgressFn = Callable[[LoadProgress], None]


@dataclass
class LoadedModel:
    info: ModelInfo
    files: ModelFiles
    model: Model
    runtime: Runtime
    tokenizer: Tokenizer
    generator: Generator
    converted: Converted | None = None
    effort_pending: bool = False  # loaded dense; the effort conversion is still to be made


def display_name(spec: str | None, path: Path) -> str:
    spec = spec or registry.DEFAULT_MODEL
    return spec if spec in registry.KNOWN_MODELS else path.name


NATIVE_OUT_MULTIPLE = 64  # the native effort kernel works on tiles of 4 buckets of 16 outputs


def runtime_kind(requested: str, backend: str, config: ModelConfig) -> str:
    """"mlx" or "cpu" (the native C decode path): "auto" takes the native path on a CPU when it builds
    and every projection's output size suits its kernels."""
    c = config
    outs = {c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size}
    fits = all(o % NATIVE_OUT_MULTIPLE == 0 for o in outs)
    if requested == "cpu" and not fits:
        raise EngineError(f"the native CPU path needs projection sizes that are multiples of {NATIVE_OUT_MULTIPLE}")
    if requested == "mlx" or (requested == "auto" and (backend != "cpu" or not fits)):
        return "mlx"
    from engine.runtime import native

    if native.library() is not None:
        return "cpu"
    if requested == "cpu" or native.broken():  # broken kernels: refuse, not another backend's text
        raise EngineError(f"the native CPU path is unavailable: {native.build_error()}")
    return "mlx"


def make_runtime(
    model: Model, context_limit: int, kind: str, converted: Converted | None = None, head_q8: np.ndarray | None = None
) -> Runtime:
    if kind == "cpu":
        from engine.runtime import native
        from engine.runtime.cpu_runtime import CPURuntime

        return CPURuntime(model, context_limit, native.library(), converted, head_q8)
    from engine.runtime.effort_mlx import MLXEffortPath

    path = MLXEffortPath(converted, model.config.num_layers, model.dense) if converted else None
    return MLXRuntime(model, context_limit, path)


def prepare_effort(
    files: ModelFiles, model: Model, progress: ProgressFn, load_ranks: int | None, values: bool = True,
    force: bool = False,
) -> Converted:
    """Convert the model on first use (cached), then load its bucketMul side."""
    from engine.effort import calibrate

    tokens = calibrate.calibration_tokens(files.tokenizer)
    convert.convert(files, lambda bms, p: calibrate.calibrate(model, bms, tokens, p), progress, force=force)
    return convert.load(files, load_ranks, values=values)


def load(
    spec: str | None,
    on_progress: ProgressFn | None = None,
    runtime: str = "auto",
    effort: bool = True,
    load_ranks: int | None = None,
    keep_mlx_weights: bool = True,
    defer_effort: bool = False,
) -> LoadedModel:
    """Resolve, fetch if needed, read and load a model for the detected backend.

    `effort=False` skips the bucketMul side (conversion, layouts): dense only.
    `defer_effort=True` (the chat) does not wait for a first conversion on the native CPU path:
    the model loads dense and `effort_pending` says the conversion is still to be made (the
    engine worker makes it in the background and attaches it with `CPURuntime.attach`).
    `keep_mlx_weights=False` lets the native CPU runtime drop the MLX copy of the weights once it
    has built its own layouts (chat and generate need nothing else; eval and bench keep them to
    capture per-matrix inputs)."""
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
    kind = runtime_kind(runtime, be.name, files.config)
    if load_ranks is not None and load_ranks < B and be.name != "cpu":
        raise EngineError("--load-ranks is supported on the CPU in this version (the GPU layout needs all ranks)")
    context, notice = context_for_memory(files.config)
    if notice:
        progress(LoadProgress("notice", 0, 0, "", notice))
    pending = effort and defer_effort and kind == "cpu" and load_ranks is None and not convert.is_converted(files)
    # the native CPU path builds its own kernel layout: it needs only stats and probes from the cache
    converted = prepare_effort(files, model, progress, load_ranks, values=kind != "cpu") if effort and not pending else None
    run = make_runtime(model, context, kind, converted, stored_q8_head(files))
    params = sum(int(w.size) for w in weights.values())
    if kind == "cpu" and not keep_mlx_weights:
        weights.clear()
        model.release_weights()
        backends.return_freed_memory()
    info = ModelInfo(
        name=display_name(spec, path), path=str(path), architecture=files.config.architecture,
        backend=be.name, device=be.device, context_limit=context, parameters=params,
        effort_cap=converted.effort_cap if converted else 1.0,
        resident_bytes=resident_bytes(model, converted, run),
        sampling=model_sampling(files),
        quality=quality.load(files.fingerprint) if converted or pending else (),
    )
    generator = Generator(run, files.tokenizer.stop_ids, files.tokenizer.stream)
    return LoadedModel(info, files, model, run, files.tokenizer, generator, converted, pending)


def model_sampling(files: ModelFiles):
    """The model's own generation defaults over `engine.sampler.CHAT_DEFAULTS`."""
    from engine.sampler import defaults_for

    return defaults_for(files.metadata if files.source_format == "gguf" else {}, files.path if files.source_format == "hf" else None)


def stored_q8_head(files: ModelFiles) -> np.ndarray | None:
    """The output head's Q8_0 blocks as stored in a GGUF file (the tied embedding when there is no
    separate head), so the CPU path can multiply the file's exact values at about half the bytes."""
    names = files.tensors.names()
    return files.tensors.q8_0_blocks("lm_head.weight" if "lm_head.weight" in names else "model.embed_tokens.weight")


def resident_bytes(model: Model, converted: Converted | None, run: Runtime) -> int:
    """Bytes of weights held for this model: MLX weights, the loaded bucketMul arrays, and the
    native runtime's own kernel layouts."""
    total = sum(int(w.nbytes) for w in model.w.values())
    total += converted.nbytes() if converted else 0
    return total + run.layout_bytes()
