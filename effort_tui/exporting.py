"""ctrl+e: a conversation as a Markdown file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from effort_tui.stats import effort_range_text

ROLE_HEADINGS = {"user": "You", "assistant": "Assistant", "system": "System"}


def conversation_markdown(
    title: str,
    turns: Iterable[tuple[str, str, dict[str, Any]]],
    *,
    model: str,
    exported_at: datetime,
    system_prompt: str = "",
) -> str:
    lines = [f"# {title}", "", f"*Exported from Effort Engine on {exported_at:%Y-%m-%d %H:%M} · model {model}*", ""]
    if system_prompt:
        lines += ["## System", "", system_prompt.rstrip(), ""]
    for role, content, meta in turns:
        lines += [f"## {ROLE_HEADINGS.get(role, role)}", "", content.rstrip(), ""]
        if role == "assistant" and meta:
            lines += [f"<sub>{_meta_line(meta)}</sub>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _meta_line(meta: dict[str, Any]) -> str:
    parts = []
    if meta.get("model"):
        parts.append(str(meta["model"]))
    parts.append(f"{meta.get('generated_tokens', 0)} tokens")
    if meta.get("generated_tokens"):
        parts.append(f"{float(meta.get('tok_s', 0.0)):.1f} tok/s")
        parts.append(f"ttft {float(meta.get('ttft_s', 0.0)):.2f} s")
    trace = meta.get("effort_trace") or []
    if trace:
        parts.append(effort_range_text(trace))
    if meta.get("finish_reason"):
        parts.append(str(meta["finish_reason"]))
    return " · ".join(parts)


def export_path(folder: Path, conversation_id: int | None, when: datetime) -> Path:
    stem = f"effort-chat-{conversation_id if conversation_id is not None else 'unsaved'}-{when:%Y%m%d-%H%M%S}"
    path = folder / f"{stem}.md"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.md"
        n += 1
    return path
