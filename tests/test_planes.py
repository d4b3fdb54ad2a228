"""The planes layout (engine/effort/planes/layout.py): built from a file's tensors, what it keeps exactly,
and what its reference computes. The kernels are checked against this reference in test_cpu_kernels."""

from __future__ import annotations

import numpy as np
import pytest

from engine.effort.planes import layout

RNG = np.random.default_rng(7)


def _quantize(w: np.ndarray, name: str) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(w, gguf.GGMLQuantizationType[name])


def _dequantize(raw: np.ndarray, name: str) -> np.ndarray:
    import gguf

    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]), np.float32)


@pytest.mark.parametrize("out_dim", [64, 128, 576, 1536, 1600])
@pytest.mark.parametrize("tile", [128, 512])
def test_pack_and_unpack_are_inverse_in_tiles(out_dim, tile):
    codes = RNG.integers(0, 16, (out_dim, 96)).astype(np.uint8)
    plane = layout.pack(codes, tile)
    assert plane.shape == (out_dim * 96 // 2,) and plane.dtype == np.uint8
    assert np.array_equal(layout.unpack(plane, out_dim, 96, tile).T, codes)
    spans = layout.tiles(out_dim, tile)
    assert spans[0][0] == 0 and sum(w for _, w in spans) == out_dim
    assert all(w >= min(tile, out_dim) and w % 64 == 0 for _, w in spans)  # no tile narrower than `tile`


def test_a_tile_holds_each_rows_codes_contiguously():
    """Inside a tile, row i is width/2 bytes at i * width/2: the unit a level reads."""
    codes = np.zeros((1024, 64), np.uint8)
    codes[:, 5] = 15  # input 5 of every output
    plane = layout.pack(codes, 512)
    first_tile = plane[: 64 * 256].reshape(64, 256)
    assert (first_tile[5] == 0xFF).all() and (np.delete(first_tile, 5, axis=0) == 0).all()


def test_the_byte_order_is_the_kernels_register_order():
    """Byte 16L + 4k + j of a 128-output chunk: outputs 16k + 4L + j (low nibble) and that + 64."""
    lo, hi = layout.row_order(128)
    assert lo[0] == 0 and lo[1] == 1 and lo[4] == 16 and lo[16] == 4 and lo[17] == 5
    assert np.array_equal(hi, lo + 64) and sorted(np.concatenate([lo, hi])) == list(range(128))
    lo64, hi64 = layout.row_order(64)
    assert lo64[4] == 8 and lo64[16] == 4 and np.array_equal(hi64, lo64 + 32)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_four_and_eight_bit_blocks_are_kept_exactly(qtype):
    w = (RNG.standard_normal((192, 256)) * 0.05).astype(np.float32)
    raw = _quantize(w, qtype)
    pm = layout.from_blocks(qtype, raw, 256)
    assert pm.kind == ("q8" if qtype == "Q8_0" else "q4")
    assert np.array_equal(pm.dense(), _dequantize(raw, qtype))  # the file's values, not an approximation
    if qtype == "Q4_0":
        assert pm.m is None  # m = -8 d, not stored


def test_q4_k_keeps_its_codes_and_rounds_only_the_scales():
    """Q4_K blocks made by hand (gguf has no Q4_K quantizer): codes kept, scale*sub-scale in fp16."""
    out_dim, in_dim = 64, 512
    blocks = np.zeros((out_dim, in_dim // 256, 144), np.uint8)
    blocks[:, :, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    blocks[:, :, 2:4] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    blocks[:, :, 4:16] = RNG.integers(0, 256, (out_dim, in_dim // 256, 12))
    blocks[:, :, 16:] = RNG.integers(0, 256, (out_dim, in_dim // 256, 128))
    raw = blocks.reshape(out_dim, -1)
    pm = layout.from_blocks("Q4_K", raw, in_dim)
    want = _dequantize(raw, "Q4_K")
    assert pm.kind == "q4"
    assert np.abs(pm.dense() - want).max() <= 1e-3 * np.abs(want).max()


def test_float_weights_become_q8_codes_within_half_a_step():
    w = (RNG.standard_normal((128, 96)) * 0.1).astype(np.float32)
    pm = layout.from_weights(w)
    step = np.repeat(np.abs(w).reshape(128, 3, 32).max(axis=2) / 127, 32, axis=1)
    assert pm.kind == "q8" and np.all(np.abs(pm.dense() - w) <= 0.5 * step + 1e-6)


def test_level_one_is_the_high_nibble_with_the_low_one_at_its_midpoint():
    pm = layout.from_weights((RNG.standard_normal((64, 64)) * 0.1).astype(np.float32))
    codes = 16 * (pm.codes(0).astype(np.int16) - 8) + pm.codes(1)
    d = np.repeat(pm.d.astype(np.float32), 32, axis=0).T
    assert np.allclose(pm.dense(2), d * codes) and np.allclose(pm.dense(1), d * (codes - pm.codes(1) + 7.5))
    assert (pm.dense(0) == 0).all()


def test_gains_are_the_error_each_plane_removes():
    pm = layout.from_weights((RNG.standard_normal((64, 64)) * 0.1).astype(np.float32))
    e0 = (pm.dense(2).astype(np.float64) ** 2).sum(0)
    e1 = ((pm.dense(2) - pm.dense(1)).astype(np.float64) ** 2).sum(0)
    assert np.allclose(pm.gains[0], e0 - e1, rtol=1e-4) and np.allclose(pm.gains[1], e1, rtol=1e-4)


def test_two_int8_levels_carry_x_to_about_sixteen_bits():
    x = RNG.standard_normal(256).astype(np.float32)
    xq, dx = layout.quantize_x(x)
    back = xq * np.repeat(dx, 32)
    assert np.abs(back - x).max() <= np.repeat(dx, 32).max() / 500  # one part in ~64k of each block's range
    assert np.all(np.mod(xq * 256, 1) == 0)  # exact multiples of 1/256: integer sums stay exact


@pytest.mark.parametrize("kind", ["q4", "q8", "q4_0"])
def test_the_reference_product_is_the_weights_at_each_rows_level(kind):
    w = (RNG.standard_normal((128, 96)) * 0.05).astype(np.float32)
    pm = layout.from_weights(w) if kind == "q8" else layout.from_blocks("Q4_1" if kind == "q4" else "Q4_0",
                                                                      _quantize(w, "Q4_1" if kind == "q4" else "Q4_0"), 96)
    x = RNG.standard_normal(96).astype(np.float32)
    lv = RNG.integers(0, pm.n_planes + 1, 96)
    for precise in (True, False):  # x to ~16 bits, or its int8 level alone (what a matrix under effort gets)
        xq, dx = layout.quantize_x(x, precise)
        xs = xq * np.repeat(dx, 32)
        weights = np.stack([pm.dense(int(level))[:, i] for i, level in enumerate(lv)], axis=1)
        got = layout.matvec(pm, x, lv, precise)
        assert np.allclose(got, weights.astype(np.float64) @ xs, rtol=1e-6, atol=1e-6)
    assert layout.rows_read(pm, lv) == int(lv.sum())


def test_the_selection_takes_rows_and_levels_by_error_per_byte():
    pm = layout.from_weights((RNG.standard_normal((64, 64)) * 0.1).astype(np.float32))
    x = RNG.standard_normal(64).astype(np.float32)
    scores = np.concatenate([x**2 * pm.gains[0], x**2 * pm.gains[1]])
    tau = float(np.sort(scores)[64])
    lv = layout.levels(pm, x, tau)
    assert np.array_equal(lv >= 1, x**2 * pm.gains[0] > tau)
    assert np.array_equal(lv == 2, (x**2 * pm.gains[0] > tau) & (x**2 * pm.gains[1] > tau))
    assert (layout.levels(pm, x, -1.0) == 2).all() and (layout.levels(pm, x, np.inf) == 0).all()


def test_a_static_threshold_reads_its_share_of_the_rows_on_average():
    """threshold_for solves bytes_at (the histogram's rows above a threshold) for the share, exactly."""
    from engine.effort.planes import allocation

    rng = np.random.default_rng(7)
    edges = -96 + np.arange(1025) / 8
    for _ in range(50):
        hist = np.zeros((2, 1024))
        first = rng.integers(300, 800)
        hist[:, first:first + rng.integers(5, 200)] = rng.random((2, 1)) * 100
        hist[:, rng.integers(0, 1024, 5)] = 0
        for share in (0.01, 0.1, 0.5, 0.9, 0.999):
            tau = allocation.threshold_for(hist, edges, share)
            assert allocation.bytes_at(hist, edges, tau) == pytest.approx(share * hist.sum(), rel=1e-9)
    assert allocation.threshold_for(hist, edges, 1.0) == -1.0
    assert allocation.bytes_at(np.zeros((2, 1024)), edges, allocation.threshold_for(np.zeros((2, 1024)), edges, 0.5)) == 0
