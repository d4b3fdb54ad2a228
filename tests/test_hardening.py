"""Issue 16: hostile model files, bad flags, damaged caches. One test per row of the issue's table
(the TUI rows are in tests/tui/test_hardening_tui.py), each with files it crafts itself.

Every bad input must end fast with exit code 2 and exactly one line on stderr, no traceback."""

from __future__ import annotations

import os
import struct
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine.cli import main

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_cli(argv, capsys):
    start = time.monotonic()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - start


def assert_one_line_error(result, *words, within_s=30.0):
    code, _out, err, elapsed = result
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert elapsed < within_s, elapsed
    return lines[0]


def generate(model, *flags):
    return ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "2", *flags]


# -- hostile model files ----------------------------------------------------------------------------


def test_block_count_2_to_the_40_is_refused_before_anything_is_sized(tiny_gguf, capsys):
    path = tiny_gguf("F16", extra_metadata={"llama.block_count": 1 << 40})
    line = assert_one_line_error(run_cli(generate(path), capsys), "num_layers", "1,099,511,627,776", "out of range",
                                 within_s=10)
    assert str(path) in line


def test_context_length_1e8_is_clamped_to_memory_with_a_notice(tiny_gguf, cache, capsys, monkeypatch):
    from engine.model import config as model_config

    monkeypatch.setattr(model_config, "physical_memory_bytes", lambda: 1 << 30)  # a 1 GiB machine
    path = tiny_gguf("F16", extra_metadata={"llama.context_length": 100_000_000})
    code, out, err, _ = run_cli(generate(path, "--json"), capsys)
    assert code == 0, err
    assert "Traceback" not in err
    notes = [line for line in err.splitlines() if "context clamped" in line]
    assert len(notes) == 1 and "100,000,000" in notes[0], err
    import json

    record = json.loads(out.strip().splitlines()[-1])
    assert record["generated_tokens"] >= 1
    limit, notice = model_config.context_for_memory(
        model_config.ModelConfig(
            "llama", 128, 256, 2, 4, 2, 32, 360, 1e-5, 1e4, None, 100_000_000, True, False, None
        ),
        1 << 30,
    )
    assert limit * model_config.kv_bytes_per_token(
        model_config.ModelConfig("llama", 128, 256, 2, 4, 2, 32, 360, 1e-5, 1e4, None, 1, True, False, None)
    ) <= (1 << 30) * model_config.KV_MEMORY_SHARE and notice


def _gguf_header(kv: bytes, n_kv: int = 1, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_metadata_array_nested_100000_deep_is_refused_without_recursion(tmp_path, capsys):
    depth = 100_000
    value = struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)  # array of array of ... of u8[0]
    path = tmp_path / "deep.gguf"
    path.write_bytes(_gguf_header(_gguf_string("deep") + struct.pack("<I", 9) + value))
    line = assert_one_line_error(run_cli(generate(path), capsys), "nests arrays", within_s=10)
    assert str(path) in line


@pytest.mark.parametrize(
    "kv, words",
    [
        (_gguf_string("s") + struct.pack("<IQ", 8, 1 << 39), ["claims", "bytes"]),  # a 512 GB string
        (_gguf_string("a") + struct.pack("<IIQ", 9, 4, 1 << 30), ["claims", "items"]),  # 2^30 u32s
        (_gguf_string("a") + struct.pack("<IIQ", 9, 8, 1 << 20), ["truncated"]),  # 2^20 strings, no bytes
    ],
)
def test_metadata_sizes_are_bounded_before_reading(tmp_path, capsys, kv, words):
    path = tmp_path / "big.gguf"
    path.write_bytes(_gguf_header(kv) + b"\0" * 64)
    assert_one_line_error(run_cli(generate(path), capsys), *words, within_s=10)


def test_tensor_and_metadata_counts_are_bounded(tmp_path, capsys):
    path = tmp_path / "counts.gguf"
    path.write_bytes(_gguf_header(b"\0" * 64, n_kv=0, n_tensors=1 << 30))
    assert_one_line_error(run_cli(generate(path), capsys), "tensor count", within_s=10)


@pytest.mark.parametrize(
    "key, value, field",
    [
        ("llama.embedding_length", 1 << 30, "hidden_size"),
        ("llama.attention.head_count", 1 << 20, "num_heads"),
        ("llama.feed_forward_length", 1 << 31, "intermediate_size"),
    ],
)
def test_every_dimension_is_bounded(tiny_gguf, capsys, key, value, field):
    path = tiny_gguf("F16", extra_metadata={key: value})
    assert_one_line_error(run_cli(generate(path), capsys), field, within_s=10)


def test_nested_range_loops_in_the_chat_template_stop_with_one_line(tiny_gguf, capsys):
    path = tiny_gguf("F16", chat_template=NESTED_LOOPS)
    line = assert_one_line_error(run_cli(generate(path), capsys), "chat template", "steps", within_s=30)
    assert str(path) in line


def test_template_memory_bombs_are_refused():
    from engine.io.chat_template import ChatTemplate, ChatTemplateError

    msgs = [{"role": "user", "content": "hi"}]
    for source in (
        "{{ 'x' * 10000000000 }}",
        "{{ 'a' | center(10000000000) }}",
        "{{ '%999999999s' % 'a' }}",
        "{{ 9 ** 999999999 }}",
        "{% set ns = namespace(x='a') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
        "{% set ns = namespace(x='a') %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x }}",
    ):
        start = time.monotonic()
        with pytest.raises(ChatTemplateError) as info:
            ChatTemplate(source).render(msgs)
        assert "\n" not in str(info.value) and time.monotonic() - start < 5, source
    assert ChatTemplate("{% for m in messages %}{{ loop.index }}:{{ m.content ~ '!' }}{% endfor %}").render(msgs) == "1:hi!"


def test_unreadable_file_says_permission_denied(tiny_gguf, tmp_path, capsys, monkeypatch):
    import shutil

    path = tmp_path / "locked.gguf"
    shutil.copy(tiny_gguf("F16"), path)
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads mode-000 files: make open() fail the way it does for a user
        import builtins

        from engine.io import loader

        real_open = builtins.open

        def fake_open(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(loader, "open", fake_open, raising=False)
    try:
        line = assert_one_line_error(run_cli(generate(path), capsys), "permission denied")
        assert "not a GGUF" not in line
    finally:
        os.chmod(path, 0o644)


# -- flags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2", "1.5", "0.01", "0", "-0.5", "101", "nan", "inf", "lots", "150%"])
def test_out_of_range_effort_is_refused_not_clamped(value, capsys):
    assert_one_line_error(run_cli(["generate", "--prompt", "hi", "--effort", value], capsys), "effort", within_s=5)


@pytest.mark.parametrize("text, expected", [("50%", 0.5), ("50", 0.5), ("0.5", 0.5), ("5", 0.05), ("100", 1.0), ("1", 1.0)])
def test_effort_flag_reads_like_the_config(text, expected):
    from effort_tui.config import parse_effort as config_effort
    from engine.cli import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "hi", "--effort", text])
    assert args.effort == pytest.approx(expected) == config_effort(text)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--temperature", "nan"), ("--temperature", "-1"), ("--temperature", "inf"), ("--top-p", "2"),
        ("--top-p", "0"), ("--top-p", "nan"), ("--top-k", "-5"), ("--top-k", "1.5"), ("--max-tokens", "0"),
        ("--seed", "-1"),
    ],
)
def test_sampling_flags_are_range_checked(flag, value, capsys):
    assert_one_line_error(run_cli(["generate", "--prompt", "hi", flag, value], capsys), flag, within_s=5)


def test_sampling_rules_are_shared_with_the_config():
    from effort_tui.config import config_from_dict

    config, problems = config_from_dict({"sampling": {"temperature": float("nan"), "top_p": 2.0, "top_k": -5}})
    defaults, _ = config_from_dict({})  # each bad value falls back to its default
    assert len(problems) == 3 and config.sampling == defaults.sampling


def test_invalid_utf8_prompt_is_one_line(capsys):
    prompt = os.fsdecode(b"\xff\xfe hi")  # what Python makes of these argv bytes (surrogateescape)
    line = assert_one_line_error(run_cli(["generate", "--prompt", prompt], capsys), "--prompt", "UTF-8", within_s=5)
    line.encode("utf-8")  # the message itself is printable


# -- caches -----------------------------------------------------------------------------------------

KILLED_WRITE = """
import os, sys
from pathlib import Path
from engine.io.atomic import atomic_path
target = Path(sys.argv[1])
with atomic_path(target) as tmp:
    tmp.write_bytes(b"")  # the .part that was 0 bytes
    (tmp.parent / ".tmpAbC123").write_bytes(os.urandom(1 << 20))  # safetensors' own temp file, mid-write
    print(tmp, flush=True)
    os.kill(os.getpid(), 9)
"""


def test_temp_files_of_a_killed_cache_write_are_cleaned_at_next_start(tiny_gguf, cache):
    import subprocess
    import sys

    from engine import session
    from engine.effort.planes import calibrate
    from engine.io.paths import converted_dir

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = converted_dir() / "model-v1.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(target)], capture_output=True, text=True, cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert proc.returncode == -9, proc.stderr
    left = sorted(p.name for p in converted_dir().iterdir())
    assert len(left) == 1 and left[0].startswith(".model-v1.safetensors.") and left[0].endswith(".part"), left
    legacy = converted_dir() / ".old.safetensors.k2j4h5g6.part"  # named by an older version, no pid
    legacy.write_bytes(b"x")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    loaded = session.load(str(tiny_gguf("F16")), runtime="cpu")  # the next start
    names = sorted(p.name for p in converted_dir().iterdir() if not p.name.endswith(".lock"))  # locks stay
    layout = loaded.runtime.planes.path
    calibration = calibrate.allocation_path(loaded.files)
    assert names == sorted([layout.name, layout.name + ".sha256", calibration.name])


def test_a_flipped_byte_in_the_converted_cache_is_detected_and_reconverted(tiny_gguf, cache, capsys):
    from engine.io import checksum
    from engine.io.paths import converted_dir

    model = tiny_gguf("F16")
    argv = generate(model, "--effort", "0.5", "--max-tokens", "6", "--temperature", "0", "--json")
    code, first_out, err, _ = run_cli(argv, capsys)
    assert code == 0, err
    (path,) = converted_dir().glob("*.layout")
    original = path.read_bytes()
    assert checksum.verify(path) is True
    with open(path, "r+b") as f:  # one byte in the middle of the tensor data
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    code, second_out, err, _ = run_cli(argv, capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "checksum mismatch" in line]
    assert len(notes) == 1 and "laying it out again" in notes[0], err
    import json

    assert json.loads(second_out.splitlines()[-1])["text"] == json.loads(first_out.splitlines()[-1])["text"]
    assert path.read_bytes() == original
    from engine.effort.planes import store
    from engine.errors import EngineError
    from engine.io.loader import open_model

    with open(path, "r+b") as f:  # damaged between convert() and open_layout(): refused, never used
        f.seek(path.stat().st_size // 2)
        f.write(b"\x7f")
    with pytest.raises(EngineError, match="checksum mismatch"):
        store.open_layout(open_model(model))


# -- the 8,190-token prompt -------------------------------------------------------------------------


class SlowPrefillRuntime:
    """A runtime whose prefill costs 0.25 ms a token (an 8,190-token prompt: 2 s)."""

    context_limit = 8192
    config = SimpleNamespace(vocab_size=8192)

    def __init__(self) -> None:
        self.length = 0
        self.calls: list[int] = []

    def reset(self, keep: int) -> None:
        self.length = min(self.length, keep)

    def prefill(self, ids):
        time.sleep(0.00025 * len(ids))
        self.calls.append(len(ids))
        self.length += len(ids)
        return np.eye(16, dtype=np.float32)[3]

    def step(self, token, effort):
        self.length += 1
        return np.eye(16, dtype=np.float32)[15], effort

    def peak_memory(self) -> int:
        return 0


class _Chars:
    def step(self, token: int) -> str:
        return "x"

    def flush(self) -> str:
        return ""


def test_a_long_prompt_reports_progress_and_stops_within_a_second():
    import threading

    from engine.api import EffortSetting, SamplingSettings
    from engine.generate import Generator

    rt = SlowPrefillRuntime()
    gen = Generator(rt, frozenset({15}), _Chars)
    cancel = threading.Event()
    seen = []
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    start = time.monotonic()
    result = gen.generate(list(range(8190)), SamplingSettings(), EffortSetting(1.0), cancel=cancel, on_prefill=seen.append)
    stopped_after = time.monotonic() - start - 0.5
    assert result.finish_reason == "cancelled" and result.generated_tokens == 0
    assert stopped_after < 1.0, stopped_after
    assert seen and all(p.stage == "prefill" and p.total == 8190 for p in seen)
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].done < 8190
    assert max(rt.calls) <= 512 and rt.length == seen[-1].done  # what was read stays in the cache
    # the next turn goes on from there instead of starting over
    read = seen[-1].done
    result = gen.generate(list(range(8190)), SamplingSettings(max_tokens=2), EffortSetting(1.0), on_prefill=seen.append)
    assert result.finish_reason == "stop" and rt.length == 8191
    assert seen[-1].done == seen[-1].total == 8190 - read


def test_a_prompt_beyond_the_context_is_refused_with_one_line(tiny_gguf, capsys):
    line = assert_one_line_error(
        run_cli(["generate", "--model", tiny_gguf("F16"), "--prompt", "hello world " * 400, "--max-tokens", "2"], capsys),
        "context holds 512",
    )
    assert "tokens" in line
