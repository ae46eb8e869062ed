"""Calibration: streaming statistics, data sources, validation of calibration inputs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationDataReader

from onnxq.calibrate import CalibrationCache, TensorStats, calibrate
from onnxq.errors import CalibrationError

from smoothquant_toys import build_toy, toy_inputs

NORM_OUT = "/model/layers.0/input_layernorm/Mul_1_out"  # decomposed RMSNorm output
MLP_MUL = "/model/layers.0/mlp/Mul_out"


@pytest.fixture(scope="module")
def toy():
    return build_toy("rmsnorm_decomposed", layers=1)


def _reference_outputs(model: onnx.ModelProto, x: np.ndarray, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in m.graph.output], sess.run(None, {"x": x})))
    return [out[n] for n in names]


# ----------------------------------------------------------------------------- TensorStats


def test_stats_match_numpy_across_growing_batches():
    rng = np.random.default_rng(0)
    # later batches are larger in magnitude so the histogram range has to grow twice
    batches = [rng.standard_normal((3, 400, 16)).astype(np.float32) * m for m in (0.5, 4.0, 30.0)]
    batches[1][..., 5] += 7.0  # a shifted channel
    st = TensorStats("t", 16)
    for b in batches:
        st.update(b)
    allx = np.concatenate([b.reshape(-1, 16) for b in batches])
    np.testing.assert_array_equal(st.absmax, np.abs(allx).max(0))
    np.testing.assert_array_equal(st.channel_min, allx.min(0))
    np.testing.assert_allclose(st.mean_square(), (allx.astype(np.float64) ** 2).mean(0), rtol=1e-12)
    assert st.count == allx.shape[0]
    assert st.range() == (float(allx.min()), float(allx.max()))
    # percentile from the histogram vs numpy's exact quantile: within one bin of the
    # neighbouring order statistics (the tails are sparse)
    width = st.hist_range / st.bins
    n = allx.size

    def near(value, data, q):
        lo_q, hi_q = np.quantile(data, [max(q - 2 / n, 0), min(q + 2 / n, 1)])
        return lo_q - width <= value <= hi_q + width

    for p in (99.0, 99.9):
        lo, hi = st.range(p)
        tail = (100 - p) / 200
        assert near(hi, allx, 1 - tail) and near(lo, allx, tail)
        assert near(st.abs_percentile(p), np.abs(allx), p / 100)
        assert lo > allx.min() and hi < allx.max()  # it does clip
    assert st.hist_pos.sum() + st.hist_neg.sum() == allx.size


def test_histogram_growth_is_an_exact_merge():
    rng = np.random.default_rng(1)
    small = rng.standard_normal((500, 8)).astype(np.float32)
    big = 10 * rng.standard_normal((500, 8)).astype(np.float32)
    grown = TensorStats("a", 8, bins=256)
    grown.update(small)
    r0 = grown.hist_range
    grown.update(big)
    assert grown.hist_range > r0  # it did grow
    direct = TensorStats("b", 8, bins=256)
    direct.update(np.concatenate([big, small]))  # one batch: binned once at the final range
    assert direct.hist_range == grown.hist_range
    np.testing.assert_array_equal(grown.hist_pos, direct.hist_pos)
    np.testing.assert_array_equal(grown.hist_neg, direct.hist_neg)


def test_reservoir_is_bounded_and_holds_real_rows():
    rng = np.random.default_rng(2)
    st = TensorStats("t", 4)
    data = rng.standard_normal((10, 100, 4)).astype(np.float32)
    gen = np.random.default_rng(0)
    for b in data:
        st.add_samples(b, 64, gen)
    assert st.samples.shape == (64, 4)
    rows = {r.tobytes() for r in data.reshape(-1, 4)}
    assert all(r.tobytes() in rows for r in st.samples)
    # not just the first 64 rows: a uniform reservoir over 1000 rows keeps later ones too
    first = {r.tobytes() for r in data.reshape(-1, 4)[:64]}
    assert sum(r.tobytes() not in first for r in st.samples) > 32


def test_nonfinite_activations_are_an_error():
    st = TensorStats("t", 3)
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        st.update(np.array([[1.0, np.nan, 2.0]], np.float32))


# ----------------------------------------------------------------------------- calibrate()


class _Reader(CalibrationDataReader):
    def __init__(self, x, batch):
        self.items = [{"x": x[i:i + batch]} for i in range(0, len(x), batch)]

    def get_next(self):
        return self.items.pop(0) if self.items else None


def test_calibrate_matches_onnxruntime_outputs_for_every_source(toy, tmp_path):
    x = toy_inputs(12)
    ref_norm, ref_mul = _reference_outputs(toy, x, [NORM_OUT, MLP_MUL])
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=x)
    sources = {
        "reader": _Reader(x, 4),
        "iterable": [{"x": x[i:i + 4]} for i in range(0, 12, 4)],
        "npz": str(npz),
        "dict": {"x": x},
    }
    results = {}
    for name, data in sources.items():
        st = calibrate(toy, [NORM_OUT, MLP_MUL], data, batch_size=4, progress=False)
        results[name] = st
        np.testing.assert_allclose(st[NORM_OUT].absmax, np.abs(ref_norm).reshape(-1, 64).max(0), rtol=1e-5)
        np.testing.assert_allclose(st[MLP_MUL].channel_max, ref_mul.reshape(-1, ref_mul.shape[-1]).max(0), rtol=1e-5)
        assert st[NORM_OUT].count == 12 * 16
        np.testing.assert_allclose(st[NORM_OUT].mean_square(), (ref_norm.reshape(-1, 64).astype(np.float64) ** 2).mean(0),
                                   rtol=1e-4)
    for name in ("iterable", "npz", "dict"):
        np.testing.assert_array_equal(results[name][NORM_OUT].hist_pos, results["reader"][NORM_OUT].hist_pos)


def test_calibrate_from_file_with_max_batches_and_holdout(toy, tmp_path):
    path = tmp_path / "toy.onnx"
    onnx.save(toy, path)
    x = toy_inputs(16)
    st = calibrate(str(path), [NORM_OUT], {"x": x}, batch_size=2, holdout_every=4, sample_rows=32,
                   max_batches=8, progress=False)[NORM_OUT]
    # 8 batches of 2 samples x 16 tokens; batches 3 and 7 are held out
    assert st.count == 6 * 2 * 16
    assert st.holdout.shape == (32, 64) and st.samples.shape == (32, 64)
    assert st.rows_for_evaluation() is st.holdout


def test_cache_limits_samples(toy):
    cache = CalibrationCache({"x": toy_inputs(10)}, toy, batch_size=4, max_samples=6)
    assert [b["x"].shape[0] for b in cache] == [4, 2]


@pytest.mark.parametrize(
    "batch, match",
    [
        ({"y": np.zeros((1, 16, 64), np.float32)}, r"'y'.*does not have.*model inputs: x"),
        ({}, r"missing model input 'x'.*expected float32 \[batch, 16, 64\]"),
        ({"x": np.zeros((1, 16, 64), np.float64)}, r"'x'.*expected dtype float32, got float64"),
        ({"x": np.zeros((1, 16, 32), np.float32)}, r"'x'.*expected shape \[batch, 16, 64\], got \[1, 16, 32\]"),
        ({"x": np.zeros((16, 64), np.float32)}, r"'x'.*expected shape \[batch, 16, 64\], got \[16, 64\]"),
    ],
)
def test_mismatched_calibration_inputs_name_input_expected_and_got(toy, batch, match):
    with pytest.raises(CalibrationError, match=match):
        calibrate(toy, [NORM_OUT], [batch], progress=False)


@pytest.mark.parametrize("data", [[], _Reader(np.zeros((0, 16, 64), np.float32), 4), {"x": np.zeros((0, 16, 64), np.float32)}])
def test_empty_calibration_data_is_an_error(toy, data):
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(toy, [NORM_OUT], data, progress=False)


def test_bad_sources_and_tensors(toy, tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        calibrate(toy, [NORM_OUT], str(tmp_path / "missing.npz"), progress=False)
    with pytest.raises(CalibrationError, match="different numbers of samples"):
        calibrate(toy, [NORM_OUT], {"x": np.zeros((2, 16, 64), np.float32), "z": np.zeros(3)}, progress=False)
    with pytest.raises(CalibrationError, match="not produced by any node"):
        calibrate(toy, ["no_such_tensor"], {"x": toy_inputs(2)}, progress=False)
    with pytest.raises(CalibrationError, match="unsupported calibration data"):
        calibrate(toy, [NORM_OUT], 42, progress=False)


def test_calibrate_leaves_the_model_proto_unchanged(toy):
    before = toy.SerializeToString()
    calibrate(toy, [NORM_OUT, MLP_MUL], {"x": toy_inputs(2)}, progress=False)
    assert toy.SerializeToString() == before
    with pytest.raises(CalibrationError):
        calibrate(toy, [NORM_OUT], {"x": toy_inputs(2).astype(np.float64)}, progress=False)
    assert toy.SerializeToString() == before
