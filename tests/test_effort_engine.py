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
from engine.effort.bucket import CPU_BUCKET, GPU_BUCKET
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
    assert path == convert.converted_path(first.files, first.converted.bucket)
    assert path.is_file() and not list(path.parent.glob("*.part"))
    stamp = path.stat().st_mtime_ns
    before = load_file(str(path))
    second = session.load(str(model), runtime="cpu")  # reuses the cache
    assert path.stat().st_mtime_ns == stamp
    session.prepare_effort(second.files, second.model, lambda p: None, None, first.converted.bucket, force=True)
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
    full = convert.load(loaded.files, bucket=loaded.converted.bucket)
    for j, name in enumerate(convert.projection_names(loaded.model.config.num_layers)):
        e = float(np.float32(local[j]))
        x = inputs[name][-1]
        y, share = rt.project(name, x, e)
        y_ref, k = reference.bucket_matvec(full.buckets[name], x, e)
        scale = np.abs(x).sum() * np.abs(full.buckets[name].values()).max()
        assert np.abs(y - y_ref).max() <= 1e-5 * scale, name
        if e >= 1.0:  # the allocation put this matrix on the dense kernel
            assert share == 1.0
        else:
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
    part = session.load(str(tiny_gguf("F16")), runtime="mlx", load_ranks=GPU_BUCKET // 2)
    assert part.info.effort_cap == 0.5 and full.info.effort_cap == 1.0
    assert part.converted.nbytes() < 0.6 * full.converted.nbytes()
    assert part.info.resident_bytes < full.info.resident_bytes  # and it is reported
    ids = part.tokenizer.encode("truncated load")
    part.runtime.prefill(ids[:-1])
    _, used = part.runtime.step(ids[-1], 0.5)
    assert used <= 0.5 + 1e-9
    # the CPU keeps its bucket lists at half the ranks and no dense copy: less memory on that backend too
    native_full = session.load(str(tiny_gguf("F16")), runtime="cpu")
    native = session.load(str(tiny_gguf("F16")), runtime="cpu", load_ranks=CPU_BUCKET // 2)
    assert native.info.effort_cap == 0.5 and native_full.info.effort_cap == 1.0
    assert native.runtime.layout_bytes() < 0.5 * native_full.runtime.layout_bytes()
    assert native.info.resident_bytes < native_full.info.resident_bytes
    native.runtime.prefill(ids[:-1])
    _, used_native = native.runtime.step(ids[-1], 1.0)  # capped even when asked for everything
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
    out = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out[-1])
    assert record["strategy"] == "activation" and "whole input columns" in out[0]
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
