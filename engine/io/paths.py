"""Where the engine keeps fetched models and converted weights (platformdirs, overridable for tests)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "effort-engine"


def cache_dir() -> Path:
    """Root of the model cache; EFFORT_CACHE_DIR overrides it (tests, shared machines)."""
    override = os.environ.get("EFFORT_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir(APP_NAME))


def models_dir() -> Path:
    return cache_dir() / "models"


def converted_dir() -> Path:
    return cache_dir() / "converted"
