"""Default sampling on the real SmolLM2-135M-Instruct: long answers that don't loop.

Greedy decoding of this model repeats itself ("a freezer door, a freezer, a freezer door, …"; an
essay on Rome repeats one paragraph). With the chat defaults (`engine.sampler.CHAT_DEFAULTS`) and a
fixed seed, each of three long-answer prompts × 200 tokens keeps at least 60 % distinct 4-grams.
"""

from __future__ import annotations

import pytest

from dataclasses import replace

from engine import session
from engine.api import EffortSetting
from engine.sampler import CHAT_DEFAULTS, defaults_for

pytestmark = pytest.mark.slow

LONG_PROMPTS = [
    "Write a long essay about the history of ancient Rome.",
    "Explain in detail how a refrigerator works.",
    "Tell me a long story about a dragon who learns to cook.",
]
TOKENS = 200


def distinct_ngrams(items: list, n: int = 4) -> float:
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@pytest.fixture(scope="module")
def dense(smollm2_path):
    return session.load(str(smollm2_path), effort=False)


def test_the_default_model_has_the_chat_defaults(dense):
    assert defaults_for(dense.files.metadata, None) == CHAT_DEFAULTS  # its GGUF has no general.sampling.*


@pytest.mark.parametrize("prompt", LONG_PROMPTS, ids=["rome", "fridge", "dragon"])
def test_default_sampling_keeps_long_answers_from_looping(dense, prompt):
    ids = dense.tokenizer.encode_chat([{"role": "user", "content": prompt}])
    settings = replace(CHAT_DEFAULTS, seed=1234, max_tokens=TOKENS)
    result = dense.generator.generate(ids, settings, EffortSetting(1.0))
    assert result.generated_tokens >= 100, result.text  # a long answer (200 unless the model ends it)
    share = distinct_ngrams(result.token_ids)
    words = distinct_ngrams(result.text.split())
    assert share >= 0.60 and words >= 0.60, (share, words, result.text)
