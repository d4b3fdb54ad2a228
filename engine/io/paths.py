"""Where things are: the engine's cache of fetched models and converted weights (platformdirs,
overridable for tests), and the repository folders that ship inside a package."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "effort-engine"


def config_path() -> Path:
    """The settings file the chat reads (and `effort models` reads `model_dirs` from), e.g.
    ~/.config/effort-engine/config.toml."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def cache_dir() -> Path:
    """Root of the model cache; EFFORT_CACHE_DIR overrides it (tests, shared machines)."""
    override = os.environ.get("EFFORT_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir(APP_NAME))


def models_dir() -> Path:
    return cache_dir() / "models"


def converted_dir() -> Path:
    return cache_dir() / "converted"


def shipped_folder(package: Path, installed: str, checkout: str) -> Path:
    """A repository folder that is installed inside a package: `pip install .` puts it at
    `package/installed` (pyproject.toml maps it there, so nothing lands at the top of
    site-packages); a source checkout (pytest, `pip install -e .`) has it at `checkout` beside the
    package's own folder."""
    inside = package / installed
    return inside if inside.is_dir() else package.parent / checkout
