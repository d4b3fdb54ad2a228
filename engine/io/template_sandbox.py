"""Where chat templates run: one long-lived child process with a memory limit, killed at the deadline.

`engine.io.chat_template` bounds what a template may do (loop steps, sizes, widths, work) before it
does it. This bounds what it can cost whatever it does: the child renders with those checks (it runs
`chat_template.serve_sandbox`, which answers through `serve`; this module never imports the template
code), its address space is capped at MAX_MEMORY (Linux; RLIMIT_AS is not enforced on macOS), and the
parent waits the render's time limit plus a grace second for an answer, then kills it (a builtin that never returns to
the interpreter, like a sort of millions of items, cannot check a clock itself). A killed or crashed
child is started again on the next render; the app only sees one ChatTemplateError line.

Cost: a render is one round trip over a pipe (about 0.2 ms for a chat turn, measured on the dev
machine); the child starts once per process (about 0.1 s), on the first render.

Protocol: one JSON object per line each way. Request {"op": "compile"|"render", "source", "context"};
answer {"ok": text} or {"error": message, "kind": see TemplateFailure}.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

MAX_MEMORY = 1 << 30  # address space of the child: 16M-character strings (64 MB each) fit many times
GRACE_S = 1.0  # past MAX_RENDER_S before the child is killed (its own checks answer first)


class TemplateFailure(Exception):
    """The template failed or was refused; `kind` is "budget" (a limit stopped it), "syntax" (it does
    not compile) or "error" (it raised, e.g. raise_exception for a conversation it refuses)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- the child ----------------------------------------------------------------------------------------


def _limit_memory(limit: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: the deadline still holds
        pass


def memory_message() -> str:
    return f"the chat template needed more than {MAX_MEMORY >> 20:,} MB of memory"


def serve(answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child's loop: one request per line on stdin, one answer per line on stdout (`answer`'s),
    until EOF."""
    global MAX_MEMORY
    MAX_MEMORY = int(sys.argv[1]) if len(sys.argv) > 1 else MAX_MEMORY
    _limit_memory(MAX_MEMORY)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        try:
            reply = answer(json.loads(line))
        except MemoryError:
            reply = {"error": memory_message(), "kind": "budget"}
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


# -- the parent ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_child: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the `engine` package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(
        [sys.executable, "-c", "from engine.io.chat_template import serve_sandbox; serve_sandbox()", str(MAX_MEMORY)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        close_fds=True, start_new_session=True,  # Ctrl+C in the terminal is the parent's to handle
    )


def _stop() -> None:
    global _child
    if _child is not None:
        try:
            _child.kill()
            _child.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _child = None


atexit.register(_stop)


def _read_line(proc: subprocess.Popen, deadline: float) -> bytes | None:
    """One answer line, or None when the deadline passes first or the child died."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
    return data


def available() -> bool:
    """Whether templates run in the child here (select() on pipes: not on Windows)."""
    return os.name == "posix"


def run(op: str, source: str, context: dict[str, Any] | None, limit_s: float) -> str:
    """Compile (op "compile") or render `source` with `context` in the child, which is killed when
    it has not answered `limit_s` (the render's own time limit) plus GRACE_S after the request;
    raises TemplateFailure."""
    global _child
    request = json.dumps({"op": op, "source": source, "context": context or {}}).encode() + b"\n"
    with _lock:
        if _child is None or _child.poll() is not None:
            _child = _start()
        proc = _child
        assert proc.stdin is not None
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
        except OSError:  # it died since the last render: start again once
            _stop()
            _child = proc = _start()
            assert proc.stdin is not None
            proc.stdin.write(request)
            proc.stdin.flush()
        line = _read_line(proc, time.monotonic() + limit_s + GRACE_S)
        if line is None:
            died = proc.poll() is not None
            _stop()
            if died:
                raise TemplateFailure(f"the chat template ended its renderer ({memory_message()}?)", "budget")
            raise TemplateFailure(f"rendering the chat template took more than {limit_s:g} s", "budget")
    answer = json.loads(line)
    if "ok" in answer:
        return answer["ok"]
    raise TemplateFailure(answer["error"], answer["kind"])
