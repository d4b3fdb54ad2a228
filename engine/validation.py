"""The rules for every user setting, in one place: the command-line flags (`engine.cli`) and the
settings file (`effort_tui.config`) both parse and check their values here, so `--effort 60%` and
`effort = "60%"` mean the same thing, and a value refused by one is refused by the other.

Each check raises `SettingError` (a ValueError) whose message is one line naming the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_EFFORT = 0.05  # the lowest effort anything accepts (the dial, flags, settings)


class SettingError(ValueError):
    """A setting's value is out of range or not of the right kind; the message is one line."""


def parse_effort(value: object) -> float:
    """0.05–1.0, or a percentage (1 < value <= 100), or a string like "60%" / "60" / "0.6".

    Never clamps: anything outside 5 %–100 % is refused (`2` is 2 %, refused)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise SettingError(f"effort must be a number like 0.6 or \"60%\", not {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise SettingError(f"effort must be a number like 0.6 or \"60%\", not {value!r}")
    if number > 1.0:
        number /= 100.0
    if math.isnan(number) or not (MIN_EFFORT - 1e-9 <= number <= 1.0 + 1e-9):
        raise SettingError(
            f"effort must be between {MIN_EFFORT:.0%} and 100% (0.05-1.0, or 5-100 as a percentage), not {value!r}"
        )
    return round(min(number, 1.0), 4)


@dataclass(frozen=True)
class Bounds:
    """The range a number must lie in: [low, high], or (low, high] with `low_open`; `integer`:
    a whole number. NaN and infinities are always refused."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False

    def text(self) -> str:
        """e.g. "in (0, 1]", ">= 1" (what the error message and the chat's question show)."""
        fmt = lambda x: f"{x:,}" if isinstance(x, int) else f"{x:g}"  # noqa: E731
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {fmt(self.low)}" if self.low is not None else "finite"
        if self.low is None:
            return f"<= {fmt(self.high)}"
        return f"in {'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}]"

    def check(self, value: object, name: str) -> Any:
        """`value` (a number, or the text of one as typed on the command line) within these bounds."""
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                kind = "a whole number" if self.integer else "a number"
                raise SettingError(f"{name} must be {kind}, not {text!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingError(f"{name} must be a number, not {value!r}")
        if self.integer and not isinstance(value, int):
            raise SettingError(f"{name} must be a whole number, not {value!r}")
        bad = isinstance(value, float) and not math.isfinite(value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            bad = True
        if self.high is not None and value > self.high:
            bad = True
        if bad:
            raise SettingError(f"{name} must be {self.text()}, not {value!r}")
        return int(value) if self.integer else float(value)


# name -> bounds; the same rules for `--top-p 0.9`, `[sampling] top_p = 0.9` and the chat's palette
SAMPLING_RULES: dict[str, Bounds] = {
    "temperature": Bounds(0.0, 10.0),
    "top_p": Bounds(0.0, 1.0, low_open=True),
    "top_k": Bounds(0, integer=True),
    "max_tokens": Bounds(1, integer=True),
    "seed": Bounds(0, 2**63 - 1, integer=True),
    "min_p": Bounds(0.0, 0.99),
    "repetition_penalty": Bounds(0.5, 3.0),
    "repetition_window": Bounds(0, integer=True),
}


def check_sampling(key: str, value: object, name: str | None = None) -> Any:
    """One sampling setting (`key` as in SAMPLING_RULES), reported under `name`."""
    return SAMPLING_RULES[key].check(value, name or key)


def folder_list(value: object, name: str) -> list[str]:
    """Folders given as a list of paths (or one path as a string); "~" is the home folder."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise SettingError(f"{name} must be a list of folders like [\"~/models\"], not {value!r}")
    return [v.strip() for v in items]


def text_value(value: str, name: str) -> str:
    """Text that must be valid Unicode: a command-line argument with bytes that are not UTF-8
    (Python keeps them as lone surrogates) is refused instead of reaching the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingError(f"{name} is not valid UTF-8 text (check the terminal's encoding)") from None
    return value
