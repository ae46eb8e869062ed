"""SmoothQuant W8A8: smoothing math, folding rules, emission formats, the model pass."""
from __future__ import annotations

import copy
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxq.sites import find_sites
from onnxq.calibrate import calibrate
from onnxq.errors import CalibrationError, ModelError, RecipeError
from onnxq.smoothquant import (
    MigrationAnalyzer,
    SmoothQuantConfig,
    SmoothQuantizer,
    apply_smoothquant,
    quantize_model,
    quantize_weight,
    required_tensors,
    smoothing_scales,
)

from smoothquant_toys import build_norm_linears, build_toy, run, run_all, toy_inputs


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _stats(model, n=16, fmt="qdq", holdout=0, seed=1, batch=2):
    x = toy_inputs(n, seed=seed, d=model.graph.input[0].type.tensor_type.shape.dim[2].dim_value)
    return calibrate(model, required_tensors(model, None, fmt), {"x": x}, batch_size=batch, sample_rows=256,
                     holdout_every=holdout, progress=False)


def _optimized_ops(model) -> list:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


# ----------------------------------------------------------------------------- the math


def test_smoothing_scales_follow_the_paper_convention():
    act = np.array([100.0, 1.0, 1.0, 0.0, 4.0], np.float32)
    w = np.array([0.5, 0.5, 2.0, 1.0, 1e-9], np.float32)
    s = smoothing_scales(act, w, 0.5)
    np.testing.assert_allclose(s[:3], np.sqrt(act[:3] / w[:3]), rtol=1e-6)
    assert s[3] == 1.0 and s[4] == 1.0  # never-active channel, empty weight row: left alone
    # X' = X / s shrinks the outlier channel relative to the others; W' = s W grows its row
    spread_before = act[0] / act[1]
    spread_after = (act[0] / s[0]) / (act[1] / s[1])
    assert spread_after < spread_before / 5
    # alpha = 1 moves everything to the weights, alpha = 0 everything to the activations
    np.testing.assert_allclose(smoothing_scales(act, w, 1.0)[:3], act[:3], rtol=1e-6)
    np.testing.assert_allclose(smoothing_scales(act, w, 0.0)[:3], 1 / w[:3], rtol=1e-6)
    # clamping and strength
    assert smoothing_scales(np.array([1e9], np.float32), np.array([1.0], np.float32), 1.0, max_scale=1e3)[0] == 1e3
    np.testing.assert_allclose(smoothing_scales(act, w, 0.5, strength=0.5)[:3], np.sqrt(s[:3]), rtol=1e-5)
    assert np.all(smoothing_scales(act, w, 0.5, strength=0.0) == 1.0)


def test_weight_quantization_is_symmetric_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    q = quantize_weight(w)
    assert q.values.dtype == np.int8 and q.values.shape == (32, 8) and q.scale.shape == (8,)
    np.testing.assert_allclose(q.scale, np.abs(w).max(0) / 127, rtol=1e-6)
    assert np.abs(q.values).max() == 127
    assert np.max(np.abs(q.dequantize() - w) / q.scale) <= 0.5 + 1e-5
    data, zp = q.storage("uint8")
    assert data.dtype == np.uint8 and np.all(zp == 128)
    np.testing.assert_array_equal(data.astype(np.int16) - 128, q.values)
    assert quantize_weight(w, qmax=63).values.max() <= 63


def test_bad_config_is_rejected():
    for kwargs in ({"alpha": 1.5}, {"alpha": "best"}, {"migration_strength": -0.1}, {"activation_percentile": 0},
                   {"weight_type": "int4"}, {"alpha_grid": ()}):
        with pytest.raises(RecipeError):
            SmoothQuantConfig(**kwargs)


def test_alpha_defaults_to_the_measured_best_search():
    """alpha "auto" (per-group search) is the API and CLI default: README's measurements put it
    ahead of any fixed alpha (SmolLM2 +3.9 % vs +19.1 % at 0.5; MiniLM 0.9938 vs 0.9883)."""
    assert SmoothQuantConfig().alpha == "auto" and SmoothQuantConfig(alpha=" AUTO ").alpha == "auto"
    assert SmoothQuantConfig(alpha="0.75").alpha == 0.75
    rng = np.random.default_rng(3)
    k, n = 64, 32
    x = rng.standard_normal((24, 16, k)).astype(np.float32)
    x[..., [3, 40]] *= 80.0
    w = (0.1 * rng.standard_normal((k, n))).astype(np.float32)
    xt = rng.standard_normal((6, 16, k)).astype(np.float32)
    xt[..., [3, 40]] *= 80.0
    errors = {}
    for alpha in ("auto", 0.3, 0.5, 0.9):
        layer = SmoothQuantizer(SmoothQuantConfig(alpha=alpha)).quantize_linear_layer("fc", w, x)
        errors[alpha] = rel(layer.forward(xt), xt @ w)
        if alpha == "auto":
            assert layer.alpha in SmoothQuantConfig().alpha_grid
    default = SmoothQuantizer().quantize_linear_layer("fc", w, x)
    assert rel(default.forward(xt), xt @ w) == errors["auto"]
    assert errors["auto"] <= 1.05 * min(errors.values()), errors
    sq = SmoothQuantizer()
    sq.calibrate("fc", x, w)
    rows = sq.analyzer().error_analysis()  # the config's "auto" is searched per group here too
    assert rows[0].alpha in SmoothQuantConfig().alpha_grid and rows[0].error_smoothed < rows[0].error_plain


# ----------------------------------------------------------------------------- smoothing is exact

EXACT_CASES = [
    dict(norm="layernorm"),
    dict(norm="simplified"),
    dict(norm="rmsnorm_decomposed"),
    dict(norm="layernorm_decomposed"),
    dict(norm="mul"),
    dict(norm="layernorm", post_norm=True, mlp="gelu", bias=True),  # BERT-like: norms feed residuals
    dict(norm="rmsnorm_decomposed", linear_form="transpose", bias=True),
    dict(norm="layernorm", linear_form="gemm", bias=True),
]


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_smoothing_alone_leaves_outputs_unchanged(case):
    model = build_toy(**case)
    stats = _stats(model)
    smoothed = copy.deepcopy(model)
    report = apply_smoothquant(smoothed, None, stats, SmoothQuantConfig(alpha=0.5), "none")
    folds = {s.fold.split(":")[0] for s in report.sites}
    assert folds - {"none"}, "nothing was smoothed"
    if not case.get("post_norm"):
        # pre-norm: q/k/v and gate/up fold into the norm, down into up_proj's columns
        assert "explicit-mul" in folds and len(folds) >= 2
        if case.get("mlp", "swiglu") == "swiglu":
            assert "linear-output" in folds
    x = toy_inputs(4, seed=9)
    ref = run(model, x)
    out = run(smoothed, x)
    assert rel(out, ref) < 1e-4
    # the smoothing really changed the weights and norms (not a no-op)
    changed = {t.name for t in smoothed.graph.initializer} - {t.name for t in model.graph.initializer}
    assert changed


def test_input_model_proto_of_quantize_model_is_not_touched(tmp_path):
    model = build_toy("rmsnorm_decomposed", layers=1)
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    report = quantize_model(str(src), str(out), {"x": toy_inputs(8)}, format="qdq", batch_size=2, progress=False)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    q = onnx.load(str(out))
    onnx.checker.check_model(q)
    # every linear site but the LM head is quantized
    names = {s.name for s in report.quantized}
    assert names == {s.name for s in find_sites(model).linear if s.role != "head"}
    assert "/lm_head/MatMul" in {n.name for n in q.graph.node}
    assert rel(run(None, toy_inputs(4, seed=3), path=str(out)), run(model, toy_inputs(4, seed=3))) < 0.2
    with pytest.raises(Exception, match="input"):
        quantize_model(str(src), str(src), {"x": toy_inputs(2)}, progress=False)


# ----------------------------------------------------------------------------- the point of it


def test_outlier_channels_plain_w8a8_error_is_5x_smoothquant():
    """A norm whose output has 4 channels 50-100x larger than the rest, feeding 3 linears."""
    model = build_norm_linears("rmsnorm_decomposed")
    stats = calibrate(model, required_tensors(model), {"x": toy_inputs(16)}, batch_size=4, progress=False)
    x = toy_inputs(8, seed=7)  # held-out inputs
    ref = run_all(model, x)
    errors = {}
    for label, cfg in (("plain", SmoothQuantConfig(migration_strength=0.0)), ("sq", SmoothQuantConfig(alpha=0.5))):
        q = copy.deepcopy(model)
        apply_smoothquant(q, None, stats, cfg, "qdq")
        errors[label] = np.mean([rel(a, b) for a, b in zip(run_all(q, x), ref)])
    assert errors["plain"] >= 5 * errors["sq"], errors
    assert errors["sq"] < 0.03


@pytest.mark.parametrize("fmt, op", [("qdq", "MatMulIntegerToFloat"), ("qoperator", "QLinearMatMul"),
                                     ("dynamic", "DynamicQuantizeMatMul")])
def test_formats_run_in_onnxruntime_as_integer_kernels(fmt, op):
    model = build_toy("rmsnorm_decomposed", layers=1)
    stats = _stats(model, fmt=fmt)
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, None, stats, SmoothQuantConfig(), fmt)
    ops = _optimized_ops(q)
    n_sites = len(report.quantized)
    assert ops.count(op) == n_sites, ops
    assert ops.count("MatMul") + ops.count("FusedMatMul") >= 1  # the float LM head (and attention)
    x = toy_inputs(4, seed=11)
    assert rel(run(q, x), run(model, x)) < 0.1
    inits = {t.name: t for t in q.graph.initializer}
    weights = [inits[n.input[1 if fmt == "dynamic" else 3 if fmt == "qoperator" else 0]]
               for n in q.graph.node if n.op_type in ("DynamicQuantizeMatMul", "QLinearMatMul")
               or (n.op_type == "DequantizeLinear" and n.name.endswith("DequantizeWeight"))]
    assert len(weights) == n_sites
    assert all(w.data_type == onnx.TensorProto.UINT8 for w in weights)


def test_int8_storage_and_reduce_range():
    model = build_toy("rmsnorm_decomposed", layers=1)
    stats = _stats(model)
    q = copy.deepcopy(model)
    apply_smoothquant(q, None, stats, SmoothQuantConfig(weight_type="int8", reduce_range=True), "qdq")
    w = [onnx.numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("weight_quantized")]
    assert w and all(a.dtype == np.int8 and np.abs(a).max() <= 63 for a in w)
    x = toy_inputs(4, seed=11)
    assert rel(run(q, x), run(model, x)) < 0.15


def test_onnxruntime_matches_the_numpy_simulation():
    """QDQ output == QuantizedLinear.forward (u8u8 kernels are exact integer arithmetic)."""
    model = build_norm_linears("layernorm", ns=(48,))
    x = toy_inputs(8)
    norm_out = model.graph.node[0].output[0]
    stats = calibrate(model, [norm_out], {"x": x}, progress=False)
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, None, stats, SmoothQuantConfig(alpha=0.6), "qdq")
    # the same layer through the tensor API
    sites = find_sites(model).linear
    from onnxq.sites import ModelGraph, weight_matrix_kn

    w = weight_matrix_kn(ModelGraph(model), sites[0])
    normed = run_all(_with_output(model, norm_out), x)[-1]
    sq = SmoothQuantizer(SmoothQuantConfig(alpha=0.6))
    layer = sq.quantize_linear_layer("l", w, calibration_data=normed)
    assert report.sites[0].activation_scale == pytest.approx(layer.activation_scale, rel=1e-6)
    y_ort = run_all(q, x)[0]
    y_sim = layer.forward(normed)
    assert rel(y_ort, y_sim) < 2e-5


def _with_output(model, name):
    m = copy.deepcopy(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


# ----------------------------------------------------------------------------- partial sites, fallbacks


def test_subset_of_a_group_keeps_the_function():
    """Only q_proj quantized: k/v share the folded norm, so their float weights are smoothed too."""
    model = build_toy("rmsnorm_decomposed", layers=1)
    stats = _stats(model)
    site = "/model/layers.0/self_attn/q_proj/MatMul"
    smooth_only = copy.deepcopy(model)
    apply_smoothquant(smooth_only, [site], stats, SmoothQuantConfig(), "none")
    x = toy_inputs(4, seed=5)
    assert rel(run(smooth_only, x), run(model, x)) < 1e-4
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, [site], stats, SmoothQuantConfig(), "qdq")
    assert [s.name for s in report.quantized] == [site]
    others = {s.name: s for s in report.sites if not s.quantized}
    assert {"/model/layers.0/self_attn/k_proj/MatMul", "/model/layers.0/self_attn/v_proj/MatMul"} <= set(others)
    assert rel(run(q, x), run(model, x)) < 0.05
    with pytest.raises(ModelError, match="not a linear site"):
        apply_smoothquant(copy.deepcopy(model), ["nope"], stats, SmoothQuantConfig(), "qdq")


def test_keep_float_by_sensitivity_and_report():
    model = build_toy("rmsnorm_decomposed", layers=2)
    stats = _stats(model)
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, None, stats, SmoothQuantConfig(), "qdq", keep_float_top=2)
    worst = sorted((s for s in report.sites if s.error_smoothed is not None), key=lambda s: -s.error_smoothed)[:2]
    assert all(not s.quantized for s in worst)
    assert len(report.quantized) == len([s for s in find_sites(model).linear if s.role != "head"]) - 2
    text = report.to_text()
    assert "kept float by sensitivity" in text and worst[0].name[-40:] in text
    assert report.to_dict()["sites"][0]["name"]


def test_qoperator_does_not_fold_into_a_requantized_up_proj():
    model = build_toy("rmsnorm_decomposed", layers=1)
    stats = _stats(model, fmt="qoperator")
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, None, stats, SmoothQuantConfig(), "qoperator")
    down = next(s for s in report.sites if "down_proj" in s.name)
    assert down.fold == "explicit-mul"
    assert any("requantized" in n for n in report.notes)


def test_percentile_needs_a_second_pass_and_clips():
    model = build_norm_linears("rmsnorm_decomposed")
    x = toy_inputs(8)
    stats = calibrate(model, required_tensors(model), {"x": x}, progress=False)
    # a fixed alpha: these statistics have no sampled rows for the (default) alpha search
    cfg = SmoothQuantConfig(alpha=0.5, activation_percentile=99.0)
    with pytest.raises(CalibrationError, match="percentile"):
        apply_smoothquant(copy.deepcopy(model), None, stats, cfg, "qdq")
    from onnxq.calibrate import CalibrationCache

    cache = CalibrationCache({"x": x}, model)
    q = copy.deepcopy(model)
    rp = apply_smoothquant(q, None, stats, cfg, "qdq", calibration_data=cache)
    rm = apply_smoothquant(copy.deepcopy(model), None, stats, SmoothQuantConfig(alpha=0.5), "qdq")
    assert rp.sites[0].activation_scale < rm.sites[0].activation_scale  # clipped range
    assert rel(run_all(q, x)[0], run_all(model, x)[0]) < 0.05


def test_old_opset_qdq_is_refused():
    model = build_norm_linears("mul", opset=12)
    stats = calibrate(model, required_tensors(model), {"x": toy_inputs(4)}, progress=False)
    with pytest.raises(ModelError, match="opset"):
        apply_smoothquant(copy.deepcopy(model), None, stats, SmoothQuantConfig(alpha=0.5), "qdq")
    q = copy.deepcopy(model)
    apply_smoothquant(q, None, calibrate(model, required_tensors(model, None, "qoperator"), {"x": toy_inputs(4)},
                                         progress=False), SmoothQuantConfig(alpha=0.5), "qoperator")
    assert "QLinearMatMul" in [n.op_type for n in q.graph.node]


def test_missing_statistics_are_named():
    model = build_toy("rmsnorm_decomposed", layers=1)
    with pytest.raises(CalibrationError, match="no calibration statistics for tensor"):
        apply_smoothquant(copy.deepcopy(model), None, {}, SmoothQuantConfig(), "qdq")


# ----------------------------------------------------------------------------- alpha search


def test_alpha_search_uses_held_out_rows_and_a_pluggable_metric():
    model = build_norm_linears("rmsnorm_decomposed")
    stats = _stats(model, holdout=4)
    x_name = required_tensors(model)[0]
    assert stats[x_name].holdout is not None
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, None, stats, SmoothQuantConfig(), "qdq", alpha="auto")
    choice = report.alpha_search[x_name]
    assert choice.alpha == min(choice.errors, key=choice.errors.get)
    assert choice.error < choice.unsmoothed_error / 10
    assert all(s.alpha == choice.alpha for s in report.sites)
    # the analyzer directly, with another metric: the worst-case absolute error
    from onnxq.sites import ModelGraph, weight_matrix_kn

    g = ModelGraph(model)
    ws = {s.name: weight_matrix_kn(g, s) for s in find_sites(model).linear}
    an = MigrationAnalyzer(SmoothQuantConfig())
    an.add_stats(x_name, stats[x_name], ws)
    maxabs = lambda ref, got: float(np.max(np.abs(ref - got)))
    by_max = an.find_optimal_alpha(metric=maxabs, grid=[0.2, 0.5, 0.8])[x_name]
    assert set(by_max.errors) == {0.2, 0.5, 0.8}
    assert by_max.errors[by_max.alpha] == min(by_max.errors.values())
    assert by_max.errors[0.5] == pytest.approx(an.group_error(x_name, 0.5, maxabs))
    rows = an.error_analysis(0.5)
    assert len(rows) == 3 and all(r.error_plain > 10 * r.error_smoothed for r in rows)


def test_quantize_model_auto_alpha_and_dynamic(tmp_path):
    model = build_norm_linears("layernorm")
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x, xe = toy_inputs(16), toy_inputs(8, seed=3)
    ref = run_all(model, xe)

    def err(path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        out = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": xe})
        return np.mean([rel(a, b) for a, b in zip(out, ref)])

    r = quantize_model(str(src), str(tmp_path / "auto.onnx"), {"x": x}, alpha="auto", batch_size=2, progress=False)
    (choice,) = r.alpha_search.values()
    assert choice.alpha in SmoothQuantConfig().alpha_grid
    fixed = {}
    for a in (0.3, 0.5, 0.7, 0.9):
        quantize_model(str(src), str(tmp_path / f"a{a}.onnx"), {"x": x}, alpha=a, batch_size=2, progress=False)
        fixed[a] = err(tmp_path / f"a{a}.onnx")
    quantize_model(str(src), str(tmp_path / "plain.onnx"), {"x": x}, SmoothQuantConfig(migration_strength=0.0),
                   batch_size=2, progress=False)
    # the held-out search lands near the best fixed alpha on unseen inputs
    assert err(tmp_path / "auto.onnx") <= 1.5 * min(fixed.values())
    assert err(tmp_path / "plain.onnx") > 5 * err(tmp_path / "auto.onnx")
    d = quantize_model(str(src), str(tmp_path / "dyn.onnx"), {"x": x},
                       SmoothQuantConfig(quantize_activations=False), batch_size=4, progress=False)
    assert d.format == "dynamic"
    assert err(tmp_path / "dyn.onnx") < 0.03


# ----------------------------------------------------------------------------- tensor API


def test_tensor_api_streams_and_quantizes_a_layer():
    rng = np.random.default_rng(0)
    k, n = 64, 32
    x = rng.standard_normal((20, 16, k)).astype(np.float32)
    x[..., [3, 40]] *= 80.0  # outlier channels
    w = (0.1 * rng.standard_normal((k, n))).astype(np.float32)
    w[[3, 40]] /= 80.0
    one = SmoothQuantizer(SmoothQuantConfig(alpha=0.5))
    one.calibrate("fc", x, w)
    streamed = SmoothQuantizer(SmoothQuantConfig(alpha=0.5))
    streamed.calibrate("fc", (x[i:i + 5] for i in range(0, 20, 5)), w)
    np.testing.assert_array_equal(one.stats["fc"].absmax, streamed.stats["fc"].absmax)
    layer = streamed.quantize_linear_layer("fc", w)
    assert layer.weight.dtype == np.int8 and layer.weight.shape == (k, n)
    assert layer.weight_scale.shape == (n,) and layer.smoothing.shape == (k,)
    assert layer.activation_scale > 0 and 0 <= layer.activation_zero_point <= 255
    assert layer.smoothing[3] > 5 * np.median(layer.smoothing)
    np.testing.assert_allclose(layer.dequantized_weight() / layer.smoothing[:, None], w, atol=2e-3)
    xt = rng.standard_normal((4, 16, k)).astype(np.float32)
    xt[..., [3, 40]] *= 80.0
    ref = xt @ w
    plain = SmoothQuantizer(SmoothQuantConfig(migration_strength=0.0)).quantize_linear_layer("fc", w, x)
    assert rel(plain.forward(xt), ref) > 5 * rel(layer.forward(xt), ref)
    # limit on samples, alpha search on the reservoir
    limited = SmoothQuantizer(SmoothQuantConfig(num_calibration_samples=7))
    limited.calibrate("fc", (x[i:i + 5] for i in range(0, 20, 5)), w)
    assert limited.stats["fc"].count == 7 * 16
    choice = one.find_optimal_alpha("fc")
    assert choice.alpha in SmoothQuantConfig().alpha_grid
    pct = SmoothQuantizer(SmoothQuantConfig(activation_percentile=99.0)).quantize_linear_layer("fc", w, x)
    assert pct.activation_scale < layer.activation_scale


def test_tensor_api_errors():
    sq = SmoothQuantizer()
    w = np.zeros((8, 4), np.float32)
    with pytest.raises(CalibrationError, match="not been calibrated"):
        sq.quantize_linear_layer("a", w)
    with pytest.raises(CalibrationError, match="expected K = 16"):
        sq.calibrate("a", np.ones((2, 16), np.float32), w)
    with pytest.raises(CalibrationError, match="empty"):
        sq.calibrate("b", [], w)
    with pytest.raises(CalibrationError, match="2-D"):
        sq.calibrate("c", np.ones((2, 8), np.float32), np.zeros(8, np.float32))


def test_end_to_end_sensitivity_ranks_sites_by_output_error(tmp_path):
    from onnxq.smoothquant.sensitivity import activation_sensitivity, output_mse

    model = build_toy("rmsnorm_decomposed", layers=2)
    stats = _stats(model)
    q = copy.deepcopy(model)
    report = apply_smoothquant(q, None, stats, SmoothQuantConfig(), "qdq")
    sites = [s.name for s in report.quantized]
    batches = [{"x": toy_inputs(4, seed=21)}]
    gains = activation_sensitivity(model, q, sites, batches)
    assert set(gains) == set(sites)
    best = max(gains, key=gains.get)
    assert gains[best] > 0
    # the gain is what keeping that site's activations in float really buys
    ref = run(model, batches[0]["x"])
    full = output_mse([ref], [run(q, batches[0]["x"])])
    q_keep = copy.deepcopy(model)
    apply_smoothquant(q_keep, [s for s in sites if s != best], stats, SmoothQuantConfig(), "qdq")
    kept = output_mse([ref], [run(q_keep, batches[0]["x"])])
    assert kept < full
    # the switched model itself reproduces the quantized model when nothing is switched
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    r = quantize_model(str(src), str(tmp_path / "q.onnx"), {"x": toy_inputs(8)}, keep_float_top=1,
                       sensitivity="end-to-end", sensitivity_batches=1, batch_size=4, progress=False)
    assert len(r.quantized) == len(sites) - 1
    assert any("end-to-end sensitivity" in n for n in r.notes)
