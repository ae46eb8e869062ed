"""Public API of the GGML codecs: GGMLQuantType, GGMLQuantizer, QuantizedGGMLTensor,
errors on bad input, the MatMul-weight helpers and ``onnxq codecs``."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

import onnxq
from onnxq import _codecs, cli
from onnxq.ggml import codec as ggml_module
from onnxq import formats as quant_types_module
from onnxq.ggml import GGMLQuantizer, QuantizedGGMLTensor
from onnxq.formats import GGMLQuantType, effective_bits_per_weight, row_bytes

EXPECTED = {  # name: (ggml id, block size, bytes per block, bits per weight, default tail)
    "Q4_0": (2, 32, 18, 4.5, None),
    "Q4_1": (3, 32, 20, 5.0, None),
    "Q5_0": (6, 32, 22, 5.5, None),
    "Q5_1": (7, 32, 24, 6.0, None),
    "Q8_0": (8, 32, 34, 8.5, None),
    "Q4_K": (12, 256, 144, 4.5, "Q5_0"),
    "Q5_K": (13, 256, 176, 5.5, "Q5_1"),
    "Q6_K": (14, 256, 210, 6.5625, "Q8_0"),
    "Q8_K": (15, 256, 292, 9.125, None),
}


def rows(n: int = 4, K: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, K)).astype(np.float32)


# ---------------------------------------------------------------- types

def test_type_properties():
    assert [t.name for t in GGMLQuantType] == list(EXPECTED)
    for t in GGMLQuantType:
        gid, bs, ts, bpw, tail = EXPECTED[t.name]
        assert (t.ggml_id, t.block_size, t.type_size, t.bits_per_weight) == (gid, bs, ts, bpw)
        assert t.default_tail == (GGMLQuantType[tail] if tail else None)
        assert t.is_k_quant == (bs == 256)
        assert t.is_weight_type == (t.name != "Q8_K")
        assert str(t) == t.name


def test_types_agree_with_the_c_table():
    table = {name: (gid, bs, ts, w) for gid, name, bs, ts, w in _codecs.type_table()}
    for t in GGMLQuantType:
        assert table[t.name] == (t.ggml_id, t.block_size, t.type_size, t.is_weight_type)


def test_parse_accepts_any_case_and_lists_valid_names():
    assert GGMLQuantType.parse("q6_k") is GGMLQuantType.Q6_K
    assert GGMLQuantType.parse(" Q4_0 ") is GGMLQuantType.Q4_0
    assert GGMLQuantType.parse(GGMLQuantType.Q5_1) is GGMLQuantType.Q5_1
    with pytest.raises(ValueError, match=r"unknown GGML quant type 'q3_k'; expected one of Q4_0, Q4_1, .*Q8_K"):
        GGMLQuantType.parse("q3_k")
    with pytest.raises(TypeError, match="got int"):
        GGMLQuantType.parse(14)


def test_effective_bits_per_weight():
    assert effective_bits_per_weight("Q4_0", 4096) == 4.5
    assert effective_bits_per_weight("Q6_K", 576, "Q8_0") == pytest.approx((2 * 210 + 2 * 34) * 8 / 576)
    assert effective_bits_per_weight("Q6_K", 576) == pytest.approx(3 * 210 * 8 / 576)  # padded
    assert effective_bits_per_weight("Q4_K", 4096, "auto") == 4.5
    assert row_bytes("Q5_K", 1000, "auto") == 3 * 176 + 8 * 24
    assert effective_bits_per_weight("Q4_0", 100) == pytest.approx(4 * 18 * 8 / 100)


def test_lazy_exports():
    assert onnxq.GGMLQuantType is GGMLQuantType
    assert onnxq.GGMLQuantizer is GGMLQuantizer
    assert onnxq.QuantizedGGMLTensor is QuantizedGGMLTensor


@pytest.mark.parametrize("module", [ggml_module, quant_types_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- quantizer and tensor

def test_quantize_returns_tensor_with_sizes():
    x = rows(3, 576)
    q = GGMLQuantizer("Q6_K", num_threads=2).quantize(x)
    assert q.qtype is GGMLQuantType.Q6_K and q.tail_type is GGMLQuantType.Q8_0
    assert q.shape == (3, 576) and q.data.dtype == np.uint8 and q.data.shape == (3, 488)
    assert q.memory_usage() == 3 * 488 == q.data.nbytes
    assert q.bits_per_weight == pytest.approx(488 * 8 / 576)
    y = q.dequantize()
    assert y.dtype == np.float32 and y.shape == (3, 576)
    assert np.sqrt(np.mean((y - x) ** 2)) < 0.02
    assert "Q6_K" in repr(q) and "tail_type=Q8_0" in repr(q)


def test_one_dimensional_input_is_one_row():
    x = rows(1, 96)[0]
    q = GGMLQuantizer("Q8_0").quantize(x)
    assert q.shape == (1, 96)
    np.testing.assert_array_equal(q.data, GGMLQuantizer("Q8_0").quantize(x[None, :]).data)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ">f4"])
def test_other_float_dtypes_quantize_their_float32_values(dtype):
    x = rows(2, 64).astype(dtype)
    for t in ("Q4_0", "Q4_K"):
        np.testing.assert_array_equal(
            GGMLQuantizer(t).quantize(x).data, GGMLQuantizer(t).quantize(x.astype(np.float32)).data)


def test_non_contiguous_and_read_only_input():
    x = rows(8, 128)
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(GGMLQuantizer("Q6_K").quantize(ro).data, GGMLQuantizer("Q6_K").quantize(x).data)
    np.testing.assert_array_equal(
        GGMLQuantizer("Q5_1").quantize(x[::2]).data, GGMLQuantizer("Q5_1").quantize(np.ascontiguousarray(x[::2])).data)


def test_imatrix_changes_the_search_and_is_ignored_by_q8_0():
    x = rows(4, 256)
    im = np.random.default_rng(3).gamma(0.3, 1.0, 256).astype(np.float32)
    for t in ("Q4_0", "Q4_K", "Q6_K"):
        assert not np.array_equal(GGMLQuantizer(t).quantize(x, imatrix=im).data, GGMLQuantizer(t).quantize(x).data)
    np.testing.assert_array_equal(GGMLQuantizer("Q8_0").quantize(x, imatrix=im).data, GGMLQuantizer("Q8_0").quantize(x).data)
    # float64 / int imatrix values are taken as float32
    np.testing.assert_array_equal(
        GGMLQuantizer("Q4_K").quantize(x, imatrix=im.astype(np.float64)).data,
        GGMLQuantizer("Q4_K").quantize(x, imatrix=im).data)


def test_imatrix_lowers_weighted_error():
    # what an imatrix is for: the error on important columns goes down
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    im = np.where(np.arange(512) % 8 == 0, 100.0, 0.01).astype(np.float32)
    for t in ("Q4_0", "Q4_K"):
        plain = GGMLQuantizer(t).quantize(x).dequantize()
        weighted = GGMLQuantizer(t).quantize(x, imatrix=im).dequantize()
        err = lambda y: float(np.sum(im * (y - x) ** 2))  # noqa: E731
        assert err(weighted) < 0.8 * err(plain)


def test_compression_ratio():
    assert GGMLQuantizer("Q4_0").compression_ratio(4096) == pytest.approx(32 / 4.5)
    assert GGMLQuantizer("Q8_0").compression_ratio(4096 * 11008, 4096) == pytest.approx(32 / 8.5)
    assert GGMLQuantizer("Q6_K").compression_ratio(576 * 10, 576) == pytest.approx(4 * 576 / 488)
    assert GGMLQuantizer("Q6_K", tail_type=None).compression_ratio(576) == pytest.approx(4 * 576 / 630)
    with pytest.raises(ValueError, match="multiple of row_length"):
        GGMLQuantizer("Q4_0").compression_ratio(100, 64)


def test_matmul_weight_helpers_round_trip():
    W = np.random.default_rng(6).standard_normal((576, 40)).astype(np.float32)  # [K, N]
    im = np.random.default_rng(7).random(576).astype(np.float32)
    quantizer = GGMLQuantizer("Q5_K")
    q = quantizer.quantize_matmul_weight(W, imatrix=im)
    assert q.shape == (40, 576)  # N rows of K
    np.testing.assert_array_equal(q.data, quantizer.quantize(np.ascontiguousarray(W.T), imatrix=im).data)
    back = q.to_matmul_weight()
    assert back.shape == (576, 40) and back.flags.c_contiguous
    np.testing.assert_array_equal(back, q.dequantize().T)
    assert np.sqrt(np.mean((back - W) ** 2) / np.mean(W**2)) < 0.05


def test_tensor_from_existing_bytes_is_validated():
    q = GGMLQuantizer("Q4_K").quantize(rows(2, 1000))
    again = QuantizedGGMLTensor(q.data, "q4_k", (2, 1000), tail_type="Q5_0")
    np.testing.assert_array_equal(again.dequantize(), q.dequantize())
    with pytest.raises(ValueError, match=r"data has shape \(2, 608\); 2 rows of 1000 Q4_K elements need \(2, 576\)"):
        QuantizedGGMLTensor(q.data, "Q4_K", (2, 1000))  # without the tail: 4 padded super-blocks
    with pytest.raises(ValueError, match=r"2 rows of 900 Q4_K elements \+ Q5_0 tail need \(2, 542\)"):
        QuantizedGGMLTensor(q.data, "Q4_K", (2, 900), "Q5_0")
    with pytest.raises(TypeError, match="uint8"):
        QuantizedGGMLTensor(q.data.astype(np.int16), "Q4_K", (2, 1000), "Q5_0")
    with pytest.raises(ValueError, match=r"shape must be \(rows, K\)"):
        QuantizedGGMLTensor(q.data, "Q4_K", (2, 10, 100), "Q5_0")


# ---------------------------------------------------------------- errors

def test_nan_and_inf_name_row_and_column():
    x = rows(4, 64)
    x[2, 37] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value nan at row 2, column 37"):
        GGMLQuantizer("Q4_0").quantize(x)
    x[2, 37] = 0
    x[3, 5] = -np.inf
    x[3, 9] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value -inf at row 3, column 5"):
        GGMLQuantizer("Q6_K", num_threads=3).quantize(x)
    big = rows(2, 32).astype(np.float64)
    big[1, 3] = 1e300
    with pytest.raises(ValueError, match=r"value 1e\+300 at row 1, column 3 does not fit in float32"):
        GGMLQuantizer("Q8_0").quantize(big)
    W = rows(64, 3)  # MatMul weight [K, N]
    W[10, 2] = np.inf
    with pytest.raises(ValueError, match=r"non-finite value inf at W\[10, 2\]"):
        GGMLQuantizer("Q4_1").quantize_matmul_weight(W)


@pytest.mark.parametrize(
    "array, exc, message",
    [
        (np.zeros((0, 32), np.float32), ValueError, r"empty \(shape \(0, 32\)\)"),
        (np.zeros((2, 0), np.float32), ValueError, "empty"),
        (np.zeros((2, 3, 32), np.float32), ValueError, r"1-D \(one row\) or 2-D \[rows, K\], got shape \(2, 3, 32\)"),
        (np.float32(1.0), ValueError, r"got shape \(\)"),
        (np.zeros((2, 32), np.int32), TypeError, "float16, float32 or float64, got dtype int32"),
        (np.zeros((2, 32), bool), TypeError, "got dtype bool"),
    ],
)
def test_bad_arrays(array, exc, message):
    with pytest.raises(exc, match=message):
        GGMLQuantizer("Q4_0").quantize(array)


@pytest.mark.parametrize(
    "imatrix, exc, message",
    [
        (np.ones(63, np.float32), ValueError, r"expected shape \(64,\), got \(63,\)"),
        (np.ones((1, 64), np.float32), ValueError, r"expected shape \(64,\), got \(1, 64\)"),
        (np.full(64, -1e-3, np.float32), ValueError, r"must be >= 0, got imatrix\[0\] = -0.001"),
        (np.where(np.arange(64) == 9, np.nan, 1.0), ValueError, r"imatrix\[9\] = nan is not a finite float32"),
        (np.where(np.arange(64) == 4, 1e300, 1.0), ValueError, r"imatrix\[4\] = 1e\+300 is not a finite float32"),
        (np.array(["a"] * 64), TypeError, "imatrix must be numeric"),
    ],
)
def test_bad_imatrix(imatrix, exc, message):
    with pytest.raises(exc, match=message):
        GGMLQuantizer("Q4_1").quantize(rows(2, 64), imatrix=imatrix)


def test_bad_tail_types():
    with pytest.raises(ValueError, match="only valid after a K-quant weight type .* got tail_type=Q8_0 for Q4_0"):
        GGMLQuantizer("Q4_0", tail_type="Q8_0")
    with pytest.raises(ValueError, match="got tail_type=Q4_0 for Q8_K"):
        GGMLQuantizer("Q8_K", tail_type="Q4_0")
    with pytest.raises(ValueError, match="must be a 32-element weight type .* got Q5_K"):
        GGMLQuantizer("Q6_K", tail_type="Q5_K")
    with pytest.raises(ValueError, match="unknown GGML quant type 'Q9_0'"):
        GGMLQuantizer("Q6_K", tail_type="Q9_0")
    # "auto" on a 32-element type simply means no tail
    assert GGMLQuantizer("Q4_0").tail_type is None and GGMLQuantizer("Q8_K").tail_type is None


def test_bad_thread_counts():
    with pytest.raises(ValueError, match="num_threads must be >= 1, got 0"):
        GGMLQuantizer("Q4_0", num_threads=0)
    with pytest.raises(TypeError, match="num_threads must be an int or None, got float"):
        GGMLQuantizer("Q4_0", num_threads=1.5)
    q = GGMLQuantizer("Q4_0").quantize(rows(2, 32))
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        q.dequantize(num_threads=-1)


def test_kernel_entry_points_check_sizes():
    # the Cython layer never trusts its caller with buffer sizes
    x = rows(2, 64)
    with pytest.raises(ValueError, match=r"output has shape \(2, 10\), expected \(2, 36\)"):
        _codecs.quantize_rows(x, np.zeros((2, 10), np.uint8), 2, -1, None, 1)
    with pytest.raises(ValueError, match="imatrix has 3 values, expected K=64"):
        _codecs.quantize_rows(x, np.zeros((2, 36), np.uint8), 2, -1, np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="tail type Q5_0 is not valid with main type Q4_0"):
        _codecs.row_layout(2, 6, 64)
    with pytest.raises(ValueError, match="main type #99 cannot hold weights"):
        _codecs.row_layout(99, -1, 64)
    with pytest.raises(ValueError, match="data has shape"):
        _codecs.dequantize_rows(np.zeros((2, 35), np.uint8), np.zeros((2, 64), np.float32), 2, -1, 1)


# ---------------------------------------------------------------- CLI

def test_cli_prints_the_type_table(capsys):
    assert cli.main(["codecs"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line[:1] == "Q"}
    for name, (gid, bs, ts, bpw, tail) in EXPECTED.items():
        assert lines[name][:6] == [name, str(gid), str(bs), str(ts), f"{bpw:g}", tail or "-"]


def test_cli_row_layout_column(capsys):
    assert cli.main(["codecs", "--k", "576"]) == 0
    out = capsys.readouterr().out
    q6 = next(line.split() for line in out.splitlines() if line.startswith("Q6_K"))
    assert q6[-2:] == ["488", "6.7778"]
    assert cli.main(["codecs", "--k", "0"]) == 1
    assert "--k must be at least 1, got 0" in capsys.readouterr().err
