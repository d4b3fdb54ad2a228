"""Where the kernel sources are: the repository's `metal/` folder, installed as `engine/kernels/`.

Every reader of a kernel source file (the native CPU build, the GPU kernel texts, the tests) goes
through `kernel_path`, so only this module knows the folder's two homes.
"""

from __future__ import annotations

import functools
from pathlib import Path

from engine.io.paths import shipped_folder


@functools.cache
def _root() -> Path:
    return shipped_folder(Path(__file__).resolve().parents[1], "kernels", "metal")


def kernel_path(relative: str = "") -> Path:
    """A file or folder of the kernel sources, e.g. kernel_path("cpu/decode.c"); "" is the root."""
    return _root() / relative
