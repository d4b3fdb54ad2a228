"""`effort bench`: decode speed of the dense path and of the effort path, in one process.

Every configuration decodes the same greedy continuation of the same prompt
after a warm-up, so the numbers differ only by what the kernels do. Shared
machines are noisy, so the configurations take turns: each round decodes every
effort once, and a figure is the median over the rounds, with the spread of the
rounds beside it. Read the ratios: each is measured seconds apart from dense.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from engine.model.decoder import split_weight_name
from engine.errors import EngineError
from engine.events import SpeculativeStats
from engine.model.diagnose import require_finite
from engine.runtime.base import check_room, check_tokens

BENCH_PROMPT = "Explain, step by step, how a bicycle stays upright while it is moving."


@dataclass
class SpeedResult:
    effort: float  # 1.0 = the dense path
    effective_effort: float
    decode_tps: float
    ms_per_token: float
    gbps: float  # projection weight bytes actually read per second
    kernel_ms: dict[str, float] = field(default_factory=dict)  # per projection kind, summed over layers
    kernel_gbps: dict[str, float] = field(default_factory=dict)  # per projection kind
    spread: float = 0.0  # (slowest - fastest round) / median, of the rounds' ms per token
    speedup: float = 1.0  # median over rounds of this round's dense ms / this effort's ms
    stream_gbps: float = 0.0  # dense only: a plain streaming read of the bytes a dense step reads, same rounds
    step_gbps: float = 0.0  # dense only: those bytes over the dense step's time


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def check_plan(runtime, prompt_ids: Sequence[int], tokens: int, warmup: int = 4) -> None:
    """The prompt's ids are rows of the embedding, and the prompt plus every timed and warm-up step
    fit the KV cache (one line otherwise, before anything runs)."""
    check_tokens(runtime, prompt_ids)
    room = runtime.context_limit - len(prompt_ids) - warmup
    check_room(runtime, len(prompt_ids) + warmup + tokens, f"decoding {tokens} tokens after a {len(prompt_ids)}-token prompt",
               f"use --tokens {room} or fewer" if room > 0 else "")


def decode_speed(runtime, prompt_ids: Sequence[int], effort: float, tokens: int, warmup: int = 4) -> tuple[float, float]:
    """(median seconds per decode step, mean effective effort) over `tokens` greedy steps."""
    check_plan(runtime, prompt_ids, tokens, warmup)
    runtime.reset(0)
    logits = runtime.prefill(prompt_ids)
    require_finite(logits, "reading the prompt", prompt_ids)
    token = int(np.argmax(logits))
    times, used = [], []
    for n in range(warmup + tokens):
        start = time.perf_counter()
        logits, share = runtime.step(token, effort)
        elapsed = time.perf_counter() - start
        require_finite(logits, f"at decode step {n + 1} (effort {effort:g})", prompt_ids)
        token = int(np.argmax(logits))
        if n >= warmup:
            times.append(elapsed)
            used.append(share)
    return float(np.median(times)), float(np.mean(used))


def matrix_kind(name: str) -> str:
    """"q_proj" ... "down_proj" for a projection's weight name, "head" for the output head."""
    return split_weight_name(name)[1] if name.startswith("model.layers.") else "head"


def kernel_times(runtime, inputs: dict[str, np.ndarray], effort: float, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """Per matrix kind: (ms for all layers' matrices as a decode step at `effort` runs them, weight
    bytes they read).

    Host-timed calls sweep every matrix once per repeat, so each call finds its weights cold, as a
    decode step does (repeating one matrix back to back would time it from the cache)."""
    names = list(inputs)
    on_device = runtime.times_own_calls  # GPU: the runtime times its own queued calls
    nbytes, seconds = {}, {name: [] for name in names}
    for name in names:
        runtime.project(name, inputs[name], effort)  # bytes_read reports the last project call
        nbytes[name] = runtime.bytes_read(name)
        if on_device:
            seconds[name].append(runtime.time_projection(name, inputs[name], effort))
    for _ in range(0 if on_device else repeats):
        for name in names:
            start = time.perf_counter()
            runtime.project(name, inputs[name], effort)
            seconds[name].append(time.perf_counter() - start)
    totals: dict[str, tuple[float, float]] = {}
    for name in names:
        ms, total_bytes = totals.get(matrix_kind(name), (0.0, 0.0))
        totals[matrix_kind(name)] = (ms + float(np.median(seconds[name])) * 1e3, total_bytes + nbytes[name])
    return totals


@dataclass
class PeerResult:
    """Another runtime on the same file, timed in the same rounds (e.g. llama.cpp)."""

    name: str
    decode_tps: float
    ms_per_token: float
    spread: float
    engine_speedup: float  # median over rounds of the peer's ms / the engine's dense ms: the engine's speed in the peer's


@dataclass
class PromptResult:
    """Prompt reading: tokens per second from an empty cache, medians over the rounds."""

    tokens: int
    engine_tps: float
    peer_tps: dict[str, float] = field(default_factory=dict)


def prompt_seconds(runtime, ids: Sequence[int]) -> float:
    runtime.reset(0)
    start = time.perf_counter()
    require_finite(runtime.prefill(ids), "reading the prompt", ids)
    return time.perf_counter() - start


def run(
    runtime,
    prompt_ids: Sequence[int],
    efforts: Sequence[float],
    tokens: int,
    inputs: dict[str, np.ndarray] | None = None,
    on_step: Callable[[str], None] | None = None,
    rounds: int = 3,
    peers: dict | None = None,
    long_prompt: Sequence[int] | None = None,
) -> tuple[SpeedResult, list[SpeedResult], list[PeerResult], PromptResult | None]:
    """Dense and each effort below 1, `rounds` times in turn, and in the same rounds each peer (a runtime
    of another project with `decode_speed(prompt_ids, tokens)` and `prompt_seconds(ids)`) and, with
    `long_prompt`, the prompt reading of the engine and the peers. Returns (dense, [per effort], [per
    peer], prompt). An effort of 1 in `efforts` is the dense run itself (timed once per round, not twice)."""
    note = on_step or (lambda s: None)
    peers = peers or {}
    efforts = [e for e in dict.fromkeys(float(e) for e in efforts) if e < 1.0]
    configs = [1.0, *efforts]
    steps: dict[float, list[float]] = {e: [] for e in configs}
    shares: dict[float, list[float]] = {e: [] for e in configs}
    peer_steps: dict[str, list[float]] = {name: [] for name in peers}
    prompt_s: dict[str, list[float]] = {name: [] for name in ["engine", *peers]}
    stream = getattr(runtime, "stream_seconds", None)
    stream_s, stream_bytes = [], 0
    for r in range(rounds):
        if stream is not None:
            note(f"round {r + 1}/{rounds}: a plain streaming read of the dense step's bytes")
            stream_bytes, seconds = stream()
            stream_s.append(seconds)
        for effort in configs:
            note(f"round {r + 1}/{rounds}: decoding {tokens} tokens at effort {effort:g}")
            step_s, share = decode_speed(runtime, prompt_ids, effort, tokens)
            steps[effort].append(step_s)
            shares[effort].append(share)
        for name, peer in peers.items():
            note(f"round {r + 1}/{rounds}: {name} decoding {tokens} tokens")
            peer_steps[name].append(peer.decode_speed(prompt_ids, tokens))
        if long_prompt is not None:
            note(f"round {r + 1}/{rounds}: reading a {len(long_prompt)}-token prompt")
            prompt_s["engine"].append(prompt_seconds(runtime, long_prompt))
            for name, peer in peers.items():
                prompt_s[name].append(peer.prompt_seconds(long_prompt))
    results = []
    for effort in configs:
        per_round = np.array(steps[effort])
        step_s = float(np.median(per_round))
        share = float(np.mean(shares[effort]))
        spread = float((per_round.max() - per_round.min()) / step_s)
        speedup = float(np.median(np.array(steps[1.0]) / per_round))
        kernels = kernel_times(runtime, inputs, effort) if inputs is not None else {}
        kernel_s = sum(ms for ms, _ in kernels.values()) / 1e3
        nbytes = sum(b for _, b in kernels.values())
        gbps = nbytes / kernel_s / 1e9 if kernel_s > 0 else 0.0
        results.append(SpeedResult(
            effort, share, 1.0 / step_s, step_s * 1e3, gbps,
            {k: ms for k, (ms, _) in kernels.items()},
            {k: b / (ms / 1e3) / 1e9 if ms > 0 else 0.0 for k, (ms, b) in kernels.items()},
            spread, speedup,
        ))
    peer_results = []
    for name, times in peer_steps.items():
        per_round = np.array(times)
        step_s = float(np.median(per_round))
        peer_results.append(PeerResult(name, 1.0 / step_s, step_s * 1e3, float((per_round.max() - per_round.min()) / step_s),
                                       float(np.median(per_round / np.array(steps[1.0])))))
    if stream_s:
        results[0].stream_gbps = stream_bytes / float(np.median(stream_s)) / 1e9
        results[0].step_gbps = stream_bytes / (results[0].ms_per_token / 1e3) / 1e9
    prompt = None
    if long_prompt is not None:
        tps = {name: len(long_prompt) / float(np.median(s)) for name, s in prompt_s.items()}
        prompt = PromptResult(len(long_prompt), tps.pop("engine"), tps)
    return results[0], results[1:], peer_results, prompt


def format_peers(dense: SpeedResult, peers: list[PeerResult], prompt: PromptResult | None) -> str:
    """The peers' rows under the table, and the prompt speeds."""
    lines = []
    if dense.stream_gbps:
        lines.append(f"dense step: its weights at {dense.step_gbps:.1f} GB/s, {dense.step_gbps / dense.stream_gbps:.0%} of "
                     f"a plain streaming read of the same bytes ({dense.stream_gbps:.1f} GB/s, same rounds)")
    for p in peers:
        lines.append(f"{p.name}: {p.decode_tps:.1f} tok/s ({p.ms_per_token:.2f} ms/tok, spread {100 * p.spread:.0f}%); "
                     f"the engine's dense decode runs at {p.engine_speedup:.2f}x its speed")
    if prompt is not None:
        peer = "; ".join(f"{name} {tps:.1f} tok/s ({prompt.engine_tps / tps:.2f}x)" for name, tps in prompt.peer_tps.items())
        lines.append(f"prompt of {prompt.tokens} tokens: the engine {prompt.engine_tps:.1f} tok/s" + (f"; {peer}" if peer else ""))
    return "\n".join(lines)


def format_table(dense: SpeedResult, results: list[SpeedResult], info, peak_bytes: int, strategy: str = "bucket") -> str:
    kinds = list(dense.kernel_ms) or []
    head = f"{'effort':>7}{'effective':>10}{'tok/s':>8}{'ms/tok':>8}{'spread':>8}{'vs dense':>9}{'GB/s':>7}"
    if kinds:
        head += "  kernel ms (" + " ".join(k.replace("_proj", "") for k in kinds) + ")"
    skipping = "" if strategy != "activation" else "; effort skips whole input rows (activation baseline)"
    lines = [f"decode speed — {info.name} on {info.backend} ({info.device}); peak memory {peak_bytes / 2**20:.0f} MiB{skipping}", head]

    def label(r: SpeedResult) -> str:
        return "dense" if r is dense else f"{r.effort:.2f}"

    for r in [dense, *results]:
        row = (
            f"{label(r):>7}{r.effective_effort:>10.3f}{r.decode_tps:>8.1f}{r.ms_per_token:>8.2f}"
            f"{100 * r.spread:>7.0f}%{r.speedup:>8.2f}x{r.gbps:>7.1f}"
        )
        if kinds:
            row += "  " + " ".join(f"{r.kernel_ms[k]:.2f}" for k in kinds)
        lines.append(row)
    if kinds:
        lines.append(f"{'':>7}{'kernel GB/s':>33}  (" + " ".join(k.replace("_proj", "") for k in kinds) + ")")
        for r in [dense, *results]:
            lines.append(f"{label(r):>7}{'':>33}  " + " ".join(f"{r.kernel_gbps[k]:.0f}" for k in kinds))
    return "\n".join(lines)


# -- lossless mode (engine.speculative): `effort bench --speculative` ----------------------------------

VERIFY_K = 4  # the verify whose cost is reported: VERIFY_K drafted tokens and the one before them


@dataclass
class SpeculativeSpeed:
    decode_tps: float  # lossless greedy decoding, tokens per second (the token loop's own figure)
    dense_tps: float  # plain greedy decoding at effort 1.0, timed the same way
    speedup: float  # median over rounds of that round's dense time / lossless time
    spread: float  # (slowest - fastest round) / median, of the lossless rounds
    stats: SpeculativeStats  # acceptance, draft effort and k, over the last round
    verify_steps: float  # one verify of VERIFY_K + 1 positions, in dense decode steps


class _NoText:
    """The token loop's text decoder, for a bench that prints no text."""

    def step(self, token: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def check_speculative_plan(runtime, prompt_ids: Sequence[int], tokens: int) -> None:
    """`check_plan`, and a decode step to time after the first token (one line otherwise)."""
    if tokens < 2:
        raise EngineError("lossless mode is timed over decode steps after the first token: use --tokens 2 or more")
    check_plan(runtime, prompt_ids, tokens)


def verify_cost(runtime, prompt_ids: Sequence[int], repeats: int = 5) -> float:
    """One `verify` of VERIFY_K + 1 positions in dense decode steps (medians), after the prompt."""
    tail = list(prompt_ids[-(VERIFY_K + 1):])
    runtime.reset(0)
    runtime.prefill(prompt_ids)
    base = len(prompt_ids)
    verify, step = [], []
    for _ in range(repeats):
        runtime.reset(base)
        start = time.perf_counter()
        runtime.verify(tail)
        verify.append(time.perf_counter() - start)
        runtime.reset(base)
        start = time.perf_counter()
        runtime.step(tail[0], 1.0)
        step.append(time.perf_counter() - start)
    return float(np.median(verify) / np.median(step))


def speculative(
    runtime, prompt_ids: Sequence[int], tokens: int, on_step: Callable[[str], None] | None = None, rounds: int = 3
) -> SpeculativeSpeed:
    """Greedy decoding of `tokens` tokens at effort 1.0, plainly and in lossless mode, in turn for
    `rounds` rounds, through the token loop itself (`engine.generate`, so sampling and bookkeeping
    are timed too); the same text both ways."""
    from engine.api import EffortSetting, SamplingSettings
    from engine.generate import Generator

    note = on_step or (lambda s: None)
    check_speculative_plan(runtime, prompt_ids, tokens)
    times: dict[bool, list[float]] = {False: [], True: []}
    costs, stats = [], None
    for r in range(rounds):
        for lossless in (False, True):
            note(f"round {r + 1}/{rounds}: {tokens} tokens {'in lossless mode' if lossless else 'at effort 1'}")
            loop = Generator(runtime, frozenset(), _NoText)  # no stop token: every run decodes `tokens`
            res = loop.generate(prompt_ids, SamplingSettings(max_tokens=tokens), EffortSetting(1.0, lossless=lossless))
            times[lossless].append(1.0 / res.decode_tps)
            stats = res.speculative or stats
        costs.append(verify_cost(runtime, prompt_ids))
    plain, fast = np.array(times[False]), np.array(times[True])
    return SpeculativeSpeed(
        float(1.0 / np.median(fast)), float(1.0 / np.median(plain)), float(np.median(plain / fast)),
        float((fast.max() - fast.min()) / np.median(fast)), stats, float(np.median(costs)),
    )


def format_speculative(s: SpeculativeSpeed) -> str:
    return (
        f"lossless (greedy, drafts checked at effort 1): {s.decode_tps:.1f} tok/s vs {s.dense_tps:.1f} plain, "
        f"{s.speedup:.2f}x (spread {100 * s.spread:.0f}%); acceptance {100 * s.stats.acceptance:.0f}%, "
        f"draft effort {s.stats.mean_draft_effort:.2f}, k {s.stats.mean_k:.1f}; "
        f"a verify of {VERIFY_K + 1} positions costs {s.verify_steps:.2f} decode steps"
    )
