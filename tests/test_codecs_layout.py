"""Row layout of the GGML codecs: zero padding, K-quant tails, threads, Q8_K, and the
lane-parallel searches against the scalar reference transliterations of ggml."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxq import _codecs
from onnxq.ggml import GGMLQuantizer
from onnxq.formats import GGMLQuantType, row_layout

WEIGHT_TYPES = [t for t in GGMLQuantType if t.is_weight_type]
K_QUANTS = [GGMLQuantType.Q4_K, GGMLQuantType.Q5_K, GGMLQuantType.Q6_K]


def data(rows: int, K: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, (rows, K)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)


def imatrix(K: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).gamma(0.5, 2.0, K) + 1e-3).astype(np.float32)


def pad_cols(x: np.ndarray, n: int) -> np.ndarray:
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


# ---------------------------------------------------------------- layout arithmetic

@pytest.mark.parametrize("K", [1, 31, 32, 33, 255, 256, 257, 320, 576, 1000, 4096, 11008])
def test_row_layout_matches_the_formula(K):
    for t in GGMLQuantType:
        tails = [None] + ([t.default_tail, GGMLQuantType.Q4_0] if t.is_weight_type and t.is_k_quant else [])
        for tail in tails:
            L = row_layout(t, K, tail)
            if tail is None:
                n_main, n_tail = -(-K // t.block_size), 0
            else:
                n_main, n_tail = K // 256, -(-(K % 256) // 32)
            assert (L.n_main, L.n_tail) == (n_main, n_tail)
            assert L.main_elems == n_main * t.block_size
            assert L.row_bytes == n_main * t.type_size + n_tail * (tail.type_size if tail else 0)
            assert L.tail_type == (tail if n_tail else None)
            assert L.bits_per_weight == pytest.approx(8 * L.row_bytes / K)


# ---------------------------------------------------------------- zero padding

@pytest.mark.parametrize("t", WEIGHT_TYPES + [GGMLQuantType.Q8_K])
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_padding_equals_quantizing_zero_padded_rows(t, with_imatrix):
    K = t.block_size * 2 + 13  # last block holds 13 real elements
    x = data(3, K, seed=t.value)
    im = imatrix(K) if with_imatrix else None
    q = GGMLQuantizer(t, tail_type=None).quantize(x, imatrix=im)
    padded_K = -(-K // t.block_size) * t.block_size
    ref = GGMLQuantizer(t, tail_type=None).quantize(
        pad_cols(x, padded_K), imatrix=pad_cols(im, padded_K) if im is not None else None)
    np.testing.assert_array_equal(q.data, ref.data)
    y = q.dequantize()
    assert y.shape == (3, K) and y.dtype == np.float32
    np.testing.assert_array_equal(y, ref.dequantize()[:, :K])  # nothing beyond K
    if not t.is_weight_type:
        return
    # the padding took codes of exact zeros: their dequantized values are 0 or the offset
    # of the (min-carrying) types, never anything out of range
    tail_vals = ref.dequantize()[:, K:]
    assert np.all(np.abs(tail_vals) <= np.abs(x).max(axis=1, keepdims=True))


def test_padding_does_not_change_full_blocks():
    # without imatrix every block is independent: the full blocks of a padded row are
    # the blocks of the row cut at a block boundary
    x = data(2, 100)
    for t in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]:
        q = GGMLQuantizer(t).quantize(x).data
        full = GGMLQuantizer(t).quantize(x[:, :96]).data
        np.testing.assert_array_equal(q[:, : full.shape[1]], full)


# ---------------------------------------------------------------- K-quant tails

@pytest.mark.parametrize("t", K_QUANTS)
@pytest.mark.parametrize("K", [576, 320, 1000])
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_tail_layout_round_trips(t, K, with_imatrix):
    x = data(4, K, seed=K)
    im = imatrix(K) if with_imatrix else None
    for tail in (t.default_tail, GGMLQuantType.Q4_1):
        q = GGMLQuantizer(t, tail_type=tail).quantize(x, imatrix=im)
        L = q.layout
        main = (K // 256) * 256
        assert (L.main_elems, L.n_tail, q.tail_type) == (main, -(-(K - main) // 32), tail)
        assert q.data.shape == (4, L.row_bytes)
        # main part: the first main columns quantized alone
        main_q = GGMLQuantizer(t).quantize(x[:, :main], imatrix=im[:main] if im is not None else None)
        np.testing.assert_array_equal(q.data[:, : L.main_bytes], main_q.data)
        # tail: the rest quantized with the tail type, zero-padded (imatrix padded with 0)
        n_pad = L.n_tail * 32
        tail_q = GGMLQuantizer(tail).quantize(
            pad_cols(x[:, main:], n_pad), imatrix=pad_cols(im[main:], n_pad) if im is not None else None)
        np.testing.assert_array_equal(q.data[:, L.main_bytes:], tail_q.data)
        # dequantization is the two parts side by side, cut at K
        y = q.dequantize()
        np.testing.assert_array_equal(y[:, :main], main_q.dequantize())
        np.testing.assert_array_equal(y[:, main:], tail_q.dequantize()[:, : K - main])
        assert np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)) < 0.1


def test_tail_beats_padding_in_size():
    x = data(2, 576)
    with_tail = GGMLQuantizer("Q6_K").quantize(x)
    padded = GGMLQuantizer("Q6_K", tail_type=None).quantize(x)
    assert (with_tail.memory_usage(), padded.memory_usage()) == (2 * (2 * 210 + 2 * 34), 2 * 3 * 210)
    assert with_tail.bits_per_weight == pytest.approx(8 * 488 / 576)


def test_k_multiple_of_256_has_no_tail():
    x = data(2, 512)
    a = GGMLQuantizer("Q4_K").quantize(x)
    b = GGMLQuantizer("Q4_K", tail_type=None).quantize(x)
    assert a.tail_type is None and b.tail_type is None
    np.testing.assert_array_equal(a.data, b.data)


def test_row_shorter_than_a_super_block_is_all_tail():
    x = data(3, 200)
    q = GGMLQuantizer("Q5_K").quantize(x)
    assert q.layout.n_main == 0 and q.tail_type is GGMLQuantType.Q5_1
    np.testing.assert_array_equal(q.data, GGMLQuantizer("Q5_1").quantize(x).data)


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("t", WEIGHT_TYPES + [GGMLQuantType.Q8_K])
def test_threads_give_identical_bytes(t):
    K = 1000  # K-quants get a tail, the others a padded last block
    x = data(37, K, seed=3)
    im = imatrix(K) if t.name not in ("Q8_0", "Q8_K") else None
    ref = GGMLQuantizer(t, num_threads=1).quantize(x, imatrix=im)
    for n in (2, 3, 8):
        q = GGMLQuantizer(t, num_threads=n).quantize(x, imatrix=im)
        np.testing.assert_array_equal(q.data, ref.data)
        np.testing.assert_array_equal(q.dequantize(num_threads=n), ref.dequantize(num_threads=1))


# ---------------------------------------------------------------- Q8_K (activation type)

def q8_K_reference(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_K_ref in numpy (rows of whole 256 blocks, normal values)."""
    out = []
    for block in x.reshape(-1, 256):
        i = int(np.argmax(np.abs(block)))  # first of the largest magnitudes
        if block[i] == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        iscale = np.float32(-127.0) / block[i]
        q = np.minimum(127, np.rint(iscale * block)).astype(np.int8)  # half to even, as nearest_int
        bsums = q.astype(np.int16).reshape(16, 16).sum(axis=1).astype("<i2")
        d = np.array([np.float32(1.0) / iscale], "<f4")
        out.append(np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out).reshape(x.shape[0], -1)


def test_q8_K_matches_ggml_reference():
    x = data(5, 768, seed=8)
    x[1, :256] = 0  # an all-zero block
    x[2, 10] = -x[2].max() * 3  # a negative extreme
    q = GGMLQuantizer("Q8_K").quantize(x)
    assert q.data.shape == (5, 3 * 292)
    np.testing.assert_array_equal(q.data, q8_K_reference(x))
    blocks = q.data.reshape(-1, 292)
    d = blocks[:, :4].copy().view("<f4")
    qs = blocks[:, 4:260].view(np.int8).astype(np.float32)
    np.testing.assert_array_equal(q.dequantize().reshape(-1, 256), d * qs)  # ggml: y = d * q


# ---------------------------------------------------------------- lane-parallel vs scalar reference

def _quantize(qtype: GGMLQuantType, x, im, reference: bool) -> np.ndarray:
    L = row_layout(qtype, x.shape[1])
    out = np.zeros((x.shape[0], L.row_bytes), np.uint8)
    assert _codecs.quantize_rows(x, out, qtype.ggml_id, -1, im, 2, reference) == -1
    return out


@st.composite
def search_inputs(draw):
    """Super-blocks whose sub-blocks come from different regimes, including the ones the
    lane kernels hand back to the scalar code (constant, tiny, one-sided, huge spread)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = draw(st.lists(st.integers(0, 8), min_size=16, max_size=16))
    subs = []
    for k in kinds:
        if k == 0:
            s = rng.standard_normal(32)
        elif k == 1:
            s = np.full(32, rng.standard_normal())
        elif k == 2:
            s = np.zeros(32)
        elif k == 3:
            s = rng.standard_normal(32) * 10.0 ** rng.uniform(-44, -30)
        elif k == 4:
            s = np.abs(rng.standard_normal(32)) + rng.uniform(0, 4)
        elif k == 5:
            s = -np.abs(rng.standard_normal(32)) - rng.uniform(0, 4)
        elif k == 6:
            s = rng.standard_normal(32) * 10.0 ** rng.uniform(5, 30)
        elif k == 7:
            s = np.round(rng.standard_normal(32) * 4) / 8
        else:
            s = rng.standard_normal(32) + 1e4
        subs.append(s)
    x = np.concatenate(subs).reshape(2, 256).astype(np.float32)
    im = None
    if draw(st.booleans()):
        im = (rng.random(256) * 10.0 ** rng.uniform(-4, 4)).astype(np.float32)
        im[rng.random(256) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = 0
    return x, im


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=search_inputs(), t=st.sampled_from(
    [GGMLQuantType.Q4_0, GGMLQuantType.Q4_1, GGMLQuantType.Q5_0, GGMLQuantType.Q5_1] + K_QUANTS))
def test_lane_searches_equal_scalar_reference(inputs, t):
    x, im = inputs
    np.testing.assert_array_equal(_quantize(t, x, im, False), _quantize(t, x, im, True))
