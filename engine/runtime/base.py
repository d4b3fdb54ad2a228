"""The one interface every runtime implements, and all that its callers (the token loop, the
session, `effort bench`, `effort eval`, the CLI) may use of one: no caller probes a runtime with
`hasattr`/`getattr`.

Implementations: `engine.runtime.cpu_runtime.CPURuntime` (the native C decode step over the planes
layout) and `engine.runtime.mlx_runtime.MLXRuntime` (MLX, with the bucketMul effort path of
`engine.runtime.effort_mlx`). The effort a caller passes is always the one global effort the user
chose; each runtime alone turns it into per-matrix work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from engine.errors import ContextLimitError, EngineError

if TYPE_CHECKING:
    from engine.model.config import ModelConfig


class Runtime(Protocol):
    """A model ready to run: a KV cache, dense prefill, one decode step per token at an effort, and
    single projections outside a decode step for measurement."""

    context_limit: int
    config: ModelConfig
    times_own_calls: bool  # True: `time_projection` times queued device calls (a GPU); False: time `project` on the host

    # -- the token loop (engine.generate) ---------------------------------------------------------
    def reset(self, keep: int) -> None:
        """Keep the first `keep` cached positions, drop the rest."""

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` to the cache (dense); return the last position's logits."""

    def step(self, token: int, effort: float) -> tuple[np.ndarray, float]:
        """Append one token at `effort`; return (logits, effective effort)."""

    def forward(self, ids: Sequence[int], effort: float) -> tuple[np.ndarray, float]:
        """Append `ids` at `effort` and return every position's logits [len(ids), vocab] (exactly what one
        step after another gives) and the mean effective effort: a text scored teacher-forced."""

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` at full effort and return every position's logits [len(ids), vocab] (speculative
        decoding checks drafted tokens this way; `reset` rolls the cache back to what was accepted)."""

    # -- effort ------------------------------------------------------------------------------------
    strategies: tuple[str, ...]  # what `set_strategy` takes; the first is the runtime's own

    def set_strategy(self, strategy: str) -> None:
        """One of `strategies`: "planes" (CPU), "bucket" (bucketMul, MLX), or "activation" (whole input
        rows by |x|, the TEAL-like baseline, on both)."""

    # -- one projection, outside a decode step (bench, eval) ----------------------------------------
    def projection_inputs(self, tokens: Sequence[int]) -> dict[str, np.ndarray]:
        """Every projection's input at each position of `tokens` (one dense pass from position 0)."""

    def project(self, name: str, x: np.ndarray, effort: float) -> tuple[np.ndarray, float]:
        """One projection (HF weight name) of `x` as a decode step at global `effort` runs it:
        (output, share of its weights or bytes used)."""

    def bytes_read(self, name: str) -> float:
        """Weight bytes the last `project` of this matrix read."""

    def time_projection(self, name: str, x: np.ndarray, effort: float, repeats: int = 20) -> float:
        """Seconds per call of one projection."""

    # -- memory ------------------------------------------------------------------------------------
    def layout_bytes(self) -> int:
        """Bytes of weights the runtime holds itself, beyond the model's MLX weights (0 if none)."""

    def peak_memory(self) -> int:
        """Peak bytes in use by this runtime's computation so far."""


# -- what every caller checks before it drives a runtime ---------------------------------------------
# The native step indexes the embedding by token id and the KV cache by position; it refuses a bad
# index itself, but the callers know what the index means and say it in their own words first.


def check_tokens(runtime: Runtime, ids: Sequence[int]) -> None:
    """Every id must be a row of the model's embedding. A tokenizer may have more tokens than the
    embedding has rows (an inconsistent file), so prompt ids are not in range by construction."""
    if len(ids) == 0:
        return
    rows = runtime.config.vocab_size
    a = np.asarray(ids)
    bad = a[(a < 0) | (a >= rows)]
    if bad.size:
        raise EngineError(
            f"token id {int(bad[0]):,} has no row in the model's embedding ({rows:,} rows): "
            "the tokenizer has more tokens than the model (an inconsistent model file)"
        )


def check_room(runtime: Runtime, positions: int, what: str, hint: str = "") -> None:
    """`positions` cache positions (from 0) must fit the KV cache of `runtime.context_limit`."""
    limit = runtime.context_limit
    if positions > limit:
        tail = f"; {hint}" if hint else ""
        raise ContextLimitError(f"{what} needs {positions:,} positions but the model's context holds {limit:,}{tail}")
