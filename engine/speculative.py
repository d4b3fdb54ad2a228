"""Lossless speed from the dial: speculative decoding with the model's own low-effort self as the draft.

One cycle, from the last emitted token t (chosen, not yet in the KV cache, which holds `context`):
draft k tokens with `runtime.step` at a low effort, drop the draft positions again (`reset`), run t
and the k drafts through one `runtime.verify` at full effort (k + 1 positions; a batched verify
reads the weights once for all of them), and keep what full effort agrees with. The rule is
speculative sampling over the distributions the plain sampler draws from
(`engine.sampler.token_distribution`, temperature, top-k/p, min-p and the repetition penalty
applied alike to the draft's q and full effort's p): draft i is kept with probability
min(1, p(x)/q(x)); the first one refused is replaced by a draw from the normalised residual
max(0, p - q), and when all k are kept full effort adds one token of its own from its last row. So
every cycle emits 1 to k + 1 tokens whose distribution is exactly the plain sampler's at effort 1.0.
Greedy is the same rule on one-hot distributions: a draft is kept while it is full effort's argmax,
and the first that is not is replaced by that argmax, so the text is token for token effort 1.0's.

The cache then holds t and the kept drafts, all written by the verify at full effort; the emitted
token that ends the cycle is the next cycle's t. How long and how cheap the drafts are only moves
the speed, never the output, so `DraftPolicy` may adapt them to the acceptance it measures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.events import SpeculativeStats
from engine.model.diagnose import require_finite
from engine.runtime.base import Runtime
from engine.sampler import Sampler

Distribution = tuple[np.ndarray, np.ndarray]  # (token ids, probabilities), as token_distribution gives


def speculative_choice(draft: int, p: Distribution, q: Distribution, rng: np.random.Generator) -> int | None:
    """The speculative sampling rule for one drafted token `draft`, drawn from `q`, against the target
    `p`: None when it is kept, else the token to emit instead. Kept with probability min(1, p/q); a
    refused one is replaced from max(0, p - q) normalised, which makes the emitted token's
    distribution exactly `p`. One-hot `p` and `q` (greedy) need no randomness: the rule is then
    "keep it if it is p's token, else emit p's token"."""
    p_ids, p_probs = p
    q_ids, q_probs = q
    p_x = float(p_probs[p_ids == draft].sum())
    q_x = float(q_probs[q_ids == draft].sum())
    if p_x >= q_x or (p_x > 0.0 and rng.random() * q_x < p_x):
        return None
    size = int(max(p_ids.max(), q_ids.max())) + 1
    residual = np.zeros(size)
    residual[p_ids] = p_probs
    residual[q_ids] -= q_probs
    np.maximum(residual, 0.0, out=residual)
    support = np.flatnonzero(residual)
    if support.size == 0:  # p == q to rounding: refusal had probability ~0, and p is the residual's limit
        support, weights = p_ids, p_probs
    else:
        weights = residual[support] / residual[support].sum()
    return int(support[0]) if support.size == 1 else int(support[rng.choice(support.size, p=weights)])


# The draft efforts the policy moves between. A SmolLM2 draft token's chance of being kept (greedy,
# after a full-effort prefix): 33 % at 0.25, 61 % at 0.35, 82 % at 0.5, 91 % at 0.65, 96 % at 0.8.
DRAFT_EFFORTS = (0.25, 0.35, 0.5, 0.65, 0.8)
K_MAX = 8  # the longest draft; a verify of K_MAX + 1 positions still fits one batched pass
# What the policy takes a verify of k + 1 positions to cost, in decode steps at full effort: the
# batched verify's target (weights read once for all positions). A draft step at effort e is taken
# to cost e steps (the share of the bytes it reads).
VERIFY_COST = 1.3
RATE_WEIGHT = 0.1  # per token judged, in the running acceptance estimate
RATE_LOW, RATE_HIGH = 0.65, 0.95  # the effort moves a rung up below the one, down above the other


def expected_gain(rate: float, k: int, effort: float) -> float:
    """Tokens per decode step's cost of a cycle of k drafts at `effort` when each draft token is kept
    with probability `rate`: (1 - rate^(k+1)) / (1 - rate) tokens for k * effort + VERIFY_COST."""
    rate = min(rate, 0.999)
    return (1.0 - rate ** (k + 1)) / (1.0 - rate) / (k * effort + VERIFY_COST)


class DraftPolicy:
    """How long the next draft is and at what effort, from the acceptance measured so far in this
    answer (not from timings, so that a seeded sampled answer is the same text on every run).

    `rate` is a running estimate of the chance that a draft token is kept. k is the length with the
    most expected tokens per cost at that rate (`expected_gain`): shorter after refusals, longer
    while drafts are kept. The effort moves one rung down `DRAFT_EFFORTS` (cheaper drafts) while the
    rate is above RATE_HIGH, one up below RATE_LOW. Measured on SmolLM2 (5 answers x 128 tokens,
    greedy): this ties the best fixed choice (k 2 at effort 0.5) and beats growing k after every
    kept draft or moving the effort on a faster estimate, which chase noise (README, Measured,
    "Lossless mode"). `adapt=False` holds k and the effort fixed (tests, measurements)."""

    def __init__(self, k: int | None = None, effort: float = 0.5, adapt: bool = True) -> None:
        self.effort = effort
        self.adapt = adapt
        self.rate = (RATE_LOW + RATE_HIGH) / 2
        self.k = self._best_k() if k is None else k

    def _best_k(self) -> int:
        return max(range(1, K_MAX + 1), key=lambda k: expected_gain(self.rate, k, self.effort))

    def update(self, drafted: int, accepted: int) -> None:
        """After a cycle that drafted `drafted` tokens (cut short or not) of which `accepted` were kept."""
        if not self.adapt or drafted == 0:
            return
        judged = accepted + int(accepted < drafted)  # the tokens kept and the one refused
        keep = (1.0 - RATE_WEIGHT) ** judged
        self.rate = keep * self.rate + (1.0 - keep) * accepted / judged
        rung = min(range(len(DRAFT_EFFORTS)), key=lambda i: abs(DRAFT_EFFORTS[i] - self.effort))
        step = -1 if self.rate > RATE_HIGH and rung > 0 else 1 if self.rate < RATE_LOW and rung < len(DRAFT_EFFORTS) - 1 else 0
        if step:
            self.effort, self.rate = DRAFT_EFFORTS[rung + step], (RATE_LOW + RATE_HIGH) / 2
        self.k = self._best_k()


@dataclass(frozen=True)
class Cycle:
    tokens: list[int]  # emitted in order: the kept drafts, then full effort's own token
    drafted: int
    accepted: int
    effort: float  # the draft effort


class SpeculativeDecoder:
    """Draft-and-verify cycles over one runtime, for one answer: it shares the answer's `Sampler`
    (its settings, random stream and repetition window) with the plain steps around it."""

    def __init__(self, runtime: Runtime, sampler: Sampler, stop_ids: frozenset[int], policy: DraftPolicy | None = None) -> None:
        self.runtime = runtime
        self.sampler = sampler
        self.stop_ids = stop_ids
        self.policy = policy or DraftPolicy()
        self.drafted = self.accepted = self.cycles = 0
        self._effort_sum = 0.0  # draft effort summed over drafted tokens
        self._last: Cycle | None = None

    def cycle(self, token: int, context: Sequence[int], room: int, cancel: threading.Event | None = None) -> Cycle:
        """Emit 1..`room` tokens after `token` (chosen, not yet in the cache, which holds exactly
        `context`); the cache then holds `context`, `token` and every emitted token but the last.

        `room` bounds what may be emitted (max_tokens) and written (the context): the verify writes
        at most `room` positions. A draft ends early at a stop token (nothing after one can be
        emitted) or when `cancel` is set (the cycle then verifies what it has, at least `token`)."""
        position = len(context)
        effort = self.policy.effort
        k = max(0, min(self.policy.k, room - 1))
        drafts: list[int] = []
        drafted_q: list[Distribution] = []
        previous = token
        while len(drafts) < k and not (cancel is not None and cancel.is_set()):
            logits, _ = self.runtime.step(previous, effort)
            require_finite(logits, f"in a speculative draft at effort {effort:g}", [*context, token, *drafts])
            q = self.sampler.distribution(logits, drafts)
            previous = self.sampler.draw(*q)
            drafts.append(previous)
            drafted_q.append(q)
            if previous in self.stop_ids:
                break
        if drafts:
            self.runtime.reset(position)  # the draft's positions were written at low effort
        rows = self.runtime.verify([token, *drafts])
        require_finite(rows, "verifying a speculative draft at full effort", [*context, token, *drafts])
        out: list[int] = []
        accepted = len(drafts)
        for i, draft in enumerate(drafts):
            other = speculative_choice(draft, self.sampler.distribution(rows[i], drafts[:i]), drafted_q[i], self.sampler.rng)
            if other is not None:
                out.append(other)
                accepted = i
                break
            out.append(draft)
        else:  # every draft kept: full effort's own next token comes free from the last row
            out.append(self.sampler.draw(*self.sampler.distribution(rows[len(drafts)], drafts)))
        self.runtime.reset(position + len(out))  # keep `token` and the kept drafts, all written at full effort
        self.sampler.record(out)
        self.policy.update(len(drafts), accepted)
        self.drafted += len(drafts)
        self.accepted += accepted
        self.cycles += 1
        self._effort_sum += effort * len(drafts)
        self._last = Cycle(out, len(drafts), accepted, effort)
        return self._last

    def stats(self) -> SpeculativeStats | None:
        """The figures so far (None before the first cycle)."""
        if self._last is None:
            return None
        mean = self._effort_sum / self.drafted if self.drafted else self._last.effort
        return SpeculativeStats(self.drafted, self.accepted, self.cycles, self._last.effort, self._last.drafted, mean)
