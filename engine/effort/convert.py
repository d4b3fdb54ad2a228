"""The converted model: every projection in the bucketMul layout, cached on disk.

`effort convert` (or the first use of a model under effort) writes one
safetensors file per source model into the cache, keyed by the source's content fingerprint and the
format version, through a temporary file and an atomic rename. Loading reads only the first `load_ranks` ranks of every bucket list
(rank-major rows: the least important weights are at the end), so a truncated
load never touches the rest of the file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors import safe_open

from engine.effort.allocation import Allocation
from engine.io import checksum
from engine.io.atomic import atomic_path, clean_stale, file_lock
from engine.io.safetensors_writer import write_safetensors
from engine.effort.bucket import B, BucketMatrix, convert_matrix
from engine.errors import EngineError
from engine.events import LoadProgress
from engine.io.loader import ModelFiles
from engine.model.decoder import PROJECTIONS, weight_name
from engine.io.paths import converted_dir

FORMAT_VERSION = 2  # 2: bucket size in the name and metadata
PACKING = "nibble"  # exact fp16 values + a separate 4-bit position (see engine/effort/bucket.py)
N_PROBES = 4

ProgressFn = Callable[[LoadProgress], None]


@dataclass
class Converted:
    """The bucketMul side of a model, as loaded from the cache."""

    buckets: dict[str, BucketMatrix]  # HF weight name -> layout
    allocation: Allocation
    load_ranks: int
    path: Path

    @property
    def effort_cap(self) -> float:
        return self.load_ranks / B

    def nbytes(self) -> int:
        return sum(bm.nbytes() for bm in self.buckets.values())


def projection_names(num_layers: int) -> list[str]:
    return [weight_name(i, p) for i in range(num_layers) for p in PROJECTIONS]


def converted_path(files: ModelFiles) -> Path:
    """Keyed by the source's fingerprint, the format version and the bucket size."""
    return converted_file(files.fingerprint)


def converted_file(fingerprint: str) -> Path:
    """The conversion of the source whose content has this fingerprint (its sha256), opened or not."""
    return converted_dir() / f"{fingerprint[:24]}-v{FORMAT_VERSION}-b{B}.safetensors"


def is_converted(files: ModelFiles) -> bool:
    """Whether the conversion is in the cache already (its checksum is checked when it is used)."""
    return converted_path(files).is_file()


def convert(
    files: ModelFiles,
    calibrate: Callable[[dict[str, BucketMatrix], ProgressFn], Allocation],
    on_progress: ProgressFn | None = None,
    force: bool = False,
) -> Path:
    """Write the converted model to the cache (no-op when it is there already)."""
    target = converted_path(files)
    progress = on_progress or (lambda p: None)
    clean_stale(target.parent)  # what a killed conversion left behind
    waiting = LoadProgress("notice", 0, 0, "", "another process is converting this model; waiting for it")
    with file_lock(target, on_wait=lambda: progress(waiting)):  # one conversion at a time; the next reuses it
        return _convert_locked(files, target, calibrate, progress, force)


def _convert_locked(
    files: ModelFiles, target: Path, calibrate: Callable[[dict[str, BucketMatrix], ProgressFn], Allocation],
    progress: ProgressFn, force: bool,
) -> Path:
    if target.exists() and not force:
        intact = checksum.verify(target, progress)
        if intact is None:  # converted before checksums were recorded: adopt it
            checksum.record(target)
        if intact is not False:
            return target
        progress(LoadProgress("notice", 0, 0, "", f"{target.name} is damaged (checksum mismatch); converting again"))
    names = projection_names(files.config.num_layers)
    tensors: dict[str, np.ndarray] = {}
    buckets: dict[str, BucketMatrix] = {}
    start = time.monotonic()
    for n, name in enumerate(names, 1):
        bm = convert_matrix(files.tensors.get(name), PACKING, N_PROBES)
        buckets[name] = bm
        tensors[f"{name}.values"] = bm.data
        tensors[f"{name}.positions"] = bm.pos_packed
        tensors[f"{name}.stats"] = bm.stats
        tensors[f"{name}.probes"] = bm.probes
        progress(LoadProgress("convert", n, len(names), "", f"bucketing {name} ({time.monotonic() - start:.0f}s)"))
    allocation = calibrate(buckets, progress)
    for key, value in allocation.to_arrays().items():
        if key != "names":
            tensors[f"allocation.{key}"] = np.ascontiguousarray(value)
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "packing": PACKING,
        "bucket": str(B),
        "source": str(files.path),
        "fingerprint": files.fingerprint,
        "allocation_names": json.dumps(allocation.names),
        "shapes": json.dumps({n: [bm.out_dim, bm.in_dim] for n, bm in buckets.items()}),
    }
    with atomic_path(target) as tmp:
        write_safetensors(tmp, tensors, metadata)  # deterministic bytes: equal conversions, equal sha256
    checksum.record(target)
    return target


def load(files: ModelFiles, load_ranks: int | None = None, values: bool = True) -> Converted:
    """Read a converted model, keeping only ranks 0..load_ranks-1 of every bucket list (all of
    them by default).

    `values=False` reads only stats, probes and the allocation (what calibration tools need).
    Stats stay whole: they are tiny, and the selection is clipped to `load_ranks` instead."""
    load_ranks = B if load_ranks is None else load_ranks
    if not 1 <= load_ranks <= B:
        raise EngineError(f"--load-ranks must be between 1 and {B}, got {load_ranks}")
    path = converted_path(files)
    if not path.exists():
        raise EngineError(f"{files.path.name} has not been converted; run `effort convert --model {files.path}`")
    with file_lock(path, shared=True):  # not replaced by a conversion between the check and the read
        return _load_locked(files, path, load_ranks, values)


def _load_locked(files: ModelFiles, path: Path, load_ranks: int, values: bool) -> Converted:
    if checksum.verify(path) is False:
        raise EngineError(f"{path}: damaged (checksum mismatch); run `effort convert --force`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format_version") != str(FORMAT_VERSION) or meta.get("fingerprint") != files.fingerprint:
                raise EngineError(f"{path}: stale conversion; run `effort convert --force`")
            shapes = json.loads(meta["shapes"])
            buckets = {}
            for name, (out_dim, in_dim) in shapes.items():
                rows = load_ranks * in_dim
                buckets[name] = BucketMatrix(
                    out_dim, in_dim, meta["packing"],
                    f.get_slice(f"{name}.values")[:rows] if values else np.zeros((0, out_dim // B), np.float16),
                    f.get_slice(f"{name}.positions")[:rows] if values else None,
                    f.get_tensor(f"{name}.stats"),
                    f.get_tensor(f"{name}.probes"),
                )
            arrays = {k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith("allocation.")}
            arrays["names"] = json.loads(meta["allocation_names"])
    except EngineError:
        raise
    except Exception as exc:  # a truncated or foreign file: convert again
        raise EngineError(f"{path}: unreadable conversion ({exc}); run `effort convert --force`") from exc
    return Converted(buckets, Allocation.from_arrays(arrays), load_ranks, path)
