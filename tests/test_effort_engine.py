"""Effort end to end on tiny models: conversion cache, live effort, truncated loads, eval and bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from engine.cli import main
from engine import session
from engine.effort import convert
from engine.effort import reference
from engine.api import EffortSetting, SamplingSettings
from engine.generate import Generator
from engine.effort.bucket import B
from engine.model.decoder import projection_inputs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(params=["cpu", "mlx"])
def loaded(request, tiny_gguf, cache):
    return session.load(str(tiny_gguf("F16")), runtime=request.param)


def test_conversion_is_cached_atomically_and_deterministic(tiny_gguf, cache):
    model = tiny_gguf("F16")
    first = session.load(str(model), runtime="cpu")
    path = first.converted.path
    assert path == convert.converted_path(first.files)
    assert path.is_file() and not list(path.parent.glob("*.part"))
    stamp = path.stat().st_mtime_ns
    before = load_file(str(path))
    second = session.load(str(model), runtime="cpu")  # reuses the cache
    assert path.stat().st_mtime_ns == stamp
    session.prepare_effort(second.files, second.model, lambda p: None, None, force=True)
    after = load_file(str(path))  # same input, same content (the header's key order is not fixed)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_effort_one_is_exactly_dense_and_lower_effort_is_honest(loaded):
    ids = loaded.tokenizer.encode("hello world, this is a test of effort")
    rt = loaded.runtime
    dense = rt.prefill(ids)
    rt.reset(len(ids) - 1)
    logits_full, used = rt.step(ids[-1], 1.0)
    assert used == 1.0
    rt.reset(len(ids) - 1)
    logits_half, used_half = rt.step(ids[-1], 0.5)
    assert abs(used_half - 0.5) < 0.06
    assert np.abs(logits_full - dense).max() < 1e-3 * np.abs(dense).max()
    assert not np.allclose(logits_half, logits_full)


def test_native_effort_step_matches_the_numpy_reference(tiny_gguf, cache):
    """Every projection of one decode step through the C effort path equals reference.bucket_matvec."""
    loaded = session.load(str(tiny_gguf("F16")), runtime="cpu")
    rt = loaded.runtime
    ids = loaded.tokenizer.encode("reference check")
    inputs = projection_inputs(loaded.model, ids)
    local = rt.local_efforts(0.4)
    names = list(loaded.converted.allocation.names)
    full = convert.load(loaded.files)
    for j, name in enumerate(convert.projection_names(loaded.model.config.num_layers)):
        e = float(np.float32(local[j]))
        x = inputs[name][-1]
        y, share = rt.project(name, x, e)
        y_ref, k = reference.bucket_matvec(full.buckets[name], x, e)
        scale = np.abs(x).sum() * np.abs(full.buckets[name].values()).max()
        assert np.abs(y - y_ref).max() <= 1e-5 * scale, name
        assert share == pytest.approx(reference.effective_effort(k, full.buckets[name]))
    assert names  # the allocation covers every projection


def test_live_effort_change_mid_answer(loaded):
    effort = EffortSetting(1.0)
    ids = loaded.tokenizer.encode_chat([{"role": "user", "content": "count to ten"}])

    def lower(event):
        if event.index == 3:
            effort.set(0.3)

    # no stop tokens: the answer always runs its 8 tokens, so the change at token 3 is always checked
    generator = Generator(loaded.runtime, frozenset(), loaded.tokenizer.stream)
    res = generator.generate(ids, SamplingSettings(max_tokens=8), effort, on_token=lower)
    assert res.generated_tokens == 8 and res.finish_reason == "length"
    assert res.effort_trace[:3] == [1.0] * 3 and res.effective_trace[:3] == [1.0] * 3
    assert res.effort_trace[3:] == [0.3] * (res.generated_tokens - 3)
    assert all(0.2 < e < 0.4 for e in res.effective_trace[3:])


def test_load_ranks_caps_effort_and_memory(tiny_gguf, cache):
    full = session.load(str(tiny_gguf("F16")), runtime="mlx")
    part = session.load(str(tiny_gguf("F16")), runtime="mlx", load_ranks=B // 2)
    assert part.info.effort_cap == 0.5 and full.info.effort_cap == 1.0
    assert part.converted.nbytes() < 0.6 * full.converted.nbytes()
    assert part.info.resident_bytes < full.info.resident_bytes  # and it is reported
    ids = part.tokenizer.encode("truncated load")
    part.runtime.prefill(ids[:-1])
    _, used = part.runtime.step(ids[-1], 0.5)
    assert used <= 0.5 + 1e-9
    native = session.load(str(tiny_gguf("F16")), runtime="cpu", load_ranks=B // 2)
    assert native.info.effort_cap == 0.5
    native.runtime.prefill(ids[:-1])
    _, used_native = native.runtime.step(ids[-1], 0.5)
    assert used_native <= 0.5 + 1e-9


def test_eval_json_and_bucket_beats_activation(tiny_gguf, cache, capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    picture = tmp_path / "quality.png"
    code = main(["eval", "--model", str(tiny_gguf("F16")), "--text-file", str(text), "--tokens", "40",
                 "--efforts", "1,0.5", "--plot", str(picture), "--json"])
    assert code == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["reference"] == "dense" and record["tokens"] == 40
    # one text: its rows are the mean, and the top-level rows are the mean (the pre-texts shape)
    (only,) = record["texts"]
    assert only["name"] == "text" and only["tokens"] == 40 and only["results"] == record["mean"] == record["results"]
    assert "frontier" not in record
    rows = {(r["strategy"], r["effort"]): r for r in record["results"]}
    assert rows[("bucket", 1.0)]["kl_mean"] < 1e-6 and rows[("bucket", 1.0)]["top1_agreement"] == 1.0
    for r in record["results"]:
        assert {"effort", "effective_effort", "kl_mean", "top1_agreement", "ppl", "ppl_dense"} <= set(r)
        assert abs(r["effective_effort"] - r["effort"]) < 0.06
    # at effort 0.5 bucketMul keeps the important products, activation-only drops whole inputs: on
    # this tiny model (fixed seeds) KL 0.035 vs 0.236 and top-1 65 % vs 15 %; assert with margin
    bucket, activation = rows[("bucket", 0.5)], rows[("activation", 0.5)]
    assert bucket["kl_mean"] < 0.5 * activation["kl_mean"]
    assert bucket["top1_agreement"] > activation["top1_agreement"]


def test_eval_scores_each_text_and_their_mean(tiny_gguf, cache, capsys, tmp_path):
    fox, lorem = tmp_path / "fox.txt", tmp_path / "lorem.txt"
    fox.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    lorem.write_text("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod. " * 20)
    code = main(["eval", "--model", str(tiny_gguf("F16")), "--text-file", str(fox), "--text-file", str(lorem),
                 "--tokens", "24", "--efforts", "1,0.5", "--json"])
    assert code == 0
    out, err = capsys.readouterr()  # with --json the tables go to stderr, stdout is the JSON alone
    assert "text 'fox'" in err and "text 'lorem'" in err and "mean over 2 texts (fox, lorem)" in err
    record = json.loads(out.strip().splitlines()[-1])
    assert [t["name"] for t in record["texts"]] == ["fox", "lorem"]
    assert [t["tokens"] for t in record["texts"]] == [24, 24] and record["tokens"] == 48
    per_text = [{(r["strategy"], r["effort"]): r for r in t["results"]} for t in record["texts"]]
    mean = {(r["strategy"], r["effort"]): r for r in record["mean"]}
    assert set(mean) == {("bucket", 1.0), ("bucket", 0.5), ("activation", 1.0), ("activation", 0.5)}
    assert per_text[0][("bucket", 0.5)]["kl_mean"] != per_text[1][("bucket", 0.5)]["kl_mean"]
    for key, row in mean.items():
        for field in ("kl_mean", "top1_agreement", "effective_effort"):
            assert row[field] == pytest.approx((per_text[0][key][field] + per_text[1][key][field]) / 2, abs=2e-6)
        assert row["ppl"] == pytest.approx((per_text[0][key]["ppl"] * per_text[1][key]["ppl"]) ** 0.5, rel=1e-5)


def test_eval_default_texts_feed_the_chat_quality_table(tiny_gguf, cache, capsys):
    """No --text-file: every bundled text is scored, and the chat's cached top-1 is their mean."""
    from engine import quality
    from engine.tools import evaluate

    model = tiny_gguf("F16")
    code = main(["eval", "--model", str(model), "--tokens", "12", "--efforts", "1,0.5",
                 "--strategy", "bucket", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [t["name"] for t in record["texts"]] == [p.stem for p in evaluate.default_texts()]
    mean = {r["effort"]: r["top1_agreement"] for r in record["mean"]}
    table = dict(quality.load(session.load(str(model), runtime="mlx").files.fingerprint))
    assert table[0.5] == pytest.approx(mean[0.5], abs=1e-6) and table[1.0] == 1.0


def test_eval_speed_frontier(tiny_gguf, cache, capsys, tmp_path):
    picture = tmp_path / "frontier.png"
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    code = main(["eval", "--model", str(tiny_gguf("F16")), "--text-file", str(text), "--tokens", "16",
                 "--efforts", "1,0.5", "--speed", "--speed-tokens", "2", "--rounds", "1",
                 "--plot", str(picture), "--json"])
    assert code == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, err = capsys.readouterr()
    assert "speed-quality frontier" in err
    record = json.loads(out.strip().splitlines()[-1])
    points = {(p["strategy"], p["effort"]): p for p in record["frontier"]}
    assert set(points) == {("bucket", 1.0), ("bucket", 0.5), ("activation", 1.0), ("activation", 0.5)}
    mean = {(r["strategy"], r["effort"]): r for r in record["mean"]}
    for key, p in points.items():
        assert p["speedup"] > 0 and p["decode_tps"] > 0 and p["spread"] >= 0
        assert p["kl_mean"] == mean[key]["kl_mean"] and p["top1_agreement"] == mean[key]["top1_agreement"]
    assert points[("bucket", 1.0)]["speedup"] == 1.0 and points[("bucket", 1.0)]["effective_effort"] == 1.0
    assert 0.3 < points[("bucket", 0.5)]["effective_effort"] < 1.0  # what the timed decode multiplied
    assert points[("bucket", 0.5)]["kl_mean"] > 0 and points[("activation", 0.5)]["kl_mean"] > 0


def test_bundled_eval_texts_are_held_out_and_shipped():
    """Four texts in different registers, none of them the calibration text, long enough for the
    default 384 tokens (the slow test_real_model checks their SmolLM2 token counts), in the wheel."""
    import tomllib
    from pathlib import Path

    from engine.effort.calibrate import CALIBRATION_TEXT
    from engine.tools import evaluate

    texts = evaluate.default_texts()
    assert [p.name for p in texts] == ["code.txt", "conversation.txt", "prose.txt", "technical.txt"]
    calibration = CALIBRATION_TEXT.read_text(encoding="utf-8")
    bodies = [p.read_text(encoding="utf-8") for p in texts]
    assert len(set(bodies)) == len(bodies)
    for path, body in zip(texts, bodies):
        assert body != calibration and body[:200] not in calibration, path.name
        assert len(body.split()) >= 350, path.name
    assert bodies[1].startswith("User:") and "\nAssistant:" in bodies[1]
    compile(bodies[0], "code.txt", "exec")  # the code text is real Python
    root = Path(evaluate.__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p.resolve() for pattern in package_data.get("engine", []) for p in (root / "engine").glob(pattern)}
    assert set(texts) <= shipped and CALIBRATION_TEXT in shipped


def test_bench_json(tiny_gguf, cache, capsys):
    code = main(["bench", "--model", str(tiny_gguf("F16")), "--efforts", "0.5", "--tokens", "4", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"backend", "device", "model", "dense", "results", "peak_memory_bytes"} <= set(record)
    assert record["dense"]["decode_tps"] > 0 and record["dense"]["ms_per_token"] > 0
    (row,) = record["results"]
    assert row["effort"] == 0.5 and 0.4 < row["effective_effort"] < 0.6 and row["gbps"] > 0
    assert set(row["kernel_ms"]) == set(row["kernel_gbps"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("runtime", ["cpu", "mlx"])
def test_bench_synthetic_model(runtime, capsys):
    """A random model of SmolLM2's shapes, one layer: both runtimes time it, uniform allocation."""
    code = main(["bench", "--synthetic", "smollm2-135m", "--layers", "1", "--runtime", runtime,
                 "--efforts", "0.5", "--tokens", "2", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "random smollm2-135m (1 layers)"
    (row,) = record["results"]
    assert abs(row["effective_effort"] - 0.5) < 0.05 and row["kernel_ms"]["down_proj"] > 0


@pytest.mark.parametrize("runtime", ["cpu", "mlx"])
def test_bench_activation_baseline(runtime, capsys):
    """`--strategy activation` times the TEAL-like baseline (whole input columns) on the same kernels."""
    code = main(["bench", "--synthetic", "smollm2-135m", "--layers", "1", "--runtime", runtime,
                 "--strategy", "activation", "--efforts", "0.25", "--tokens", "2", "--json"])
    assert code == 0
    out, err = capsys.readouterr()
    record = json.loads(out.strip().splitlines()[-1])
    assert record["strategy"] == "activation" and "whole input columns" in err.splitlines()[0]
    (row,) = record["results"]
    assert abs(row["effective_effort"] - 0.25) < 0.01


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--text-file", "/no/such/file.txt"], "no such text file"),
        (["bench", "--efforts", "0.5,lots"], "effort must be"),
        (["generate", "--prompt", "hi", "--model", "/no/such/model.gguf"], "no such file"),
        (["generate", "--prompt", "hi", "--effort", "2x"], "effort must be"),
        (["eval", "--tokens", "0"], "positive"),
        (["generate"], "--prompt"),
        (["bench", "--synthetic", "gpt-9"], "unknown synthetic shape"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys, cache):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors leave through sys.exit
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_first_use_loads_dense_and_attaches_the_effort_conversion_made_in_the_background(tiny_gguf, cache):
    """The chat's worker: a model that was never converted is usable at once (dense); `effort
    convert` runs in a child process and its result is attached between jobs."""
    import threading

    from engine.events import LoadProgress
    from engine.api import ChatRequest
    from engine.worker import EngineWorker

    model = str(tiny_gguf("F16"))
    worker = EngineWorker()
    events: list[LoadProgress] = []
    done, ready = threading.Event(), threading.Event()
    infos = []

    def progress(p: LoadProgress) -> None:
        events.append(p)
        if p.stage in ("effort-ready", "effort-failed"):
            ready.set()

    try:
        worker.load(model, progress, lambda info, error: (infos.append((info, error)), done.set()))
        assert done.wait(60) and infos[0][1] is None
        assert worker.loaded.effort_pending and worker.loaded.converted is None
        assert any(p.stage == "effort" for p in events)  # announced
        assert ready.wait(180), "the background conversion did not finish"
        final = [p for p in events if p.stage.startswith("effort")][-1]
        assert final.stage == "effort-ready", final.message
        # the child's own progress, not a timer: its steps, counted as it counts them
        assert any(p.stage == "effort" and p.total > 1 and p.message == "calibrating" for p in events)
        finished = threading.Event()
        results = []
        worker.effort.set(0.5)
        request = ChatRequest(messages=[{"role": "user", "content": "hello"}], sampling=SamplingSettings(max_tokens=4))
        worker.generate(request, lambda e: None, lambda r: (results.append(r), finished.set()))
        assert finished.wait(60) and results[0].error is None, results[0].error
        assert worker.loaded.converted is not None
        assert all(e < 0.7 for e in results[0].effective_trace[1:]), results[0].effective_trace  # the dial acts now (the first token comes from the dense prefill)
    finally:
        worker.close()
