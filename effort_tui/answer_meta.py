"""What is kept with an answer, and the one way it is written out.

An answer's metadata is a plain dict (it goes into the history as JSON): built here from the
engine's `GenerationResult` (or, when the app quits mid-answer, from what streamed so far), and
described here for every place that shows it: the answer's header, the status bar's last line,
a reopened conversation's summary and the Markdown export.

Efforts and speeds describe the decoded tokens: the first token comes from reading the prompt,
which always runs at full effort and is timed as the time to first token.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engine.api import SamplingSettings
from engine.events import FINISH_TEXT, GenerationResult
from engine.units import human_bytes
from effort_tui.stats import SpeedStats, percent, prompt_text

Meta = dict[str, Any]

FINISH_MARK = {"stop": "✓", "cancelled": "■", "error": "✗"}  # anything else ("cut") is "…"


def answer_meta(result: GenerationResult, model: str, sampling: SamplingSettings | None) -> Meta:
    """What the history keeps with a finished answer."""
    meta: Meta = {
        "model": model,
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "prompt_tokens": result.prompt_tokens,
        "prompt_cached": result.prompt_cached,
        "tok_s": round(result.decode_tps, 3),
        "prompt_tok_s": round(result.prompt_tps, 3),
        "ttft_s": round(result.ttft_s, 4),
        "effort_trace": [round(e, 4) for e in result.effort_trace],
        "effective_trace": [round(e, 4) for e in result.effective_trace],
        "step_trace": [round(s, 5) for s in result.step_trace],
        "peak_memory_bytes": result.peak_memory_bytes,
    }
    if result.error:
        meta["error"] = result.error
    if sampling is not None:
        meta["sampling"] = asdict(sampling)
    return meta


def partial_meta(stats: SpeedStats, model: str, sampling: SamplingSettings | None, note: str) -> Meta:
    """An answer cut short before the engine's result arrived (the app quit): what streamed."""
    meta: Meta = {
        "model": model, "finish_reason": "cancelled", "generated_tokens": stats.tokens,
        "prompt_tokens": stats.prompt_tokens, "tok_s": round(stats.average_tps or 0.0, 3),
        "ttft_s": round(stats.ttft_s or 0.0, 4), "effort_trace": [round(s.effort, 4) for s in stats.samples],
        "note": note,
    }
    if sampling is not None:
        meta["sampling"] = asdict(sampling)
    return meta


def decode_part(trace: list[float]) -> list[float]:
    """The entries of a per-token trace that belong to decoded tokens (all of a 1-token trace)."""
    return trace[1:] if len(trace) > 1 else list(trace)


def effort_range_text(trace: list[float]) -> str:
    """'effort 60%', or 'effort 30–100%' when it moved."""
    if not trace:
        return ""
    low, high = min(trace), max(trace)
    if abs(high - low) < 0.005:
        return f"effort {percent(low)}"
    return f"effort {round(low * 100)}–{percent(high)}"


def _tokens(meta: Meta) -> str:
    n, tps = int(meta.get("generated_tokens", 0)), float(meta.get("tok_s", 0.0))
    return f"{n} tok @ {tps:.1f} tok/s" if n and tps > 0 else f"{n} tok"


def _effort(meta: Meta, extras: bool) -> str:
    trace = decode_part(list(meta.get("effort_trace") or []))
    text = effort_range_text(trace)
    if not text or not extras:
        return text
    notes = []
    if len(set(trace)) > 1:
        notes.append(f"mean {percent(sum(trace) / len(trace))}")
    effective = decode_part(list(meta.get("effective_trace") or []))
    if effective:
        notes.append(f"eff {percent(sum(effective) / len(effective))}")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _part(meta: Meta, name: str) -> str:
    generated = int(meta.get("generated_tokens", 0))
    reason = str(meta.get("finish_reason", ""))
    if name == "finish":
        return f"{FINISH_MARK.get(reason, '…')} {FINISH_TEXT.get(reason, reason)}" if reason else ""
    if name == "model":
        return str(meta.get("model", ""))
    if name == "tokens":
        return _tokens(meta)
    if name == "speed":
        tps = float(meta.get("tok_s", 0.0))
        return f"{tps:.1f} tok/s" if generated and tps > 0 else ""
    if name == "ttft":
        return f"ttft {float(meta.get('ttft_s', 0.0)):.2f}s" if generated else ""
    if name == "prompt":
        prompt = int(meta.get("prompt_tokens", 0))
        return prompt_text(prompt, int(meta.get("prompt_cached", 0)), meta.get("prompt_tok_s")) if prompt else ""
    if name in ("effort", "effort+"):
        return _effort(meta, extras=name == "effort+")
    if name == "peak":
        peak = int(meta.get("peak_memory_bytes", 0) or 0)
        return f"peak {human_bytes(peak)}" if peak else ""
    if name == "error":
        return str(meta.get("error", "")) if reason == "error" else ""
    raise ValueError(f"no answer part {name!r}")


def describe(meta: Meta, *parts: str) -> str:
    """The named parts of `meta` that have something to say, joined with ' · '."""
    return " · ".join(text for text in (_part(meta, p) for p in parts) if text)


def header_text(meta: Meta) -> str:
    """Beside 'Assistant' above the answer."""
    return describe(meta, "model", "speed", "effort")


def summary_text(meta: Meta) -> str:
    """The status bar's last line after an answer."""
    return describe(meta, "finish", "tokens", "ttft", "prompt", "effort+", "peak", "error")


def reopened_text(meta: Meta) -> str:
    """The last answer of a conversation opened again."""
    return describe(meta, "tokens", "ttft", "finish")


def export_text(meta: Meta) -> str:
    """Under each answer in a Markdown export."""
    return describe(meta, "model", "tokens", "ttft", "effort", "finish")


def note_text(meta: Meta) -> str:
    """The line under an answer that did not simply end: stopped, cut or failed."""
    reason = meta.get("finish_reason")
    if reason == "error":
        return f"⚠ {meta.get('error') or 'the answer failed'}"
    if reason == "cancelled":
        return "■ stopped"
    if reason in ("length", "context"):
        return f"… {FINISH_TEXT[reason]}"
    return ""
