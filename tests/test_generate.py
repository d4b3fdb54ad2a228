"""The token loop and the sampler, on a scripted runtime (no model needed)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from engine.api import EffortSetting, SamplingSettings
from engine.errors import ContextLimitError
from engine.generate import Generator, common_prefix
from engine.sampler import Sampler

VOCAB = 16
STOP = 15


class ScriptedRuntime:
    """Emits logits that make `script[n]` the argmax of step n; records what it was asked."""

    config = SimpleNamespace(vocab_size=VOCAB)  # what the loop checks prompt ids against

    def __init__(self, script: list[int], context_limit: int = 64) -> None:
        self.script = script
        self.context_limit = context_limit
        self.calls: list[tuple] = []
        self.n = 0

    def _logits(self) -> np.ndarray:
        out = np.zeros(VOCAB, np.float32)
        out[self.script[min(self.n, len(self.script) - 1)]] = 5.0
        self.n += 1
        return out

    def reset(self, keep: int) -> None:
        self.calls.append(("reset", keep))

    def prefill(self, ids):
        self.calls.append(("prefill", list(ids)))
        return self._logits()

    def step(self, token: int, effort: float):
        self.calls.append(("step", token, effort))
        return self._logits(), effort * 0.9

    def peak_memory(self) -> int:
        return 123


class CharStream:
    def step(self, token: int) -> str:
        return chr(ord("a") + token)

    def flush(self) -> str:
        return ""


def make(script, limit=64):
    rt = ScriptedRuntime(script, limit)
    return rt, Generator(rt, frozenset({STOP}), CharStream)


def test_greedy_stops_on_stop_token_and_reports_everything():
    rt, gen = make([1, 2, 3, STOP])
    events = []
    res = gen.generate([4, 5, 6], SamplingSettings(max_tokens=10), EffortSetting(0.5), on_token=events.append)
    assert res.token_ids == [1, 2, 3, STOP]
    assert res.text == "bcd"
    assert res.finish_reason == "stop"
    assert [e.index for e in events] == [1, 2, 3, 4]
    assert events[0].effort == 1.0  # the first token comes from the dense prefill
    assert [c[2] for c in rt.calls if c[0] == "step"] == [0.5, 0.5, 0.5]
    assert events[1].effective_effort == pytest.approx(0.45)
    assert res.prompt_token_ids == [4, 5, 6] and res.peak_memory_bytes == 123


def test_effort_change_applies_to_the_next_token():
    rt, gen = make([1, 2, 3, 4, STOP])
    effort = EffortSetting(1.0)

    def turn_down(event):
        if event.index == 2:
            effort.set(0.25)

    res = gen.generate([1], SamplingSettings(max_tokens=10), effort, on_token=turn_down)
    assert res.effort_trace == [1.0, 1.0, 0.25, 0.25, 0.25]  # token 3 is the first one computed after the change


def test_max_tokens_and_cancel():
    rt, gen = make([1] * 50)
    assert gen.generate([2], SamplingSettings(max_tokens=5), EffortSetting()).finish_reason == "length"
    cancel = threading.Event()

    def stop_after_three(event):
        if event.index == 3:
            cancel.set()

    res = gen.generate([2], SamplingSettings(max_tokens=50), EffortSetting(), cancel=cancel, on_token=stop_after_three)
    assert res.finish_reason == "cancelled" and res.generated_tokens == 3


def test_context_limit():
    rt, gen = make([1] * 50, limit=8)
    with pytest.raises(ContextLimitError, match="context"):
        gen.generate(list(range(8)), SamplingSettings(), EffortSetting())
    res = gen.generate([1, 2, 3], SamplingSettings(max_tokens=50), EffortSetting())
    assert res.finish_reason == "context"


def test_prompt_prefix_is_reused_between_turns():
    rt, gen = make([1, 2, STOP] * 5)
    gen.generate([3, 4, 5], SamplingSettings(max_tokens=3), EffortSetting())
    rt.calls.clear()
    gen.generate([3, 4, 5, 1, 2, 6, 7], SamplingSettings(max_tokens=1), EffortSetting())
    # tokens 3,4,5 were prefilled, 1 and 2 were decoded (their K/V cached); only 6, 7 are new
    assert rt.calls[0] == ("reset", 5)
    assert rt.calls[1] == ("prefill", [6, 7])
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0


def test_sampler_greedy_topk_topp_and_seed():
    logits = np.array([0.0, 3.0, 2.9, -1.0, 1.0])
    assert Sampler(SamplingSettings(temperature=0))(logits) == 1
    draws = {Sampler(SamplingSettings(temperature=1.0, top_k=2, seed=s))(logits) for s in range(40)}
    assert draws == {1, 2}
    only_top = {Sampler(SamplingSettings(temperature=1.0, top_p=0.01, seed=s))(logits) for s in range(20)}
    assert only_top == {1}
    a = [Sampler(SamplingSettings(temperature=0.8, seed=7))(logits) for _ in range(5)]
    s = Sampler(SamplingSettings(temperature=0.8, seed=7))
    assert a[0] == s(logits)


def test_effort_setting_clamps_and_steps():
    e = EffortSetting(0.5)
    assert e.step(0.05) == pytest.approx(0.55)
    assert e.set(7) == 1.0
    e.set_cap(0.75)
    assert e.get() == 0.75 and e.set(0.9) == 0.75
    assert e.set(0.0) == pytest.approx(0.05)


class HoldingStream:
    """Holds each token back until the next one arrives, like an incomplete UTF-8 sequence."""

    def __init__(self) -> None:
        self.pending = ""

    def step(self, token: int) -> str:
        out, self.pending = self.pending, chr(ord("a") + token)
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def test_held_back_text_reaches_the_last_event():
    rt = ScriptedRuntime([1, 2, 3, 4])
    gen = Generator(rt, frozenset({STOP}), HoldingStream)
    events = []
    res = gen.generate([0], SamplingSettings(max_tokens=3), EffortSetting(), on_token=events.append)
    assert "".join(e.text for e in events) == res.text == "bcd"
    assert res.finish_reason == "length"
