"""End to end: the app on the real engine worker (real loader, tokenizer, MLX + C runtimes) with a tiny model."""

from __future__ import annotations

from effort_tui.app import EffortApp
from effort_tui.clock import FixedClock
from engine.worker import EngineWorker

from .conftest import SIZE, ready, wait_until


async def test_real_engine_answers_records_effort_and_history(tiny_gguf, data_dir, config_path):
    model = tiny_gguf("F16")
    engine = EngineWorker()
    app = EffortApp(
        engine=engine, model=str(model), data_dir=data_dir, config_path=config_path, clock=FixedClock(),
        cursor_blink=False,
    )
    try:
        async with app.run_test(size=SIZE) as pilot:
            chat = await ready(app, pilot)
            assert app.model_info is not None and app.model_info.path == str(model)
            await pilot.press("alt+5")
            assert engine.effort.get() == 0.5
            chat.prompt.insert("hello there")
            await pilot.press("enter")
            await wait_until(pilot, lambda: chat.last_result is not None, timeout=60, what="answer finished")
            result = chat.last_result
            assert result.error is None and result.generated_tokens >= 1
            assert set(result.effort_trace[1:]) <= {0.5}  # the first token comes from the dense prefill
            stored = app.store.messages(app.store.list_conversations()[0].id)
            assert [m.role for m in stored] == ["user", "assistant"]
            assert stored[0].content == "hello there"
            await pilot.press("ctrl+q")
    finally:
        engine.close()
