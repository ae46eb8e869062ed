"""Budgets (onnxq.budget, issue 15) and MixedPrecisionQuantizer on a small decoder with
real calibration batches: the budget is met within 1 %, a layer made more sensitive gets
more bits, the saved recipe reproduces the file byte for byte, bad budgets are errors."""
import filecmp

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graph_factory import tiny_decoder
from onnxq import quantize
from onnxq.budget import allocate, budget_bytes, measure_costs, parse_size, quantize_to_budget
from onnxq.errors import CalibrationError, RecipeError
from onnxq.inspect_model import inspect_model
from onnxq.mixed_precision import MixedPrecisionQuantizer

SENSITIVE = "model.layers.1.mlp.down_proj.weight"


def _model(path, boost: float = 1.0) -> str:
    m = tiny_decoder(vocab=256, hidden=64, ffn=128, layers=2)
    for t in m.graph.initializer:
        scale = 0.25 if t.name == "model.embed_tokens.weight" else boost if t.name == SENSITIVE else 1.0
        if scale != 1.0:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(scale), t.name))
    onnx.save(m, str(path))
    return str(path)


BATCHES = [{"input_ids": np.random.default_rng(i).integers(0, 256, (1, 48)).astype(np.int64)} for i in range(3)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    plain, boosted = _model(d / "plain.onnx"), _model(d / "boosted.onnx", boost=6.0)
    return d, plain, boosted, measure_costs(plain, BATCHES, progress=False), measure_costs(boosted, BATCHES, progress=False)


def test_parse_size():
    assert parse_size("90MB") == 90_000_000 and parse_size("85 MiB") == 85 * 2**20 and parse_size("1.5GB") == 1.5e9
    assert parse_size(1234) == 1234
    for bad in ("ninety", "90XB", "-3MB", "0"):
        with pytest.raises(RecipeError, match="target size"):
            parse_size(bad)


def test_costs_are_measured_and_the_proxy_tracks_end_to_end(toy):
    table = toy[3]
    assert table.loss == "kl" and len(table.units) == 15  # 14 linear weights + the tied table
    tied = next(u for u in table.units if u.weight == "model.embed_tokens.weight")
    assert sorted(tied.sites) == ["/lm_head/MatMul", "/model/embed_tokens/Gather"]
    for u in table.units:
        assert u.sensitivity > 0
        # more bits, less output error, through the real codec (K = 64: a K-quant row is all
        # tail blocks, Q6_K's are Q8_0)
        assert u.error["Q8_0"] == u.error["Q6_K"] < u.error["Q5_1"] < u.error["Q4_K"] < u.error["Q4_0"]
    assert len(table.validation) == 16 and table.proxy_correlation() > 0.7


@pytest.mark.parametrize("bpw", [4.8, 5.5, 6.5])
def test_budget_is_met_within_one_percent(toy, bpw):
    table = toy[3]
    limit, _ = budget_bytes(table, target_bpw=bpw)
    choice = allocate(table, limit)
    used = sum(u.nbytes(choice[u.weight]) for u in table.units)
    assert 0.99 * limit <= used <= limit
    # a larger budget never costs more
    bigger = allocate(table, int(limit * 1.1))
    assert sum(u.cost(bigger[u.weight]) for u in table.units) <= sum(u.cost(choice[u.weight]) for u in table.units)


def test_sensitive_layer_gets_more_bits(toy):
    plain, boosted = toy[3], toy[4]
    sens = {u.weight: u.sensitivity for u in plain.units}
    sens_b = {u.weight: u.sensitivity for u in boosted.units}
    assert sens_b[SENSITIVE] > 3 * sens[SENSITIVE]
    bits = []
    for table in (plain, boosted):
        choice = allocate(table, budget_bytes(table, target_bpw=5.5)[0])
        unit = next(u for u in table.units if u.weight == SENSITIVE)
        bits.append(8 * unit.nbytes(choice[SENSITIVE]) / unit.params)
    assert bits[1] > bits[0]


def test_run_report_and_saved_recipe_reproduce_the_file(toy):
    d, plain, _, table, _ = toy
    out, recipe = str(d / "b.onnx"), str(d / "b.yaml")
    report = quantize_to_budget(plain, out, target_bpw=5.5, calibration_data=BATCHES, costs=table,
                                save_recipe=recipe, progress=False)
    b = report.budget
    assert inspect_model(out).bits_per_weight == pytest.approx(b.bits_per_weight)
    assert 5.5 * 0.99 <= b.bits_per_weight <= 5.5
    assert b.measured > 0 and 0.3 < b.predicted / b.measured < 3  # the mix, end to end
    layers = {l.name: l for l in report.layers}
    assert all(l.cost is not None for l in report.layers)
    assert layers["/model/layers.0/self_attn/q_proj/MatMul"].mode_reason.startswith("auto: ")
    assert "cost" in report.layer_table() and "budget 5.5 bpw" in b.summary()
    again = str(d / "again.onnx")
    quantize(plain, again, recipe=recipe, progress=False)
    assert filecmp.cmp(out, again, shallow=False)


def test_target_size(toy):
    d, plain, _, table, _ = toy
    out = str(d / "size.onnx")
    target = table.fixed_bytes + int(0.9 * budget_bytes(table, target_bpw=6.0)[0])
    report = quantize_to_budget(plain, out, target_size=target, calibration_data=BATCHES, costs=table, check=False,
                                progress=False)
    assert 0.99 * target <= report.output_bytes <= target


def test_bad_budgets(toy):
    d, plain, _, table, _ = toy
    with pytest.raises(RecipeError, match="below the smallest type mix"):
        budget_bytes(table, target_bpw=3.0)
    with pytest.raises(RecipeError, match="at or above float32"):
        budget_bytes(table, target_bpw=32)
    with pytest.raises(RecipeError, match="at or above the float32 model"):
        budget_bytes(table, target_size="10MB")
    with pytest.raises(RecipeError, match="below the smallest type mix"):
        budget_bytes(table, target_size="20kB")
    with pytest.raises(RecipeError, match="exactly one"):
        budget_bytes(table, target_bpw=5, target_size="1MB")
    with pytest.raises(CalibrationError, match="needs calibration data"):
        quantize_to_budget(plain, str(d / "x.onnx"), target_bpw=5.5, progress=False)


def test_mixed_precision_quantizer_is_a_face_over_recipes(toy, tmp_path):
    _, plain, _, table, _ = toy
    q = MixedPrecisionQuantizer({"*down_proj*": {"method": "q6_k", "mode": "exact"}, "*embed*": "keep",
                                 "*": {"method": "q4_0", "mode": "exact"}})
    report = q.quantize(plain, str(tmp_path / "m.onnx"), progress=False)
    methods = {l.name: l.method for l in report.layers}
    assert methods["/model/layers.1/mlp/down_proj/MatMul"] == "Q6_K"
    assert methods["/model/embed_tokens/Gather"] == "keep" and methods["/model/layers.0/mlp/up_proj/MatMul"] == "Q4_0"
    assert MixedPrecisionQuantizer.llama_7b_strategy().recipe.name == "llama-mixed"
    budgeted = MixedPrecisionQuantizer.for_budget(bpw=5.0, calibration_data=BATCHES, costs=table)
    report = budgeted.quantize(plain, str(tmp_path / "b.onnx"), check=False, progress=False)
    assert 4.95 <= report.budget.bits_per_weight <= 5.0
    with pytest.raises(RecipeError, match="exactly one"):
        MixedPrecisionQuantizer.for_budget()
