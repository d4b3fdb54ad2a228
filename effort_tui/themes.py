"""The app's own themes, `effort-dark` and `effort-light`, read from the repository's `themes/`
folder (one TOML file per theme; installed as `effort_tui/theme_files/`)."""

from __future__ import annotations

import functools
from pathlib import Path

from textual.app import App
from textual.theme import Theme

from engine.io import toml
from engine.io.paths import shipped_folder

DARK = "effort-dark"
LIGHT = "effort-light"


@functools.cache
def bundled() -> dict[str, Theme]:
    """Every theme file shipped with the app, by name (read once)."""
    folder = shipped_folder(Path(__file__).resolve().parent, "theme_files", "themes")
    found = {}
    for path in sorted(folder.glob("*.toml")):
        theme = Theme(**toml.loads(path.read_text(encoding="utf-8")))
        found[theme.name] = theme
    return found


def register_themes(app: App) -> None:
    for theme in bundled().values():
        app.register_theme(theme)


def toggled(name: str, dark: bool) -> str:
    """The theme ctrl+t switches to: ours of the other brightness."""
    if name == DARK:
        return LIGHT
    if name == LIGHT:
        return DARK
    return LIGHT if dark else DARK
