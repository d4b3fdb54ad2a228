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
import threading
import time
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


# -- the work budget ------------------------------------------------------------------------------
# A template is code from the model file. The sandbox already stops it from reaching Python; these
# bound what it may cost: every item any {% for %} visits, the output's size and the wall time of
# one render, and the size of what `*`, `**` and `%` may build. Past a limit the render stops with
# one line (ChatTemplateError) instead of hanging or filling memory.
MAX_LOOP_ITEMS = 1_000_000  # items visited by all loops of one render, together
MAX_OUTPUT_CHARS = 8_000_000  # the rendered prompt
MAX_RENDER_S = 5.0
MAX_BUILT = 16_000_000  # length of a string or list made by `*`, `+` or `~` (and filter widths)

_budget = threading.local()


class TemplateBudgetError(Exception):
    """The template exceeded its work budget (the message says which)."""


class _Budget:
    __slots__ = ("items", "deadline")

    def __init__(self) -> None:
        self.items = 0
        self.deadline = time.monotonic() + MAX_RENDER_S

    def spend(self, n: int = 1) -> None:
        self.items += n
        if self.items > MAX_LOOP_ITEMS:
            raise TemplateBudgetError(f"the chat template's loops ran more than {MAX_LOOP_ITEMS:,} steps")
        if self.items & 0x3FF == 0 and time.monotonic() > self.deadline:
            raise TemplateBudgetError(f"rendering the chat template took more than {MAX_RENDER_S:g} s")


def _current() -> _Budget:
    budget = getattr(_budget, "current", None)
    if budget is None:  # rendered outside ChatTemplate._render (tests, tools): a fresh budget
        budget = _budget.current = _Budget()
    return budget


def _budgeted(iterable: Any):
    """Every {% for %} iterates through this (see _BudgetedEnvironment._parse)."""
    budget = _current()
    for item in iterable:
        budget.spend()
        yield item


def _sized(value: Any) -> Any:
    """Every `a ~ b` goes through this: a string doubled in a loop stops at MAX_BUILT."""
    if _size(value) > MAX_BUILT:
        raise TemplateBudgetError("the chat template builds a string that is too long")
    return value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _environment_class():
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BudgetedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def _parse(self, source, name, filename):
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Filter(loop.iter, "_budgeted", [], [], None, None, lineno=loop.lineno)
            for parent in list(tree.find_all(nodes.Node)):
                for field in parent.fields:
                    child = getattr(parent, field, None)
                    if isinstance(child, nodes.Concat):
                        setattr(parent, field, nodes.Filter(child, "_sized", [], [], None, None, lineno=child.lineno))
                    elif isinstance(child, list):
                        child[:] = [
                            nodes.Filter(c, "_sized", [], [], None, None, lineno=c.lineno)
                            if isinstance(c, nodes.Concat) else c
                            for c in child
                        ]
            return tree

        def call_binop(self, context, operator, left, right):
            if operator == "+":
                if _size(left) + _size(right) > MAX_BUILT:
                    raise TemplateBudgetError("the chat template builds a string or list that is too long")
            elif operator == "*":
                n = right if isinstance(right, int) else left if isinstance(left, int) else 1
                if isinstance(n, int) and max(_size(left), _size(right)) * max(n, 0) > MAX_BUILT:
                    raise TemplateBudgetError("the chat template builds a string or list that is too long")
            elif operator == "**":
                if isinstance(right, (int, float)) and isinstance(left, (int, float)) and abs(right) > 64 and abs(left) > 1:
                    raise TemplateBudgetError("the chat template computes a number that is too large")
            elif operator == "%" and isinstance(left, str):
                import re

                if re.search(r"%[-+ #0]*(\d{5,}|\*)", left) or re.search(r"\.\d{5,}", left):
                    raise TemplateBudgetError("the chat template formats a field that is too wide")
            return super().call_binop(context, operator, left, right)

    return BudgetedEnvironment


def _guard_filter(fn: Any) -> Any:
    """A built-in filter whose numeric arguments (widths, counts) are bounded: `center(10**10)`
    would otherwise allocate 10 GB before any check could run."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[1:], *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_BUILT:
                raise TemplateBudgetError(f"the chat template passes {value:,} to a filter")
        return fn(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # context/eval-context filters keep their marker
        if hasattr(fn, attr):
            setattr(guarded, attr, getattr(fn, attr))
    return guarded


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.ext import loopcontrols

    env = _environment_class()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters = {name: _guard_filter(fn) for name, fn in env.filters.items()}
    env.filters["tojson"] = _tojson
    env.filters["_budgeted"] = _budgeted
    env.filters["_sized"] = _sized
    env.globals.pop("lipsum", None)  # lipsum(n=10**9) builds gigabytes of text
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _render_bounded(template: Any, **context: Any) -> str:
    """`template.render(**context)` within the work budget (raises TemplateBudgetError)."""
    _budget.current = budget = _Budget()
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateBudgetError(f"the chat template wrote more than {MAX_OUTPUT_CHARS:,} characters")
            if time.monotonic() > budget.deadline:
                raise TemplateBudgetError(f"rendering the chat template took more than {MAX_RENDER_S:g} s")
            parts.append(chunk)
        return "".join(parts)
    finally:
        _budget.current = None


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
        return _render_bounded(
            self._template,
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
        except TemplateBudgetError as exc:  # no second try: it would cost as much again
            raise ChatTemplateError(f"{self.name}: {exc}") from None
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
