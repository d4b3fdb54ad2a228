import numpy as np
import pytest

from engine.effort.bucket import B, convert_matrix, cutoff_for_effort, k_for_effort
from engine.effort.reference import (bucket_matvec, dispatch_rows, effective_effort, matvec_k,
                              rows_from_k)


def _setup(out=96, inn=40, seed=0, packing="fp32", bucket=B):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inn)).astype(np.float32) * rng.uniform(0.2, 2, inn).astype(np.float32)
    x = rng.standard_normal(inn).astype(np.float32)
    return w, x, convert_matrix(w, packing, bucket=bucket)


# the bucket sizes the layout module takes (every kernel reads 16)
BUCKETS = [(16, "fp32"), (16, "nibble"), (8, "nibble")]


def test_effort_one_is_dense_fp32():
    w, x, bm = _setup()
    y, k = bucket_matvec(bm, x, 1.0)
    assert (k == B).all()
    np.testing.assert_allclose(y, w @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packing", ["nibble", "nearest", "truncate"])
def test_effort_one_is_packed_dense(packing):
    w, x, bm = _setup(packing=packing)
    y, _ = bucket_matvec(bm, x, 1.0)
    np.testing.assert_allclose(y, bm.dense() @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bucket,packing", BUCKETS)
@pytest.mark.parametrize("effort", [0.05, 0.25, 0.5, 0.8])
def test_dispatch_matches_brute_force(effort, bucket, packing):
    w, x, bm = _setup(seed=1, bucket=bucket, packing=packing)
    w = bm.dense()  # the values the layout stores (fp16 for the packed kinds)
    c = cutoff_for_effort(bm.probes, x, effort)
    rows = dispatch_rows(bm, x, c)
    k = k_for_effort(bm, x, effort)
    assert k.max() <= bucket
    assert np.array_equal(rows, rows_from_k(k, bm.in_dim, bucket))
    # brute force: y = sum over dispatched (rank, i, bucket) of x_i * w
    vals, pos = bm.values(), bm.positions()
    y = np.zeros(bm.out_dim)
    for r in rows:
        i = r % bm.in_dim
        for cb in range(bm.n_buckets):
            y[cb * bucket + pos[r, cb]] += x[i] * vals[r, cb]
    np.testing.assert_allclose(matvec_k(bm, x, k), y, rtol=1e-5, atol=1e-5)
    # same as masking the dense matrix by rank
    R = bm.rank_matrix()
    np.testing.assert_allclose(matvec_k(bm, x, k), (w * (R < k[None, :])) @ x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bucket,packing", [(16, "nibble"), (8, "nibble")])
@pytest.mark.parametrize("effort", [0.1, 0.25, 0.5, 0.75])
def test_effective_effort_close(effort, bucket, packing):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((256, 128)).astype(np.float32)
    bm = convert_matrix(w, packing, bucket=bucket)
    effs = [effective_effort(k_for_effort(bm, rng.standard_normal(128).astype(np.float32), effort), bm)
            for _ in range(20)]
    assert abs(np.mean(effs) - effort) < 0.03


def test_effective_effort_weighted():
    _, _, a = _setup(96, 40)
    _, _, b = _setup(32, 80, seed=3)
    ka, kb = np.full(40, B), np.zeros(80, int)
    assert effective_effort([ka, kb], [a, b]) == pytest.approx(96 * 40 / (96 * 40 + 32 * 80))
    assert effective_effort(np.full(40, 8), a) == 0.5
    _, _, c = _setup(96, 40, packing="nibble", bucket=8)
    assert effective_effort(np.full(40, 2), c) == 0.25


def test_deterministic():
    w, x, bm = _setup(seed=4, packing="nibble")
    y1, k1 = bucket_matvec(bm, x, 0.4)
    y2, k2 = bucket_matvec(convert_matrix(w.copy(), "nibble"), x.copy(), 0.4)
    assert np.array_equal(k1, k2) and np.array_equal(y1, y2)


def test_error_decreases_with_effort():
    w, x, bm = _setup(256, 64, seed=5)
    errs = [np.linalg.norm(bucket_matvec(bm, x, e)[0] - w @ x) for e in (0.2, 0.5, 0.8, 1.0)]
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_allocation_is_honest_and_monotone():
    from engine.effort.allocation import Allocation, lagrangian_table
    rng = np.random.default_rng(8)
    M, levels = 12, np.linspace(0.05, 1.0, 20)
    sizes = rng.integers(1, 10, M).astype(float)
    sens = rng.uniform(0.1, 10, M)
    cost = sens[:, None] * (1 - levels[None]) ** 2
    grid = np.round(np.arange(0.1, 1.0001, 0.1), 4)
    table = lagrangian_table(cost, levels, sizes, grid)
    assert np.allclose((table * sizes).sum(1) / sizes.sum(), grid)
    ach = np.tile(levels, (M, 1))
    A = Allocation([str(m) for m in range(M)], sizes, grid, table, levels, ach)
    for e in (0.15, 0.33, 0.5, 0.77, 1.0):
        assert abs(A.global_of(A.local(e)) - e) < 1e-9
    # more sensitive matrices get at least as much effort (equal sizes)
    eq = lagrangian_table(cost, levels, np.ones(M), np.array([0.5]))[0]
    assert (np.diff(eq[np.argsort(sens)]) >= -1e-9).all()
    B2 = Allocation.from_arrays(A.to_arrays())
    assert np.array_equal(B2.local(0.42), A.local(0.42))


def test_error_curves_match_exact_on_random_matrix():
    from engine.effort.allocation import error_curves
    rng = np.random.default_rng(9)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    X = rng.standard_normal((16, 64)).astype(np.float32)
    bm = convert_matrix(w, "fp32")
    levels = np.array([0.25, 0.5, 1.0])
    rel, ach = error_curves(bm, X, levels)
    assert rel[-1] == 0 and ach[-1] == 1
    for j, e in enumerate(levels[:-1]):
        err = sum(np.sum((bucket_matvec(bm, x, e)[0] - w @ x) ** 2) for x in X)
        exact = err / np.sum((X @ w.T) ** 2)
        assert 0.5 < rel[j] / exact < 2.0
        assert abs(ach[j] - e) < 0.05

