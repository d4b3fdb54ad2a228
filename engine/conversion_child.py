"""The effort side of one model file, prepared in a child process of the chat's engine worker.

`python -m engine.conversion_child MODEL` does what `effort convert` does (on the native CPU path:
the calibration, saved beside the planes layout) and writes its progress to stdout as JSON lines,
one `LoadProgress` each, so the worker can say how far it is; a failure ends with
{"error": "<one line>"} and exit code 2. It runs apart from the worker's process because the
calibration is a minute of work that must not share the thread or the GIL of the chat's decoding.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import IO

from engine.errors import EngineError, os_error_message
from engine.events import LoadProgress


def progress_line(p: LoadProgress) -> str:
    return json.dumps(dataclasses.asdict(p))


def read_progress(line: str) -> LoadProgress | str | None:
    """One line of the child's output: a LoadProgress, the error it ended with, or None (not ours)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    try:
        return LoadProgress(**data) if isinstance(data, dict) else None
    except TypeError:
        return None


def run(model: str, out: IO[str]) -> int:
    from engine import session

    def report(p: LoadProgress) -> None:
        out.write(progress_line(p) + "\n")
        out.flush()

    try:
        # the CPU path: its layout (made when the chat loaded the model) is opened, the calibration
        # is made and saved beside it, where `engine.effort.planes.calibrate.load` finds it
        loaded = session.load(model, report, effort=False)
        session.prepare_effort(loaded, report)
    except EngineError as exc:
        out.write(json.dumps({"error": str(exc)}) + "\n")
        out.flush()
        return 2
    except OSError as exc:  # an unreadable cache, a full disk: the machine's word, one line
        out.write(json.dumps({"error": os_error_message(exc)}) + "\n")
        out.flush()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.stdout))
