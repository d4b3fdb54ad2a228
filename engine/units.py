"""Numbers as people read them, for every front end (the CLI's progress line, the chat)."""

from __future__ import annotations

from engine.events import LoadProgress


def human_bytes(n: float) -> str:
    """'512 B', '1.5 KB', '93.8 MB', '2.0 GB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_duration(seconds: float) -> str:
    """'42s', '3m 05s', '1h 02m'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def amount_text(p: LoadProgress) -> str:
    """How far a step is: '45.2 MB / 93.8 MB', '12 / 30 layers', or just what is done when the
    total is unknown."""
    if p.unit == "B":
        return f"{human_bytes(p.done)} / {human_bytes(p.total)}" if p.total else human_bytes(p.done)
    unit = f" {p.unit}" if p.unit else ""
    return f"{p.done:.0f} / {p.total:.0f}{unit}" if p.total else f"{p.done:.0f}{unit}"
