"""Rendering a model's Jinja chat template, the way transformers and llama.cpp do.

The environment matches `transformers.utils.chat_template_utils`: an immutable
sandbox with ``trim_blocks``/``lstrip_blocks`` and loop controls, a ``tojson`` filter
that keeps non-ASCII text, and the globals ``raise_exception`` and ``strftime_now``.
The template sees ``messages``, ``add_generation_prompt``, ``tools``/``documents``
(None) and the special-token strings (``bos_token``, ``eos_token``, ...).

Two extras for a chat app:

* A template that refuses a system message (Gemma, Mistral v0.1, ...) gets the
  system text folded into the first user turn ("<system>\\n\\n<user>") instead.
* A model without a template gets a fallback, `fallback_template`:
  ChatML (``<|im_start|>role\\n...<|im_end|>\\n``) when the vocabulary has those
  two tokens, otherwise a plain transcript::

      <bos>System: ...\\n\\nUser: ...\\n\\nAssistant: ...<eos>\\n\\nUser: ...\\n\\nAssistant:
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from engine.errors import EngineError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n\n' }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)


class ChatTemplateError(EngineError):
    """The chat template is broken, or refused this conversation."""


def fallback_template(vocab_has: Any) -> str:
    """The template for a model that ships none; `vocab_has(token_text) -> bool`."""
    if vocab_has("<|im_start|>") and vocab_has("<|im_end|>"):
        return CHATML_TEMPLATE
    return PLAIN_TEMPLATE


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class ChatTemplate:
    """A compiled chat template plus the special-token strings it is rendered with."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, *, name: str = "model") -> None:
        from jinja2.exceptions import TemplateError

        self.source = source
        self.name = name
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        try:
            self._template = _compile(source)
        except TemplateError as exc:  # syntax errors
            raise ChatTemplateError(f"{name}: the chat template does not compile: {_one_line(exc)}") from exc

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return self._template.render(
            messages=clean,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text; folds a refused system message into the first user turn."""
        if not messages:
            raise ChatTemplateError(f"{self.name}: cannot render an empty conversation")
        try:
            return self._render(messages, add_generation_prompt)
        except Exception as exc:  # jinja2 errors, and template bugs like undefined attributes
            first_error = exc
        folded = fold_system(messages)
        if folded is not None:
            try:
                return self._render(folded, add_generation_prompt)
            except Exception:
                pass
        raise ChatTemplateError(
            f"{self.name}: the chat template refused the conversation: {_one_line(first_error)}"
        ) from first_error


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The conversation with its system message(s) merged into the first user turn; None if it has none."""
    system = [m.get("content") or "" for m in messages if m.get("role") == "system"]
    if not system:
        return None
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    text = "\n\n".join(s for s in system if s)
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{text}\n\n{m.get('content') or ''}" if text else (m.get("content") or "")
            break
    else:
        rest.insert(0, {"role": "user", "content": text})
    return rest
