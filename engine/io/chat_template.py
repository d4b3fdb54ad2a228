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
import re
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


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# -- the work budget ------------------------------------------------------------------------------
# A template is code from the model file. The sandbox already stops it from reaching Python; these
# bound what it may cost, checked BEFORE anything is built: every item any {% for %} visits, the
# output's size and the wall time of one render, the size of what `*`, `+`, `~` and `%` may build,
# the work of every filter and method call (the size of what it reads, n log n for sorting), and the
# widths a format spec, a printf-style field or a size argument (`center`, `indent`, ...) asks for.
# Past a limit the render stops with one line (ChatTemplateError). The render itself runs in a child
# process with a memory limit that is killed at the deadline (engine.io.template_sandbox): a cost no
# check below foresees still ends there, with one line, and costs the app nothing.
MAX_LOOP_ITEMS = 1_000_000  # items visited by all loops of one render, together
MAX_OUTPUT_CHARS = 8_000_000  # the rendered prompt
MAX_RENDER_S = 5.0
MAX_BUILT = 16_000_000  # length of a string or list made by `*`, `+`, `~`, a join or a replace
MAX_WORK = 64_000_000  # characters and items read by all filter and method calls of one render
MAX_FIELD = 100_000  # one formatted field or padding width ("{:>N}", "%Ns", center(N), ...)
MAX_JSON_INDENT = 64

_budget = threading.local()


class TemplateBudgetError(Exception):
    """The template exceeded its work budget (the message says which)."""


class _Budget:
    __slots__ = ("items", "work", "deadline")

    def __init__(self) -> None:
        self.items = 0
        self.work = 0
        self.deadline = time.monotonic() + MAX_RENDER_S

    def spend(self, n: int = 1) -> None:
        self.items += n
        if self.items > MAX_LOOP_ITEMS:
            raise TemplateBudgetError(f"the chat template's loops ran more than {MAX_LOOP_ITEMS:,} steps")
        if self.items & 0x3FF == 0:
            self.check_clock()

    def charge(self, n: int) -> None:
        """One filter or method call that reads `n` characters or items."""
        self.work += n
        if self.work > MAX_WORK:
            raise TemplateBudgetError(f"the chat template's filters and methods did more than {MAX_WORK:,} steps of work")
        self.check_clock()

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
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
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


def _too_long(n: int) -> None:
    if n > MAX_BUILT:
        raise TemplateBudgetError(f"the chat template builds a string or list of {n:,} items (at most {MAX_BUILT:,})")


def _check_width(n: Any, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_FIELD:
        raise TemplateBudgetError(f"the chat template asks {what} for a width of {n:,} (at most {MAX_FIELD:,})")


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: Any) -> None:
    """`fmt % args` and `fmt|format(...)`: no field wider or more precise than MAX_FIELD, no `*`."""
    if not isinstance(fmt, str):
        return
    for width, precision in _PRINTF_FIELD.findall(fmt):
        for n in (width, precision):
            if n == "*":
                raise TemplateBudgetError("the chat template formats a field whose width comes from its arguments")
            if n:
                _check_width(int(n), "a %-format field")


def _check_spec(spec: str) -> None:
    """A resolved str.format spec ("0>999999999"): every number in it is at most MAX_FIELD."""
    for n in re.findall(r"\d+", spec):
        _check_width(int(n), "a format field")


def _estimate_replace(s: str, old: Any, new: Any, count: Any = -1) -> None:
    old, new = str(old), str(new)
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _too_long(len(s) + hits * max(len(new) - len(old), 0))


def _materialized_join(sep: str, items: Any) -> list:
    """The items of a join as a list, refused if the joined text would pass MAX_BUILT."""
    items = list(items)
    _current().charge(len(items))
    _too_long(sum(_size(x) if isinstance(x, str) else 16 for x in items) + len(sep) * max(len(items) - 1, 0))
    return items


def _check_str_method(s: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Size checks for the str methods that can build more than they read; returns the arguments
    to call with (a join's items are materialized once, to be measured)."""
    values = (*args, *kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill") and values:
        if isinstance(values[0], int) and values[0] > len(s):
            _check_width(values[0], f"str.{name}")
    elif name == "expandtabs":
        size = values[0] if values and isinstance(values[0], int) else 8
        _too_long(len(s) * max(size, 1))
    elif name == "replace" and len(args) >= 2:
        _estimate_replace(s, *args[:3])
    elif name == "join" and args:
        return (_materialized_join(s, args[0]), *args[1:])
    return args


_SORTING = frozenset({"sort", "unique", "dictsort", "groupby"})


def _filter_checks(name: str, value: Any, extra: tuple) -> tuple | None:
    """Checks for the built-in filters whose output can outgrow their input. Returns replaced extra
    arguments for `join` (its items materialized), else None."""
    if name == "format":
        _check_printf(value)
    elif name in ("center", "indent", "wordwrap", "truncate", "batch", "slice", "filesizeformat"):
        for n in extra:
            _check_width(n, f"|{name}")
        if name == "indent" and isinstance(value, str):
            width = extra[0] if extra else 4
            per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            _too_long(len(value) + (value.count("\n") + 1) * max(per_line, 0))
    elif name == "replace" and isinstance(value, str) and len(extra) >= 2:
        _estimate_replace(value, *extra[:3])
    return None


def _environment_class():
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter

    class BudgetedFormatter(SandboxedFormatter):
        """str.format inside the sandbox: each field's spec is checked once its nested fields are
        resolved, before the field is built."""

        def format_field(self, value: Any, format_spec: str) -> Any:
            _check_spec(format_spec)
            _current().charge(_size(value) + 1)
            return super().format_field(value, format_spec)

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
                _too_long(_size(left) + _size(right))
            elif operator == "*":
                n = right if isinstance(right, int) else left if isinstance(left, int) else 1
                if isinstance(n, int):
                    _too_long(max(_size(left), _size(right)) * max(n, 0))
            elif operator == "**":
                if isinstance(right, (int, float)) and isinstance(left, (int, float)) and abs(right) > 64 and abs(left) > 1:
                    raise TemplateBudgetError("the chat template computes a number that is too large")
            elif operator == "%":
                _check_printf(left)
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value: Any):
            """`"...".format(...)` and `.format_map(...)` through the budgeted formatter."""
            if super().wrap_str_format(value) is None:
                return None
            text, is_map = value.__self__, value.__name__ == "format_map"
            formatter = BudgetedFormatter(self)

            def wrapper(*args: Any, **kwargs: Any) -> str:
                if is_map:
                    if kwargs or len(args) != 1:
                        raise TypeError("format_map() takes exactly one argument")
                    args, kwargs = (), args[0]
                _current().charge(len(text))
                return type(text)(formatter.vformat(text, args, kwargs))

            return wrapper

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
            """Every method call is charged for what it reads, and the str methods that can build
            more than that are measured first."""
            owner = getattr(__obj, "__self__", None)
            budget = _current()
            budget.charge(_size(owner) + sum(_size(a) for a in args))
            if isinstance(owner, str):
                args = _check_str_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    return BudgetedEnvironment


def _guard_filter(name: str, fn: Any) -> Any:
    """A built-in filter charged for the size of its input (n log n for sorting), with its numeric
    arguments bounded (`center(10**10)` would otherwise allocate 10 GB before any check could run)
    and the size of what it builds estimated first where it can outgrow its input."""
    lead = 1 if hasattr(fn, "jinja_pass_arg") else 0  # context/eval-context filters take that first

    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = args[lead] if len(args) > lead else None
        extra = (*args[lead + 1 :], *kwargs.values())
        for n in extra:
            if isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_BUILT:
                raise TemplateBudgetError(f"the chat template passes {n:,} to a filter")
        size = _size(value)
        _current().charge(size * max(size.bit_length(), 1) if name in _SORTING else size)
        _filter_checks(name, value, extra)
        if name == "join" and value is not None:
            sep = extra[0] if extra and isinstance(extra[0], str) else ""
            args = (*args[:lead], _materialized_join(sep, value), *args[lead + 1 :])
        return fn(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # context/eval-context filters keep their marker
        if hasattr(fn, attr):
            setattr(guarded, attr, getattr(fn, attr))
    return guarded


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    if isinstance(indent, int) and indent > MAX_JSON_INDENT or isinstance(indent, str) and len(indent) > MAX_JSON_INDENT:
        raise TemplateBudgetError(f"the chat template asks tojson for an indent wider than {MAX_JSON_INDENT}")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.ext import loopcontrols

    env = _environment_class()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters = {name: _guard_filter(name, fn) for name, fn in env.filters.items()}
    env.filters["tojson"] = _guard_filter("tojson", _tojson)
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
            budget.check_clock()
            parts.append(chunk)
        return "".join(parts)
    finally:
        _budget.current = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _sandbox_answer(request: dict[str, Any]) -> dict[str, Any]:
    """The template sandbox child's answer to one request (engine.io.template_sandbox's protocol)."""
    from engine.io.template_sandbox import memory_message

    try:
        template = _compile(request["source"])
        if request["op"] == "compile":
            return {"ok": ""}
        return {"ok": _render_bounded(template, **request["context"])}
    except TemplateBudgetError as exc:
        return {"error": str(exc), "kind": "budget"}
    except MemoryError:
        return {"error": memory_message(), "kind": "budget"}
    except RecursionError:
        return {"error": "the chat template nests too deeply", "kind": "budget"}
    except Exception as exc:  # noqa: BLE001 - jinja2 errors and template bugs, reported as one line
        kind = "syntax" if type(exc).__name__ == "TemplateSyntaxError" else "error"
        return {"error": " ".join(str(exc).split()) or type(exc).__name__, "kind": kind}


def serve_sandbox() -> None:
    """The template sandbox child's main (engine.io.template_sandbox starts it): its memory limit
    set, then one answer per request until EOF."""
    from engine.io import template_sandbox

    template_sandbox.serve(_sandbox_answer)


class ChatTemplate:
    """A chat template plus the special-token strings it is rendered with. It is compiled and
    rendered in the template sandbox process (engine.io.template_sandbox), in this process only
    where that cannot run (Windows)."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, *, name: str = "model") -> None:
        from engine.io import template_sandbox

        self.source = source
        self.name = name
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        try:
            self._run("compile", {})
        except template_sandbox.TemplateFailure as exc:  # syntax errors, or a template too big to compile
            raise ChatTemplateError(f"{name}: the chat template does not compile: {_one_line(exc)}") from None

    def _run(self, op: str, context: dict[str, Any]) -> str:
        from engine.io import template_sandbox

        if template_sandbox.available():
            return template_sandbox.run(op, self.source, context, MAX_RENDER_S)
        try:  # the in-process fallback, with the same budget and the same failures
            template = _compile(self.source)
            return "" if op == "compile" else _render_bounded(template, **context)
        except TemplateBudgetError as exc:
            raise template_sandbox.TemplateFailure(str(exc), "budget") from None
        except Exception as exc:  # noqa: BLE001 - jinja2 errors and template bugs
            kind = "syntax" if type(exc).__name__ == "TemplateSyntaxError" else "error"
            raise template_sandbox.TemplateFailure(_one_line(exc), kind) from None

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        context = dict(messages=clean, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                       **self.special_tokens)
        return self._run("render", context)

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text; folds a refused system message into the first user turn."""
        from engine.io.template_sandbox import TemplateFailure

        if not messages:
            raise ChatTemplateError(f"{self.name}: cannot render an empty conversation")
        try:
            return self._render(messages, add_generation_prompt)
        except TemplateFailure as exc:
            if exc.kind == "budget":  # no second try: it would cost as much again
                raise ChatTemplateError(f"{self.name}: {exc}") from None
            first_error = exc
        folded = fold_system(messages)
        if folded is not None:
            try:
                return self._render(folded, add_generation_prompt)
            except TemplateFailure:
                pass
        raise ChatTemplateError(
            f"{self.name}: the chat template refused the conversation: {_one_line(first_error)}"
        ) from None


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
