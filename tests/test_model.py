"""The engine's forward pass against an independent implementation (transformers on torch CPU).

Both the MLX runtime (batched prefill + decode) and the native CPU runtime (MLX
prefill + C decode) must give transformers' logits for the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import session

CASES = {
    "gguf-F16": ("gguf", dict(qtype="F16")),
    "gguf-Q8_0": ("gguf", dict(qtype="Q8_0")),
    "gguf-Q4_1": ("gguf", dict(qtype="Q4_1", embed_qtype="Q8_0")),
    "gguf-qwen2-untied": ("gguf", dict(qtype="Q8_0", arch="qwen2", tied=False)),
    "hf-llama": ("hf", dict(arch="llama")),
    "hf-mistral": ("hf", dict(arch="mistral")),  # sliding window 64: the sequence below is longer
    "hf-qwen2": ("hf", dict(arch="qwen2")),
}
LENGTH = 80  # > the tiny Mistral's sliding window
PREFILL = 70


def _path(case, tiny_gguf, tiny_hf):
    kind, kw = CASES[case][0], dict(CASES[case][1])
    return tiny_gguf(kw.pop("qtype"), **kw) if kind == "gguf" else tiny_hf(**kw)


def _reference(transformers_cache, path, ids):
    import torch

    model = transformers_cache(path)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _tokens(vocab: int, n: int = LENGTH) -> list[int]:
    return np.random.default_rng(1).integers(3, vocab, n).tolist()


def _close(ours, ref, rel):
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= rel * scale, (np.abs(ours - ref).max(), scale)
    assert np.argmax(ours) == np.argmax(ref)


@pytest.mark.parametrize("case", list(CASES))
def test_mlx_runtime_matches_transformers(case, tiny_gguf, tiny_hf, transformers_cache):
    path = _path(case, tiny_gguf, tiny_hf)
    loaded = session.load(str(path), runtime="mlx")
    ids = _tokens(loaded.files.config.vocab_size)
    ref = _reference(transformers_cache, path, ids)
    rt = loaded.runtime
    _close(rt.prefill(ids[:PREFILL]), ref[PREFILL - 1], 1e-5)
    for n in range(PREFILL, LENGTH):
        logits, effective = rt.step(ids[n], 1.0)
        _close(logits, ref[n], 1e-5)
        assert effective == 1.0


@pytest.mark.parametrize("case", ["gguf-F16", "gguf-Q4_1", "gguf-qwen2-untied", "hf-mistral"])
def test_native_cpu_runtime_matches_transformers(case, tiny_gguf, tiny_hf, transformers_cache):
    path = _path(case, tiny_gguf, tiny_hf)
    loaded = session.load(str(path), runtime="cpu")
    ids = _tokens(loaded.files.config.vocab_size)
    ref = _reference(transformers_cache, path, ids)
    rt = loaded.runtime
    rt.prefill(ids[:PREFILL])
    # the C path keeps projection weights in float16: exact for an F16 file, rounded otherwise
    rel = 1e-5 if case in ("gguf-F16", "hf-mistral") else 2e-3
    for n in range(PREFILL, LENGTH):
        logits, _ = rt.step(ids[n], 1.0)
        _close(logits, ref[n], rel)
    # a second turn: drop the last 3 positions and prefill them again
    rt.reset(LENGTH - 3)
    _close(rt.prefill(ids[LENGTH - 3 :]), ref[LENGTH - 1], rel)
