"""onnxq's GGML codecs against the gguf package: byte-identical quantization where gguf
can quantize (Q4_0 .. Q8_0, which it does exactly as ggml's C reference), and
bit-identical dequantization for every type gguf knows."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxq.ggml import GGMLQuantizer, QuantizedGGMLTensor
from onnxq.formats import GGMLQuantType

gguf_quants = pytest.importorskip("gguf.quants")
import gguf  # noqa: E402

LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]

# values where the rounding rules differ: exact ties, zeros of both signs, fp16 overflow
# of the scale (65504 / 65520), subnormals and float32 extremes
SPECIAL = np.array(
    [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 7.5, 127.0, -128.0, 65504.0, 65520.0, 1e-8,
     1e-40, -1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38],
    dtype=np.float32,
)


def gguf_quantize(x: np.ndarray, t: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf_quants.quantize(x, gguf.GGMLQuantizationType[t])


def no_negative_zero(x: np.ndarray) -> np.ndarray:
    """gguf differs from ggml in one place: which zero's sign a block keeps when its
    largest magnitude (Q4_0, Q5_0) or its minimum (Q4_1, Q5_1) is a zero and a -0.0
    comes first (ggml keeps the first, numpy's argmax/min do not). onnxq follows ggml
    (test_signed_zero_blocks_follow_ggml); gguf comparisons use +0.0 only."""
    return np.where(x == 0, np.float32(0), x).astype(np.float32)


def gguf_dequantize(data: np.ndarray, t: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf_quants.dequantize(data, gguf.GGMLQuantizationType[t])


@st.composite
def matrices(draw) -> np.ndarray:
    """float32 [rows, 32*blocks] in one of several regimes, seeded through numpy (fast)."""
    rows = draw(st.integers(1, 4))
    blocks = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["normal", "scaled", "ties", "zeros", "special", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (rows, 32 * blocks)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "scaled":  # from subnormal to near overflow, one scale per row
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-44, 37, (rows, 1))
    elif kind == "ties":  # codes land exactly on .5 boundaries for every type
        x = rng.integers(-16, 17, shape) * 0.5 * 2.0 ** rng.integers(-20, 20)
    elif kind == "zeros":
        x = np.where(rng.random(shape) < 0.85, 0.0, rng.standard_normal(shape))
        x[rng.random(shape) < 0.1] = -0.0
    elif kind == "special":
        x = rng.choice(SPECIAL, shape)
    else:
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, (rows, blocks)).repeat(32, axis=1)
        x[rng.random(shape) < 0.05] = rng.choice(SPECIAL)
    return x.astype(np.float32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=matrices(), t=st.sampled_from(LEGACY))
def test_quantize_equals_gguf(x, t):
    x = no_negative_zero(x)
    np.testing.assert_array_equal(GGMLQuantizer(t, num_threads=1).quantize(x).data, gguf_quantize(x, t))


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=3).map(
        lambda s: (s[0], 32 * s[1])), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    t=st.sampled_from(LEGACY),
)
def test_quantize_equals_gguf_any_float32(x, t):
    # hypothesis' own float32 values: extremes, subnormals, repeated values
    x = no_negative_zero(x)
    np.testing.assert_array_equal(GGMLQuantizer(t, num_threads=1).quantize(x).data, gguf_quantize(x, t))


def _block(values) -> np.ndarray:
    return np.array([values], dtype=np.float32)


def test_signed_zero_blocks_follow_ggml():
    # ggml scans `if (amax < fabsf(v))` / `if (v < min)`: the first element wins, so an
    # all-zero block keeps max = +0 (d = +0/-8 = -0, fp16 0x8000) whatever the zeros' signs,
    # and Q4_1/Q5_1 keep the sign of the first zero as the min m. (Bytes checked against
    # ggml's C library; gguf's numpy port differs here.)
    neg_first = _block([-0.0] + [0.0] * 31)
    pos_first = _block([0.0] + [-0.0] * 31)
    for x in (neg_first, pos_first, _block([-0.0] * 32)):
        q4 = GGMLQuantizer("Q4_0").quantize(x).data[0]
        assert q4[:2].tolist() == [0x00, 0x80] and set(q4[2:].tolist()) == {0x88}
        q5 = GGMLQuantizer("Q5_0").quantize(x).data[0]
        # code 16 everywhere: every 5th bit set (qh = 0xFF..), low nibbles 0
        assert q5[:2].tolist() == [0x00, 0x80] and set(q5[2:6].tolist()) == {0xFF} and not q5[6:].any()
    for t in ("Q4_1", "Q5_1"):
        assert GGMLQuantizer(t).quantize(neg_first).data[0, :4].tolist() == [0, 0, 0x00, 0x80]  # m = -0
        assert GGMLQuantizer(t).quantize(pos_first).data[0, :4].tolist() == [0, 0, 0x00, 0x00]  # m = +0
    # and the largest magnitude keeps its sign when a tie between +a and -a comes first as -a
    x = _block([-2.0, 2.0] + [0.5] * 30)
    assert GGMLQuantizer("Q4_0").quantize(x).data[0, :2].view(np.float16)[0] == np.float16(0.25)


@pytest.mark.parametrize("t", LEGACY)
def test_quantize_equals_gguf_large(t):
    # many rows through the threaded row loop, shapes gguf's row grouping splits unevenly
    x = np.random.default_rng(11).standard_normal((67, 1024)).astype(np.float32) * 3
    x[5, 100] = 0.5  # a tie inside a normal block
    np.testing.assert_array_equal(GGMLQuantizer(t, num_threads=3).quantize(x).data, gguf_quantize(x, t))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=matrices(), t=st.sampled_from(LEGACY + K_QUANTS))
def test_dequantize_own_output_equals_gguf(x, t):
    qt = GGMLQuantType.parse(t)
    if qt.is_k_quant:  # K-quant rows need whole super-blocks for gguf: tile to 256
        x = np.tile(x, (1, -(-256 // x.shape[1])))[:, :256]
    q = GGMLQuantizer(qt, num_threads=1).quantize(x)
    ours = q.dequantize(num_threads=1)
    theirs = gguf_dequantize(q.data, t)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("t", LEGACY + K_QUANTS)
def test_dequantize_random_bytes_equals_gguf(t):
    # every bit pattern is a valid block: fp16 scales include inf/NaN/subnormals here
    qt = GGMLQuantType.parse(t)
    data = np.random.default_rng(5).integers(0, 256, (16, 4 * qt.type_size), dtype=np.uint8)
    ours = QuantizedGGMLTensor(data, qt, (16, 4 * qt.block_size)).dequantize(num_threads=2)
    theirs = gguf_dequantize(data, t)
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    np.testing.assert_array_equal(ours[finite].view(np.uint32), theirs[finite].view(np.uint32))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
