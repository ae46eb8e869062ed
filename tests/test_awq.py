"""Activation-aware weight scaling (onnxq.awq) before GGML packing: scaling alone keeps the
function, it lowers the GGML output error on inputs with outlier channels, groups that
cannot absorb 1/s are left alone unless an explicit Mul is allowed, and the option reaches
quantize(), recipes, metadata, the closing table and the CLI."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest

import onnxq

from onnxq.sites import find_sites
from onnxq.ggml.awq import AWQConfig, GroupErrorModel, apply_awq, awq_scales, awq_tensors, calibrate_for_awq
from onnxq.errors import CalibrationError, RecipeError
from onnxq import quantize
from onnxq.ggml.step import AWQ_KEY
from onnxq.recipe import plan, recipe_from_dict, single_type_recipe

from smoothquant_toys import build_norm_linears, build_toy, run, run_all, toy_inputs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _calib(n: int = 8, seed: int = 1):
    return {"x": toy_inputs(n, seed=seed)}


def _awq_model(model, qtype: str, config: AWQConfig, data):
    """apply_awq on a copy of ``model`` (float weights only) and its report."""
    work = copy.deepcopy(model)
    analysis = find_sites(work)
    the_plan = plan(analysis, single_type_recipe(qtype))
    stats = calibrate_for_awq(work, awq_tensors(analysis, the_plan), data, config, base_dir=None, progress=False)
    report, scaled = apply_awq(work, analysis, the_plan, stats, config, progress=False)
    return work, report, scaled


def _run_quantized(path, x, all_outputs=False):
    from onnxq.runtime import InferenceSession

    out = InferenceSession(str(path)).run(None, {"x": x})
    return out if all_outputs else out[0]


def test_awq_scales_normalised_and_zero_exponent_is_identity():
    m = np.array([0.0, 0.01, 1.0, 50.0])
    assert np.array_equal(awq_scales(m, 0.0), np.ones(4, np.float32))
    s = awq_scales(m, 0.5)
    assert np.all(s > 0) and np.isclose(np.sqrt(s.max() * s.min()), 1.0, rtol=1e-5)
    assert s[3] > s[2] > s[1] >= s[0]  # monotone in the activation scale; dead channel floored
    assert s[3] / s[2] == pytest.approx(np.sqrt(50.0), rel=1e-5)
    with pytest.raises(ValueError):
        awq_scales(np.array([1.0, -1.0]), 0.5)


def test_group_error_model_prefers_scaling_with_outlier_channels():
    rng = np.random.default_rng(0)
    k, n = 64, 48
    x = rng.standard_normal((256, k)).astype(np.float32)
    x[:, [3, 17, 40]] *= 60.0
    w = (0.05 * rng.standard_normal((k, n))).astype(np.float32)
    model = GroupErrorModel({"a": (w, "Q4_0", None)}, x)
    plain = model.error(None)
    best = min(model.error(awq_scales(np.abs(x).mean(0), a)) for a in (0.25, 0.5, 0.75))
    assert best < 0.5 * plain
    # with an importance matrix the search weighs the round trip like the packing does
    imx = np.mean(x.astype(np.float64) ** 2, axis=0)
    assert GroupErrorModel({"a": (w, "Q4_0", None)}, x, imx).error(None) < plain


@pytest.mark.parametrize("norm", ["rmsnorm_decomposed", "layernorm"])
def test_scaling_alone_keeps_the_function(norm):
    model = build_toy(norm, layers=1)
    scaled, report, _ = _awq_model(model, "q4_0", AWQConfig(), _calib())
    assert report.scaled, report.to_text()
    # every scaled group was folded into a producer: no op was added
    assert {g.fold.split(":")[0] for g in report.scaled} <= {"norm", "mul", "add-mul", "linear-output"}
    assert len(scaled.graph.node) == len(model.graph.node)
    x = toy_inputs(3, seed=7)
    assert _rel(run(scaled, x), run(model, x)) < 1e-5


@pytest.mark.parametrize("norm", ["rmsnorm_decomposed", "layernorm"])
@pytest.mark.parametrize("qtype, factor", [("q4_0", 0.5), ("q5_0", 0.5)])
def test_awq_lowers_ggml_output_error(tmp_path, norm, qtype, factor):
    # a norm with outlier channels feeding three linear layers (the model's outputs): the
    # weight rows meeting the outliers are small, so plain blocks round them away
    model = build_norm_linears(norm)
    src = tmp_path / "lin.onnx"
    onnx.save(model, src)
    data = _calib()
    plain, awq = tmp_path / "plain.onnx", tmp_path / "awq.onnx"
    quantize(src, plain, type=qtype, progress=False)
    report = quantize(src, awq, type=qtype, awq=True, calibration_data=data, progress=False)
    x = toy_inputs(4, seed=11)  # not the calibration inputs
    refs = run_all(model, x)
    got_plain, got_awq = _run_quantized(plain, x, all_outputs=True), _run_quantized(awq, x, all_outputs=True)
    for ref, p, a in zip(refs, got_plain, got_awq):
        assert _rel(a, ref) < factor * _rel(p, ref), (_rel(p, ref), _rel(a, ref), report.awq.to_text())
    (group,) = report.awq.groups
    assert group.scaled and group.error_after < factor * group.error_before
    assert group.exponent in AWQConfig().grid and group.fold.startswith(("norm", "add-mul", "mul"))
    # recorded in the model and the report
    meta = {p.key: p.value for p in onnx.load(awq, load_external_data=False).metadata_props}
    recorded = json.loads(meta[AWQ_KEY])
    assert recorded["scaled"] == {group.input: {"exponent": group.exponent, "fold": group.fold}}
    assert "awq: 1 of 1 groups scaled" in report.table() and report.to_dict()["awq"]["groups"]


def test_awq_on_a_toy_transformer_lowers_each_site_error(tmp_path):
    # per site (the others float), as AWQ measures it; end to end, errors of a tiny toy
    # with 80x outliers do not add up (softmax), so sites are checked one by one
    from onnx import numpy_helper

    from onnxq.sites import ModelGraph
    from onnxq.ggml import GGMLQuantizer

    model = build_toy("rmsnorm_decomposed", layers=1)
    scaled, report, _ = _awq_model(model, "q4_0", AWQConfig(), _calib())
    x = toy_inputs(4, seed=11)
    ref = run(model, x)

    def one_site(m, name):
        m = copy.deepcopy(m)
        g = ModelGraph(m)
        site = next(s for s in find_sites(m).linear if s.name == name)
        init = g.initializer(site.weight)
        wq = GGMLQuantizer("q4_0").quantize_matmul_weight(numpy_helper.to_array(init)).to_matmul_weight()
        init.CopyFrom(numpy_helper.from_array(wq, init.name))
        return _rel(run(m, x), ref)

    improved = 0
    for group in report.scaled:
        for name in group.sites:
            before, after = one_site(model, name), one_site(scaled, name)
            assert after < 1.05 * before, (name, before, after)
            improved += after < 0.5 * before
    assert improved >= 2  # gate and up at least


def test_post_norm_groups_are_skipped_without_explicit_mul(tmp_path):
    # BERT-like: the norm output also feeds the residual Add, so 1/s cannot be folded
    model = build_toy("layernorm", layers=1, post_norm=True, mlp="gelu")
    data = _calib()
    scaled, report, _ = _awq_model(model, "q4_0", AWQConfig(), data)
    by_input = {g.input: g for g in report.groups}
    residual = [by_input["x"], by_input["/model/layers.0/attention_layernorm/LayerNormalization_out"]]
    assert all(not g.scaled and g.note == "not foldable (X also feeds Add)" for g in residual)
    # the final norm feeds only the head: folded into its gamma/beta
    assert by_input["/model/layers.0/output_layernorm/LayerNormalization_out"].fold == "norm:LayerNormalization"
    assert not any(n.op_type == "Mul" and "awq" in n.name for n in scaled.graph.node)

    mul, mul_report, _ = _awq_model(model, "q4_0", AWQConfig(explicit_mul=True), data)
    added = [n for n in mul.graph.node if "awq" in n.name]
    assert added and all(n.op_type == "Mul" for n in added)
    assert len(added) == sum(g.fold == "explicit-mul" for g in mul_report.groups)
    x = toy_inputs(3, seed=5)
    assert _rel(run(mul, x), run(model, x)) < 1e-5


def test_imatrix_is_carried_to_the_scaled_inputs(tmp_path):
    model = build_toy("rmsnorm_decomposed", layers=1)
    src = tmp_path / "toy.onnx"
    onnx.save(model, src)
    data = _calib()
    out = tmp_path / "awq-imx.onnx"
    saved = tmp_path / "imx.npz"
    report = quantize(src, out, type="q4_k", awq=True, imatrix_data=data, save_imatrix=saved, progress=False)
    assert report.awq.scaled and report.imatrix_tensors > 0
    x = toy_inputs(4, seed=11)
    ref = run(model, x)
    plain = tmp_path / "imx-only.onnx"
    quantize(src, plain, type="q4_k", imatrix=saved, progress=False)  # the saved one is of the model as given
    assert _rel(_run_quantized(out, x), ref) < _rel(_run_quantized(plain, x), ref)


def test_options_and_errors(tmp_path):
    model = build_toy("rmsnorm_decomposed", layers=1)
    src = tmp_path / "toy.onnx"
    onnx.save(model, src)
    with pytest.raises(CalibrationError, match="awq needs calibration"):
        quantize(src, tmp_path / "a.onnx", type="q4_0", awq=True, progress=False)
    with pytest.raises(RecipeError, match="unknown awq option 'alpha'"):
        quantize(src, tmp_path / "a.onnx", type="q4_0", awq={"alpha": 0.5}, calibration_data=_calib(), progress=False)
    with pytest.raises(RecipeError, match="grid"):  # the AWQ settings of a recipe are checked when loaded
        onnxq.load_recipe({"default": "q4_0", "awq": {"grid": [0.5, 2.0]}})
    recipe = {"default": "q4_0", "awq": {"grid": [0.0, 0.5]}}
    assert recipe_from_dict(recipe).to_dict()["awq"] == {"grid": (0.0, 0.5)}
    # a recipe's awq without data: a warning, and the model is packed without it
    report = quantize(src, tmp_path / "b.onnx", recipe=recipe, progress=False)
    assert report.awq is None and any("awq skipped" in w for w in report.warnings)
    report = quantize(src, tmp_path / "c.onnx", recipe=recipe, calibration_data=_calib(), progress=False)
    assert report.awq is not None and all(g.exponent in (None, 0.5) for g in report.awq.groups)
    assert quantize(src, tmp_path / "d.onnx", recipe=recipe, awq=False, calibration_data=_calib(),
                    progress=False).awq is None


def test_cli_awq(tmp_path, capsys):
    from onnxq.cli import main

    model = build_toy("rmsnorm_decomposed", layers=1)
    src = tmp_path / "toy.onnx"
    onnx.save(model, src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_calib())
    out = tmp_path / "out.onnx"
    rep = tmp_path / "report.json"
    assert main(["quantize", str(src), "-o", str(out), "--type", "q4_0", "--awq", "--calib", str(calib),
                 "--report", str(rep), "-q"]) == 0
    text = capsys.readouterr().out
    assert "awq:" in text and "groups scaled" in text
    assert json.loads(rep.read_text())["awq"]["groups"]


@pytest.mark.slow
def test_minilm_awq_explicit_mul_with_imatrix(tmp_path):
    """all-MiniLM-L6-v2: every q/k/v and FFN-up input is a LayerNorm output that also feeds
    the residual Add, so AWQ needs explicit Muls there (without them it scales nothing);
    with one Mul per site (q, k and v get their own scales) and an importance matrix (16
    calibration sentences), Q6_K reaches the 0.999 mean-cosine target (0.99938) and Q5_0
    the 0.995 target (0.99539, from 0.99113 plain)."""
    from onnxq import zoo
    from onnxq.evaluate import evaluate

    try:
        src = zoo.ensure("all-minilm-l6-v2", progress=False)
    except zoo.CheckpointNotFoundError as exc:  # the checkpoint package is not installed
        pytest.skip(str(exc))
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    from minilm_types import CALIBRATION, minilm_calibration

    assert not set((root / "onnxq" / "data" / "sentences.txt").read_text().splitlines()) & set(CALIBRATION)
    data = minilm_calibration(src, CALIBRATION)
    paths = {k: tmp_path / f"{k}.onnx" for k in ("q5_0", "q5_0-awq", "q6_k-awq")}
    quantize(src, paths["q5_0"], type="q5_0", progress=False)
    reports = {
        k: quantize(src, paths[k], type=k.split("-")[0], awq={"explicit_mul": True, "sample_rows": 256},
                    calibration_data=data, imatrix_data=data, progress=False)
        for k in ("q5_0-awq", "q6_k-awq")
    }
    groups = {g.input: g for g in reports["q5_0-awq"].awq.groups}
    ln_groups = [g for name, g in groups.items() if "LayerNorm" in name]
    assert len(ln_groups) == 12 and all(g.fold in ("explicit-mul", "none") for g in ln_groups)
    assert sum(g.scaled for g in ln_groups) >= 10
    res = evaluate(src, list(paths.values()), progress=False).to_dict()["candidates"]
    cos = {k: r["cosine_mean"] for k, r in zip(paths, res)}
    assert cos["q5_0"] < 0.992, cos
    assert cos["q5_0-awq"] >= 0.995 and cos["q5_0-awq"] > cos["q5_0"] + 0.003, cos
    assert cos["q6_k-awq"] >= 0.999, cos
