"""Every key binding in the app, each with a stable id the config file can remap.

The ids are the public names users put under ``[keymap]`` in config.toml,
e.g. ``"effort.up" = "ctrl+k,f8"``. Textual applies the remap itself
(`App.set_keymap`), for bindings on the app, on screens and on widgets alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.binding import Binding

Scope = Literal["app", "chat", "prompt", "conversations", "models", "help"]

EFFORT_STEP = 0.05  # what effort.up / effort.down add, as the engine takes it (a share, not points)


@dataclass(frozen=True)
class BindingSpec:
    id: str
    keys: str  # default keys, comma separated (Textual key names)
    action: str
    description: str  # short, for the footer
    help: str  # one line, for F1 and the docs
    scope: Scope
    show: bool = True
    # Priority bindings run as soon as the app reads the key, ahead of the keys still queued for
    # the focused widget. That is right for keys that never touch the prompt's text (effort, stop,
    # new chat…); the prompt box's own keys are not priority: it handles them in `_on_key`, in the
    # order they were typed (see `PromptBox`).
    priority: bool = True
    key_display: str | None = None  # footer text for the default keys (dropped when remapped)


def _alt_digit(digit: int) -> BindingSpec:
    effort = 1.0 if digit == 0 else digit / 10
    percent = round(effort * 100)
    return BindingSpec(
        f"effort.set_{percent}",
        f"alt+{digit}",
        f"effort_set({effort})",
        f"{percent}%",
        f"Set the effort to {percent}%",
        "chat",
        show=False,
    )


SPECS: tuple[BindingSpec, ...] = (
    # Application-wide.
    BindingSpec("app.quit", "ctrl+q", "quit", "Quit", "Quit the app", "app"),
    BindingSpec("app.help", "f1", "help", "Help", "Show the keys and what the status bar means", "app"),
    BindingSpec(
        "app.command_palette", "ctrl+p", "command_palette", "Commands", "Open the command palette", "app", show=False
    ),  # the footer shows the palette key on its own
    BindingSpec("app.toggle_theme", "ctrl+t", "toggle_theme", "Theme", "Switch between the dark and light theme", "app", show=False),
    # The chat screen (active while the prompt box has focus, and while the model answers).
    BindingSpec("effort.up", "ctrl+up,f8", f"effort_step({EFFORT_STEP})", "Effort+", f"Raise the effort by {round(EFFORT_STEP * 100)} points", "chat", key_display="^↑/F8"),
    BindingSpec("effort.down", "ctrl+down,f7", f"effort_step({-EFFORT_STEP})", "Effort-", f"Lower the effort by {round(EFFORT_STEP * 100)} points", "chat", key_display="^↓/F7"),
    *(_alt_digit(d) for d in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)),
    BindingSpec("chat.stop", "escape", "stop", "Stop", "Stop the answer", "chat"),
    BindingSpec("chat.new", "ctrl+n", "new_chat", "New", "Start a new chat", "chat"),
    BindingSpec("chat.regenerate", "ctrl+r", "regenerate", "Regenerate", "Answer the last message again", "chat", show=False),
    BindingSpec("chat.export", "ctrl+e", "export", "Export", "Export the chat as a Markdown file", "chat", show=False),
    BindingSpec("chat.conversations", "ctrl+b", "conversations", "Chats", "Open the conversation list", "chat"),
    BindingSpec("chat.greedy", "ctrl+g", "toggle_greedy", "Greedy", "Greedy decoding on / off", "chat", show=False),
    BindingSpec("chat.copy", "ctrl+o", "copy_answer", "Copy", "Copy the last answer to the clipboard (OSC 52)", "chat", show=False),
    BindingSpec("chat.page_up", "pageup", "scroll_chat('page_up')", "Page up", "Scroll the chat up a page", "chat", show=False),
    BindingSpec("chat.page_down", "pagedown", "scroll_chat('page_down')", "Page down", "Scroll the chat down a page", "chat", show=False),
    BindingSpec("chat.top", "ctrl+home", "scroll_chat('home')", "Top", "Scroll to the first message", "chat", show=False),
    BindingSpec("chat.bottom", "ctrl+end", "scroll_chat('end')", "Bottom", "Scroll to the newest message (and follow it)", "chat", show=False),
    # The prompt box.
    BindingSpec("prompt.submit", "enter", "submit", "Send", "Send the message", "prompt", show=False, priority=False),
    BindingSpec("prompt.newline", "shift+enter,ctrl+j", "newline", "Newline", "Insert a new line", "prompt", show=False, priority=False),
    BindingSpec(
        "prompt.history_previous", "up", "history_previous", "History", "Previous message (when the box is empty)", "prompt", show=False, priority=False
    ),
    BindingSpec(
        "prompt.history_next", "down", "history_next", "History", "Next message (while browsing the history)", "prompt", show=False, priority=False
    ),
    # The conversation list.
    BindingSpec("conversations.open", "enter", "open", "Open", "Open the selected conversation", "conversations"),
    BindingSpec("conversations.delete", "delete,ctrl+d", "delete", "Delete", "Delete the selected conversation", "conversations"),
    BindingSpec("conversations.close", "escape,ctrl+b", "close", "Close", "Close the list", "conversations"),
    # The model picker.
    BindingSpec("models.close", "escape", "close", "Close", "Close the model picker (the loaded model stays)", "models"),
    # The help screen.
    BindingSpec("help.close", "escape,f1", "close", "Close", "Close the help", "help"),
)

SPEC_BY_ID: dict[str, BindingSpec] = {spec.id: spec for spec in SPECS}

SCOPE_TITLES: dict[Scope, str] = {
    "app": "Everywhere",
    "chat": "Chat",
    "prompt": "Prompt box",
    "conversations": "Conversation list",
    "models": "Model picker",
    "help": "Help",
}


def bindings_for(scope: Scope) -> list[Binding]:
    """Textual `Binding`s for one scope, each carrying its id."""
    return [
        Binding(
            spec.keys,
            spec.action,
            spec.description,
            show=spec.show,
            key_display=spec.key_display,
            priority=spec.priority,
            tooltip=spec.help,
            id=spec.id,
        )
        for spec in SPECS
        if spec.scope == scope
    ]


def validate_keymap(keymap: object) -> tuple[dict[str, str], list[str]]:
    """Keep the usable entries of a user keymap; describe the rest as problems."""
    if not isinstance(keymap, dict):
        return {}, ["[keymap] must be a table of binding_id = \"keys\""]
    clean: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, keys in keymap.items():
        if binding_id not in SPEC_BY_ID:
            problems.append(f"unknown binding id {binding_id!r} in [keymap]")
            continue
        if not isinstance(keys, str) or not keys.strip():
            problems.append(f"[keymap] {binding_id} must be a non-empty string like \"ctrl+k,f8\"")
            continue
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        bad = [part for part in parts if not valid_key(part)]
        if bad:
            problems.append(
                f"[keymap] {binding_id}: {', '.join(repr(b) for b in bad)} is not a key name "
                "(e.g. \"ctrl+k\", \"f8\", \"alt+up\"); "
                + ("using the others" if len(bad) < len(parts) else "keeping its default keys")
            )
            parts = [part for part in parts if part not in bad]
        if parts:
            clean[binding_id] = ",".join(parts)
    return clean, problems


MODIFIERS = frozenset({"ctrl", "shift", "alt", "super", "meta", "hyper"})


def valid_key(key: str) -> bool:
    """A Textual key name: modifiers+ a base key ("ctrl+k", "f8", "alt+up", "shift+enter", "x")."""
    import unicodedata

    from textual.keys import Keys

    *modifiers, base = key.split("+")
    if not base or len(set(modifiers)) != len(modifiers) or not all(m in MODIFIERS for m in modifiers):
        return False
    if len(base) == 1:
        return True
    names = {k.value for k in Keys if "+" not in k.value} | {"space"}
    if base in names:
        return True
    try:
        from textual.keys import REPLACED_KEYS, _get_unicode_name_from_key

        base = REPLACED_KEYS.get(base, base)  # "minus" -> "hyphen_minus"
        name = _get_unicode_name_from_key(base).upper().replace("_", " ")
    except ImportError:  # pragma: no cover - a future Textual
        name = base.upper().replace("_", " ")
    try:
        unicodedata.lookup(name)  # "minus", "question_mark", "plus", …
    except KeyError:
        return False
    return True


def keys_for(binding_id: str, keymap: dict[str, str]) -> str:
    """The keys currently bound to `binding_id` (the user's remap, else the default)."""
    return keymap.get(binding_id) or SPEC_BY_ID[binding_id].keys


def install_alt_digit_sequences() -> bool:
    """Make ESC+digit (what most terminals send for alt+1 … alt+0) arrive as ``alt+N``.

    Textual 8 maps ESC+digit to the characters macOS types for option+digit
    ("¡", "™", "£", …, a WezTerm-on-macOS convention), so without this alt+1
    would type "¡" into the prompt box instead of setting the effort. Terminals
    with the kitty keyboard protocol already report ``alt+N`` and are not
    affected. Returns False (and changes nothing) if Textual's table moved.
    """
    try:
        from textual import _ansi_sequences
    except ImportError:  # pragma: no cover - a future Textual
        return False
    table = getattr(_ansi_sequences, "ANSI_SEQUENCES_KEYS", None)
    if not isinstance(table, dict):  # pragma: no cover
        return False
    for digit in "1234567890":
        table[f"\x1b{digit}"] = (_KeyName(f"alt+{digit}"),)
    return True


class _KeyName:
    """Stands in for a `textual.keys.Keys` member: the parser only reads `.value`."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"_KeyName({self.value!r})"
