"""Where the app keeps its files (platformdirs, app name "effort-engine"; the settings file's place,
`config_path`, is the engine's, since `effort models` reads it too).

Everything that touches the disk takes its location from here, so tests can
point an `EffortApp` at a temporary directory instead.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

from engine.io.paths import APP_NAME

HISTORY_FILE = "history.sqlite3"
EXPORTS_DIR = "exports"


def data_dir() -> Path:
    """Conversation history and exports, e.g. ~/.local/share/effort-engine."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def history_path(base: Path | None = None) -> Path:
    return (base or data_dir()) / HISTORY_FILE


def exports_dir(base: Path | None = None) -> Path:
    return (base or data_dir()) / EXPORTS_DIR
