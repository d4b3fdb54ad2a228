"""ctrl+e: a conversation as a Markdown file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from effort_tui.answer_meta import export_text
from effort_tui.widgets.chat_message import ROLE_TITLES

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
        lines += [f"## {ROLE_TITLES.get(role, role)}", "", content.rstrip(), ""]
        if role == "assistant" and meta:
            lines += [f"<sub>{export_text(meta)}</sub>", ""]
    return "\n".join(lines).rstrip() + "\n"


def export_path(folder: Path, conversation_id: int | None, when: datetime) -> Path:
    stem = f"effort-chat-{conversation_id if conversation_id is not None else 'unsaved'}-{when:%Y%m%d-%H%M%S}"
    path = folder / f"{stem}.md"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.md"
        n += 1
    return path
