"""onnxq's GGML codecs against ggml's own bytes (tests/data/ggml-vectors.npz, written by
ggml's C library; keys in tests/data/ggml-vectors.README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxq import _codecs
from onnxq.ggml import GGMLQuantizer, QuantizedGGMLTensor
from onnxq.formats import GGMLQuantType

VECTORS = Path(__file__).parent / "data" / "ggml-vectors.npz"
CASES = ["normal", "heavy_tail", "scaled_mix", "edge"]
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
IMATRIX_TYPES = [t for t in TYPES if t != "Q8_0"]  # ggml's Q8_0 ignores the imatrix


@pytest.fixture(scope="module")
def golden():
    with np.load(VECTORS) as z:
        return {k: z[k] for k in z.files}


def _expected(golden, t, case, imatrix):
    # ggml's Q8_0 ignores the imatrix: its bytes are the plain ones
    return golden[f"{t}/{case}" + ("/imatrix" if imatrix and t in IMATRIX_TYPES else "")]


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("imatrix", [False, True])
def test_bytes_equal_ggml(golden, t, case, imatrix):
    x = golden[f"input/{case}"]
    im = golden["imatrix"] if imatrix else None
    q = GGMLQuantizer(t, num_threads=2).quantize(x, imatrix=im)
    expected = _expected(golden, t, case, imatrix)
    assert q.data.shape == (8, expected.size // 8)
    np.testing.assert_array_equal(q.data.ravel(), expected)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("imatrix", [False, True])
def test_reference_searches_equal_ggml(golden, t, imatrix):
    # the plain one-problem-at-a-time transliterations must give ggml's bytes too
    im = golden["imatrix"] if imatrix else None
    qt = GGMLQuantType.parse(t)
    for case in CASES:
        x = golden[f"input/{case}"]
        out = np.empty((8, qt.type_size * 512 // qt.block_size), np.uint8)
        assert _codecs.quantize_rows(x, out, qt.ggml_id, -1, im, 1, True) == -1
        expected = _expected(golden, t, case, imatrix)
        np.testing.assert_array_equal(out.ravel(), expected, err_msg=f"{t}/{case}")


@pytest.mark.parametrize("t", TYPES)
def test_dequantize_golden_bytes_equal_gguf(golden, t):
    gguf_quants = pytest.importorskip("gguf.quants")
    import gguf

    qt = GGMLQuantType.parse(t)
    for case in CASES:
        for suffix in ("", "/imatrix") if t in IMATRIX_TYPES else ("",):
            data = golden[f"{t}/{case}{suffix}"].reshape(8, -1)
            ours = QuantizedGGMLTensor(data, qt, (8, 512)).dequantize(num_threads=1)
            theirs = gguf_quants.dequantize(data, gguf.GGMLQuantizationType[t])
            assert theirs.dtype == np.float32 and theirs.shape == (8, 512)
            np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32), err_msg=f"{t}/{case}{suffix}")


def test_golden_error_is_small(golden):
    # sanity on real numbers: the normal case reconstructs within each type's resolution
    x = golden["input/normal"]
    rel = {}
    for t in TYPES:
        y = GGMLQuantizer(t).quantize(x).dequantize()
        rel[t] = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
    assert rel["Q8_0"] < 0.01 < rel["Q6_K"] < 0.025 < rel["Q5_K"] < rel["Q4_K"] < rel["Q4_0"] < 0.15
    assert rel["Q5_K"] < rel["Q5_0"] and rel["Q5_1"] < rel["Q5_0"] and rel["Q4_1"] < rel["Q4_0"]
