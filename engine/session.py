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
    model: Model | None  # the MLX decoder (None on the native CPU path, which runs from its own layout)
    runtime: Runtime
    tokenizer: Tokenizer
    generator: Generator
    converted: Converted | None = None  # the bucketMul side (MLX path)
    effort_pending: bool = False  # the effort's calibration (or, on MLX, conversion) is still to be made


def display_name(spec: str | None, path: Path) -> str:
    spec = spec or registry.DEFAULT_MODEL
    return spec if spec in registry.KNOWN_MODELS else path.name


NATIVE_OUT_MULTIPLE = 64  # the planes layout reads outputs in chunks of 64 (metal/cpu/planes.h)
NATIVE_IN_MULTIPLE = 32  # and inputs in blocks of 32


def runtime_kind(requested: str, backend: str, config: ModelConfig) -> str:
    """"mlx" or "cpu" (the native C decode path): "auto" takes the native path on a CPU when it builds
    and every projection's sizes suit its layout."""
    c = config
    outs = {c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size}
    ins = {c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size}
    fits = all(o % NATIVE_OUT_MULTIPLE == 0 for o in outs) and all(i % NATIVE_IN_MULTIPLE == 0 for i in ins)
    if requested == "cpu" and not fits:
        raise EngineError(
            f"the native CPU path needs projection outputs in multiples of {NATIVE_OUT_MULTIPLE} "
            f"and inputs in multiples of {NATIVE_IN_MULTIPLE}"
        )
    if requested == "mlx" or (requested == "auto" and (backend != "cpu" or not fits)):
        return "mlx"
    from engine.runtime import native

    if native.library() is not None:
        return "cpu"
    if requested == "cpu" or native.broken():  # broken kernels: refuse, not another backend's text
        raise EngineError(f"the native CPU path is unavailable: {native.build_error()}")
    return "mlx"


def mlx_runtime(model: Model, context_limit: int, converted: Converted | None = None) -> MLXRuntime:
    """The MLX runtime, with the bucketMul effort path when the model is converted."""
    from engine.runtime.effort_mlx import MLXEffortPath

    path = MLXEffortPath(converted, model.config.num_layers, model.dense) if converted else None
    return MLXRuntime(model, context_limit, path)


def prepare_effort(loaded: LoadedModel, progress: ProgressFn, force: bool = False) -> list[Path]:
    """Make the effort side of a loaded model now (`effort convert`), again with `force`; returns the
    cached files. The CPU path: its layout was made at load, the calibration is made here. MLX: the
    bucketMul conversion."""
    if loaded.model is None:
        from engine.effort.planes import calibrate, store

        if force or not loaded.runtime.calibrated:
            loaded.runtime.attach(calibrate.calibrate_model(loaded.files, loaded.runtime, progress))
            loaded.effort_pending = False
        return [store.layout_path(loaded.files), calibrate.allocation_path(loaded.files)]
    prepare_bucket(loaded.files, loaded.model, progress, None, values=False, force=force)
    return [convert.converted_path(loaded.files)]


def prepare_bucket(
    files: ModelFiles, model: Model, progress: ProgressFn, load_ranks: int | None, values: bool = True,
    force: bool = False,
) -> Converted:
    """Convert the model to the bucketMul layout on first use (cached), then load its bucketMul side."""
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
    defer_effort: bool = False,
    relayout: bool = False,
) -> LoadedModel:
    """Resolve, fetch if needed, read and load a model for the detected backend: the native CPU path
    (`load_cpu`) or MLX.

    `effort=False` skips the effort side's preparation (calibration; on MLX the bucketMul conversion).
    `defer_effort=True` (the chat) does not wait for it on the CPU path: `effort_pending` says it is
    still to be made (the engine worker makes it in the background and attaches it).
    `relayout=True` lays the CPU layout out again even when one is cached."""
    progress = on_progress or (lambda p: None)
    path = registry.resolve(spec, progress)
    progress(LoadProgress("read", 0, 0, "", f"reading {path.name}"))
    files = open_model(path)
    be = backends.detect()
    kind = runtime_kind(runtime, be.name, files.config)
    if kind == "cpu":
        if load_ranks is not None:
            raise EngineError("--load-ranks applies to the bucketMul layout (MLX); the CPU path reads planes")
        return load_cpu(spec, files, progress, effort, defer_effort, relayout)
    names = files.tensors.names()
    weights = {}
    for n, name in enumerate(names, 1):
        weights[name] = to_mlx(files.tensors.get(name), be.dtype)
        progress(LoadProgress("load", n, len(names), "", f"loading {name}"))
    model = Model(files.config, weights)
    context, notice = context_for_memory(files.config)
    if notice:
        progress(LoadProgress("notice", 0, 0, "", notice))
    converted = prepare_bucket(files, model, progress, load_ranks) if effort else None
    run = mlx_runtime(model, context, converted)
    params = sum(int(w.size) for w in weights.values())
    info = ModelInfo(
        name=display_name(spec, path), path=str(path), architecture=files.config.architecture,
        backend=be.name, device=be.device, context_limit=context, parameters=params,
        effort_cap=converted.effort_cap if converted else 1.0,
        resident_bytes=resident_bytes(model, converted, run),
        sampling=model_sampling(files),
        quality=quality.load(files.fingerprint, run.strategies[0]) if converted else (),
    )
    generator = Generator(run, files.tokenizer.stop_ids, files.tokenizer.stream)
    return LoadedModel(info, files, model, run, files.tokenizer, generator, converted)


def load_cpu(spec: str | None, files: ModelFiles, progress: ProgressFn, effort: bool = True,
             defer_effort: bool = False, relayout: bool = False) -> LoadedModel:
    """The native CPU path: the file streamed into the planes layout (cached, then memory-mapped),
    embeddings read from the file itself, no MLX and no float copy of the model.

    The dial works from the first token (a per-token byte budget in every matrix); the calibrated
    allocation, when there is one, spends the budget where it costs least. Without one, `effort`
    calibrates now, or with `defer_effort` (the chat) leaves `effort_pending` for the worker to
    calibrate in the background."""
    from engine.effort.planes import calibrate, store
    from engine.runtime.cpu_runtime import CPURuntime

    be = backends.detect()
    store.convert(files, progress, force=relayout)
    planes = store.open_layout(files)
    context, notice = context_for_memory(files.config)
    if notice:
        progress(LoadProgress("notice", 0, 0, "", notice))
    allocation = calibrate.load(files)
    embed_name = "model.embed_tokens.weight"
    run = CPURuntime(planes, lambda ids: files.tensors.rows(embed_name, ids), context, allocation)
    pending = effort and allocation is None
    if pending and not defer_effort:
        run.attach(calibrate.calibrate_model(files, run, progress))
        pending = False
    from engine.runtime import native

    info = ModelInfo(
        name=display_name(spec, files.path), path=str(files.path), architecture=files.config.architecture,
        backend=be.name, device=f"{be.device} · {native.library().ee_isa().decode()} kernels",
        context_limit=context, parameters=files.parameters, effort_cap=1.0,
        resident_bytes=planes.nbytes(), sampling=model_sampling(files),
        quality=quality.load(files.fingerprint, run.strategies[0]),
    )
    generator = Generator(run, files.tokenizer.stop_ids, files.tokenizer.stream)
    return LoadedModel(info, files, None, run, files.tokenizer, generator, None, pending)


def model_sampling(files: ModelFiles):
    """The model's own generation defaults over `engine.sampler.CHAT_DEFAULTS`."""
    from engine.sampler import defaults_for

    return defaults_for(files.metadata if files.source_format == "gguf" else {}, files.path if files.source_format == "hf" else None)


def resident_bytes(model: Model, converted: Converted | None, run: Runtime) -> int:
    """Bytes of weights held for this model: MLX weights, the loaded bucketMul arrays, and the
    native runtime's own kernel layouts."""
    total = sum(int(w.nbytes) for w in model.w.values())
    total += converted.nbytes() if converted else 0
    return total + run.layout_bytes()
