"""Effort end to end on tiny models: the layout cache, live effort, truncated loads, eval and bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main
from engine import session
from engine.runtime import native
from engine.api import EffortSetting, SamplingSettings
from engine.effort.bucket import B
from engine.effort.planes import calibrate, layout, store
from engine.generate import Generator


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(params=["cpu", "mlx"])
def loaded(request, tiny_gguf, cache):
    return session.load(str(tiny_gguf("F16")), runtime=request.param)


def test_layout_is_cached_atomically_and_deterministic(tiny_gguf, cache):
    model = tiny_gguf("F16")
    first = session.load(str(model), runtime="cpu")
    path = store.layout_path(first.files)
    assert first.runtime.planes.path == path
    assert path.is_file() and not list(path.parent.glob("*.part"))
    assert calibrate.allocation_path(first.files).is_file()  # calibrated on first use
    stamp = path.stat().st_mtime_ns
    before = path.read_bytes()
    second = session.load(str(model), runtime="cpu")  # reuses the cache
    assert path.stat().st_mtime_ns == stamp and second.runtime.calibrated
    session.load(str(model), runtime="cpu", relayout=True)
    assert path.read_bytes() == before  # same input, same bytes


def test_effort_one_is_exactly_dense_and_lower_effort_is_honest(loaded):
    ids = loaded.tokenizer.encode("hello world, this is a test of effort")
    rt = loaded.runtime
    dense = rt.prefill(ids)
    rt.reset(len(ids) - 1)
    logits_full, used = rt.step(ids[-1], 1.0)
    assert used == 1.0
    rt.reset(len(ids) - 1)
    logits_half, used_half = rt.step(ids[-1], 0.5)
    # bucketMul reads its exact share; the planes read by thresholds calibrated on another text
    assert abs(used_half - 0.5) < (0.06 if rt.strategies[0] == "bucket" else 0.2)
    if rt.strategies[0] == "planes":
        assert np.array_equal(logits_full, dense)  # the dense path is the same kernel, bit for bit
    assert np.abs(logits_full - dense).max() < 1e-3 * np.abs(dense).max()
    assert not np.allclose(logits_half, logits_full)


def test_native_effort_step_matches_the_numpy_reference(tiny_gguf, cache):
    """Every matrix of a decode step at effort 0.4 through the C kernels equals the layout's reference
    (the levels its calibrated threshold picks, then layout.matvec), and reads the rows it says."""
    loaded = session.load(str(tiny_gguf("F16")), runtime="cpu")
    rt = loaded.runtime
    ids = loaded.tokenizer.encode("reference check")
    inputs = rt.projection_inputs(ids)
    tau = rt.allocation.thresholds(0.4)
    assert len(inputs) == len(rt.names) == len(tau)
    for j, name in enumerate(rt.names):
        pm, x = rt.planes.matrices[name], inputs[name][-1]
        y, share = rt.project(name, x, 0.4)
        t = float(np.float32(tau[j]))
        y_ref = layout.matvec(pm, x, layout.levels(pm, x, t), precise=t < 0)  # under effort: int8 activations
        lv = layout.levels(pm, x, t)
        assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max(), name
        assert share == pytest.approx(layout.rows_read(pm, lv) / (pm.in_dim * pm.n_planes))


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
    assert all(0.1 < e < 0.5 for e in res.effective_trace[3:])


def test_load_ranks_caps_effort_and_memory(tiny_gguf, cache, capsys):
    """bucketMul on MLX: the first K ranks of 16 only. The CPU path reads planes: the flag is refused."""
    full = session.load(str(tiny_gguf("F16")), runtime="mlx")
    part = session.load(str(tiny_gguf("F16")), runtime="mlx", load_ranks=B // 2)
    assert part.info.effort_cap == 0.5 and full.info.effort_cap == 1.0
    assert part.converted.nbytes() < 0.6 * full.converted.nbytes()
    assert part.info.resident_bytes < full.info.resident_bytes  # and it is reported
    ids = part.tokenizer.encode("truncated load")
    part.runtime.prefill(ids[:-1])
    _, used = part.runtime.step(ids[-1], 0.5)
    assert used <= 0.5 + 1e-9
    assert main(["generate", "--model", str(tiny_gguf("F16")), "--prompt", "hi", "--load-ranks", "8"]) == 2
    assert "--load-ranks" in capsys.readouterr().err


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
    assert set(rows) == {(s, e) for s in ("planes", "bucket", "activation") for e in (1.0, 0.5)}
    for strategy in ("planes", "bucket"):
        assert rows[(strategy, 1.0)]["kl_mean"] < 1e-6 and rows[(strategy, 1.0)]["top1_agreement"] == 1.0
    for r in record["results"]:
        assert {"effort", "effective_effort", "kl_mean", "top1_agreement", "ppl", "ppl_dense"} <= set(r)
        assert abs(r["effective_effort"] - r["effort"]) < (0.2 if r["strategy"] == "planes" else 0.06)
    # at effort 0.5 bucketMul and the planes keep what matters most, activation-only drops whole inputs:
    # on this tiny model (fixed seeds) KL 0.035 (bucket) vs 0.236 (activation); assert with margin
    activation = rows[("activation", 0.5)]
    for strategy in ("planes", "bucket"):
        assert rows[(strategy, 0.5)]["kl_mean"] < 0.5 * activation["kl_mean"], strategy


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
    assert set(mean) == {(s, e) for s in ("planes", "bucket", "activation") for e in (1.0, 0.5)}
    assert per_text[0][("planes", 0.5)]["kl_mean"] != per_text[1][("planes", 0.5)]["kl_mean"]
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
                 "--strategy", "planes", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [t["name"] for t in record["texts"]] == [p.stem for p in evaluate.default_texts()]
    mean = {r["effort"]: r["top1_agreement"] for r in record["mean"]}
    table = dict(quality.load(session.load(str(model), runtime="cpu").files.fingerprint, "planes"))
    assert quality.load(session.load(str(model), runtime="cpu").files.fingerprint, "bucket") == ()  # MLX's dial
    assert table[0.5] == pytest.approx(mean[0.5], abs=1e-6) and table[1.0] == 1.0


def test_the_bundled_quality_tables_are_per_strategy(cache):
    """The shipped model's tables: the CPU's planes and MLX's bucketMul differ, and each dial reads its own."""
    from engine import quality

    bundled = json.loads(quality.BUNDLED.read_text(encoding="utf-8"))
    (sha,) = [k for k in bundled if not k.startswith("_")]
    planes, bucket = quality.load(sha, "planes"), quality.load(sha, "bucket")
    assert planes and bucket and planes != bucket
    assert dict(planes)[1.0] == 1.0 and quality.load(sha, "activation") == ()


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
    assert set(points) == {(s, e) for s in ("planes", "bucket", "activation") for e in (1.0, 0.5)}
    mean = {(r["strategy"], r["effort"]): r for r in record["mean"]}
    for key, p in points.items():
        assert p["speedup"] > 0 and p["decode_tps"] > 0 and p["spread"] >= 0
        assert p["kl_mean"] == mean[key]["kl_mean"] and p["top1_agreement"] == mean[key]["top1_agreement"]
    for strategy in ("planes", "bucket"):
        assert points[(strategy, 1.0)]["speedup"] == 1.0 and points[(strategy, 1.0)]["effective_effort"] == 1.0
        assert 0.2 < points[(strategy, 0.5)]["effective_effort"] < 1.0  # what the timed decode read
        assert points[(strategy, 0.5)]["kl_mean"] > 0
    assert points[("activation", 0.5)]["kl_mean"] > 0


def test_bundled_eval_texts_are_held_out_and_shipped():
    """Four texts in different registers, none of them the calibration text, long enough for the
    default 384 tokens (the slow test_real_model checks their SmolLM2 token counts), in the wheel."""
    import tomllib
    from pathlib import Path

    from engine.effort.planes.calibrate import CALIBRATION_TEXT
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
    assert row["effort"] == 0.5 and 0.3 < row["effective_effort"] < 0.7 and row["gbps"] > 0
    assert record["strategy"] == "planes"
    assert set(row["kernel_ms"]) == set(row["kernel_gbps"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "head"}


@pytest.mark.parametrize("runtime", ["cpu", "mlx"])
def test_bench_synthetic_model(runtime, capsys):
    """A random model of SmolLM2's shapes, one layer: both runtimes time it, uniform allocation."""
    code = main(["bench", "--synthetic", "smollm2-135m", "--layers", "1", "--runtime", runtime,
                 "--efforts", "0.5", "--tokens", "2", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "random smollm2-135m (1 layers, q8_0)"
    (row,) = record["results"]
    assert abs(row["effective_effort"] - 0.5) < 0.05 and row["kernel_ms"]["down_proj"] > 0


@pytest.mark.parametrize("runtime", ["cpu", "mlx"])
def test_bench_activation_baseline(runtime, capsys):
    """`--strategy activation` times the TEAL-like baseline (whole input rows) on the same kernels."""
    code = main(["bench", "--synthetic", "smollm2-135m", "--layers", "1", "--runtime", runtime,
                 "--strategy", "activation", "--efforts", "0.25", "--tokens", "2", "--json"])
    assert code == 0
    out, err = capsys.readouterr()
    record = json.loads(out.strip().splitlines()[-1])
    assert record["strategy"] == "activation" and "whole input rows" in err.splitlines()[0]
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


def test_first_use_answers_at_once_and_attaches_the_calibration_made_in_the_background(tiny_gguf, cache):
    """The chat's worker: a model that was never calibrated is usable at once (its layout is made at
    load, the dial reads per-token budgets); `engine.conversion_child` calibrates in a child process,
    reporting its passes, and its allocation is attached between jobs."""
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
        assert worker.loaded.effort_pending and not worker.loaded.runtime.calibrated
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
        assert worker.loaded.runtime.calibrated
        assert all(e < 0.7 for e in results[0].effective_trace[1:]), results[0].effective_trace  # the dial acts (the first token comes from the dense prefill)
    finally:
        worker.close()


def test_the_batched_prompt_and_verify_give_the_decode_steps_bits(tiny_gguf, cache):
    """The CPU runtime reads a prompt (and drafted tokens to verify) in batches, every matrix once per
    batch; each position's logits are exactly those of one decode step after another."""
    loaded = session.load(str(tiny_gguf("Q8_0")), runtime="cpu", effort=False)
    rt = loaded.runtime
    ids = loaded.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)[:40]
    rt.reset(0)
    steps = [rt.step(t, 1.0)[0] for t in ids]
    rt.reset(0)
    rt.batch = 16  # several chunks
    assert np.array_equal(rt.prefill(ids), steps[-1])
    rt.reset(30)
    assert np.array_equal(rt.verify(ids[30:36]), np.stack(steps[30:36]))
    assert rt.length == 36
    logits, _ = rt.step(ids[36], 1.0)  # the cache the batch wrote is the one the steps wrote
    assert np.array_equal(logits, steps[36])
    # a text scored at an effort: each token reads its own rows, and gets what a step at that effort gives
    for effort in (0.5, 0.25):
        rt.reset(10)
        one_by_one = [rt.step(t, effort) for t in ids[10:30]]
        rt.reset(10)
        together, read = rt.forward(ids[10:30], effort)
        assert np.array_equal(together, np.stack([lg for lg, _ in one_by_one]))
        assert read == pytest.approx(np.mean([r for _, r in one_by_one]))
    # calibration's coarse passes (int8 activations alone): batched, they too are the steps' bits
    whole = np.ones(len(rt.names), np.float32)
    coarse = native.Effort(None, whole.ctypes.data, 0, 1)
    rt.reset(0)
    together = rt.run_batch(ids[:20], coarse)
    rt.reset(0)
    alone = []
    for t in ids[:20]:
        rt._step(t, coarse)
        alone.append(rt.logits())
    assert np.array_equal(together, np.stack(alone))
    assert not np.array_equal(together[-1], steps[19])  # and coarse is not the precise path


@pytest.mark.parametrize("which", ["gguf", "mistral"])
def test_the_cpu_runtime_gives_the_same_bits_batched_or_stepped_on_one_thread_or_two(which, tiny_gguf, tiny_hf, cache):
    """Attention folds its chunks in position order whoever computes them: a prompt read in batches and
    the same tokens decoded one by one, on one thread or two, give the same logits (mistral: through its
    sliding window of 64)."""
    from engine.runtime import native

    path = tiny_gguf("Q8_0") if which == "gguf" else tiny_hf("mistral")
    rt = session.load(str(path), runtime="cpu", effort=False).runtime
    ids = [int(t) for t in np.random.default_rng(3).integers(5, 300, 200)]
    runs = []
    try:
        for threads in (1, 2):
            rt.lib.ecpu_init(threads)
            rt.reset(0)
            batched = rt.verify(ids)
            rt.reset(0)
            stepped = np.stack([rt.step(t, 1.0)[0] for t in ids])
            assert np.array_equal(batched, stepped), threads
            runs.append(batched)
    finally:
        rt.lib.ecpu_init(native.threads())
    assert np.array_equal(runs[0], runs[1])
