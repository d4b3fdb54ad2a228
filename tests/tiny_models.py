"""Builders for tiny random models, written to disk in the formats `open_model` reads.

    write_tiny_gguf(dir, qtype="F16"|"Q8_0"|"Q4_1"|..., seed=0, tokenizer="gpt2"|"llama", arch="llama"|"qwen2")
    write_tiny_hf(dir, arch="llama"|"mistral"|"qwen2", seed=0)
    tiny_weights(arch, seed) -> {hf_name: float32 array}   (the weights before any file format)

Everything is deterministic in `seed` and small (hidden 64, 2 layers, 4 heads / 2 KV heads,
head_dim 32, FFN 256, vocabulary ~360), but every tensor kind of a real model is there.
GGUF files follow llama.cpp's converter: Q/K rows permuted for llama (not for qwen2),
tensor names token_embd / blk.N.* / output_norm / output, metadata under `<arch>.*`.

Tokenizers:
  * "gpt2": a byte-level BPE learnt here from `CORPUS` (deterministic greedy BPE), with
    control tokens <|endoftext|>, <|im_start|>, <|im_end|> (ids 0-2) and a user-defined <think>.
  * "llama": a SentencePiece BPE model (byte fallback) trained with `sentencepiece` on the
    same corpus; its pieces/scores/types go into the GGUF like llama.cpp's converter does,
    and the .model file itself into the Mistral HF folder.
"""

from __future__ import annotations

import io
import json
import struct
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 128, 2, 4, 2, 256  # every output size a multiple of 64 (the native kernels need it)
HEAD_DIM = HIDDEN // HEADS
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
CONTEXT = 512

CORPUS = """\
Hello world! This is a tiny corpus for a tiny tokenizer. The quick brown fox jumps over the lazy dog.
Hello again, world. The model says hello; the user says hi. What is the answer? The answer is 42.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
for i in range(10):
    print(i, fibonacci(i))
café, naïve, über, straße, résumé, jalapeño — 日本語のテキスト, 中文, 한국어, Ελληνικά, русский текст.
Emoji: 🤗 🚀 👍🏽 ✨ and more emoji 🤗🤗. Numbers: 12345 3.14159 1,000,000.
The user asked a question and the assistant gave an answer. The assistant is helpful.
"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>"]

# SmolLM2-like: ChatML with a default system prompt when the conversation has none
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Mistral-v0.1-like: [INST] turns, BOS written by the template, no system role
INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# ----------------------------------------------------------------------------------------------
# vocabularies
# ----------------------------------------------------------------------------------------------


def _byte_map() -> dict[int, str]:
    from engine.io.tokenizer import bytes_to_unicode  # GPT-2's fixed byte alphabet, not logic under test

    return bytes_to_unicode()


@lru_cache(maxsize=None)
def byte_level_vocab(n_merges: int = 96) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, merges) of a byte-level BPE learnt greedily from CORPUS.

    Words are split with GPT-2's regex (via `tokenizers`' ByteLevel pre-tokenizer); each round
    merges the most frequent adjacent pair (ties: smallest pair), so the result is deterministic.
    """
    from tokenizers import pre_tokenizers

    words = Counter(w for w, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(CORPUS))
    seqs = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, seq in seqs.items():
            i, out = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == best[0] and seq[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    bm = _byte_map()
    tokens = SPECIALS + [bm[b] for b in range(256)] + [a + b for a, b in merges] + USER_DEFINED
    return tuple(tokens), tuple(f"{a} {b}" for a, b in merges)


def byte_level_token_types() -> list[int]:
    tokens, _ = byte_level_vocab()
    return [3 if t in SPECIALS else 4 if t in USER_DEFINED else 1 for t in tokens]


@lru_cache(maxsize=None)
def sentencepiece_model(vocab_size: int = 360) -> bytes:
    """A SentencePiece BPE model (byte fallback, Llama-like normalization) trained on CORPUS."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 4),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        character_coverage=1.0,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
    )
    return out.getvalue()


def sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) of `sentencepiece_model()`, as llama.cpp writes them to GGUF."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model())
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    return pieces, scores, types


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def tiny_weights(arch: str = "llama", seed: int = 0, vocab_size: int | None = None, tied: bool = True) -> dict[str, np.ndarray]:
    """Random float32 weights by HF name (the truth every file format is compared against)."""
    if vocab_size is None:
        vocab_size = len(byte_level_vocab()[0])
    rng = np.random.default_rng(seed)

    def lin(out_f: int, in_f: int) -> np.ndarray:
        return (rng.standard_normal((out_f, in_f)) * 0.08).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": lin(vocab_size, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = lin(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        if arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = (0.1 * rng.standard_normal(HEADS * HEAD_DIM)).astype(np.float32)
            w[p + "self_attn.k_proj.bias"] = (0.1 * rng.standard_normal(KV_HEADS * HEAD_DIM)).astype(np.float32)
            w[p + "self_attn.v_proj.bias"] = (0.1 * rng.standard_normal(KV_HEADS * HEAD_DIM)).astype(np.float32)
        w[p + "self_attn.o_proj.weight"] = lin(HIDDEN, HEADS * HEAD_DIM)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "mlp.gate_proj.weight"] = lin(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = lin(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = lin(HIDDEN, FFN)
    w["model.norm.weight"] = norm(HIDDEN)
    if not tied:
        w["lm_head.weight"] = lin(vocab_size, HIDDEN)
    return w


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (HF rotate_half layout -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_GGUF_NAMES[rest]}"


# ----------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------

_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}


def write_tiny_gguf(
    directory: str | Path,
    qtype: str = "F16",
    seed: int = 0,
    *,
    tokenizer: str = "gpt2",
    arch: str = "llama",
    tied: bool = True,
    embed_qtype: str | None = None,
    name: str | None = None,
    chat_template: str | None = "default",
    extra_metadata: dict | None = None,
    with_tokenizer: bool = True,
    tensor_types: dict[str, str] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    embed_rows: int | None = None,
    poison: dict[str, float] | None = None,
) -> Path:
    """Write a tiny GGUF; returns its path. `qtype` applies to every 2-D weight (norms/biases are F32).

    `tensor_types` overrides the type of single tensors by GGUF name (raw bytes of the right size
    are written for types gguf cannot quantize to, e.g. "Q8_1" -- for unsupported-type tests);
    `extra_tensors` adds float32 tensors as they are (e.g. "rope_freqs.weight").
    `embed_rows` gives the embedding (and head) fewer rows than the tokenizer has tokens (an
    inconsistent file); `poison` sets the first value of HF-named tensors (e.g. to NaN, or a huge one).
    """
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer == "gpt2":
        tokens, merges = byte_level_vocab()
        tokens, types, scores = list(tokens), byte_level_token_types(), None
    else:
        tokens, scores, types = sentencepiece_vocab()
        merges = None
    weights = tiny_weights(arch, seed, embed_rows or len(tokens), tied)
    for hf, value in (poison or {}).items():
        weights[hf] = weights[hf].copy()
        weights[hf].flat[0] = value
    path = directory / (name or f"tiny-{arch}-{tokenizer}-{qtype}-s{seed}.gguf")

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"Tiny {arch} test model")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(len(tokens))
    if qtype in _FILE_TYPES:
        w.add_file_type(_FILE_TYPES[qtype])
    if with_tokenizer:
        if tokenizer == "gpt2":
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("smollm" if arch == "llama" else "qwen2")
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_merges(list(merges))
            w.add_bos_token_id(1)
            w.add_eos_token_id(2)
            w.add_unk_token_id(0)
            w.add_pad_token_id(2)
            w.add_add_bos_token(False)
            template = CHATML_TEMPLATE
        else:
            w.add_tokenizer_model("llama")
            w.add_tokenizer_pre("default")
            w.add_token_list(tokens)
            w.add_token_scores(scores)
            w.add_token_types(types)
            w.add_bos_token_id(1)
            w.add_eos_token_id(2)
            w.add_unk_token_id(0)
            w.add_add_bos_token(True)
            w.add_add_eos_token(False)
            template = INST_TEMPLATE
        if chat_template == "default":
            w.add_chat_template(template)
        elif chat_template:
            w.add_chat_template(chat_template)
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value) if value < 1 << 32 else w.add_uint64(key, value)  # overrides a key
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, str(value))

    overrides = tensor_types or {}
    for hf, arr in weights.items():
        gname = gguf_name(hf)
        if arch == "llama" and ".q_proj." in hf:
            arr = llamacpp_permute(arr, HEADS)
        elif arch == "llama" and ".k_proj." in hf:
            arr = llamacpp_permute(arr, KV_HEADS)
        t = overrides.get(gname)
        if t is None:
            t = "F32" if arr.ndim == 1 else (embed_qtype if hf == "model.embed_tokens.weight" and embed_qtype else qtype)
        qt = QT[t]
        if qt == QT.F32:
            w.add_tensor(gname, arr.astype(np.float32))
        elif qt == QT.F16:
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            try:
                data = quantize(arr, qt)
            except NotImplementedError:
                block, nbytes = gguf.GGML_QUANT_SIZES[qt]
                data = np.zeros((*arr.shape[:-1], arr.shape[-1] // block * nbytes), dtype=np.uint8)
            w.add_tensor(gname, data, raw_dtype=qt)
    for gname, arr in (extra_tensors or {}).items():
        w.add_tensor(gname, np.asarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ----------------------------------------------------------------------------------------------
# Hugging Face folders
# ----------------------------------------------------------------------------------------------

_HF = {
    # arch: (class, model_type, dtype, tied, shards)
    "llama": ("LlamaForCausalLM", "llama", "bfloat16", False, 1),
    "mistral": ("MistralForCausalLM", "mistral", "float16", False, 1),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", "float32", True, 2),
}
_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A .safetensors file with every tensor stored as `dtype` ("float32", "float16", "bfloat16")."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        if dtype == "bfloat16":
            data = _to_bf16_bits(arr).tobytes()
        else:
            data = np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-len(head)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def stored_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The float32 values `write_tiny_hf(arch, seed)` stores, after the dtype round trip."""
    cls, _, dtype, tied, _ = _HF[arch]
    vocab = len(sentencepiece_vocab()[0]) if arch == "mistral" else len(byte_level_vocab()[0])
    w = tiny_weights(arch, seed, vocab, tied)
    if dtype == "bfloat16":
        return {k: from_bf16_bits(_to_bf16_bits(v)) for k, v in w.items()}
    return {k: v.astype(dtype).astype(np.float32) for k, v in w.items()}


def _byte_level_tokenizer_json(arch: str) -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, merges = byte_level_vocab()
    tk = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=[tuple(m.split(" ")) for m in merges],
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    split = QWEN2_SPLIT if arch == "qwen2" else LLAMA3_SPLIT
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in USER_DEFINED])
    if arch == "llama":  # Llama-3 style: the post-processor adds BOS
        tk.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B", special_tokens=[("<|endoftext|>", 0)]
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return tk.to_str()


def write_tiny_hf(directory: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny HF model folder: config.json, safetensors, tokenizer files.

    llama: bf16 weights, untied head, byte-level BPE tokenizer.json (Llama-3 split, BOS via
           post-processor), ChatML template, generation_config with two EOS ids.
    mistral: f16 weights, untied head, sliding_window 64, tokenizer.model only (SentencePiece),
           [INST] template without a system role, add_bos_token.
    qwen2: f32 weights in two shards + index, tied embeddings, q/k/v biases, Qwen2 split, no BOS.
    """
    cls, model_type, dtype, tied, shards = _HF[arch]
    directory = Path(directory)
    folder = directory / f"tiny-{arch}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    if arch == "mistral":
        vocab = len(sentencepiece_vocab()[0])
    else:
        vocab = len(byte_level_vocab()[0])
    weights = tiny_weights(arch, seed, vocab, tied)

    config = {
        "architectures": [cls],
        "model_type": model_type,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "bos_token_id": 1 if arch == "mistral" else 0,
        "eos_token_id": 2,
    }
    if arch == "llama":
        config["attention_bias"] = False
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        }
    if arch == "mistral":
        config["sliding_window"] = 64
    if arch == "qwen2":
        config["use_sliding_window"] = False
        config["sliding_window"] = 4096
        config["max_window_layers"] = LAYERS
        config.pop("bos_token_id")
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    names = list(weights)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", weights, dtype)
    else:
        parts = np.array_split(np.arange(len(names)), shards)
        weight_map = {}
        for k, idx in enumerate(parts):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(folder / fname, {names[i]: weights[names[i]] for i in idx}, dtype)
            weight_map.update({names[i]: fname for i in idx})
        total = sum(v.size * np.dtype(dtype if dtype != "bfloat16" else "float16").itemsize for v in weights.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": int(total)}, "weight_map": weight_map}, indent=2)
        )

    if arch == "mistral":
        (folder / "tokenizer.model").write_bytes(sentencepiece_model())
        tok_cfg = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "chat_template": INST_TEMPLATE,
        }
    else:
        (folder / "tokenizer.json").write_text(_byte_level_tokenizer_json(arch))
        tok_cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|endoftext|>" if arch == "llama" else None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "chat_template": CHATML_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "model_max_length": CONTEXT,
        }
        if arch == "qwen2":
            tok_cfg["add_bos_token"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    if arch == "llama":
        (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [2, 0]}))
    return folder
