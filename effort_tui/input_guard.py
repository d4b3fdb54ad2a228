"""Text from the terminal that is not valid UTF-8 must not end the app.

Textual's input thread decodes stdin with a strict UTF-8 decoder: one invalid byte (pasted from a
binary file, a terminal set to Latin-1) raises in that thread and the app exits. `install()`
makes the drivers decode with errors="replace" (U+FFFD for each bad byte); `clean_text` does the
same for text that arrives another way (lone surrogates in a paste event).
"""

from __future__ import annotations

import codecs
import functools

_installed = False


def _lenient_decoder(encoding: str):
    return functools.partial(codecs.getincrementaldecoder(encoding), errors="replace")


def install() -> None:
    """Make Textual's input threads (Linux, inline, web drivers) decode with errors="replace"."""
    global _installed
    if _installed:
        return
    import importlib

    for name in ("linux_driver", "linux_inline_driver", "web_driver"):
        try:
            module = importlib.import_module(f"textual.drivers.{name}")
        except Exception:  # noqa: BLE001 - a driver that does not import on this platform
            continue
        if hasattr(module, "getincrementaldecoder"):
            module.getincrementaldecoder = _lenient_decoder
    _installed = True


def clean_text(text: str) -> str:
    """`text` with anything that cannot be written as UTF-8 (lone surrogates) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
