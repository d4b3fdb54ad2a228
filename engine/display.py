"""Text from outside (model paths and names, a model's metadata and output, error messages quoting
them) made safe to show on a terminal.

A path may hold a newline, an escape sequence (ESC [ 2 J clears the screen, ESC ] 52 writes the
clipboard) or bidirectional overrides that make it read as something else; a file name that is not
valid UTF-8 holds lone surrogates, which a UTF-8 terminal stream cannot even encode. `printable`
writes every such character as a visible escape (``\\n``, ``\\x1b``, ``\\u202e``, ``\\udcff``), so
a one-line message stays one line and nothing reaches the terminal as a control. The CLI passes
every message through it; the chat app passes what it shows from the engine and from files.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL, bidirectional marks and overrides, lone surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, lines: bool = False) -> str:
    """`text` with every control, bidi-override and surrogate character written as an escape.
    `lines=True` keeps newlines and tabs (a model's answer, a multi-line table); otherwise the
    result is always one line."""
    return (_UNSAFE_BUT_LINES if lines else _UNSAFE).sub(_escape, str(text))
