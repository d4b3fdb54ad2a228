"""The token loop: dense prefill, then one decode step per token at the effort in force, or, in the
dial's lossless mode, draft-and-verify cycles (`engine.speculative`) that emit full effort's tokens.

`Generator` keeps the KV cache between calls and reuses the longest common
prefix of the previous and the new prompt, so a chat that resends its whole
history only pays for the new turn.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from engine.api import EffortSetting, SamplingSettings
from engine.errors import ContextLimitError
from engine.events import GenerationResult, LoadProgress, TokenEvent
from engine.model.diagnose import require_finite
from engine.runtime.base import Runtime, check_tokens
from engine.sampler import Sampler
from engine.speculative import DraftPolicy, SpeculativeDecoder


# A prompt is prefilled in chunks sized to take about PREFILL_CHUNK_S each, so that a stop request
# (Esc) takes effect within a second and progress can be shown even for a prompt of 8k tokens.
PREFILL_CHUNK_S = 0.25
PREFILL_FIRST_CHUNK = 16
PREFILL_MAX_CHUNK = 512


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class Generator:
    def __init__(self, runtime: Runtime, stop_ids: frozenset[int], stream_factory: Callable) -> None:
        self.runtime = runtime
        self.stop_ids = stop_ids
        self.stream_factory = stream_factory  # () -> StreamDecoder
        self._cached: list[int] = []  # token ids whose K/V are in the runtime's cache
        self.draft_policy: Callable[[], DraftPolicy] = DraftPolicy  # lossless mode's, made fresh for each answer

    def _finish(
        self, token: int, count: int, max_tokens: int, cancel: threading.Event | None, limit: int
    ) -> str | None:
        """Why generation ends after this token, or None to go on."""
        if token in self.stop_ids:
            return "stop"
        if count >= max_tokens:
            return "length"
        if cancel is not None and cancel.is_set():
            return "cancelled"
        if len(self._cached) >= limit:
            return "context"
        return None

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSettings,
        effort: EffortSetting,
        cancel: threading.Event | None = None,
        on_token: Callable[[TokenEvent], None] | None = None,
        on_prefill: Callable[[LoadProgress], None] | None = None,
    ) -> GenerationResult:
        """`on_prefill` gets LoadProgress("prefill", done, total) after each chunk of the prompt;
        `cancel` is honoured between chunks of the prompt and between tokens."""
        limit = self.runtime.context_limit
        prompt_ids = list(prompt_ids)
        if not prompt_ids:
            raise ContextLimitError("the prompt is empty")
        if len(prompt_ids) >= limit:
            raise ContextLimitError(
                f"the prompt has {len(prompt_ids)} tokens but the model's context holds {limit}; "
                "start a new chat or shorten the prompt"
            )
        check_tokens(self.runtime, prompt_ids)
        sampler = Sampler(sampling, prompt_ids)
        decoder = self.stream_factory()

        start = time.perf_counter()
        # Reuse the cached prefix, but always recompute at least the last prompt token.
        keep = min(common_prefix(self._cached, prompt_ids), len(prompt_ids) - 1)
        self.runtime.reset(keep)
        self._cached = prompt_ids[:keep]
        logits = self._prefill(prompt_ids, keep, cancel, on_prefill)
        if logits is None:  # stopped while reading the prompt
            return GenerationResult(
                text="", token_ids=[], prompt_token_ids=prompt_ids, prompt_tokens=len(prompt_ids),
                generated_tokens=0, prompt_tps=0.0, decode_tps=0.0, ttft_s=time.perf_counter() - start,
                finish_reason="cancelled", peak_memory_bytes=self.runtime.peak_memory(),
            )
        require_finite(logits, "reading the prompt", prompt_ids)
        token = sampler(logits)
        now = time.perf_counter()
        ttft = now - start
        prefilled = len(prompt_ids) - keep
        prompt_tps = prefilled / ttft if ttft > 0 else 0.0

        generated: list[int] = []
        text_parts: list[str] = []
        efforts: list[float] = []
        effective: list[float] = []
        steps: list[float] = []
        finish: str | None = None
        step_s, eff_req, eff_real = ttft, 1.0, 1.0
        last = now
        speculative = SpeculativeDecoder(self.runtime, sampler, self.stop_ids, self.draft_policy())
        cycle_stats = None  # the speculative figures as of the cycle that made `token` (None: a plain step)
        ahead: list[int] = []  # tokens a speculative cycle made after `token`, emitted one per turn
        while True:
            generated.append(token)
            efforts.append(eff_req)
            effective.append(eff_real)
            steps.append(step_s)
            finish = self._finish(token, len(generated), sampling.max_tokens, cancel, limit)
            # the last token also carries whatever the decoder still holds back
            delta = decoder.flush() if finish == "stop" else decoder.step(token)
            if finish not in (None, "stop"):
                delta += decoder.flush()
            text_parts.append(delta)
            if on_token is not None:
                on_token(
                    TokenEvent(
                        text=delta, token_id=token, step_s=step_s, effort=eff_req,
                        effective_effort=eff_real, index=len(generated), prompt_tokens=len(prompt_ids),
                        prompt_tps=prompt_tps, ttft_s=ttft, context_used=len(self._cached), context_limit=limit,
                        prompt_cached=keep, speculative=cycle_stats,
                    )
                )
            if finish is None and cancel is not None and cancel.is_set():
                finish = "cancelled"  # cancelled while the UI handled this token
                text_parts.append(decoder.flush())
            if finish is not None:
                break
            if not ahead and effort.lossless:
                # lossless: the next tokens are full effort's; the cycle leaves `token` and all but the
                # last of them in the cache (never more than max_tokens or the context allows)
                room = min(sampling.max_tokens - len(generated), limit - len(self._cached))
                ahead = speculative.cycle(token, self._cached, room, cancel).tokens
                eff_req = eff_real = 1.0
                cycle_stats = speculative.stats()
            elif not ahead:
                eff_req = effort.get()
                logits, eff_real = self.runtime.step(token, eff_req)
                require_finite(logits, f"at token {len(generated) + 1} of the answer", [*self._cached, token])
                ahead = [sampler(logits)]
                cycle_stats = None
            self._cached.append(token)
            token = ahead.pop(0)
            now = time.perf_counter()
            step_s, last = now - last, now
        if ahead:  # a speculative cycle's tokens past a stop, max_tokens or cancel: not the answer's
            self.runtime.reset(len(self._cached))
        decode_time = sum(steps[1:])
        decode_tps = (len(steps) - 1) / decode_time if decode_time > 0 else 0.0
        return GenerationResult(
            text="".join(text_parts), token_ids=generated, prompt_token_ids=prompt_ids,
            prompt_tokens=len(prompt_ids), generated_tokens=len(generated), prompt_tps=prompt_tps,
            decode_tps=decode_tps, ttft_s=ttft, finish_reason=finish, effort_trace=efforts,
            effective_trace=effective, step_trace=steps, peak_memory_bytes=self.runtime.peak_memory(),
            prompt_cached=keep, speculative=speculative.stats(),
        )

    def _prefill(
        self, prompt_ids: list[int], keep: int, cancel: threading.Event | None,
        on_prefill: Callable[[LoadProgress], None] | None,
    ) -> np.ndarray | None:
        """Prefill prompt_ids[keep:]; None when `cancel` was set first (the cache then holds what was
        read). Without `cancel` and `on_prefill` the whole prompt is one call."""
        todo = prompt_ids[keep:]
        total, done = len(todo), 0
        chunk = PREFILL_FIRST_CHUNK if (cancel is not None or on_prefill is not None) else total
        logits = None
        while done < total:
            if cancel is not None and cancel.is_set():
                return None
            part = todo[done : done + chunk]
            began = time.perf_counter()
            logits = self.runtime.prefill(part)
            took = time.perf_counter() - began
            done += len(part)
            self._cached = prompt_ids[: keep + done]
            if on_prefill is not None:
                on_prefill(LoadProgress("prefill", done, total, "", "reading the prompt"))
            if took > 0:
                chunk = max(1, min(PREFILL_MAX_CHUNK, int(len(part) * PREFILL_CHUNK_S / took)))
        return logits
