"""The rules for every user setting, in one place: the command-line flags (`engine.cli`) and the
settings file (`effort_tui.config`) both parse and check their values here, so `--effort 60%` and
`effort = "60%"` mean the same thing, and a value refused by one is refused by the other.

Each check raises `SettingError` (a ValueError) whose message is one line naming the value.
"""

from __future__ import annotations

import math
from typing import Any

MIN_EFFORT = 0.05  # also engine.api.MIN_EFFORT


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


def number(
    value: object,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """`value` (a number, or the text of one as typed on the command line) checked against
    [low, high] (`low_open`: (low, high]); NaN and infinities are always refused."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise SettingError(f"{name} must be {kind}, not {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(f"{name} must be a number, not {value!r}")
    if integer and not isinstance(value, int):
        raise SettingError(f"{name} must be a whole number, not {value!r}")
    bad = isinstance(value, float) and not math.isfinite(value)
    if low is not None and (value <= low if low_open else value < low):
        bad = True
    if high is not None and value > high:
        bad = True
    if bad:
        fmt = lambda x: f"{x:,}" if isinstance(x, int) else f"{x:g}"  # noqa: E731
        if high is None:
            bounds = f"{'>' if low_open else '>='} {fmt(low)}" if low is not None else "finite"
        else:
            bounds = f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}]" if low is not None else f"<= {fmt(high)}"
        raise SettingError(f"{name} must be {bounds}, not {value!r}")
    return int(value) if integer else float(value)


# name -> check; the same rules for `--top-p 0.9` and `[sampling] top_p = 0.9`
SAMPLING_RULES = {
    "temperature": lambda v, name="temperature": number(v, name, low=0.0, high=10.0),
    "top_p": lambda v, name="top_p": number(v, name, low=0.0, high=1.0, low_open=True),
    "top_k": lambda v, name="top_k": number(v, name, integer=True, low=0),
    "max_tokens": lambda v, name="max_tokens": number(v, name, integer=True, low=1),
    "seed": lambda v, name="seed": number(v, name, integer=True, low=0, high=2**63 - 1),
    "min_p": lambda v, name="min_p": number(v, name, low=0.0, high=0.99),
    "repetition_penalty": lambda v, name="repetition_penalty": number(v, name, low=0.5, high=3.0),
    "repetition_window": lambda v, name="repetition_window": number(v, name, integer=True, low=0),
}


def check_sampling(key: str, value: object, name: str | None = None) -> Any:
    """One sampling setting (`key` as in SAMPLING_RULES), reported under `name`."""
    return SAMPLING_RULES[key](value, name or key)


def text_value(value: str, name: str) -> str:
    """Text that must be valid Unicode: a command-line argument with bytes that are not UTF-8
    (Python keeps them as lone surrogates) is refused instead of reaching the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingError(f"{name} is not valid UTF-8 text (check the terminal's encoding)") from None
    return value
