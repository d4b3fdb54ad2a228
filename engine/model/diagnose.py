"""Where NaN and inf come from, when a model produces them.

Every caller that gets logits back from a runtime (the token loop, `effort eval`, `effort bench`)
passes them through `require_finite`: a non-finite row stops the run with `NonFiniteLogits`
instead of reaching the sampler (whose error would name nothing) or printing the same token
forever. A caller that holds the model's files then runs `first_nonfinite` (through `locating`)
to name the culprit in the same one line:

* the first tensor, in the order the network uses them, that holds NaN or inf, or values beyond
  float16's range (the native CPU kernels and a GPU hold projections in float16, so those become
  inf there);
* if every weight is finite: the first place where the activations of the prompt go non-finite,
  found by one float32 forward pass of the MLX decoder that reads one matrix at a time from the
  files (so it costs a few seconds and one matrix of memory, and only when something went wrong).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from engine.errors import EngineError
from engine.model.config import ModelConfig

if TYPE_CHECKING:
    from engine.io.loader import ModelFiles, TensorSource

FLOAT16_MAX = 65504.0
DIAGNOSE_TOKENS = 64  # the forward pass looks at the last this many prompt tokens


class NonFiniteLogits(EngineError):
    """The model produced NaN or inf logits; `ids` are the tokens fed so far (for `first_nonfinite`)."""

    def __init__(self, where: str, ids: Sequence[int], found: str | None = None) -> None:
        self.where = where
        self.ids = list(ids)
        self.found = found
        super().__init__(f"the model produced NaN/inf logits {where}" + (f": {found}" if found else ""))


def require_finite(logits: np.ndarray, where: str, ids: Sequence[int]) -> None:
    """Raise NonFiniteLogits unless every logit is finite (about 20 us for a 50k vocabulary)."""
    if not np.isfinite(logits).all():
        raise NonFiniteLogits(where, ids)


def _order(name: str) -> tuple[int, int]:
    """Tensors in the order a forward pass uses them."""
    kinds = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
             "gate_proj", "up_proj", "down_proj")
    m = re.match(r"model\.layers\.(\d+)\.", name)
    if m:
        kind = next((k for k, part in enumerate(kinds) if f".{part}." in name), len(kinds))
        return 1 + int(m[1]), kind
    if name == "model.embed_tokens.weight":
        return 0, 0
    return 1 << 30, 0 if name == "model.norm.weight" else 1


def _tensor_problem(name: str, w: np.ndarray) -> str | None:
    bad = ~np.isfinite(w)
    if bad.any():
        nan = int(np.isnan(w).sum())
        first = np.unravel_index(int(np.argmax(bad)), w.shape)
        return (f"tensor {name} holds {nan:,} NaN and {int(bad.sum()) - nan:,} inf values "
                f"(the first at {list(map(int, first))})")
    if w.ndim == 2 and w.size:
        peak = float(np.abs(w).max())
        if peak > FLOAT16_MAX:
            return f"tensor {name} has values up to {peak:.3g}, beyond float16's range (they become inf in the kernels)"
    return None


class _Found(Exception):
    pass


def _forward(tensors: TensorSource, config: ModelConfig, ids: Sequence[int]) -> str | None:
    """The first non-finite activation of a float32 pass over `ids`, reading one matrix at a time."""
    import mlx.core as mx

    from engine.model.decoder import Cache, Model, weight_name

    used = sorted(set(int(i) for i in ids))
    embed = tensors.get("model.embed_tokens.weight")
    rows = mx.array(embed[used])  # only the rows the prompt uses, renumbered
    del embed
    small = {n: mx.array(tensors.get(n)) for n in tensors.names() if len(tensors.shape(n)) == 1}
    model = Model(config, {"model.embed_tokens.weight": rows, **small})
    local = mx.array([used.index(int(i)) for i in ids], dtype=mx.int32)

    def finite(x: mx.array) -> bool:
        return bool(mx.isfinite(x).all().item())

    def project(layer: int, proj: str, x: mx.array) -> mx.array:
        name = weight_name(layer, proj)
        if not finite(x):
            raise _Found(f"the activations of the prompt go non-finite in layer {layer}, before {name.split('.', 3)[3]}")
        y = x @ mx.array(tensors.get(name)).T
        if not finite(y):
            raise _Found(f"the activations of the prompt go non-finite in layer {layer}, at the output of {name.split('.', 3)[3]}")
        return y

    try:
        h = model.hidden(local, Cache.for_model(config), project)
        if not finite(h):
            return "the activations of the prompt go non-finite after the last layer (the final norm)"
        head = tensors.get("lm_head.weight" if "lm_head.weight" in tensors.names() else "model.embed_tokens.weight")
        if not np.isfinite(np.array(h[-1:]) @ head.T).all():
            return "the output head overflows on finite activations"
    except _Found as found:
        return str(found)
    return None


def first_nonfinite(tensors: TensorSource, config: ModelConfig, ids: Sequence[int] = ()) -> str | None:
    """What makes this model produce NaN/inf, in one phrase, or None when nothing does.

    Looks at every tensor (in the order the network uses them) for NaN, inf, or values beyond
    float16's range; if all are finite and `ids` are given, runs the last DIAGNOSE_TOKENS of them
    through a float32 forward pass and names the first layer and projection whose activations go
    non-finite. Called only after something went wrong, or by a loader that wants to check a file."""
    for name in sorted(tensors.names(), key=_order):
        problem = _tensor_problem(name, tensors.get(name))
        if problem:
            return problem
    ids = list(ids)[-DIAGNOSE_TOKENS:]
    if not ids or max(ids) >= config.vocab_size or min(ids) < 0:
        return None
    return _forward(tensors, config, ids)


@contextmanager
def locating(files: ModelFiles | None) -> Iterator[None]:
    """Non-finite logits raised inside the block leave it with their cause named (from `files`)."""
    try:
        yield
    except NonFiniteLogits as exc:
        if files is None or exc.found:
            raise
        try:
            found = first_nonfinite(files.tensors, files.config, exc.ids)
        except Exception as failure:  # noqa: BLE001 - the diagnosis is a bonus; the error stands
            found = f"could not locate it ({type(failure).__name__}: {failure})"
        raise NonFiniteLogits(exc.where, exc.ids, found or "every weight is finite, and so is a float32 pass over the prompt") from None
