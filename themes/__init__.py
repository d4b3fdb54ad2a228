"""Textual themes for Effort Engine, and a small registry.

Each theme also defines three variables the effort sparkline and gauge use:
``effort-low``, ``effort-mid`` and ``effort-high`` (colours for 5 %, ~50 % and
100 % effort). Built-in Textual themes lack them; the widgets fall back to
`EFFORT_COLOURS_FALLBACK` there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.theme import Theme

if TYPE_CHECKING:
    from textual.app import App

DARK = "effort-dark"
LIGHT = "effort-light"

EFFORT_DARK = Theme(
    name=DARK,
    primary="#5EA1FF",
    secondary="#9D7CD8",
    accent="#FFB454",
    warning="#E5C07B",
    error="#FF6B6B",
    success="#7BD88F",
    foreground="#D8DEE9",
    background="#14161B",
    surface="#1C1F26",
    panel="#262A35",
    dark=True,
    variables={
        "effort-low": "#3FB6FF",
        "effort-mid": "#8BD450",
        "effort-high": "#FF9F43",
        "footer-key-foreground": "#FFB454",
        "input-selection-background": "#5EA1FF 35%",
    },
)

EFFORT_LIGHT = Theme(
    name=LIGHT,
    primary="#2F6FDE",
    secondary="#7A4FC9",
    accent="#C76A00",
    warning="#A66F00",
    error="#C62828",
    success="#2E7D32",
    foreground="#1F2328",
    background="#F7F7F4",
    surface="#FFFFFF",
    panel="#E6E8EC",
    dark=False,
    variables={
        "effort-low": "#0077C8",
        "effort-mid": "#3C9A2F",
        "effort-high": "#D9480F",
        "footer-key-foreground": "#C76A00",
        "input-selection-background": "#2F6FDE 25%",
    },
)

THEMES: dict[str, Theme] = {DARK: EFFORT_DARK, LIGHT: EFFORT_LIGHT}

EFFORT_COLOURS_FALLBACK = {"effort-low": "#3FB6FF", "effort-mid": "#8BD450", "effort-high": "#FF9F43"}


def register_themes(app: App) -> None:
    for theme in THEMES.values():
        app.register_theme(theme)


def toggled(name: str, dark: bool) -> str:
    """The theme ctrl+t switches to: ours of the other brightness."""
    if name == DARK:
        return LIGHT
    if name == LIGHT:
        return DARK
    return LIGHT if dark else DARK


def effort_colours(variables: dict[str, str]) -> tuple[str, str, str]:
    pick = lambda key: variables.get(key) or EFFORT_COLOURS_FALLBACK[key]  # noqa: E731
    return pick("effort-low"), pick("effort-mid"), pick("effort-high")
