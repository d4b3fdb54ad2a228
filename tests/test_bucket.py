import numpy as np
import pytest

from engine.effort.bucket import B, PACKINGS, convert_matrix, cutoff_for_effort, k_from_cutoff


def _w(out=64, inn=48, seed=0):
    return np.random.default_rng(seed).standard_normal((out, inn)).astype(np.float32)


@pytest.mark.parametrize("packing", PACKINGS)
def test_layout_permutation_and_rank_order(packing):
    w = _w()
    bm = convert_matrix(w, packing)
    inn, nb = 48, 64 // B
    pos = bm.positions().reshape(B, inn, nb)            # [rank, i, bucket]
    # each (i, bucket) holds a permutation of 0..B-1 across ranks
    assert (np.sort(pos, axis=0) == np.arange(B)[:, None, None]).all()
    # rank-major order: row rank*in+i holds the rank-th largest stored (fp16) |w| of W[16c:16c+16, i]
    wt = np.abs(w.T.reshape(inn, nb, B).astype(np.float16))  # [i, bucket, p]
    srt = -np.sort(-wt, axis=2).transpose(2, 0, 1)       # [rank, i, bucket]
    got = np.abs(np.take_along_axis(wt.transpose(2, 0, 1), pos.astype(np.int64), axis=0))
    assert np.array_equal(got, srt)


@pytest.mark.parametrize("packing", PACKINGS)
def test_stats_non_increasing_with_rank(packing):
    bm = convert_matrix(_w(seed=1), packing)
    s = bm.stats2d
    assert s.shape == (B, 48)
    assert (np.diff(s, axis=0) <= 0).all()


def test_probes_cover_every_input_and_align():
    bm = convert_matrix(_w(seed=2), "nibble", n_probes=4)
    assert bm.probes.shape == (4, 48)
    s = bm.stats2d
    assert np.allclose(bm.probes[0], 0.5 * (s[1] + s[2]))
    assert np.array_equal(convert_matrix(_w(seed=2), "nibble", n_probes=16).probes, s)


@pytest.mark.parametrize("packing,tol", [("fp32", 0.0), ("nibble", 2 ** -11), ("nearest", 2 ** -7),
                                         ("truncate", 2 ** -6)])
def test_dense_roundtrip(packing, tol):
    w = _w(seed=3)
    d = convert_matrix(w, packing).dense()
    assert (np.abs(d - w) <= tol * np.abs(w) + 1e-7).all()


def test_nearest_is_nearest_and_better_than_truncate():
    w = _w(128, 64, seed=4)
    en = np.abs(convert_matrix(w, "nearest").dense() - w).mean()
    et = np.abs(convert_matrix(w, "truncate").dense() - w).mean()
    assert en < 0.85 * et
    # no other fp16 value with the same low 4 bits is closer to the fp32 weight
    h = convert_matrix(w, "nearest").dense()
    bits = np.abs(h).astype(np.float16).view(np.uint16).astype(np.int32)
    for d in (-16, 16):
        alt = np.clip(bits + d, 0, 0x7BFF).astype(np.uint16).view(np.float16).astype(np.float32)
        assert (np.abs(np.abs(h) - np.abs(w)) <= np.abs(alt - np.abs(w)) + 1e-12).all()


def test_memory():
    w = _w(256, 64)
    assert convert_matrix(w, "nibble").data.nbytes + convert_matrix(w, "nibble").pos_packed.nbytes == \
        int(1.25 * w.size * 2)
    assert convert_matrix(w, "nearest").pos_packed is None


def test_cutoff_and_k():
    bm = convert_matrix(_w(seed=5), "nibble", n_probes=16)
    x = np.random.default_rng(6).standard_normal(48).astype(np.float32)
    assert cutoff_for_effort(bm.probes, x, 1.0) == -np.inf
    assert (k_from_cutoff(bm.stats2d, x, -np.inf) == B).all()
    assert (k_from_cutoff(bm.stats2d, x, np.inf) == 0).all()
    for e in (0.1, 0.3, 0.5, 0.9):  # probes == stats: exact count
        k = k_from_cutoff(bm.stats2d, x, cutoff_for_effort(bm.probes, x, e))
        assert k.sum() == round(e * B * 48)


def test_deterministic():
    w = _w(seed=7)
    a, b = convert_matrix(w, "nearest"), convert_matrix(w.copy(), "nearest")
    assert np.array_equal(a.data.view(np.uint16), b.data.view(np.uint16))
    assert np.array_equal(a.stats, b.stats) and np.array_equal(a.probes, b.probes)


def test_ties_are_stable():
    w = np.ones((32, 4), np.float32)
    pos = convert_matrix(w, "fp32").positions().reshape(B, 4, 2)
    assert (pos == np.arange(B)[:, None, None]).all()
