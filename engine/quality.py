"""What effort costs in quality, per model file and strategy: expected top-1 agreement with full effort.

The same effort means different reads on different backends (the CPU reads planes of rows, MLX runs
bucketMul), so each table belongs to one strategy. Two sources, newest first: the results `effort eval`
wrote to the cache (``<cache>/quality/<sha256>-<strategy>.json``), else the bundled measurements in
``engine/data/quality.json`` (keyed by the file's sha256, so a different file never borrows another's
numbers). The chat shows the value at the current effort beside the gauge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from engine.io.atomic import write_text
from engine.io.paths import cache_dir

BUNDLED = Path(__file__).resolve().parent / "data" / "quality.json"

Table = tuple[tuple[float, float], ...]


def cached_path(fingerprint: str, strategy: str) -> Path:
    return cache_dir() / "quality" / f"{fingerprint}-{strategy}.json"


def _table(raw: object) -> Table:
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            try:
                effort, top1 = float(item[0]), float(item[1])
            except (TypeError, ValueError):
                continue
            if 0.0 < effort <= 1.0 and 0.0 <= top1 <= 1.0:
                out.append((effort, top1))
    return tuple(sorted(out))


def load(fingerprint: str, strategy: str) -> Table:
    """The top-1 table for the file with this sha256 under `strategy`; () when it was never measured."""
    for path in (cached_path(fingerprint, strategy), BUNDLED):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if path == BUNDLED:
            entry = data.get(fingerprint, {}) if isinstance(data, dict) else {}
            tables = entry.get("top1", {}) if isinstance(entry, dict) else {}
            data = {"top1": tables.get(strategy)} if isinstance(tables, dict) else {}
        table = _table(data.get("top1")) if isinstance(data, dict) else ()
        if table:
            return table
    return ()


def save(fingerprint: str, strategy: str, model: str, results: Iterable[tuple[float, float]]) -> Path:
    """Keep `effort eval`'s (effort, top-1) results for this file and strategy (dense = 1.0 added)."""
    table = dict(results)
    table.setdefault(1.0, 1.0)
    path = cached_path(fingerprint, strategy)
    write_text(path, json.dumps({"model": model, "strategy": strategy, "top1": sorted(table.items())}))
    return path
