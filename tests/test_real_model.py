"""The real SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers on the same file.

Marked slow (transformers takes ~40 s to load the GGUF); runs in CI. The model
comes from the product's own fetch-and-cache (`effort pull`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import session
from engine.api import EffortSetting, SamplingSettings

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "Name three colours of the rainbow."}],
    [{"role": "system", "content": "You answer in one sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."}],
]
NEW_TOKENS = 40


@pytest.fixture(scope="module", params=["mlx", "cpu"])
def loaded(request, smollm2_path):
    return session.load(str(smollm2_path), runtime=request.param)


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("messages", PROMPTS, ids=["plain", "system", "code"])
def test_prompt_ids_and_greedy_tokens_equal_transformers(loaded, messages, hf_smollm2_model, hf_smollm2_tokenizer):
    ids = loaded.tokenizer.encode_chat(messages)
    hf_ids = hf_smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    hf_ids = list(hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids)
    assert ids == hf_ids
    result = loaded.generator.generate(ids, SamplingSettings(max_tokens=NEW_TOKENS), EffortSetting(1.0))
    assert result.token_ids == _hf_greedy(hf_smollm2_model, ids, NEW_TOKENS)
    assert result.text == hf_smollm2_tokenizer.decode(result.token_ids, skip_special_tokens=True)


# MLX holds the file's weights in fp32, exactly as transformers does. The native CPU path keeps the
# file's values too (the Q4_1 projections at 4 bits, the Q8_0 head in two planes), but multiplies them
# with activations carried in two int8 levels per block (~16 bits), so it gets a looser bound.
@pytest.mark.parametrize("runtime,tolerance", [("mlx", 1e-4), ("cpu", 1e-3)])  # measured: 3e-6, 1.3e-4
def test_logits_agree_with_transformers(smollm2_path, hf_smollm2_model, runtime, tolerance):
    import torch

    loaded = session.load(str(smollm2_path), runtime=runtime)
    if runtime == "cpu":
        matrices = loaded.runtime.planes.matrices
        assert matrices["lm_head.weight"].kind == "q8" and matrices["model.layers.0.mlp.up_proj.weight"].kind == "q4"
    ids = loaded.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    with torch.no_grad():
        ref = hf_smollm2_model(torch.tensor([ids])).logits[0, -1].numpy()
    ours = loaded.runtime.prefill(ids)
    assert np.argmax(ours) == np.argmax(ref)
    assert np.abs(ours - ref).max() < tolerance * np.abs(ref).max()


def test_generate_json_cli(smollm2_path, capsys):
    from engine.cli import main

    code = main(["generate", "--model", str(smollm2_path), "--prompt", "Say hello.", "--max-tokens", "8", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "text", "token_ids", "prompt_token_ids", "prompt_tokens", "generated_tokens", "prompt_tps", "decode_tps",
        "ttft_s", "effort", "model", "backend", "peak_memory_bytes", "finish_reason",
    ):
        assert key in record
    assert record["generated_tokens"] == len(record["token_ids"]) <= 8
    assert record["prompt_tokens"] == len(record["prompt_token_ids"])
    assert record["effort"] == 1.0 and record["decode_tps"] > 0


@pytest.fixture(scope="module")
def native(smollm2_path):
    return session.load(str(smollm2_path), runtime="cpu")


def test_native_effort_path_agrees_with_the_numpy_reference(native):
    """The C kernels on the real weights at effort 0.4, matrix by matrix, against the layout's reference."""
    from engine.effort.planes import layout

    rt = native.runtime
    ids = native.tokenizer.encode("Effort decides how many bytes of each row every token reads.")
    inputs = rt.projection_inputs(ids)
    tau = rt.allocation.thresholds(0.4)
    for j in range(0, len(rt.names), 13):  # a spread of layers and kinds, and the head
        name = rt.names[j]
        pm, x = rt.planes.matrices[name], inputs[name][-1]
        y, share = rt.project(name, x, 0.4)
        t = float(np.float32(tau[j]))
        lv = layout.levels(pm, x, t)
        want = layout.matvec(pm, x, lv, precise=t < 0)
        assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max(), name
        assert share == pytest.approx(layout.rows_read(pm, lv) / (pm.in_dim * pm.n_planes))


def test_planes_beat_activation_and_effort_is_honest(native):
    from engine.tools import evaluate

    text = evaluate.DEFAULT_TEXT.read_text(encoding="utf-8")
    ids = native.tokenizer.encode(text)[:97]
    results, ppl_dense = evaluate.evaluate(native.runtime, ids, [1.0, 0.75, 0.5], ["planes", "activation"])
    rows = {(r.strategy, r.effort): r for r in results}
    assert rows[("planes", 1.0)].kl_mean == 0.0 and rows[("planes", 1.0)].top1_agreement == 1.0
    assert rows[("planes", 0.5)].kl_mean < rows[("activation", 0.5)].kl_mean
    assert rows[("planes", 0.75)].kl_mean < 0.08 and rows[("planes", 0.5)].kl_mean < 0.6  # issue 20's bars (Q4_1)
    for r in results:  # the bytes read are the effort asked for (static thresholds: within a few percent)
        assert abs(r.effective_effort - r.effort) < 0.05, r


def test_bundled_eval_texts_cover_the_default_tokens(smollm2_path):
    """Every bundled evaluation text is long enough for `effort eval`'s default 384 tokens."""
    from engine.io.loader import open_model
    from engine.tools import evaluate

    tokenizer = open_model(smollm2_path).tokenizer
    for path in evaluate.default_texts():
        assert len(tokenizer.encode(path.read_text(encoding="utf-8"))) >= 400, path.name
