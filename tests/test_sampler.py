"""The sampler's min-p and repetition penalty, and where the default settings come from."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from engine.api import SamplingSettings
from engine.sampler import CHAT_DEFAULTS, Sampler, apply_repetition_penalty, defaults_for, model_defaults, overlay


def test_temperature_zero_is_the_exact_argmax_even_with_a_penalty():
    logits = np.array([0.0, 5.0, 4.9, -1.0])
    s = Sampler(SamplingSettings(temperature=0, repetition_penalty=2.0), context=[1, 1, 1])
    assert [s(logits) for _ in range(3)] == [1, 1, 1]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = np.array([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, [0, 0, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
    assert logits.tolist() == [2.0, -2.0, 1.0]  # not modified in place
    assert apply_repetition_penalty(logits, [], 2.0) is logits


def test_the_penalty_looks_back_over_the_window_only():
    logits = np.array([3.0, 2.9])
    settings = SamplingSettings(temperature=1e-3, repetition_penalty=2.0, repetition_window=2, seed=0)
    # token 0 was seen in the window: 3.0/2 < 2.9, so token 1 wins
    assert Sampler(settings, context=[0])(logits) == 1
    # token 0 was seen, but three tokens ago: outside the window of 2
    assert Sampler(settings, context=[0, 5, 6])(logits) == 0


def test_the_sampler_remembers_its_own_choices():
    logits = np.array([3.0, 2.9, 2.8])
    s = Sampler(SamplingSettings(temperature=1e-3, repetition_penalty=10.0, repetition_window=8, seed=0))
    assert [s(logits) for _ in range(3)] == [0, 1, 2]


def test_min_p_keeps_tokens_near_the_top_one():
    logits = np.log(np.array([0.5, 0.3, 0.02, 0.18]))
    draws = {Sampler(SamplingSettings(temperature=1.0, min_p=0.1, seed=s))(logits) for s in range(200)}
    assert draws == {0, 1, 3}  # 0.02 < 0.1 × 0.5
    only_top = {Sampler(SamplingSettings(temperature=1.0, min_p=0.99, seed=s))(logits) for s in range(50)}
    assert only_top == {0}


def test_seeded_sampling_is_reproducible():
    logits = np.random.default_rng(0).normal(size=100)
    a = Sampler(replace(CHAT_DEFAULTS, seed=3), [1, 2, 3])
    b = Sampler(replace(CHAT_DEFAULTS, seed=3), [1, 2, 3])
    assert [a(logits) for _ in range(20)] == [b(logits) for _ in range(20)]


def test_chat_defaults_sample_with_a_penalty():
    assert not CHAT_DEFAULTS.greedy
    assert CHAT_DEFAULTS.temperature == 0.7 and CHAT_DEFAULTS.repetition_penalty > 1.0
    assert CHAT_DEFAULTS.label() == "T0.7 p0.9 min-p0.05 rep1.1"
    assert SamplingSettings().label() == "greedy"


def test_gguf_general_sampling_keys_are_the_models_defaults():
    meta = {"general.sampling.temp": 0.6, "general.sampling.top_p": 0.95, "general.sampling.top_k": 20,
            "general.sampling.penalty_repeat": 1.05, "general.sampling.min_p": "bad"}
    assert model_defaults(meta) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05}
    settings = defaults_for(meta)
    assert (settings.temperature, settings.top_k, settings.min_p) == (0.6, 20, CHAT_DEFAULTS.min_p)
    assert defaults_for({"general.name": "x"}) == CHAT_DEFAULTS


def test_a_hf_folders_generation_config_is_read(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.2, "top_p": 0.8, "repetition_penalty": 1.2}))
    settings = defaults_for({}, tmp_path)
    assert (settings.temperature, settings.top_p, settings.repetition_penalty) == (0.2, 0.8, 1.2)
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.2}))
    assert defaults_for({}, tmp_path) == CHAT_DEFAULTS
    (tmp_path / "generation_config.json").write_text("{not json")
    assert defaults_for({}, tmp_path) == CHAT_DEFAULTS


def test_overlay_keeps_the_users_changes_over_the_models_defaults():
    model = replace(CHAT_DEFAULTS, temperature=0.3, top_k=40)
    user = replace(CHAT_DEFAULTS, top_p=0.5)
    merged = overlay(model, user)
    assert (merged.temperature, merged.top_k, merged.top_p) == (0.3, 40, 0.5)
    assert overlay(model, replace(CHAT_DEFAULTS, temperature=0.0)).greedy
