"""The engine's forward pass against an independent implementation (transformers on torch CPU).

Both the MLX runtime (batched prefill + decode) and the native CPU runtime (the planes layout) must
give transformers' logits for the same weights. The planes keep a 4-bit or Q8_0 file's values exactly;
16- and 32-bit weights become Q8_0-style 8-bit codes there, so for those files the reference is
transformers running the layout's own weights, and the layout is checked against the file separately.
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


def _with_layout_weights(model, planes):
    """transformers' model with each projection and the head replaced by the layout's own values (a tied
    head untied: the engine reads the embedding from the file and multiplies the head's layout)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, pm in planes.matrices.items():
            if name == "lm_head.weight":
                head = torch.from_numpy(np.ascontiguousarray(pm.dense()[: model.lm_head.weight.shape[0]]))
                model.lm_head.weight = torch.nn.Parameter(head)
            else:
                params[name].copy_(torch.from_numpy(pm.dense()))
    return model


@pytest.mark.parametrize("case", ["gguf-F16", "gguf-Q4_1", "gguf-qwen2-untied", "hf-mistral"])
def test_native_cpu_runtime_matches_transformers(case, tiny_gguf, tiny_hf, transformers_cache):
    import torch

    path = _path(case, tiny_gguf, tiny_hf)
    loaded = session.load(str(path), runtime="cpu")
    ids = _tokens(loaded.files.config.vocab_size)
    rt = loaded.runtime
    exact = case in ("gguf-Q4_1", "gguf-qwen2-untied")  # Q4_1 / Q8_0: the file's values, kept as they are
    for name, pm in rt.planes.matrices.items():
        stored = loaded.files.tensors.get(name if name in loaded.files.tensors.names() else "model.embed_tokens.weight")
        err = np.abs(pm.dense()[: stored.shape[0]] - stored).max()
        # re-quantized to Q8_0: within half a code step of each block's scale
        assert err == 0.0 if exact else err <= 0.5 * np.abs(stored).max() / 127 + 1e-7, name
    model = transformers_cache(path) if exact else _with_layout_weights(transformers_cache(path), rt.planes)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    rt.prefill(ids[:PREFILL])
    # activations enter the integer products at ~16 bits (two int8 levels per block of 32)
    rel = 1e-3
    for n in range(PREFILL, LENGTH):
        logits, _ = rt.step(ids[n], 1.0)
        _close(logits, ref[n], rel)
    # a second turn: drop the last 3 positions and prefill them again
    rt.reset(LENGTH - 3)
    _close(rt.prefill(ids[LENGTH - 3 :]), ref[LENGTH - 1], rel)
