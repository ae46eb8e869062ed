"""Any model: relative error of every output on given or generated inputs."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from eval_toys import rounded_8bit, save, toy_encoder, toy_lm
from onnxq.errors import ModelError
from onnxq.evaluate import DataError, evaluate, generate_inputs, parse_dims
from onnxq.evaluate.models import open_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    lm = toy_lm(family=None, kind=None)
    enc = toy_encoder(kind="something-else")
    return {
        "lm": save(lm, root / "lm.onnx"),
        "lm_rounded": save(rounded_8bit(lm), root / "lm_rounded.onnx"),
        "enc": save(enc, root / "enc.onnx"),
        "enc_rounded": save(rounded_8bit(enc), root / "enc_rounded.onnx"),
        "root": root,
    }


def test_unknown_kind_falls_back_to_outputs_with_generated_inputs(files):
    report = evaluate(files["lm"], [files["lm"], files["lm_rounded"]], dims={"batch": 2, "seq": 16}, progress=False)
    assert report.task == "outputs"
    assert "no onnxq.model.kind metadata" in report.settings["task_source"]
    same, rounded = (c.metrics for c in report.candidates)
    assert same["relative_error"] == 0.0 and same["relative_errors"] == {"logits": 0.0}
    assert 1e-4 < rounded["relative_error"] < 0.05
    assert rounded["max_abs_errors"]["logits"] > 0
    d = report.data
    assert d["input_shapes"] == {"input_ids": [2, 16]}
    assert d["values"]["input_ids"] == "uniform in [0, 300) (rows of the table it indexes)"
    assert report.reference.runs == 3 and report.candidates[1].runs == 3  # --repeat default


def test_generated_inputs_are_deterministic_and_valid(files):
    model = open_model(files["enc"])
    a, how = generate_inputs(model, {"batch": 3, "seq": 7}, seed=4)
    b, _ = generate_inputs(model, {"batch": 3, "seq": 7}, seed=4)
    c, _ = generate_inputs(model, {"batch": 3, "seq": 7}, seed=5)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].shape == (3, 7) and a[name].dtype == np.int64
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].max() < 300 and a["input_ids"].min() >= 0
    assert set(np.unique(a["token_type_ids"])) <= {0, 1}  # the type table has 2 rows
    assert (a["attention_mask"] == 1).all()
    assert how["attention_mask"] == "ones (mask)"
    ids, how = generate_inputs(model, {"batch": 1, "seq": 500}, vocab_size=7)
    assert ids["input_ids"].max() < 7 and "--vocab-size" in how["input_ids"]


def test_encoder_as_any_model(files):
    report = evaluate(files["enc"], files["enc_rounded"], dims={"batch": 2, "seq": 9}, repeat=2,
                      progress=False)
    assert report.task == "outputs"
    assert report.data["input_shapes"]["input_ids"] == [2, 9]
    assert 1e-4 < report.candidates[0].metrics["relative_error"] < 0.05
    # INPUT:AXIS names one axis of one input and wins over the symbolic name
    model = open_model(files["enc"])
    feeds, _ = generate_inputs(model, {"batch": 1, "seq": 4, "input_ids:1": 4, "attention_mask:0": 1})
    assert feeds["input_ids"].shape == (1, 4)


def test_inputs_from_npz(files, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, (1, 20))
    path = tmp_path / "in.npz"
    np.savez(path, input_ids=ids)
    report = evaluate(files["lm"], files["lm_rounded"], inputs=path, progress=False)
    assert report.data["inputs"] == str(path)
    # the metric equals the formula applied to the outputs, computed here independently
    import onnxruntime as ort
    r = ort.InferenceSession(str(files["lm"])).run(None, {"input_ids": ids})[0].astype(np.float64)
    c = ort.InferenceSession(str(files["lm_rounded"])).run(None, {"input_ids": ids})[0].astype(np.float64)
    expected = np.linalg.norm(c - r) / np.linalg.norm(r)
    assert report.candidates[0].metrics["relative_error"] == pytest.approx(expected, rel=1e-9)


def test_several_given_input_sets_add_up(files):
    rng = np.random.default_rng(1)
    sets = [{"input_ids": rng.integers(0, 300, (1, n))} for n in (5, 11)]
    both = evaluate(files["lm"], files["lm_rounded"], inputs=sets, repeat=1, progress=False)
    assert both.data["input_sets"] == 2 and both.reference.runs == 2
    assert both.candidates[0].metrics["relative_error"] > 0


def test_input_errors_name_the_problem(files, tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, ids=np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(DataError, match=r"missing input_ids; not model inputs: ids"):
        evaluate(files["lm"], files["lm"], inputs=wrong, progress=False)
    with pytest.raises(DataError, match=r"input_ids is int32, the model takes int64"):
        evaluate(files["lm"], files["lm"], inputs={"input_ids": np.zeros((1, 4), dtype=np.int32)}, progress=False)
    with pytest.raises(DataError, match=r"shape \[4\]"):
        evaluate(files["lm"], files["lm"], inputs={"input_ids": np.zeros(4, dtype=np.int64)}, progress=False)
    not_npz = tmp_path / "x.npz"
    not_npz.write_text("hello")
    with pytest.raises(DataError, match="not an .npz"):
        evaluate(files["lm"], files["lm"], inputs=not_npz, progress=False)
    with pytest.raises(ModelError, match=r"dim 'batch' of input 'input_ids' \(--dim batch=N\).*dim 'seq'"):
        evaluate(files["lm"], files["lm"], progress=False)
    with pytest.raises(ModelError, match="bad --dim"):
        parse_dims(["batch"])
    assert parse_dims(["batch=2", "x:1=3"]) == {"batch": 2, "x:1": 3}


def test_integer_input_without_a_known_range_is_an_error(tmp_path):
    # an int input that is only cast and added: no table tells the valid range
    graph = helper.make_graph(
        [helper.make_node("Cast", ["n"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["f", "f"], ["y"])],
        "g", [helper.make_tensor_value_info("n", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"integer input 'n'.*--vocab-size"):
        evaluate(path, path, progress=False)
    report = evaluate(path, path, vocab_size=10, progress=False)
    assert report.candidates[0].metrics["relative_error"] == 0.0


def _scale_model(path, factor):
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [onnx.numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_zero_reference_output_gives_infinite_error_in_json_and_table(tmp_path):
    import json

    zero = _scale_model(tmp_path / "zero.onnx", 0.0)
    half = _scale_model(tmp_path / "half.onnx", 0.5)
    one = _scale_model(tmp_path / "one.onnx", 1.0)
    report = evaluate(zero, [one, zero], dims={"n": 5}, progress=False)
    assert report.candidates[0].metrics["relative_error"] == float("inf")
    assert report.candidates[1].metrics["relative_error"] == 0.0
    assert json.loads(report.to_json())["candidates"][0]["relative_error"] == "inf"
    assert "inf" in report.format_table()
    # ||0.5 x - x|| / ||x|| = 0.5 exactly, for any x
    assert evaluate(one, half, dims={"n": 7}, progress=False).candidates[0].metrics["relative_error"] == 0.5


def test_bad_task_and_no_candidate(files):
    from onnxq.errors import OnnxqError

    with pytest.raises(OnnxqError, match="unknown task 'perplexity'"):
        evaluate(files["lm"], files["lm"], task="perplexity")
    with pytest.raises(OnnxqError, match="no candidate"):
        evaluate(files["lm"], [])
