"""Lossless mode (engine/speculative.py): drafts at low effort, verified at full effort.

The promise is exact: greedy text token for token effort 1.0's, sampled text from the plain
sampler's distribution, and a KV cache afterwards as a plain answer leaves it. Checked on the
sampling rule alone (synthetic p and q), on a toy runtime whose every call is visible, on a tiny
real model (the native CPU runtime), and (slow) on SmolLM2.
"""

from __future__ import annotations

import threading
from collections import Counter
from itertools import product
from types import SimpleNamespace

import numpy as np
import pytest

from engine.api import EffortSetting, SamplingSettings
from engine.generate import Generator
from engine.sampler import Sampler, token_distribution
from engine.speculative import DRAFT_EFFORTS, DraftPolicy, speculative_choice

# -- statistics ---------------------------------------------------------------------------------------


def chi_square(counts: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom, cells expecting fewer than 5 pooled into one."""
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at one-sided normal quantile z (3.09: p = 0.001), Wilson-Hilferty."""
    a = 2 / (9 * df)
    return df * (1 - a + z * np.sqrt(a)) ** 3


def fits(counts: np.ndarray, probs: np.ndarray) -> bool:
    stat, df = chi_square(counts, probs * counts.sum())
    return stat < critical(df)


def sparse(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.flatnonzero(dense)
    ids = ids[np.argsort(-dense[ids], kind="stable")]
    return ids, dense[ids] / dense[ids].sum()


# -- the rule alone -----------------------------------------------------------------------------------

PAIRS = {  # (p, q) over 6 tokens: overlapping, q wider than p, disjoint supports, q = p
    "overlap": ([0.5, 0.2, 0.1, 0.1, 0.1, 0.0], [0.1, 0.1, 0.3, 0.2, 0.1, 0.2]),
    "q wider": ([0.0, 0.7, 0.3, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]),
    "disjoint": ([0.6, 0.4, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5, 0.5, 0.0]),
    "equal": ([0.3, 0.3, 0.2, 0.1, 0.05, 0.05], [0.3, 0.3, 0.2, 0.1, 0.05, 0.05]),
}


@pytest.mark.parametrize("name", PAIRS)
def test_the_rule_turns_draws_from_q_into_draws_from_p(name):
    p_dense, q_dense = (np.array(x) for x in PAIRS[name])
    p, q = sparse(p_dense), sparse(q_dense)
    rng = np.random.default_rng(7)
    n = 12000
    drafts = rng.choice(6, size=n, p=q_dense)
    out = [d if (c := speculative_choice(int(d), p, q, rng)) is None else c for d in drafts]
    counts = np.bincount(out, minlength=6)
    assert fits(counts, p_dense), (name, counts)
    if name != "equal":  # the test can tell: the drafts themselves (q) fail it
        assert not fits(np.bincount(drafts, minlength=6), p_dense)


class NoRandomness:
    def __getattr__(self, name):
        raise AssertionError("greedy must not draw random numbers")


def test_on_one_hot_distributions_the_rule_is_greedy_and_uses_no_randomness():
    one = lambda t: (np.array([t]), np.ones(1))  # noqa: E731
    assert speculative_choice(3, one(3), one(3), NoRandomness()) is None
    assert speculative_choice(2, one(3), one(2), NoRandomness()) == 3


# -- a toy runtime: every call visible ------------------------------------------------------------------

VOCAB, STOP = 8, 7


class ToyRuntime:
    """A deterministic 'model' whose logits depend on the whole cached sequence; below full effort they
    get noise, so drafts are sometimes refused. It keeps a real cache with `reset` semantics and
    refuses a write past its context, so the loop's bookkeeping is checked, not assumed."""

    config = SimpleNamespace(vocab_size=VOCAB)

    def __init__(self, context_limit: int = 256, stop_bias: float = -1.0) -> None:
        self.context_limit = context_limit
        self.stop_bias = stop_bias
        self.cache: list[int] = []
        self.efforts: list[float] = []  # one per position written, the effort it was written at
        self.highest = 0  # the most positions ever held
        self.verified: list[int] = []  # the length of every verify

    def logits(self, seq: list[int], effort: float = 1.0) -> np.ndarray:
        rng = np.random.default_rng([*seq[-3:], len(seq), 99])
        out = 2.0 * rng.normal(size=VOCAB)
        out[STOP] += self.stop_bias
        if effort < 1.0:
            out += 4.0 * (1.0 - effort) * np.random.default_rng([*seq[-3:], len(seq), 7]).normal(size=VOCAB)
        return out.astype(np.float32)

    def _append(self, token: int, effort: float) -> np.ndarray:
        if len(self.cache) >= self.context_limit:
            raise AssertionError("wrote past the context")
        self.cache.append(int(token))
        self.efforts.append(effort)
        self.highest = max(self.highest, len(self.cache))
        return self.logits(self.cache, effort)

    def reset(self, keep: int) -> None:
        del self.cache[keep:], self.efforts[keep:]

    def prefill(self, ids):
        return [self._append(t, 1.0) for t in ids][-1]

    def step(self, token: int, effort: float):
        return self._append(token, effort), effort

    def verify(self, ids):
        self.verified.append(len(ids))
        return np.stack([self._append(t, 1.0) for t in ids])

    def peak_memory(self) -> int:
        return 0


class Stream:
    def step(self, token: int) -> str:
        return chr(ord("a") + token)

    def flush(self) -> str:
        return ""


def toy(policy=None, **kw) -> tuple[ToyRuntime, Generator]:
    rt = ToyRuntime(**kw)
    gen = Generator(rt, frozenset({STOP}), Stream)
    if policy is not None:
        gen.draft_policy = policy
    return rt, gen


def answer(gen: Generator, prompt, lossless: bool, **settings):
    return gen.generate(prompt, SamplingSettings(**settings), EffortSetting(1.0, lossless=lossless))


PROMPTS = [[1, 2, 3], [4, 0, 6, 5], [3, 3], [0, 1, 2, 3, 4, 5, 6]]
CHEAP = lambda: DraftPolicy(k=4, effort=0.25, adapt=False)  # noqa: E731 - long, often refused drafts


@pytest.mark.parametrize("policy", [None, CHEAP], ids=["adaptive", "k4-effort0.25"])
def test_greedy_lossless_is_effort_one_token_for_token(policy):
    drafted = accepted = 0
    for prompt in PROMPTS:
        _, plain = toy(stop_bias=-3.0)
        rt, fast = toy(policy, stop_bias=-3.0)
        want = answer(plain, prompt, False, max_tokens=60)
        got = answer(fast, prompt, True, max_tokens=60)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        assert got.text == want.text
        assert rt.cache == prompt + got.token_ids[:-1] == fast._cached  # the cache holds what a plain answer leaves
        assert set(rt.efforts) == {1.0}  # every kept position was written at full effort
        drafted += got.speculative.drafted
        accepted += got.speculative.accepted
    assert 0 < accepted < drafted  # drafts were kept and refused


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8])
def test_max_tokens_bounds_what_is_emitted_and_written(max_tokens):
    rt, gen = toy(CHEAP, stop_bias=-9.0)
    res = answer(gen, [1, 2], True, max_tokens=max_tokens)
    assert res.finish_reason == "length" and res.generated_tokens == max_tokens
    assert res.token_ids == answer(toy(stop_bias=-9.0)[1], [1, 2], False, max_tokens=max_tokens).token_ids
    assert rt.highest <= 2 + max_tokens - 1  # no draft or verify ran past the last token's position
    assert rt.cache == [1, 2] + res.token_ids[:-1]


def test_nothing_after_a_stop_token_and_the_cache_ends_where_a_plain_answer_ends():
    stops = 0
    for prompt in PROMPTS + [[5, 5, 1], [2, 6], [6, 0, 1]]:
        _, plain = toy(stop_bias=2.0)
        rt, fast = toy(CHEAP, stop_bias=2.0)
        want = answer(plain, prompt, False, max_tokens=40)
        got = answer(fast, prompt, True, max_tokens=40)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        assert STOP not in got.token_ids[:-1]
        assert rt.cache == prompt + got.token_ids[:-1]
        stops += got.finish_reason == "stop"
    assert stops >= 3


def test_the_context_limit_holds():
    for limit in (6, 7, 9, 12):
        _, plain = toy(context_limit=limit, stop_bias=-9.0)
        rt, fast = toy(CHEAP, context_limit=limit, stop_bias=-9.0)
        want = answer(plain, [1, 2, 3], False, max_tokens=50)
        got = answer(fast, [1, 2, 3], True, max_tokens=50)  # the toy raises on a write past the context
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason == "context"
        assert rt.highest == limit


def test_cancel_stops_after_the_token_the_ui_saw():
    rt, gen = toy(CHEAP, stop_bias=-9.0)
    cancel = threading.Event()
    seen = []

    def on_token(event):
        seen.append(event.token_id)
        if event.index == 3:
            cancel.set()

    res = gen.generate([1, 2], SamplingSettings(max_tokens=50), EffortSetting(lossless=True), cancel=cancel, on_token=on_token)
    assert res.finish_reason == "cancelled" and res.token_ids == seen and len(seen) == 3
    assert rt.cache == [1, 2] + seen[:-1]


def test_cancel_during_a_draft_cuts_it_short():
    rt, gen = toy(lambda: DraftPolicy(k=8, effort=0.25, adapt=False), stop_bias=-9.0)
    cancel = threading.Event()
    steps = []
    step = rt.step

    def counting_step(token, effort):
        steps.append(token)
        if len(steps) == 2:
            cancel.set()  # Esc while the second draft token is computed
        return step(token, effort)

    rt.step = counting_step
    res = gen.generate([1, 2], SamplingSettings(max_tokens=50), EffortSetting(lossless=True), cancel=cancel)
    assert len(steps) == 2 and rt.verified == [3]  # drafting stopped; what was drafted was still checked
    assert res.finish_reason == "cancelled" and res.generated_tokens == 2  # the prefill's, then one


def test_lossless_can_be_turned_on_and_off_mid_answer():
    _, plain = toy(stop_bias=-9.0)
    rt, gen = toy(CHEAP, stop_bias=-9.0)
    effort = EffortSetting(1.0)

    def toggle(event):
        if event.index in (4, 20):
            effort.set_lossless(event.index == 4)

    res = gen.generate([1, 2, 3], SamplingSettings(max_tokens=30), effort, on_token=toggle)
    assert res.token_ids == answer(plain, [1, 2, 3], False, max_tokens=30).token_ids
    assert res.speculative.cycles > 0 and not effort.lossless


def test_events_and_result_carry_the_acceptance_the_draft_effort_and_k():
    rt, gen = toy(stop_bias=-9.0)
    events = []
    res = gen.generate([1, 2, 3], SamplingSettings(max_tokens=40), EffortSetting(lossless=True), on_token=events.append)
    assert events[0].speculative is None  # the first token comes from the prompt's prefill
    stats = [e.speculative for e in events[1:]]
    assert all(s is not None and s.draft_effort in DRAFT_EFFORTS and 0 <= s.k <= 8 for s in stats)
    assert all(0.0 <= s.acceptance <= 1.0 for s in stats)
    total = res.speculative
    assert total == stats[-1] and total.cycles == len({s.cycles for s in stats})
    assert total.acceptance == total.accepted / total.drafted
    plain = gen.generate([1, 2, 3], SamplingSettings(max_tokens=5), EffortSetting(0.5), on_token=events.append)
    assert plain.speculative is None and events[-1].speculative is None


def test_seeded_sampling_in_lossless_mode_is_reproducible():
    settings = dict(temperature=1.0, top_k=5, seed=11, max_tokens=30)
    a = answer(toy(stop_bias=-9.0)[1], [1, 2, 3], True, **settings)
    b = answer(toy(stop_bias=-9.0)[1], [1, 2, 3], True, **settings)
    assert a.token_ids == b.token_ids and a.speculative.drafted > 0


SAMPLING = dict(temperature=1.3, top_k=4, min_p=0.02, repetition_penalty=1.5, repetition_window=3)


def exact_sequences(logits_of, prompt: list[int], settings: SamplingSettings, length: int) -> dict[tuple, float]:
    """The plain sampler's probability of every `length`-token answer, by enumeration."""
    out: dict[tuple, float] = {(): 1.0}
    for _ in range(length):
        grown = {}
        for seq, prob in out.items():
            recent = (prompt + list(seq))[-settings.repetition_window :]
            ids, probs = token_distribution(logits_of(prompt + list(seq)), settings, recent)
            for t, pt in zip(ids, probs):
                grown[seq + (int(t),)] = prob * pt
        out = grown
    return out


def test_lossless_sampling_has_the_plain_samplers_distribution_on_the_toy():
    rt, gen = toy(CHEAP, stop_bias=-9.0)
    settings = SamplingSettings(**SAMPLING, max_tokens=4)
    exact = exact_sequences(rt.logits, [1, 2, 3], settings, 4)
    keys = list(exact)
    counts = Counter()
    drafted = accepted = 0
    for seed in range(3000):
        res = gen.generate([1, 2, 3], SamplingSettings(**SAMPLING, max_tokens=4, seed=seed), EffortSetting(lossless=True))
        counts[tuple(res.token_ids)] += 1
        drafted += res.speculative.drafted
        accepted += res.speculative.accepted
    assert set(counts) <= set(keys)
    assert fits(np.array([counts[k] for k in keys], float), np.array([exact[k] for k in keys]))
    assert 0.2 < accepted / drafted < 0.9  # the drafts were often refused, and often kept


# -- the tiny model on the native CPU runtime ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_gguf, tmp_path_factory):
    from engine import session

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFORT_CACHE_DIR", str(tmp_path_factory.mktemp("spec-cache")))
        yield session.load(str(tiny_gguf("F16")), runtime="cpu")


TINY_PROMPTS = [[5, 17, 33, 80, 120, 7], [200, 3, 3, 41], [9, 250, 251, 252, 60, 61, 62, 300], [11, 12]]


@pytest.mark.parametrize("policy", [None, CHEAP], ids=["adaptive", "k4-effort0.25"])
def test_tiny_model_greedy_is_effort_one_token_for_token(tiny, policy):
    gen = tiny.generator
    gen.draft_policy = policy or DraftPolicy
    drafted = accepted = 0
    try:
        for prompt in TINY_PROMPTS:
            gen._cached = []
            want = answer(gen, prompt, False, max_tokens=64)
            gen._cached = []
            got = answer(gen, prompt, True, max_tokens=64)
            assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
            drafted += got.speculative.drafted
            accepted += got.speculative.accepted
    finally:
        gen.draft_policy = DraftPolicy
    assert 0 < accepted < drafted


def test_tiny_model_on_mlx_greedy_is_effort_one_token_for_token(tiny_gguf, tmp_path, monkeypatch):
    """MLX has its own verify (the model over every position, not the C batched forward)."""
    from engine import session

    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path))
    gen = session.load(str(tiny_gguf("F16")), runtime="mlx").generator
    gen.draft_policy = CHEAP
    accepted = 0
    for prompt in TINY_PROMPTS[:2]:
        gen._cached = []
        want = answer(gen, prompt, False, max_tokens=40)
        gen._cached = []
        got = answer(gen, prompt, True, max_tokens=40)
        assert got.token_ids == want.token_ids
        accepted += got.speculative.accepted
    assert accepted > 0


def test_tiny_model_cache_after_a_lossless_answer_is_a_plain_answers(tiny):
    """Rollback: the K/V a lossless answer leaves are bit for bit a plain answer's, so the next turn's
    logits are too."""
    gen, rt = tiny.generator, tiny.runtime
    gen.draft_policy = CHEAP
    states = []
    try:
        for lossless in (False, True):
            gen._cached = []
            res = answer(gen, TINY_PROMPTS[0], lossless, max_tokens=40)
            n = rt.length
            assert n == len(gen._cached) == len(TINY_PROMPTS[0]) + res.generated_tokens - 1
            k = rt.kcache  # [layers][kv heads][blocks][head_dim][block]: back to positions first
            keys = k.transpose(0, 1, 2, 4, 3).reshape(*k.shape[:2], -1, k.shape[3])
            kv = (keys[:, :, :n].copy(), rt.vcache[:, :, :n].copy())
            next_turn = rt.prefill([res.token_ids[-1], 40, 41])
            states.append((res.token_ids, kv, next_turn))
            if lossless:
                assert 0 < res.speculative.accepted < res.speculative.drafted
    finally:
        gen.draft_policy = DraftPolicy
    (ids_a, kv_a, next_a), (ids_b, kv_b, next_b) = states
    assert ids_a == ids_b
    assert np.array_equal(kv_a[0], kv_b[0]) and np.array_equal(kv_a[1], kv_b[1])
    assert np.array_equal(next_a, next_b)


def test_tiny_model_lossless_sampling_has_the_plain_samplers_distribution(tiny):
    gen, rt = tiny.generator, tiny.runtime
    prompt = TINY_PROMPTS[1]
    settings = SamplingSettings(temperature=1.5, top_k=3, max_tokens=3)

    def logits_of(seq):
        rt.reset(0)
        return rt.prefill(seq)

    exact = exact_sequences(logits_of, prompt, settings, 3)
    keys = list(exact)
    gen.draft_policy = lambda: DraftPolicy(k=2, effort=0.25, adapt=False)
    counts, drafted, accepted = Counter(), 0, 0
    try:
        gen._cached = []
        for seed in range(2000):
            res = gen.generate(prompt, SamplingSettings(temperature=1.5, top_k=3, max_tokens=3, seed=seed),
                               EffortSetting(lossless=True))
            counts[tuple(res.token_ids)] += 1
            drafted += res.speculative.drafted
            accepted += res.speculative.accepted
    finally:
        gen.draft_policy = DraftPolicy
    assert set(counts) <= set(keys)
    assert fits(np.array([counts[k] for k in keys], float), np.array([exact[k] for k in keys]))
    assert 0.1 < accepted / drafted < 0.95


def test_generate_and_bench_speculative_report_the_acceptance(tiny, tiny_gguf, capsys):
    import json

    from engine.cli import main

    model = str(tiny_gguf("F16"))
    runs = []
    for flag in ([], ["--speculative"]):
        assert main(["generate", "--model", model, "-p", "hello world", "--temperature", "0", "--max-tokens", "40",
                     "--raw", "--json", *flag]) == 0
        runs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    plain, fast = runs
    assert fast["token_ids"] == plain["token_ids"] and plain["speculative"] is None
    assert set(fast["speculative"]) == {"acceptance", "drafted", "accepted", "cycles", "draft_effort", "k"}
    assert fast["speculative"]["drafted"] > 0 and fast["effort"] == 1.0

    assert main(["generate", "--model", model, "-p", "hi", "--max-tokens", "8", "--speculative"]) == 0
    assert "lossless: acceptance" in capsys.readouterr().err
    assert main(["generate", "--model", model, "-p", "hi", "--speculative", "--effort", "0.5"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    assert main(["bench", "--model", model, "--efforts", "1", "--tokens", "12", "--rounds", "1", "--speculative", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "lossless (greedy" in err  # the tables go to stderr: with --json stdout is the JSON line alone
    (line,) = out.strip().splitlines()
    record = json.loads(line)["speculative"]
    assert record["decode_tps"] > 0 and record["verify_positions"] == 5 and record["verify_steps"] > 0
    assert 0 <= record["acceptance"] <= 1 and record["drafted"] > 0
    assert main(["bench", "--model", model, "--tokens", "1", "--speculative"]) == 2


# -- SmolLM2 --------------------------------------------------------------------------------------------

REAL_PROMPTS = [
    "Explain, step by step, how a bicycle stays upright while it is moving.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main differences between Python lists and tuples? Give examples.",
    "Describe the water cycle to a ten-year-old.",
    "List five tips for writing clear emails at work, and explain each one.",
]


@pytest.mark.slow
def test_smollm2_greedy_lossless_is_effort_one_token_for_token(smollm2_path):
    from engine import session

    loaded = session.load(str(smollm2_path), runtime="cpu")
    gen = loaded.generator
    drafted = accepted = 0
    for text in REAL_PROMPTS:
        ids = loaded.tokenizer.encode_chat([{"role": "user", "content": text}])
        gen._cached = []
        want = answer(gen, ids, False, max_tokens=128)
        gen._cached = []
        got = answer(gen, ids, True, max_tokens=128)
        assert got.token_ids == want.token_ids, text
        drafted += got.speculative.drafted
        accepted += got.speculative.accepted
    assert 0 < accepted < drafted
