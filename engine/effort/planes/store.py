"""A model in the planes layout, streamed from its file into one cached file that later runs map.

`convert` reads the model file one matrix at a time (each read into memory, worked through in
slices of inputs, then dropped), lays every projection and the output head out as planes
(`engine.effort.planes.layout`) and writes each slice straight to its place in the target file: no
matrix is ever held as floats whole, and nothing of the source stays mapped. The file is written
through a temporary folder and an atomic rename, with a sha256 record beside it. `open_layout` maps
the finished file read-only: the arrays the C runtime multiplies are views of the page cache, shared
between processes and never copied.

File format (little-endian): b"EEPLANES" | u64 offset of the index | tensors, each 64-byte aligned |
the index (UTF-8 JSON: format version, fingerprint, the matrices' kinds and shapes, each tensor's
dtype, shape and offset).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.effort.planes import layout
from engine.errors import EngineError
from engine.events import LoadProgress
from engine.io import checksum
from engine.io.atomic import atomic_path, clean_stale, file_lock
from engine.io.loader import ModelFiles
from engine.io.paths import converted_dir
from engine.model.config import ModelConfig
from engine.model.decoder import PROJECTIONS, weight_name

FORMAT_VERSION = 3  # 2: planes in tiles; 3: the last tile takes the remainder
MAGIC = b"EEPLANES"
ALIGN = 64
HEAD = "lm_head.weight"
SLICE_WEIGHTS = 8 << 20  # a matrix is laid out this many weights at a time

ProgressFn = Callable[[LoadProgress], None]


@dataclass
class PlanesModel:
    """Every matrix of a model in the planes layout, and the small vectors beside them."""

    config: ModelConfig
    matrices: dict[str, layout.PlaneMatrix]  # HF weight names; the head is "lm_head.weight", tied or not
    vectors: dict[str, np.ndarray]  # norms and biases, float32
    path: Path | None  # the mapped file (None: built in memory)

    @property
    def vocab(self) -> int:
        return self.config.vocab_size

    def nbytes(self) -> int:
        return sum(m.nbytes() for m in self.matrices.values()) + sum(v.nbytes for v in self.vectors.values())


def layout_path(files: ModelFiles) -> Path:
    """Keyed by the source's fingerprint, the format version and the tile width."""
    return layout_file(files.fingerprint)


def layout_file(fingerprint: str) -> Path:
    """The layout of the source whose content has this fingerprint (its sha256), opened or not."""
    return converted_dir() / f"{fingerprint[:24]}-planes-v{FORMAT_VERSION}-t{layout.TILE}.layout"


def matrix_names(config: ModelConfig) -> list[str]:
    """Every matrix the layout holds: the projections of each layer in order, then the head."""
    return [weight_name(i, p) for i in range(config.num_layers) for p in PROJECTIONS] + [HEAD]


def vector_names(config: ModelConfig) -> list[str]:
    names = []
    for i in range(config.num_layers):
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
        if config.attention_bias:
            names += [f"model.layers.{i}.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")]
    return names + ["model.norm.weight"]


def source_name(files: ModelFiles, name: str) -> str:
    """The tensor of the file a layout matrix comes from (a tied head reads the embedding)."""
    return name if name != HEAD or HEAD in files.tensors.names() else "model.embed_tokens.weight"


def matrix_kind(type_name: str) -> str:
    return "q4" if type_name in layout.FOUR_BIT else "q8"


def padded(n: int) -> int:
    """Outputs rounded up to the layout's multiple (only a head's vocabulary can need it)."""
    return -(-n // 64) * 64


# -- writing ------------------------------------------------------------------------------------


class _Writer:
    """Every tensor's place decided up front (so slices can be written in any order, with pwrite)."""

    def __init__(self, path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        self.entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
        at = 16
        for name, (dtype, shape) in tensors.items():
            at += -at % ALIGN
            self.entries[name] = (dtype, shape, at)
            at += int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.index_at = at + (-at % ALIGN)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # grows as pieces land (holes read 0)

    def put(self, name: str, array: np.ndarray, first_row: int = 0) -> None:
        """Rows [first_row, first_row + len(array)) of tensor `name` (its full row width)."""
        dtype, shape, offset = self.entries[name]
        data = np.ascontiguousarray(array, dtype)
        row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize if len(shape) > 1 else np.dtype(dtype).itemsize
        view = memoryview(data.reshape(-1).view(np.uint8))
        at = offset + first_row * row_bytes
        while view:
            n = os.pwrite(self.fd, view, at)
            view, at = view[n:], at + n

    def put_span(self, name: str, values: np.ndarray, first: int) -> None:
        """Elements [first, first + len(values)) of tensor `name`, counted flat."""
        dtype, _, offset = self.entries[name]
        data = np.ascontiguousarray(values, dtype).tobytes()
        os.pwrite(self.fd, data, offset + first * np.dtype(dtype).itemsize)

    def finish(self, meta: dict) -> None:
        meta["tensors"] = {n: [d, list(s), o] for n, (d, s, o) in self.entries.items()}
        index = json.dumps(meta).encode("utf-8")
        os.pwrite(self.fd, index, self.index_at)
        os.pwrite(self.fd, MAGIC + struct.pack("<Q", self.index_at), 0)
        os.close(self.fd)


def _plan(files: ModelFiles) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, dict]]:
    """Every tensor of the layout file (dtype, shape), and each matrix's kind and size."""
    c = files.config
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    matrices: dict[str, dict] = {}
    for name in matrix_names(c):
        src = source_name(files, name)
        out_dim, in_dim = files.tensors.shape(src)
        kind = matrix_kind(_stored_type(files, src))
        out_dim = padded(out_dim)
        matrices[name] = {"kind": kind, "out": out_dim, "in": in_dim, "tile": layout.TILE}
        nb = in_dim // layout.BLOCK
        tensors[f"{name}.plane0"] = ("uint8", (in_dim * out_dim // 2,))
        if kind == "q8":
            tensors[f"{name}.plane1"] = ("uint8", (in_dim * out_dim // 2,))
        tensors[f"{name}.d"] = ("float16", (nb, out_dim))
        if kind == "q4" and _stored_type(files, src) != "Q4_0":
            tensors[f"{name}.m"] = ("float16", (nb, out_dim))
        tensors[f"{name}.gains"] = ("float32", (2 if kind == "q8" else 1, in_dim))
    for name in vector_names(c):
        tensors[name] = ("float32", tuple(files.tensors.shape(name)))
    return tensors, matrices


def _stored_type(files: ModelFiles, name: str) -> str:
    kind = getattr(files.tensors, "gguf_type", None)
    return kind(name) if kind is not None else "F32"


def _slices(out_dim: int, in_dim: int, block: int) -> list[tuple[int, int]]:
    step = max(block, SLICE_WEIGHTS // max(out_dim, 1) // block * block)
    step = max(layout.BLOCK, step // layout.BLOCK * layout.BLOCK)
    return [(i, min(i + step, in_dim)) for i in range(0, in_dim, step)]


def _build(kind: str, codes: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> layout.PlaneMatrix:
    """`layout.from_codes` (the spec), done by the native packer when it is built (what the spec computes,
    an order of magnitude faster: a 7B file is laid out in a minute, not ten)."""
    from engine.runtime import native

    lib = native.library()
    if lib is None:
        return layout.from_codes(kind, codes, d, m)
    out_dim, in_dim = codes.shape
    planes = [np.empty(out_dim * in_dim // 2, np.uint8) for _ in range(1 if kind == "q4" else 2)]
    d_t = np.empty((in_dim // layout.BLOCK, out_dim), np.float16)
    m_t = None if m is None else np.empty_like(d_t)
    gains = np.empty((len(planes), in_dim), np.float32)
    codes = np.ascontiguousarray(codes, np.uint8 if kind == "q4" else np.int8)
    d, m = np.ascontiguousarray(d, np.float16), None if m is None else np.ascontiguousarray(m, np.float16)
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    rc = lib.ee_pack(0 if kind == "q4" else 1, ptr(codes), ptr(d), ptr(m), out_dim, in_dim, layout.TILE, ptr(planes[0]),
                     ptr(planes[1]) if len(planes) > 1 else None, ptr(d_t), ptr(m_t), ptr(gains))
    if rc != 0:
        raise EngineError(f"the native packer refused a {out_dim}x{in_dim} matrix (out of memory?)")
    return layout.PlaneMatrix(kind, out_dim, in_dim, planes, d_t, m_t, gains, layout.TILE)


def convert(files: ModelFiles, on_progress: ProgressFn | None = None, force: bool = False) -> Path:
    """Write the model's planes layout to the cache (a no-op when an intact one is there). One process
    lays a model out at a time; a second waits, then finds it made."""
    target = layout_path(files)
    progress = on_progress or (lambda p: None)
    clean_stale(target.parent)
    waiting = LoadProgress("notice", 0, 0, "", "another process is laying this model out; waiting for it")
    with file_lock(target, on_wait=lambda: progress(waiting)):
        return _convert_locked(files, target, progress, force)


def _convert_locked(files: ModelFiles, target: Path, progress: ProgressFn, force: bool) -> Path:
    if target.exists() and not force:
        intact = checksum.verify(target, progress)
        if intact is None:
            checksum.record(target)
        if intact is not False:
            return target
        progress(LoadProgress("notice", 0, 0, "", f"{target.name} is damaged (checksum mismatch); laying it out again"))
    tensors, matrices = _plan(files)
    names = list(matrices)
    with atomic_path(target) as tmp:
        writer = _Writer(tmp, tensors)
        try:
            for n, name in enumerate(names, 1):
                stored = files.tensors.stored(source_name(files, name))
                out_dim = matrices[name]["out"]
                extra = ((0, out_dim - stored.out_dim), (0, 0))  # a head's vocabulary padded to 64: zero weights
                for start, stop in _slices(stored.out_dim, stored.in_dim, stored.block):
                    if layout.keeps_blocks(stored.type_name):  # zero bytes are a zero block in every kept type
                        codes, d, m = layout.parse_blocks(stored.type_name, np.pad(stored.blocks(start, stop), extra), stop - start)
                        part = _build(matrices[name]["kind"], codes, d, m)
                    else:
                        codes, d = layout.quantize_q8(np.pad(stored.floats(start, stop), extra))
                        part = _build("q8", codes, d, None)
                    for p, plane in enumerate(part.planes):
                        for at, piece in layout.place(plane, out_dim, stop - start, start, stored.in_dim, part.tile):
                            writer.put_span(f"{name}.plane{p}", piece, at)
                    writer.put(f"{name}.d", part.d, start // layout.BLOCK)
                    if f"{name}.m" in tensors:
                        writer.put(f"{name}.m", part.m, start // layout.BLOCK)
                    for p in range(part.gains.shape[0]):  # gains are [plane, in]: each plane's slice
                        writer.put_span(f"{name}.gains", part.gains[p], p * stored.in_dim + start)
                del stored
                progress(LoadProgress("convert", n, len(names), "", f"laying out {name}"))
            for name in vector_names(files.config):
                writer.put(name, files.tensors.get(name).astype(np.float32))
        except BaseException:
            os.close(writer.fd)
            raise
        writer.finish({
            "format_version": FORMAT_VERSION,
            "fingerprint": files.fingerprint,
            "source": files.path.name,
            "vocab": files.config.vocab_size,
            "matrices": matrices,
        })
    checksum.record(target)
    return target


# -- reading ------------------------------------------------------------------------------------


def open_layout(files: ModelFiles) -> PlanesModel:
    """Map a converted layout read-only (checked against its sha256 record first). A file replaced later
    (`effort convert --force` elsewhere) does not disturb the mapping: the rename leaves this one intact."""
    path = layout_path(files)
    with file_lock(path, shared=True):  # not replaced by a layout run between the check and the mapping
        return _open_locked(files, path)


def _open_locked(files: ModelFiles, path: Path) -> PlanesModel:
    if not path.exists():
        raise EngineError(f"{files.path.name} has not been laid out yet; run `effort convert --model {files.path}`")
    if checksum.verify(path) is False:
        raise EngineError(f"{path}: damaged (checksum mismatch); run `effort convert --force`")
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(mm[:8]) != MAGIC:
            raise ValueError("not a planes layout file")
        (index_at,) = struct.unpack("<Q", bytes(mm[8:16]))
        meta = json.loads(bytes(mm[index_at:]).decode("utf-8"))
        if meta.get("format_version") != FORMAT_VERSION or meta.get("fingerprint") != files.fingerprint:
            raise EngineError(f"{path}: stale layout; run `effort convert --force`")

        def array(name: str) -> np.ndarray | None:
            if name not in meta["tensors"]:
                return None
            dtype, shape, offset = meta["tensors"][name]
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            return mm[offset : offset + count].view(dtype).reshape(shape)

        matrices = {}
        for name, info in meta["matrices"].items():
            planes = [array(f"{name}.plane0")] + ([array(f"{name}.plane1")] if info["kind"] == "q8" else [])
            matrices[name] = layout.PlaneMatrix(
                info["kind"], info["out"], info["in"], planes, array(f"{name}.d"), array(f"{name}.m"),
                array(f"{name}.gains"), int(info["tile"]),
            )
        vectors = {name: array(name) for name in vector_names(files.config)}
    except EngineError:
        raise
    except Exception as exc:  # a truncated or foreign file: lay it out again
        raise EngineError(f"{path}: unreadable layout ({exc}); run `effort convert --force`") from exc
    return PlanesModel(files.config, matrices, vectors, path)


def is_converted(files: ModelFiles) -> bool:
    """Whether the layout is in the cache already (its checksum is checked when it is used)."""
    return layout_path(files).is_file()
