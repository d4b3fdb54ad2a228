"""What effort costs in quality, per model file: expected top-1 agreement with full effort.

Two sources, newest first: the results `effort eval` wrote to the cache for this file
(``<cache>/quality/<sha256>.json``), else the bundled measurements in ``engine/data/quality.json``
(keyed by the file's sha256, so a different file never borrows another's numbers). The chat shows
the value at the current effort beside the gauge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from engine.io.atomic import write_text
from engine.io.paths import cache_dir

BUNDLED = Path(__file__).resolve().parent / "data" / "quality.json"

Table = tuple[tuple[float, float], ...]


def cached_path(fingerprint: str) -> Path:
    return cache_dir() / "quality" / f"{fingerprint}.json"


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


def load(fingerprint: str) -> Table:
    """The top-1 table for the file with this sha256; () when it was never measured."""
    for path in (cached_path(fingerprint), BUNDLED):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if path == BUNDLED:
            data = data.get(fingerprint, {}) if isinstance(data, dict) else {}
        table = _table(data.get("top1")) if isinstance(data, dict) else ()
        if table:
            return table
    return ()


def save(fingerprint: str, model: str, results: Iterable[tuple[float, float]]) -> Path:
    """Keep `effort eval`'s (effort, top-1) results for this file (dense = 1.0 added)."""
    table = dict(results)
    table.setdefault(1.0, 1.0)
    path = cached_path(fingerprint)
    write_text(path, json.dumps({"model": model, "top1": sorted(table.items())}))
    return path
