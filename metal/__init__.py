"""Kernel sources: Metal (the main target), their CUDA twins, and the CPU kernels in C.

This package holds no Python logic beyond locating the source files, which
ship inside the installed package.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def source(relative: str) -> str:
    """The text of a kernel source file, e.g. source("cpu/decode.c")."""
    return (ROOT / relative).read_text(encoding="utf-8")


def path(relative: str) -> Path:
    return ROOT / relative
