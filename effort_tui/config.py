"""The settings file: config.toml in the platformdirs config directory.

Reading never fails: a file that cannot be parsed gives the defaults plus a
one-line problem the app shows as a notification; a bad value gives the
default for that key plus a problem. Writing goes through `engine.io.atomic`
(a temp file, fsync, `os.replace`), so a crash never leaves half a file. See the README (Configuration).
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from effort_tui.keymap import validate_keymap
from engine import validation
from engine.api import SamplingSettings
from engine.io import toml
from engine.io.atomic import write_text
from engine.sampler import CHAT_DEFAULTS

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_THEME = "effort-dark"


@dataclass(frozen=True)
class Config:
    model: str = DEFAULT_MODEL
    effort: float = 1.0  # fraction, MIN_EFFORT..1.0
    theme: str = DEFAULT_THEME
    system_prompt: str = ""
    export_dir: str = ""  # "" = <data dir>/exports
    model_dirs: tuple[str, ...] = ()  # more folders the model picker searches for GGUF files
    # CHAT_DEFAULTS unless the file says otherwise; fields still equal to CHAT_DEFAULTS give way to
    # the model's own generation defaults when it has some (engine.sampler.overlay)
    sampling: SamplingSettings = field(default_factory=lambda: CHAT_DEFAULTS)
    keymap: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back untouched


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    problems: list[str]  # one line each, shown to the user
    broken: bool = False  # the file could not be read at all: defaults in force, file left alone
    path: Path | None = None


class ConfigError(ValueError):
    pass


# -- reading -----------------------------------------------------------------------------------


def load_config(path: Path) -> LoadedConfig:
    """Read `path`; a missing file is the defaults without a problem."""
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        return LoadedConfig(Config(), [], path=path)
    except OSError as exc:
        return LoadedConfig(Config(), [f"cannot read {path}: {exc.strerror or exc}"], broken=True, path=path)
    try:
        data = toml.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        return LoadedConfig(Config(), [f"{path} is not UTF-8 text; using the defaults"], broken=True, path=path)
    except toml.TOMLDecodeError as exc:
        return LoadedConfig(Config(), [f"{path} is not valid TOML ({exc}); using the defaults"], broken=True, path=path)
    config, problems = config_from_dict(data)
    return LoadedConfig(config, [f"{path}: {p}" for p in problems], path=path)


def parse_effort(value: object) -> float:
    """0.05–1.0, or a percentage (1 < value <= 100), or a string like "60%" (engine.validation)."""
    try:
        return validation.parse_effort(value)
    except validation.SettingError as exc:
        raise ConfigError(str(exc)) from None


def _checked(rule: Any, value: object, name: str) -> Any:
    try:
        return rule(value, name)
    except validation.SettingError as exc:
        raise ConfigError(str(exc)) from None


def _sampling(key: str, value: object) -> Any:
    try:
        return validation.check_sampling(key, value, f"sampling.{key}")
    except validation.SettingError as exc:
        raise ConfigError(str(exc)) from None


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, not {value!r}")
    return value


_TOP_LEVEL = {
    "model": lambda v: _nonempty(_string(v, "model"), "model"),
    "effort": parse_effort,
    "theme": lambda v: _nonempty(_string(v, "theme"), "theme"),
    "system_prompt": lambda v: _string(v, "system_prompt"),
    "export_dir": lambda v: _string(v, "export_dir"),
    "model_dirs": lambda v: tuple(_checked(validation.folder_list, v, "model_dirs")),
}

_SAMPLING = {key: (lambda v, key=key: _sampling(key, v)) for key in validation.SAMPLING_RULES}


def _nonempty(value: str, name: str) -> str:
    if not value.strip():
        raise ConfigError(f"{name} must not be empty")
    return value.strip()


def config_from_dict(data: dict[str, Any]) -> tuple[Config, list[str]]:
    """Validate a parsed TOML document key by key."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    sampling_values: dict[str, Any] = {}
    keymap: dict[str, str] = {}
    for key, value in data.items():
        if key in _TOP_LEVEL:
            try:
                values[key] = _TOP_LEVEL[key](value)
            except ConfigError as exc:
                problems.append(f"{exc}; using the default")
        elif key == "sampling":
            if not isinstance(value, dict):
                problems.append("[sampling] must be a table; using the defaults")
                continue
            for skey, svalue in value.items():
                if skey not in _SAMPLING:
                    problems.append(f"unknown setting sampling.{skey} (ignored)")
                    extra.setdefault("sampling", {})[skey] = svalue
                    continue
                try:
                    sampling_values[skey] = _SAMPLING[skey](svalue)
                except ConfigError as exc:
                    problems.append(f"{exc}; using the default")
        elif key == "keymap":
            keymap, keymap_problems = validate_keymap(value)
            problems.extend(keymap_problems)
        else:
            problems.append(f"unknown setting {key!r} (ignored)")
            extra[key] = value
    config = Config(sampling=replace(CHAT_DEFAULTS, **sampling_values), keymap=keymap, extra=extra, **values)
    return config, problems


# -- writing -----------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()  # TOML's date-time / date / time syntax (RFC 3339)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a nested table, written inline
        return "{" + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(config: Config) -> str:
    """The whole config as TOML, with a comment on each setting."""
    s = config.sampling
    lines = [
        "# Effort Engine settings. The app rewrites this file when you change the theme;",
        "# unknown keys are kept, comments are not. Documentation: the README, Configuration.",
        "",
        "# Model to load at start: an alias (smollm2-135m), a GGUF file or a Hugging Face folder.",
        f"model = {toml_value(config.model)}",
        "# Starting effort: share of the weights read per token (CPU: bytes; MLX: multiply-adds), 0.05-1.0 (or \"60%\").",
        f"effort = {toml_value(config.effort)}",
        "# Theme: effort-dark, effort-light, or any built-in Textual theme (ctrl+t toggles).",
        f"theme = {toml_value(config.theme)}",
        "# System prompt sent before every conversation (\"\" = none).",
        f"system_prompt = {toml_value(config.system_prompt)}",
        "# Where ctrl+e writes Markdown exports (\"\" = the exports folder in the data directory).",
        f"export_dir = {toml_value(config.export_dir)}",
        "# More folders where \"Model: switch…\" and `effort models` look for GGUF files.",
        f"model_dirs = {toml_value(list(config.model_dirs))}",
    ]
    top_extra = {k: v for k, v in config.extra.items() if not isinstance(v, dict)}
    table_extra = {k: v for k, v in config.extra.items() if isinstance(v, dict) and k not in ("sampling", "keymap")}
    for key, value in top_extra.items():
        lines.append(f"{toml_key(key)} = {toml_value(value)}")
    lines += [
        "",
        "[sampling]",
        "temperature = " + toml_value(s.temperature) + "  # 0 = greedy",
        "top_p = " + toml_value(s.top_p),
        "top_k = " + toml_value(s.top_k) + "  # 0 = off",
        "min_p = " + toml_value(s.min_p) + "  # 0 = off",
        "repetition_penalty = " + toml_value(s.repetition_penalty) + "  # 1 = off",
        "repetition_window = " + toml_value(s.repetition_window),
        "max_tokens = " + toml_value(s.max_tokens),
    ]
    if s.seed is not None:
        lines.append("seed = " + toml_value(s.seed))
    else:
        lines.append("# seed = 0  # set for reproducible sampling")
    for key, value in config.extra.get("sampling", {}).items():
        lines.append(f"{toml_key(key)} = {toml_value(value)}")
    lines += ["", "# binding_id = \"key1,key2\" (see the key list in the README or press F1)", "[keymap]"]
    for binding_id, keys in sorted(config.keymap.items()):
        lines.append(f"{toml_key(binding_id)} = {toml_value(keys)}")
    for table, values in table_extra.items():
        lines += ["", f"[{toml_key(table)}]"]
        for key, value in values.items():
            lines.append(f"{toml_key(key)} = {toml_value(value)}")  # deeper tables inline
    return "\n".join(lines) + "\n"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def save_config(path: Path, config: Config) -> None:
    """Write `config`; raises ConfigError (and writes nothing) when the text would not read back
    with every unknown key the file had, exactly as it was."""
    try:
        text = dumps(config)
        parsed = toml.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot write the settings without changing them ({exc})") from None
    for key, value in config.extra.items():
        have = parsed.get(key)
        if key == "sampling" and isinstance(value, dict) and isinstance(have, dict):
            have = {k: have.get(k) for k in value}
        if not _same(value, have):
            raise ConfigError(f"cannot write the settings without changing {key!r}")
    write_text(path, text)


def with_theme(config: Config, theme: str) -> Config:
    return replace(config, theme=theme)
