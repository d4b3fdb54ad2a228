"""config.toml: defaults, validation, the serializer, atomic writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine.api import SamplingSettings
from effort_tui.config import (
    Config,
    ConfigError,
    dumps,
    load_config,
    parse_effort,
    save_config,
    toml_string,
)


def test_missing_file_gives_defaults_without_problems(tmp_path: Path) -> None:
    loaded = load_config(tmp_path / "nope.toml")
    assert loaded.config == Config()
    assert loaded.problems == [] and not loaded.broken
    assert loaded.config.model == "smollm2-135m"


def test_round_trip_through_the_serializer(tmp_path: Path) -> None:
    config = Config(
        model="~/models/my model.gguf",
        effort=0.6,
        theme="effort-light",
        system_prompt='Be "brief".\nUse\ttabs\\backslashes \x01 and ünïcode ✓',
        export_dir="/tmp/exports",
        sampling=SamplingSettings(temperature=0.7, top_p=0.9, top_k=40, max_tokens=256, seed=7),
        keymap={"effort.up": "ctrl+k,f8", "prompt.submit": "ctrl+s"},
    )
    path = tmp_path / "cfg" / "config.toml"
    save_config(path, config)
    tomllib.loads(path.read_text())  # valid TOML
    loaded = load_config(path)
    assert loaded.problems == []
    assert loaded.config == config
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp files left behind


def test_seed_none_is_omitted_and_stays_none(tmp_path: Path) -> None:
    text = dumps(Config())
    assert "seed =" not in text.replace("# seed =", "")
    assert tomllib.loads(text)["sampling"].get("seed") is None


def test_unparsable_file_gives_defaults_and_a_clear_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('model = "x"\neffort = [unclosed\n')
    loaded = load_config(path)
    assert loaded.broken
    assert loaded.config == Config()
    assert len(loaded.problems) == 1
    assert "not valid TOML" in loaded.problems[0] and "line 2" in loaded.problems[0]
    assert "using the defaults" in loaded.problems[0]


def test_bad_values_fall_back_per_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'model = "tiny"\neffort = "lots"\ntheme = 3\ncolour = "red"\n'
        "[sampling]\ntemperature = -1\ntop_k = 5\nmax_tokens = 2.5\n"
        '[keymap]\n"effort.up" = "ctrl+k"\n"no.such" = "f9"\n"chat.new" = 5\n'
    )
    loaded = load_config(path)
    c = loaded.config
    assert not loaded.broken
    assert c.model == "tiny" and c.effort == 1.0 and c.theme == "effort-dark"
    assert c.sampling.temperature == 0.7 and c.sampling.top_k == 5 and c.sampling.max_tokens == 512  # CHAT_DEFAULTS
    assert c.keymap == {"effort.up": "ctrl+k"}
    text = "\n".join(loaded.problems)
    for needle in ("effort must be", "theme must be a string", "unknown setting 'colour'", "temperature", "max_tokens", "no.such", "chat.new"):
        assert needle in text
    assert c.extra == {"colour": "red"}  # unknown keys survive a rewrite
    assert 'colour = "red"' in dumps(c)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.6, 0.6), (1, 1.0), (60, 0.6), ("60%", 0.6), ("0.25", 0.25), (100, 1.0), (0.05, 0.05)],
)
def test_effort_forms(value, expected) -> None:
    assert parse_effort(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [0.01, 0, 101, "x", True, -5, [1]])
def test_effort_rejects(value) -> None:
    with pytest.raises(ConfigError):
        parse_effort(value)


def test_toml_string_escapes_control_characters() -> None:
    assert tomllib.loads(f"a = {toml_string(chr(0) + chr(27) + chr(127))}")["a"] == "\x00\x1b\x7f"
