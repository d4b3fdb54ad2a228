"""The `effort` command's output as a script sees it, run as a subprocess: with --json, stdout holds
the JSON line and nothing else (the human lines go to stderr); `generate` and the chat share one
default for the longest answer, and an answer cut short says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.api import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def effort(tmp_path):
    env = {**os.environ, "EFFORT_CACHE_DIR": str(tmp_path / "cache")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=300)

    return run


def only_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout is not one JSON line: {proc.stdout[:500]!r}"
    return json.loads(lines[0])


@pytest.mark.parametrize("command", [
    ("generate", "-p", "hi", "--max-tokens", "4"),
    ("bench", "--efforts", "1", "--tokens", "2", "--rounds", "1"),
    ("eval", "--efforts", "0.5", "--tokens", "8", "--strategy", "bucket"),
])
def test_json_stdout_is_only_json(effort, tiny_gguf, command) -> None:
    proc = effort(*command, "--model", str(tiny_gguf("F16")), "--json")
    record = only_json(proc)
    assert record["model"] and proc.stderr.strip()  # the human lines went to stderr
    if command[0] == "generate":
        assert record["text"] in proc.stderr


def test_generate_has_the_chats_default_and_says_when_it_cut_an_answer(effort, tiny_gguf) -> None:
    model = str(tiny_gguf("F16"))
    record = only_json(effort("generate", "-p", "hi", "--temperature", "0", "--model", model, "--json"))
    # the tiny model never stops by itself: the answer runs to the chat's limit or the context's
    assert record["generated_tokens"] > 256 and record["finish_reason"] in ("length", "context")
    assert record["generated_tokens"] <= SamplingSettings.max_tokens
    proc = effort("generate", "-p", "hi", "--temperature", "0", "--max-tokens", "5", "--model", model)
    assert proc.returncode == 0 and "cut: max_tokens reached (5; --max-tokens sets it)" in proc.stderr
