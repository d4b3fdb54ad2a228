"""The effort value's one path: a key press -> the screen -> `EffortSetting` -> the token loop ->
`Runtime.step(token, effort)`, the same float all the way. The real engine worker and token loop
run here; only the model and its runtime are stand-ins (no weights needed)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from engine import session
from engine.api import ModelInfo
from engine.generate import Generator
from engine.worker import EngineWorker

from .conftest import SIZE, ready, wait_until

VOCAB = 8
STOP = 7


class GatedRuntime:
    """A `Runtime` that records the effort each decode step is called with, and returns from one
    only when let (so a test knows which call comes after its key press)."""

    context_limit = 256
    config = SimpleNamespace(vocab_size=VOCAB)  # what the token loop checks prompt ids against

    def __init__(self) -> None:
        self.efforts: list[float] = []
        self.allowed = threading.Semaphore(0)

    def reset(self, keep: int) -> None:
        pass

    def prefill(self, ids: list[int]) -> np.ndarray:
        return np.eye(VOCAB, dtype=np.float32)[1] * 100

    def step(self, token: int, effort: float) -> tuple[np.ndarray, float]:
        self.efforts.append(effort)
        self.allowed.acquire()
        return np.eye(VOCAB, dtype=np.float32)[1 + len(self.efforts) % 5] * 100, effort

    def peak_memory(self) -> int:
        return 0


class Letters:
    def step(self, token: int) -> str:
        return f"t{token} "

    def flush(self) -> str:
        return ""


@dataclass
class FakeTokenizer:
    add_bos: bool = False
    stop_ids: frozenset[int] = frozenset({STOP})

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return [1, 2, 3]


@dataclass
class FakeLoaded:
    runtime: GatedRuntime
    info: ModelInfo = ModelInfo("stand-in", "/models/stand-in.gguf", "llama", "cpu", "test CPU", 256, 1000)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    effort_pending: bool = False
    files: None = None  # no model file: a NaN would not be traced back to a tensor (engine.model.diagnose)

    @property
    def generator(self) -> Generator:
        self.__dict__.setdefault("_generator", Generator(self.runtime, self.tokenizer.stop_ids, Letters))
        return self.__dict__["_generator"]


@pytest.fixture
def runtime(monkeypatch) -> GatedRuntime:
    rt = GatedRuntime()
    monkeypatch.setattr(session, "load", lambda *args, **kwargs: FakeLoaded(rt))
    return rt


async def test_a_key_press_reaches_the_runtime_as_the_same_float(make_app, runtime) -> None:
    engine = EngineWorker()
    app = make_app(engine, effort=0.8)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        chat.prompt.insert("count")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(runtime.efforts) == 1, what="the first step")
        assert runtime.efforts == [0.8]  # the starting effort, set once by the app
        for key, value in (("alt+5", 0.5), ("ctrl+down", 0.45), ("f8", 0.5), ("alt+0", 1.0), ("alt+1", 0.1)):
            await pilot.press(key)
            n = len(runtime.efforts)
            runtime.allowed.release(1)
            await wait_until(pilot, lambda: len(runtime.efforts) == n + 1, what=f"the step after {key}")
            assert runtime.efforts[-1] == value, key  # exactly: one float from the binding to the kernel
            assert type(runtime.efforts[-1]) is float
        await pilot.press("escape")
        runtime.allowed.release(100)
        await wait_until(pilot, lambda: not chat.streaming, what="stopped")


async def test_a_model_switch_keeps_the_users_effort(make_app) -> None:
    from .fake_engine import FakeEngine

    engine = FakeEngine()
    app = make_app(engine, effort=0.9)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(app, pilot)
        assert engine.effort.get() == 0.9
        await pilot.press("alt+3")
        chat.start_load("/models/other.gguf")  # what "Model: switch…" does with the model chosen
        await wait_until(pilot, lambda: chat.loaded_name == "/models/other.gguf", what="switched")
        assert engine.effort.get() == 0.3
