"""Writing a .safetensors file byte-for-byte deterministically.

`safetensors.numpy.save_file` keeps the metadata in a hash map whose order changes from call to
call, so the same tensors gave files with different sha256s: two processes converting one model
could each record a checksum the other's file then failed. Here the header is JSON with sorted
keys and the tensors follow widest dtype first, then by name (as safetensors orders them, so every
tensor starts aligned to its dtype without holes), so equal tensors and metadata always give equal
bytes. The format is the one `safetensors.safe_open` reads.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64", np.dtype(np.uint32): "U32", np.dtype(np.uint16): "U16", np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (numpy arrays of the dtypes above) and string `metadata` to `path`.

    Not atomic by itself: write to the path `engine.io.atomic.atomic_path` gives."""
    order = sorted(tensors, key=lambda name: (-np.asarray(tensors[name]).dtype.itemsize, name))
    arrays = {name: np.ascontiguousarray(tensors[name]) for name in order}
    header: dict[str, object] = {}
    offset = 0
    for name, a in arrays.items():
        if a.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays.values():
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
