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


def test_logits_agree_with_transformers(smollm2_path, hf_smollm2_model):
    import torch

    loaded = session.load(str(smollm2_path), runtime="mlx")
    ids = loaded.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    with torch.no_grad():
        ref = hf_smollm2_model(torch.tensor([ids])).logits[0, -1].numpy()
    ours = loaded.runtime.prefill(ids)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_generate_json_cli(smollm2_path, capsys):
    from effort_tui.cli import main

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
