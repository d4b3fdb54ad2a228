"""Text <-> token ids, chat prompts and streaming detokenization.

Every tokenizer is a Hugging Face `tokenizers.Tokenizer` underneath, built the
same way transformers builds it, so ids match `AutoTokenizer` on the same files:

* GGUF, ``tokenizer.ggml.model == "gpt2"``: byte-level BPE from the vocabulary and
  merges in the metadata. Tokens not spelled in the byte-level alphabet are
  re-spelled through it. The pre-tokenizer comes from ``tokenizer.ggml.pre``: a
  regex split + ``ByteLevel(use_regex=False)`` for the llama3 / qwen2 families,
  otherwise GPT-2's ``ByteLevel(add_prefix_space=False)`` (this is what
  transformers does for e.g. ``smollm``). Decoder: ``ByteLevel``.
* GGUF, ``tokenizer.ggml.model == "llama"`` (SentencePiece vocabularies: Llama-2,
  Mistral <= v0.3, TinyLlama), and HF folders that ship only ``tokenizer.model``
  (read with `sentencepiece`, pieces/scores/types taken from its model proto):
  BPE with ``byte_fallback`` over the pieces, merges from the file or derived from
  the scores, a ``Metaspace("▁", prepend_scheme="first")`` pre-tokenizer and a
  ``Replace("▁"," ") + ByteFallback + Fuse + Strip(1 left)`` decoder (transformers'
  ``LlamaTokenizer``). A Unigram ``tokenizer.model`` becomes a ``Unigram`` model.
* HF folder with ``tokenizer.json``: loaded as is with `tokenizers`.

In all cases tokens the file marks as control (token type 3) and the named
special tokens (bos/eos/unk/pad) are *special* added tokens, and ``decode(skip_special=True)``
drops them. User-defined tokens (type 4) are plain added tokens.

Special tokens come only from the chat template. Text a user typed or pasted (a chat message,
a system prompt, an evaluation text) is tokenized as text: ``"<|im_end|>"`` written in it is
seven ordinary pieces, so a pasted document cannot end a turn or open a new system message.
``encode(text, special=True)`` recognizes special-token text (the template's output, and the
prompt of ``effort generate --raw``, which is named as raw for that reason).

BOS is never added by the backend: ``encode(text, add_bos=True)`` prepends it,
and `Tokenizer.add_bos` says whether a raw prompt should get one.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Sequence

from engine.io.chat_template import ChatTemplate, ChatTemplateError, fallback_template
from engine.errors import ModelFileError

# -- pre-tokenizer regexes by `tokenizer.ggml.pre` ---------------------------------------------------
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe", "lfm2"], _LLAMA3_SPLIT
    ),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "megrez"], _QWEN2_SPLIT),
}

# end-of-turn markers worth stopping on whenever the vocabulary has them as special tokens
_END_OF_TURN_NAMES = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")

# GGUF / sentencepiece token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    mapping = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


_BYTE_MAP = bytes_to_unicode()
_BYTE_ALPHABET = frozenset(_BYTE_MAP.values())


class Tokenizer:
    """A model's tokenizer: `tokenizers` backend + BOS/EOS/stop ids + chat template."""

    def __init__(
        self,
        backend: Any,  # tokenizers.Tokenizer
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        chat_template: str | None,
        special_tokens: dict[str, str | None] | None = None,
        extra_stop_ids: Sequence[int] = (),
        source: str = "model",
        kind: str = "",
    ) -> None:
        self._tk = backend
        self.source = source
        self.kind = kind  # how it was built, e.g. "gguf-gpt2", "gguf-llama", "tokenizer.json", "tokenizer.model"
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id if bos_id is not None and 0 <= bos_id < self.vocab_size else None
        self.eos_id = eos_id if eos_id is not None and 0 <= eos_id < self.vocab_size else None
        self.add_bos = bool(add_bos and self.bos_id is not None)
        specials = {i: tok.content for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.special_ids: frozenset[int] = frozenset(specials)
        texts = sorted(set(specials.values()), key=len, reverse=True)
        self._special_text = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._plain: Any = None  # the backend with special-token text as text, made on first need
        named = dict(special_tokens or {})
        if self.bos_id is not None:
            named.setdefault("bos_token", self.id_to_token(self.bos_id))
        if self.eos_id is not None:
            named.setdefault("eos_token", self.id_to_token(self.eos_id))
        self.special_tokens = {k: v for k, v in named.items() if v is not None}
        self.has_chat_template = bool(chat_template)
        template_text = chat_template or fallback_template(lambda t: self.token_to_id(t) is not None)
        try:
            self.template = ChatTemplate(template_text, self.special_tokens, name=source)
        except ChatTemplateError as exc:
            raise ModelFileError(source, str(exc).removeprefix(f"{source}: ")) from exc
        stops = {i for i in extra_stop_ids if 0 <= i < self.vocab_size}
        if self.eos_id is not None:
            stops.add(self.eos_id)
        for name in _END_OF_TURN_NAMES:
            i = self.token_to_id(name)
            if i is not None and i in self.special_ids and (name in template_text or not self.has_chat_template):
                stops.add(i)
        stops |= self._probe_end_of_turn()
        self.stop_ids: frozenset[int] = frozenset(stops)

    # -- vocabulary ----------------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    @property
    def backend(self) -> Any:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tk

    # -- text <-> ids --------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text in it is plain text unless `special` (only for
        text that did not come from a user: the chat template's output, a --raw prompt)."""
        ids = self._ids(text, None if special else [(0, len(text))])
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def _ids(self, text: str, user_spans: list[tuple[int, int]] | None) -> list[int]:
        """The backend's ids of `text`, except that a special token matched over any character of
        `user_spans` (character ranges typed by a user) becomes the ids of its text as text. Around
        it nothing changes: the backend splits the text at special tokens anyway."""
        enc = self._tk.encode(text, add_special_tokens=False)
        if not user_spans or self.special_ids.isdisjoint(enc.ids):
            return list(enc.ids)
        out: list[int] = []
        for i, (a, b) in zip(enc.ids, enc.offsets):
            if i in self.special_ids and any(a < end and start < b for start, end in user_spans):
                out.extend(self._plain_backend().encode(text[a:b], add_special_tokens=False).ids)
            else:
                out.append(i)
        return out

    def _plain_backend(self) -> Any:
        """A copy of the backend that reads special-token text as ordinary text, as it would be read
        in the middle of a text (no SentencePiece space prepended: `_ids` encodes fragments)."""
        if self._plain is None:
            from tokenizers import Tokenizer as HFTokenizer

            plain = HFTokenizer.from_str(self._tk.to_str())
            plain.encode_special_tokens = True
            if getattr(plain.pre_tokenizer, "prepend_scheme", "never") != "never":
                pre = plain.pre_tokenizer
                pre.prepend_scheme = "never"
                plain.pre_tokenizer = pre
            self._plain = plain
        return self._plain

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special)

    def stream(self, *, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special=skip_special)

    # -- chat ----------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, str]], answer_prefix: str = "") -> list[int]:
        """Like transformers' ``apply_chat_template(tokenize=True, add_generation_prompt=True)``:
        the rendered text, the template's special tokens recognized, no BOS added (templates write
        their own), except that special-token text inside a message stays text.

        `answer_prefix` (the start of an answer to continue) is appended to the rendered text
        before it is split into tokens, so it is split as the model would; it stays text too.

        Messages without special-token text (nearly all) give exactly transformers' ids. Otherwise
        each such occurrence is wrapped in two marker characters (private-use code points found in
        no message and not in the template) before rendering; the markers are taken out of the
        rendered text again and say which characters a user wrote."""
        pattern = self._special_text
        contents = [m.get("content") for m in messages]
        if pattern is None or not any(isinstance(c, str) and pattern.search(c) for c in [*contents, answer_prefix]):
            return self._ids(self.chat_prompt(messages, add_generation_prompt=True) + answer_prefix, None)
        seen = "".join(c for c in contents if isinstance(c, str)) + self.template.source
        start = next(cp for cp in range(0xF0000, 0xFFFFE, 2) if chr(cp) not in seen and chr(cp + 1) not in seen)
        open_, close = chr(start), chr(start + 1)
        marked = [
            {**m, "content": pattern.sub(lambda x: open_ + x.group() + close, m["content"])}
            if isinstance(m.get("content"), str) else m
            for m in messages
        ]
        rendered = self.chat_prompt(marked, add_generation_prompt=True)
        text, spans = _take_markers(rendered, open_, close)
        if text is None:
            raise ChatTemplateError(
                f"{self.source}: the chat template rewrites message text, and a message contains "
                "special-token text that could then not be kept apart from the template's own"
            )
        if answer_prefix:
            spans = [*spans, (len(text), len(text) + len(answer_prefix))]
            text += answer_prefix
        return self._ids(text, spans)

    def _probe_end_of_turn(self) -> set[int]:
        """The special token a template writes right after an assistant message (e.g. <|im_end|>)."""
        marker = "ZQXJ probe"
        try:
            text = self.template._render(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], False
            )
        except Exception:
            return set()
        at = text.rfind(marker)
        if at < 0:
            return set()
        tail = self.encode(text[at + len(marker) :], special=True)[:3]
        for i in tail:
            if i in self.special_ids:
                return {i}
        return set()

    def _stream_anchor(self) -> tuple[int, str] | None:
        """(id, text) of a plain token whose text is stable in front of anything (for StreamDecoder)."""
        if not hasattr(self, "_anchor"):
            self._anchor = None
            for piece in ("a", "e", "t", "x", "0", "1"):
                i = self.token_to_id(piece)
                if i is None or i in self.special_ids:
                    continue
                text = self.decode([i])
                if text == piece and self.decode([i, i]) == piece * 2:
                    self._anchor = (i, text)
                    break
        return self._anchor

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.kind}, vocab={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"add_bos={self.add_bos}, stops={sorted(self.stop_ids)})"
        )


def _take_markers(text: str, open_: str, close: str) -> tuple[str | None, list[tuple[int, int]]]:
    """`text` without the marker characters, and the (start, end) of each marked range in it;
    (None, []) when the markers do not pair up (the template cut or reordered the text)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    length, begin = 0, None
    for piece in re.split(f"([{open_}{close}])", text):
        if piece == open_:
            if begin is not None:
                return None, []
            begin = length
        elif piece == close:
            if begin is None:
                return None, []
            spans.append((begin, length))
            begin = None
        else:
            out.append(piece)
            length += len(piece)
    return ("".join(out), spans) if begin is None else (None, [])


class StreamDecoder:
    """Incremental detokenization: text deltas that never split a UTF-8 character.

    The ids since the last emitted text are decoded behind a fixed *anchor* token (a plain
    word piece such as "a", whose text is then cut off again), so the decoder sees them the
    way it sees them inside the whole sequence: no SentencePiece leading-space strip in the
    middle of a text, no byte-fallback run merged with bytes that were already shown. The
    very first chunk is decoded without an anchor, exactly as `decode` treats the start.
    While the chunk's text ends in U+FFFD (a multi-byte character still incomplete) nothing
    is emitted; `flush` emits whatever is left. For any sequence of complete characters the
    concatenated deltas equal ``decode(all ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._anchor = tokenizer._stream_anchor()
        self._ids: list[int] = []
        self._read = 0  # ids[:read] are already emitted

    def _pending_text(self) -> str:
        pending = self._ids[self._read :]
        if self._read == 0 or self._anchor is None:
            return self._tok.decode(pending, skip_special=self._skip)
        anchor_id, anchor_text = self._anchor
        text = self._tok.decode([anchor_id, *pending], skip_special=self._skip)
        if text.startswith(anchor_text):
            return text[len(anchor_text) :]
        return self._tok.decode(pending, skip_special=self._skip)  # not expected; never loses text

    def step(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._pending_text()
        if not text or text.endswith("\ufffd"):
            return ""
        self._read = len(self._ids)
        return text

    def flush(self) -> str:
        if self._read == len(self._ids):
            return ""
        text = self._pending_text()
        self._read = len(self._ids)
        return text

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)


# ======================================================================================
# Builders
# ======================================================================================


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None) -> Any:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if not _BYTE_ALPHABET.issuperset(tok):
            tok = "".join(_BYTE_MAP[b] for b in tok.encode("utf-8"))
        vocab[tok] = i
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=pairs,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    split = PRE_TOKENIZER_SPLITS.get(pre or "")
    if split is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tk.decoder = decoders.ByteLevel()
    return tk


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a piece into two pieces,
    best-scored piece first (ties: longer left, longer right, vocabulary order)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    score_of = dict(zip(tokens, scores))
    cands: list[tuple[float, int, int, int, int, int, str, str]] = []
    for order, (tok, score) in enumerate(score_of.items()):
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            li, ri = vocab.get(left), vocab.get(right)
            if li is not None and ri is not None:
                cands.append((-score, -len(left), -len(right), order, li, ri, left, right))
    cands.sort(key=lambda c: c[:6])
    return [(c[6], c[7]) for c in cands]


def _sentencepiece_like(
    tokens: list[str],
    scores: list[float] | None,
    types: list[int] | None,
    merges: list[str] | None,
    *,
    add_prefix_space: bool = True,
    unigram: bool = False,
    unk_id: int | None = None,
) -> Any:
    from tokenizers import decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if unigram:
        if scores is None:
            raise ValueError("a Unigram vocabulary needs scores")
        model = models.Unigram(
            [(t, float(s)) for t, s in zip(tokens, scores)],
            unk_id=unk_id,
            byte_fallback=any(t == BYTE for t in (types or [])),
        )
    else:
        vocab = {t: i for i, t in enumerate(tokens)}
        if merges:
            pairs = [tuple(m.split(" ", 1)) for m in merges]
        else:
            pairs = merges_from_scores(tokens, scores if scores is not None else [-float(i) for i in range(len(tokens))])
        unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
        model = models.BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None, unk_token=unk)
    tk = HFTokenizer(model)
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix_space else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tk.decoder = decoders.Sequence(steps)
    return tk


def _add_marked_tokens(tk: Any, tokens: list[str], types: list[int] | None, named_ids: Sequence[int | None]) -> None:
    """Control tokens and the named special tokens -> special added tokens; user-defined -> added tokens."""
    from tokenizers import AddedToken

    byte_level = isinstance_byte_level(tk)
    special_ids = [i for i, t in enumerate(types or []) if t == CONTROL]
    special_ids += [i for i in named_ids if i is not None and 0 <= i < len(tokens)]
    seen: set[int] = set()
    special = []
    for i in special_ids:
        if i in seen:
            continue
        seen.add(i)
        tok = tokens[i]
        if byte_level and not _BYTE_ALPHABET.issuperset(tok):
            continue  # not spelled in the byte alphabet: transformers skips these too
        special.append(AddedToken(tok, normalized=False, special=True))
    if special:
        tk.add_special_tokens(special)
    vocab = tk.get_vocab(with_added_tokens=False)
    user = [
        AddedToken(tokens[i], normalized=False, special=False)
        for i, t in enumerate(types or [])
        if t == USER_DEFINED and tokens[i] in vocab and i not in seen
    ]
    if user:
        tk.add_tokens(user)


def isinstance_byte_level(tk: Any) -> bool:
    return type(tk.decoder).__name__ == "ByteLevel"


def tokenizer_from_gguf_metadata(meta: dict[str, Any], source: str) -> Tokenizer:
    """Build the tokenizer a GGUF file describes; ModelFileError if it has none we can use."""
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise ModelFileError(source, "the GGUF file has no tokenizer (tokenizer.ggml.* metadata missing)")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ModelFileError(source, "the GGUF tokenizer vocabulary (tokenizer.ggml.tokens) is not a list of strings")
    types = meta.get("tokenizer.ggml.token_type")
    scores = meta.get("tokenizer.ggml.scores")
    merges = meta.get("tokenizer.ggml.merges")
    for name, arr in (("token_type", types), ("scores", scores)):
        if arr is not None and len(arr) != len(tokens):
            raise ModelFileError(source, f"tokenizer.ggml.{name} has {len(arr)} entries for {len(tokens)} tokens")

    def tid(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if isinstance(v, int) and 0 <= v < len(tokens) else None

    bos, eos, unk, pad = tid("bos_token_id"), tid("eos_token_id"), tid("unknown_token_id"), tid("padding_token_id")
    try:
        if model == "gpt2":
            if not merges:
                raise ModelFileError(source, "the GGUF byte-level BPE tokenizer has no merges (tokenizer.ggml.merges)")
            tk = _byte_level_bpe(tokens, merges, meta.get("tokenizer.ggml.pre"))
            default_add_bos = False
            kind = f"gguf-gpt2/{meta.get('tokenizer.ggml.pre', 'default')}"
        elif model == "llama":
            add_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
            tk = _sentencepiece_like(tokens, scores, types, merges, add_prefix_space=bool(add_prefix), unk_id=unk)
            default_add_bos = True
            kind = "gguf-llama"
        else:
            raise ModelFileError(
                source, f"unsupported GGUF tokenizer type {model!r} (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)"
            )
        _add_marked_tokens(tk, tokens, types, [bos, eos, unk, pad])
    except ModelFileError:
        raise
    except Exception as exc:  # the tokenizers library rejects the vocabulary / merges
        raise ModelFileError(source, f"cannot build the tokenizer: {' '.join(str(exc).split())}") from exc

    add_bos = meta.get("tokenizer.ggml.add_bos_token", default_add_bos)
    named = {
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "unk_token": tokens[unk] if unk is not None else None,
        "pad_token": tokens[pad] if pad is not None else None,
    }
    extra = [i for i in (tid("eot_token_id"), tid("eom_token_id")) if i is not None]
    template = meta.get("tokenizer.chat_template")
    return Tokenizer(
        tk,
        bos_id=bos,
        eos_id=eos,
        add_bos=bool(add_bos),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        special_tokens=named,
        extra_stop_ids=extra,
        source=source,
        kind=kind,
    )


# -- HF folders ---------------------------------------------------------------------------------


def _read_json(path: Path, source: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(source, f"{path.name} is not valid JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(source, f"{path.name} is not a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _template_from_config(tok_cfg: dict[str, Any], folder: Path) -> str | None:
    tmpl = tok_cfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {d.get("name"): d.get("template") for d in tmpl if isinstance(d, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if isinstance(tmpl, str) and tmpl.strip():
        return tmpl
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        data = _read_json(as_json, str(folder))
        if isinstance(data.get("chat_template"), str):
            return data["chat_template"]
    return None


def _id_list(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _parse_spm_proto(data: bytes) -> tuple[list[str], list[float], list[int], int, bool]:
    """(pieces, scores, types, model_type, add_dummy_prefix) from a SentencePiece ModelProto,
    read with a minimal protobuf wire-format reader (no protobuf dependency)."""

    def varint(buf: bytes, pos: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, pos
            shift += 7

    def fields(buf: bytes):
        pos, end = 0, len(buf)
        while pos < end:
            key, pos = varint(buf, pos)
            num, wire = key >> 3, key & 7
            if wire == 0:
                val, pos = varint(buf, pos)
            elif wire == 1:
                val, pos = buf[pos : pos + 8], pos + 8
            elif wire == 2:
                n, pos = varint(buf, pos)
                val, pos = buf[pos : pos + n], pos + n
            elif wire == 5:
                val, pos = buf[pos : pos + 4], pos + 4
            else:
                raise ValueError(f"unsupported protobuf wire type {wire}")
            yield num, wire, val

    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    model_type, add_dummy_prefix = 1, True
    for num, wire, val in fields(data):
        if num == 1 and wire == 2:
            piece, score, ptype = "", 0.0, NORMAL
            for n2, w2, v2 in fields(val):
                if n2 == 1 and w2 == 2:
                    piece = bytes(v2).decode("utf-8", errors="replace")
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3 and w2 == 0:
                    ptype = v2
            pieces.append(piece)
            scores.append(score)
            types.append(ptype)
        elif num == 2 and wire == 2:
            for n2, w2, v2 in fields(val):
                if n2 == 3 and w2 == 0:
                    model_type = v2
        elif num == 3 and wire == 2:
            for n2, w2, v2 in fields(val):
                if n2 == 3 and w2 == 0:
                    add_dummy_prefix = bool(v2)
    return pieces, scores, types, model_type, add_dummy_prefix


def tokenizer_from_hf_folder(folder: Path, config: dict[str, Any] | None = None) -> Tokenizer:
    """tokenizer.json (or tokenizer.model) + tokenizer_config.json of a Hugging Face model folder."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    source = str(folder)
    config = config or {}
    tok_cfg = _read_json(folder / "tokenizer_config.json", source)
    special_map = _read_json(folder / "special_tokens_map.json", source)
    gen_cfg = _read_json(folder / "generation_config.json", source)
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"

    def named(key: str) -> str | None:
        return _token_text(tok_cfg.get(key)) or _token_text(special_map.get(key))

    if tj.is_file():
        try:
            tk = HFTokenizer.from_file(str(tj))
        except Exception as exc:
            raise ModelFileError(source, f"tokenizer.json cannot be read: {' '.join(str(exc).split())}") from exc
        kind = "tokenizer.json"
    elif tm.is_file():
        try:
            import sentencepiece as spm

            spm.SentencePieceProcessor(model_file=str(tm))  # validates the file
            pieces, scores, types, model_type, add_prefix = _parse_spm_proto(tm.read_bytes())
            unk = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
            tk = _sentencepiece_like(
                pieces, scores, types, None, add_prefix_space=add_prefix, unigram=model_type == 1, unk_id=unk
            )
            ids = [tk.token_to_id(t) for t in (named("bos_token"), named("eos_token"), named("unk_token")) if t]
            _add_marked_tokens(tk, pieces, types, ids)
        except Exception as exc:
            raise ModelFileError(source, f"tokenizer.model cannot be read: {' '.join(str(exc).split())}") from exc
        kind = "tokenizer.model"
    else:
        raise ModelFileError(source, "no tokenizer in the folder (need tokenizer.json or tokenizer.model)")

    # added tokens declared only in tokenizer_config.json
    declared = tok_cfg.get("added_tokens_decoder")
    if isinstance(declared, dict):
        missing = []
        have = tk.get_added_tokens_decoder()
        for sid, spec in declared.items():
            content = _token_text(spec)
            if content is None or not str(sid).isdigit():
                continue
            if int(sid) in have:
                continue
            missing.append(AddedToken(content, normalized=False, special=bool(spec.get("special", False))))
        for tok in missing:
            (tk.add_special_tokens if tok.special else tk.add_tokens)([tok])

    def id_of(text: str | None) -> int | None:
        return tk.token_to_id(text) if text else None

    bos_text, eos_text = named("bos_token"), named("eos_token")
    bos = id_of(bos_text)
    eos = id_of(eos_text)
    if bos is None:
        bos = next(iter(_id_list(config.get("bos_token_id"))), None)
    if eos is None:
        eos = next(iter(_id_list(gen_cfg.get("eos_token_id")) + _id_list(config.get("eos_token_id"))), None)
    # named special tokens must be special added tokens, as transformers makes them
    special_now = {i for i, t in tk.get_added_tokens_decoder().items() if t.special}
    extra_special = [
        AddedToken(t, normalized=False, special=True)
        for t in {named(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        if t and id_of(t) is not None and id_of(t) not in special_now
    ]
    if extra_special:
        tk.add_special_tokens(extra_special)

    if "add_bos_token" in tok_cfg:
        add_bos = bool(tok_cfg["add_bos_token"])
    elif kind == "tokenizer.model":
        add_bos = True  # LlamaTokenizer's default
    else:  # whatever the post-processor of tokenizer.json does
        add_bos = bos is not None and tk.encode("a", add_special_tokens=True).ids[:1] == [bos]
    stops = _id_list(gen_cfg.get("eos_token_id")) + _id_list(config.get("eos_token_id"))
    return Tokenizer(
        tk,
        bos_id=bos,
        eos_id=eos,
        add_bos=add_bos,
        chat_template=_template_from_config(tok_cfg, folder),
        special_tokens={k: named(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
        extra_stop_ids=stops,
        source=source,
        kind=kind,
    )


__all__ = [
    "Tokenizer",
    "StreamDecoder",
    "tokenizer_from_gguf_metadata",
    "tokenizer_from_hf_folder",
    "bytes_to_unicode",
    "merges_from_scores",
]
