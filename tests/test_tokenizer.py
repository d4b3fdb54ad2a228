"""Tokenizers: equal to transformers on the same files, round trips, chat prompts, streaming."""

from __future__ import annotations

import pytest

from engine.io.chat_template import CHATML_TEMPLATE, PLAIN_TEMPLATE, ChatTemplate, ChatTemplateError, fold_system
from engine.errors import EngineError
from engine.io.loader import open_model

TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "café naïve über straße — 日本語のテキスト, 한국어, Ελληνικά",
    "Emoji 🤗🚀 👍🏽 ✨ and ₿ (not in the corpus) 🦜",
    "def fibonacci(n):\n    if n < 2:\n        return n\n\treturn 12345 + 3.14159",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <think> tags",
    "trailing spaces   \n\n",
    "",
    "a",
]
LEADING_SPACE = ["  leading spaces", " x", " "]

CHATS = {
    "plain": [{"role": "user", "content": "Hello there"}],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi 🤗"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is café in Japanese?"},
    ],
    "multi": [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three\nfour"},
    ],
}

# (kind, make) -> the model file each tokenizer comes from
SOURCES = {
    "gguf-gpt2": lambda g, h: g("Q8_0"),
    "gguf-spm": lambda g, h: g("F32", tokenizer="llama"),
    "gguf-qwen2": lambda g, h: g("Q8_0", arch="qwen2", tied=False),
    "hf-llama": lambda g, h: h("llama"),
    "hf-qwen2": lambda g, h: h("qwen2"),
}


@pytest.fixture(scope="module")
def hf_tokenizers():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cache: dict = {}

    def load(path):
        if path not in cache:
            if path.suffix == ".gguf":
                cache[path] = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            else:
                cache[path] = transformers.AutoTokenizer.from_pretrained(path)
        return cache[path]

    return load


@pytest.fixture(params=list(SOURCES))
def source(request, tiny_gguf, tiny_hf):
    return request.param, SOURCES[request.param](tiny_gguf, tiny_hf)


def _ids(out):
    return out["input_ids"] if hasattr(out, "keys") else list(out)


def _check_same_as_transformers(tok, ref, texts, chats):
    for text in texts:  # transformers reads special-token text as those tokens: our raw (special=True) path
        assert tok.encode(text, special=True) == ref.encode(text, add_special_tokens=False), text
        assert tok.encode(text, add_bos=tok.add_bos, special=True) == ref.encode(text), text
        ids = ref.encode(text, add_special_tokens=False)
        for skip in (False, True):
            assert tok.decode(ids, skip_special=skip) == ref.decode(ids, skip_special_tokens=skip), (text, skip)
    for name, chat in chats.items():
        try:
            expected = _ids(ref.apply_chat_template(chat, tokenize=True, add_generation_prompt=True))
            expected_text = ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception:  # the template refuses a system message: we fold it into the first user turn
            folded = fold_system(chat)
            expected = _ids(ref.apply_chat_template(folded, tokenize=True, add_generation_prompt=True))
            expected_text = ref.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
        assert tok.encode_chat(chat) == expected, name
        assert tok.chat_prompt(chat) == expected_text, name


def test_same_as_transformers(source, hf_tokenizers):
    kind, path = source
    tok = open_model(path).tokenizer
    ref = hf_tokenizers(path)
    _check_same_as_transformers(tok, ref, TEXTS + LEADING_SPACE, CHATS)
    assert tok.vocab_size == len(ref)
    assert tok.bos_id == (ref.bos_token_id if kind != "hf-qwen2" else None)
    assert tok.eos_id == ref.eos_token_id
    if tok.bos_id is not None:
        assert tok.add_bos == (tok.encode("x", add_bos=True) == ref.encode("x"))


def test_round_trip(source):
    kind, path = source
    tok = open_model(path).tokenizer
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    if not kind.endswith("spm"):  # SentencePiece drops the one space it adds in front
        for text in LEADING_SPACE:
            assert tok.decode(tok.encode(text)) == text


def test_special_tokens_in_text(tiny_gguf):
    tok = open_model(tiny_gguf("Q8_0")).tokenizer
    assert tok.encode("<|im_start|>", special=True) == [1]
    assert tok.encode("<|im_end|>", special=True) == [2]
    ids = tok.encode("a<|im_end|>b", special=True)
    assert 2 in ids and tok.decode(ids) == "a<|im_end|>b"
    assert tok.decode(ids, skip_special=True) == "ab"
    as_text = tok.encode("a<|im_end|>b")  # the default: a user's text, special-token text stays text
    assert not tok.special_ids.intersection(as_text) and tok.decode(as_text) == "a<|im_end|>b"
    assert tok.encode("<think>") == [tok.token_to_id("<think>")]  # user-defined: whole, but not special
    assert not tok.is_special(tok.token_to_id("<think>")) and tok.is_special(1)
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id == 1
    assert not tok.add_bos


def test_sentencepiece_model_folder_matches_sentencepiece(tiny_hf):
    """HF folder with only tokenizer.model: ids equal sentencepiece's own (except leading spaces)."""
    import sentencepiece as spm

    folder = tiny_hf("mistral")
    tok = open_model(folder).tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert tok.kind == "tokenizer.model" and tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (sp.bos_id(), sp.eos_id(), True)
    for text in TEXTS[:5] + ["Hello  world", "xyz QQQ ~~~ \u00a0 tab\there"]:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == text
    assert tok.encode("<s>[INST]", special=True)[0] == sp.bos_id()
    # the [INST] template has no system role: the system text is folded into the first user turn
    prompt = tok.chat_prompt(CHATS["system"])
    assert prompt.startswith("<s>[INST] Be brief.\n\nHi 🤗 [/INST]Hello! How can I help?</s>[INST] ")
    assert tok.encode_chat(CHATS["system"])[0] == sp.bos_id()


def test_gguf_spm_and_tokenizer_model_agree(tiny_gguf, tiny_hf):
    a = open_model(tiny_gguf("F32", tokenizer="llama")).tokenizer
    b = open_model(tiny_hf("mistral")).tokenizer
    for text in TEXTS + LEADING_SPACE:
        assert a.encode(text) == b.encode(text), text


def test_stop_ids(tiny_gguf, tiny_hf):
    assert open_model(tiny_gguf("Q8_0")).tokenizer.stop_ids == {2}  # <|im_end|> is also EOS
    assert open_model(tiny_hf("llama")).tokenizer.stop_ids == {0, 2}  # generation_config lists both
    assert open_model(tiny_hf("qwen2")).tokenizer.stop_ids == {2}
    assert open_model(tiny_hf("mistral")).tokenizer.stop_ids == {2}
    # EOS is <|endoftext|>, the template ends turns with <|im_end|>: both stop
    path = tiny_gguf("F16", extra_metadata={"tokenizer.ggml.eos_token_id": 0})
    assert open_model(path).tokenizer.stop_ids == {0, 2}


# -- chat templates ------------------------------------------------------------------------------


def test_template_without_system_role_gets_it_folded():
    gemma_like = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    t = ChatTemplate(gemma_like, {"bos_token": "<bos>"})
    out = t.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert out == "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ChatTemplateError) as info:
        t.render([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}])
    assert isinstance(info.value, EngineError) and "roles must alternate" in str(info.value)
    assert "\n" not in str(info.value)


def test_template_features():
    src = (
        "{% for m in messages %}{{ m | tojson }}{% if loop.last %}{% break %}{% endif %}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{{ eos_token }}"
    )
    out = ChatTemplate(src, {"eos_token": "</s>"}).render([{"role": "user", "content": "café"}])
    assert out == '{"role": "user", "content": "café"}4</s>'
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% if %}")
    with pytest.raises(ChatTemplateError):
        ChatTemplate("x").render([])
    with pytest.raises(ChatTemplateError):  # the sandbox blocks attribute escapes
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([{"role": "user", "content": "x"}])


def test_fallback_templates(tiny_gguf):
    chatml = open_model(tiny_gguf("F16", chat_template=None)).tokenizer
    assert not chatml.has_chat_template and chatml.template.source == CHATML_TEMPLATE
    assert chatml.chat_prompt(CHATS["plain"]) == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    assert chatml.stop_ids == {2}
    plain = open_model(tiny_gguf("F32", tokenizer="llama", chat_template=None)).tokenizer
    assert plain.template.source == PLAIN_TEMPLATE
    text = plain.chat_prompt(CHATS["multi"])
    assert text == "<s>User: one\n\nAssistant: two</s>\n\nUser: three\nfour\n\nAssistant:"
    assert plain.encode_chat(CHATS["multi"])[0] == plain.bos_id


# -- streaming -----------------------------------------------------------------------------------


def test_stream_decoder_never_splits_characters(source):
    kind, path = source
    tok = open_model(path).tokenizer
    held_back = 0
    for text in TEXTS + ["🤗" * 3 + "日本" + "👍🏽x", "₿🦜"]:
        for skip in (False, True):
            ids = tok.encode(text)
            s = tok.stream(skip_special=skip)
            deltas = [s.step(i) for i in ids]
            deltas.append(s.flush())
            assert "".join(deltas) == tok.decode(ids, skip_special=skip), (text, deltas)
            assert all("\ufffd" not in d for d in deltas), (text, deltas)
            held_back += sum(1 for d in deltas[:-1] if d == "")
    assert held_back > 0  # multi-byte characters really were split across tokens


def test_stream_decoder_on_byte_tokens(tiny_gguf):
    """Hand-made id sequences: a 4-byte emoji fed one byte token at a time, and invalid bytes."""
    tok = open_model(tiny_gguf("F32", tokenizer="llama")).tokenizer
    byte = lambda b: tok.token_to_id(f"<0x{b:02X}>")  # noqa: E731
    emoji = [byte(b) for b in "🦜".encode()]
    hello = tok.encode("Hello")
    ids = hello + emoji + emoji + [byte(0xE2)] + tok.encode("a")
    s = tok.stream()
    deltas = [s.step(i) for i in ids]
    n = len(hello)
    assert "".join(deltas[:n]) == "Hello"
    assert deltas[n : n + 8] == ["", "", "", "🦜", "", "", "", "🦜"]
    assert "".join(deltas[: n + 8]) == tok.decode(ids[: n + 8]) == "Hello🦜🦜"
    # a genuinely invalid byte still shows up as one U+FFFD (whereas `decode` of the whole run of
    # byte tokens turns every byte of it into U+FFFD: tokenizers' ByteFallback is all-or-nothing)
    rest = "".join(deltas[n + 8 :]) + s.flush()
    assert rest == tok.decode(ids[n + 8 :]) == "\ufffd a"


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_same_as_transformers(smollm2_path, hf_smollm2_tokenizer):
    tok = open_model(smollm2_path).tokenizer
    assert tok.kind == "gguf-gpt2/smollm"
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.vocab_size) == (1, 2, False, 49152)
    assert tok.stop_ids == {2}
    pre = tok.backend.pre_tokenizer
    assert type(pre).__name__ == "ByteLevel" and not pre.add_prefix_space and pre.use_regex and pre.trim_offsets
    more = ["Tell me a joke about cats.", "x = [i**2 for i in range(10)]  # squares", "Ça va? ¿Qué tal? 🤗🤗"]
    _check_same_as_transformers(tok, hf_smollm2_tokenizer, TEXTS + LEADING_SPACE + more, CHATS)
    s = tok.stream()
    ids = tok.encode("Ça va? 日本語 🤗")
    assert "".join([s.step(i) for i in ids] + [s.flush()]) == "Ça va? 日本語 🤗"
