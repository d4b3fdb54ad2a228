"""Speed bookkeeping, summaries, load progress text, keymap helpers."""

from __future__ import annotations

import pytest
from textual._xterm_parser import XTermParser

from engine.events import GenerationResult, LoadProgress, TokenEvent
from effort_tui.keymap import SPECS, bindings_for, install_alt_digit_sequences, validate_keymap
from effort_tui.answer_meta import answer_meta, summary_text
from effort_tui.stats import SpeedStats
from engine.units import human_bytes, human_duration
from effort_tui.widgets.load_panel import StageClock, progress_line


def event(index: int, step: float, effort: float = 1.0) -> TokenEvent:
    return TokenEvent("x", index, step, effort, effort * 0.9, index, 10, 40.0, 0.25, 10 + index, 2048)


def test_speed_stats_leave_the_first_token_out_of_speeds() -> None:
    stats = SpeedStats()
    stats.add(event(1, 0.25))
    assert stats.latest_tps is None and stats.average_tps is None and stats.tokens == 1
    stats.add(event(2, 0.02))
    stats.add(event(3, 0.01, effort=0.5))
    assert stats.latest_tps == pytest.approx(100.0)
    assert stats.average_tps == pytest.approx(2 / 0.03)
    assert [s.effort for s in stats.samples] == [1.0, 0.5]
    assert stats.context_used == 13 and stats.ttft_s == 0.25 and stats.effective_effort == pytest.approx(0.45)


def result(reason: str = "stop", **kw) -> GenerationResult:
    base = dict(
        text="hi", token_ids=[1, 2], prompt_token_ids=[0], prompt_tokens=40, generated_tokens=12,
        prompt_tps=160.0, decode_tps=52.04, ttft_s=0.25, finish_reason=reason,
        effort_trace=[1.0, 1.0, 0.5], effective_trace=[0.9, 0.9, 0.45],
    )
    base.update(kw)
    return GenerationResult(**base)


def summary_line(r: GenerationResult) -> str:
    return summary_text(answer_meta(r, "fake-135m", None))


def test_summary_line() -> None:
    # efforts are those of the decoded tokens: the first token comes from the (dense) prompt
    assert summary_line(result()) == (
        "✓ done · 12 tok @ 52.0 tok/s · ttft 0.25s · prompt 160 tok/s · effort 50–100% (mean 75%, eff 68%)"
    )
    assert summary_line(result("cancelled")).startswith("■ stopped · 12 tok")
    assert summary_line(result(effort_trace=[0.6, 0.6], effective_trace=[])).endswith("effort 60%")
    assert summary_line(result("error", error="boom", generated_tokens=0)).endswith("boom")


def test_stage_clock_and_progress_text() -> None:
    clock = StageClock()
    mb = 1024 * 1024
    first = LoadProgress("download", 0, 270 * mb, "B")
    assert clock.observe(first, 10.0) == (None, None)
    rate, left = clock.observe(LoadProgress("download", 108 * mb, 270 * mb, "B"), 12.0)
    assert rate == pytest.approx(54 * mb) and left == pytest.approx(3.0)
    line = progress_line(LoadProgress("download", 108 * mb, 270 * mb, "B"), rate, left).plain
    assert "40.0%" in line and "108.0 MB / 270.0 MB" in line and "54.0 MB/s" in line and "ETA 3s" in line
    assert clock.observe(LoadProgress("convert", 1, 30, ""), 13.0) == (None, None)  # a new stage restarts


def test_number_formats() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KB"
    assert human_duration(42) == "42s" and human_duration(125) == "2m 05s" and human_duration(7300) == "2h 01m"


def test_every_binding_has_a_unique_id() -> None:
    ids = [spec.id for spec in SPECS]
    assert len(ids) == len(set(ids))
    for scope in ("app", "chat", "prompt", "conversations", "help"):
        assert all(b.id for b in bindings_for(scope))
    assert validate_keymap({"effort.up": " ctrl+k , f9 "}) == ({"effort.up": "ctrl+k,f9"}, [])


def test_alt_digits_arrive_as_alt_keys() -> None:
    assert install_alt_digit_sequences()
    keys = [e.key for e in XTermParser().feed("\x1b1a\x1b0b")]
    assert keys == ["alt+1", "a", "alt+0", "b"]
