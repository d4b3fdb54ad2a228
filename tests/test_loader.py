"""open_model: tensors and config equal to what transformers reads from the same files; bad inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
import pytest

import tiny_models as tm
from engine.errors import ModelFileError
from engine.io.gguf_file import llama3_rope_from_factors, unpermute_rows
from engine.io.loader import open_model

GGUF_CASES = {
    "F16": dict(qtype="F16"),
    "Q8_0": dict(qtype="Q8_0"),
    "Q4_1": dict(qtype="Q4_1", embed_qtype="Q8_0"),  # like the real SmolLM2 file
    "Q4_0-untied": dict(qtype="Q4_0", tied=False),
    "spm-F32": dict(qtype="F32", tokenizer="llama"),
    "qwen2-Q8_0": dict(qtype="Q8_0", arch="qwen2", tied=False),
}


def _gguf(tiny_gguf, case):
    kw = dict(GGUF_CASES[case])
    return tiny_gguf(kw.pop("qtype"), **kw)


def _assert_config_matches(config, hf_config):
    assert config.hidden_size == hf_config.hidden_size
    assert config.intermediate_size == hf_config.intermediate_size
    assert config.num_layers == hf_config.num_hidden_layers
    assert config.num_heads == hf_config.num_attention_heads
    assert config.num_kv_heads == hf_config.num_key_value_heads
    assert config.head_dim == getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    assert config.vocab_size == hf_config.vocab_size
    assert math.isclose(config.rms_norm_eps, hf_config.rms_norm_eps, rel_tol=1e-6)
    theta = getattr(hf_config, "rope_theta", None) or hf_config.rope_parameters["rope_theta"]
    assert math.isclose(config.rope_theta, theta)
    assert config.context_length == hf_config.max_position_embeddings
    assert config.tie_word_embeddings == bool(hf_config.tie_word_embeddings)


def _assert_tensors_match(files, model, atol=0.0):
    state = model.state_dict()
    names = files.tensors.names()
    assert sorted(names) == sorted(files.config.expected_shapes())
    for name in names:
        ours = files.tensors.get(name)
        assert ours.dtype == np.float32
        assert ours.shape == tuple(files.tensors.shape(name)) == tuple(state[name].shape), name
        np.testing.assert_allclose(ours, state[name].numpy(), rtol=0, atol=atol, err_msg=name)


# -- GGUF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_gguf_matches_transformers(tiny_gguf, transformers_cache, case):
    path = _gguf(tiny_gguf, case)
    files = open_model(path)
    model = transformers_cache(path)
    assert files.source_format == "gguf"
    assert files.path == path
    _assert_config_matches(files.config, model.config)
    _assert_tensors_match(files, model)


def test_gguf_config_and_file_type(tiny_gguf):
    files = open_model(_gguf(tiny_gguf, "Q4_1"))
    c = files.config
    assert (c.architecture, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        "llama", tm.HIDDEN, tm.LAYERS, tm.HEADS, tm.KV_HEADS, tm.HEAD_DIM
    )
    assert (c.intermediate_size, c.context_length, c.rope_theta) == (tm.FFN, tm.CONTEXT, tm.ROPE_THETA)
    assert c.tie_word_embeddings and not c.attention_bias and c.sliding_window is None and c.rope_scaling is None
    assert files.file_type == "Q4_1"
    assert "lm_head.weight" not in files.tensors.names()
    assert open_model(_gguf(tiny_gguf, "F16")).file_type == "F16"
    q = open_model(_gguf(tiny_gguf, "qwen2-Q8_0"))
    assert q.config.architecture == "qwen2" and q.config.attention_bias and not q.config.tie_word_embeddings
    assert "model.layers.1.self_attn.k_proj.bias" in q.tensors.names() and "lm_head.weight" in q.tensors.names()


def test_gguf_unpermutes_q_k_to_the_original_weights(tiny_gguf):
    """F32 GGUF holds llama.cpp-permuted Q/K; we must give back exactly the HF weights."""
    files = open_model(_gguf(tiny_gguf, "spm-F32"))
    truth = tm.tiny_weights("llama", 0, files.config.vocab_size, tied=True)
    for name, w in truth.items():
        np.testing.assert_array_equal(files.tensors.get(name), w, err_msg=name)
    # and the permutation did something: the raw file order differs
    raw = files.tensors.gguf.dequantize("blk.0.attn_q.weight")
    assert not np.array_equal(raw, truth["model.layers.0.self_attn.q_proj.weight"])


def test_quantized_gguf_is_close_to_the_original(tiny_gguf):
    truth = tm.tiny_weights("llama", 0, len(tm.byte_level_vocab()[0]), tied=True)
    for case, tol in (("F16", 1e-3), ("Q8_0", 0.01), ("Q4_1", 0.05)):
        files = open_model(_gguf(tiny_gguf, case))
        for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"):
            err = np.abs(files.tensors.get(name) - truth[name]).max()
            assert err < tol, (case, name, err)


def test_unpermute_inverts_llamacpp_permute():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4 * 16, 8)).astype(np.float32)
    b = rng.standard_normal(4 * 16).astype(np.float32)
    for heads in (1, 2, 4):
        np.testing.assert_array_equal(unpermute_rows(tm.llamacpp_permute(w, heads), heads), w)
        np.testing.assert_array_equal(unpermute_rows(tm.llamacpp_permute(b, heads), heads), b)


def _llama3_factors(theta, head_dim, factor, low, high, orig):
    inv = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    wl = 2 * np.pi / inv
    smooth = (orig / wl - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wl < orig / high, 1.0, np.where(wl > orig / low, factor, mid)).astype(np.float32)


def test_llama3_rope_freqs_become_rope_scaling(tiny_gguf):
    f = _llama3_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    got = llama3_rope_from_factors(f, 500000.0, 128)
    assert got["rope_type"] == "llama3" and got["factor"] == 8.0
    assert got["original_max_position_embeddings"] == 8192 and abs(got["high_freq_factor"] - 4.0) < 1e-3
    assert llama3_rope_from_factors(np.ones(64), 500000.0, 128) is None
    with pytest.raises(ValueError):
        llama3_rope_from_factors(np.linspace(1, 3, 64), 500000.0, 128)
    # end to end: a GGUF with a rope_freqs tensor (tiny dims: theta 10000, head_dim 16)
    freqs = _llama3_factors(tm.ROPE_THETA, tm.HEAD_DIM, 4.0, 1.0, 4.0, 64)
    path = tiny_gguf("F16", extra_tensors={"rope_freqs.weight": freqs})
    files = open_model(path)
    rs = files.config.rope_scaling
    assert rs["rope_type"] == "llama3" and rs["factor"] == 4.0
    assert "rope_freqs.weight" not in files.tensors.names()
    np.testing.assert_allclose(
        _llama3_factors(tm.ROPE_THETA, tm.HEAD_DIM, rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"],
                        rs["original_max_position_embeddings"]), freqs, rtol=1e-4)


def test_mistral_gguf_and_linear_rope(tiny_gguf):
    path = tiny_gguf("F16", name="mistral.gguf", extra_metadata={"general.name": "Mistral 7B Instruct", "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    c = open_model(path).config
    assert c.architecture == "mistral"
    assert c.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_fingerprint_is_sha256_and_cached(tiny_gguf, tmp_path):
    import hashlib

    path = _gguf(tiny_gguf, "Q8_0")
    files = open_model(path)
    assert files.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    copy = tmp_path / "copy.gguf"
    shutil.copy(path, copy)
    assert open_model(copy).fingerprint == files.fingerprint
    assert open_model(_gguf(tiny_gguf, "F16")).fingerprint != files.fingerprint
    # a changed file (new mtime/size) is hashed again
    with open(copy, "ab") as f:
        f.write(b"\0" * 64)
    assert open_model(copy).fingerprint != files.fingerprint


def test_folder_with_one_gguf_opens_it(tiny_gguf, tmp_path):
    shutil.copy(_gguf(tiny_gguf, "F16"), tmp_path / "m.gguf")
    assert open_model(tmp_path).path == tmp_path / "m.gguf"


# -- HF folders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_hf_matches_transformers(tiny_hf, transformers_cache, arch):
    folder = tiny_hf(arch)
    files = open_model(folder)
    model = transformers_cache(folder)
    assert files.source_format == "hf" and files.path == folder
    _assert_config_matches(files.config, model.config)
    _assert_tensors_match(files, model)
    truth = tm.stored_weights(arch)
    for name in files.tensors.names():
        np.testing.assert_array_equal(files.tensors.get(name), truth[name], err_msg=name)


def test_hf_config_fields(tiny_hf):
    llama = open_model(tiny_hf("llama"))
    assert llama.file_type == "BF16" and not llama.config.tie_word_embeddings
    assert llama.config.rope_scaling["rope_type"] == "llama3" and llama.config.rope_scaling["factor"] == 8.0
    assert "lm_head.weight" in llama.tensors.names()
    mistral = open_model(tiny_hf("mistral"))
    assert mistral.config.architecture == "mistral" and mistral.config.sliding_window == 64
    assert mistral.file_type == "F16"
    qwen = open_model(tiny_hf("qwen2"))
    assert qwen.config.architecture == "qwen2" and qwen.config.attention_bias and qwen.config.tie_word_embeddings
    assert qwen.config.sliding_window is None and qwen.file_type == "F32"
    assert "lm_head.weight" not in qwen.tensors.names()
    assert len({llama.fingerprint, mistral.fingerprint, qwen.fingerprint}) == 3
    assert open_model(tiny_hf("qwen2")).fingerprint == qwen.fingerprint


def test_hf_fingerprint_follows_content(tiny_hf, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf("qwen2"), folder)
    before = open_model(folder).fingerprint
    assert before == open_model(tiny_hf("qwen2")).fingerprint
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] += " "
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert open_model(folder).fingerprint != before


# -- bad inputs ----------------------------------------------------------------------------------


def _expect_error(path, *words):
    with pytest.raises(ModelFileError) as info:
        open_model(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def test_missing_path(tmp_path):
    _expect_error(tmp_path / "nope.gguf", "no such file")


def test_folder_without_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    _expect_error(tmp_path, "no model")


def test_random_bytes_with_gguf_extension(tmp_path):
    p = tmp_path / "random.gguf"
    p.write_bytes(os.urandom(5000))
    _expect_error(p, "not a GGUF")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _expect_error(tmp_path / "empty.gguf", "not a GGUF")


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.02, 40])
def test_truncated_gguf(tiny_gguf, tmp_path, keep):
    src = _gguf(tiny_gguf, "Q4_1").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(src[: int(len(src) * keep) if keep < 1 else keep])
    _expect_error(p, "truncated")


def test_unsupported_architecture(tmp_path):
    import gguf

    p = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(str(p), "phi2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect_error(p, "unsupported architecture", "phi2")

    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    _expect_error(folder, "unsupported architecture", "GPT2LMHeadModel")


def test_unsupported_tensor_type(tiny_gguf):
    path = tiny_gguf("F16", tensor_types={"blk.0.ffn_up.weight": "Q8_1"})
    _expect_error(path, "Q8_1", "blk.0.ffn_up.weight")


def test_gguf_without_tokenizer(tiny_gguf):
    _expect_error(tiny_gguf("F16", with_tokenizer=False), "tokenizer")


def test_hf_folder_without_tokenizer(tiny_hf, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf("llama"), folder)
    (folder / "tokenizer.json").unlink()
    _expect_error(folder, "tokenizer")


def test_hf_folder_bad_pieces(tiny_hf, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf("llama"), folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect_error(folder, "truncated")
    (folder / "model.safetensors").unlink()
    _expect_error(folder, "safetensors")
    (folder / "config.json").write_text("{not json")
    _expect_error(folder, "config.json")


def test_broken_chat_template(tiny_gguf):
    _expect_error(tiny_gguf("F16", chat_template="{% for m in messages %}{{ m.content "), "chat template")


def test_non_model_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    _expect_error(p, "not a model")


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_opens_fast_and_lazily(smollm2_path):
    t0 = time.perf_counter()
    files = open_model(smollm2_path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, elapsed
    c = files.config
    assert (c.architecture, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (
        "llama", 30, 576, 9, 3, 49152
    )
    assert c.tie_word_embeddings and c.head_dim == 64 and c.context_length == 8192
    assert files.file_type == "Q4_1" and files.source_format == "gguf"
    assert files.tensors.gguf_type("model.embed_tokens.weight") == "Q8_0"
    t0 = time.perf_counter()
    assert open_model(smollm2_path).fingerprint == files.fingerprint
    assert time.perf_counter() - t0 < elapsed + 0.5


@pytest.mark.slow
def test_real_smollm2_tensors_match_transformers(smollm2_path, hf_smollm2_model):
    files = open_model(smollm2_path)
    _assert_config_matches(files.config, hf_smollm2_model.config)
    state = hf_smollm2_model.state_dict()
    names = files.tensors.names()
    assert len(names) == 2 + 30 * 9
    for name in names:
        np.testing.assert_array_equal(files.tensors.get(name), state[name].numpy(), err_msg=name)
