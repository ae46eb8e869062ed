"""onnxq.model_inputs on graphs the real exporters made: the interface read from the graph,
the inputs synthesized from token ids, and the errors for what cannot be synthesized."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exported_fixtures import EXPORTS, LLMS, VOCAB, model
from onnxq.calibrate import CalibrationCache, calibrate
from onnxq.errors import CalibrationError
from onnxq.model_inputs import ModelInputs
from onnxq.modelio import load_model, model_dir
from onnxq.sites import find_sites

IDS = np.array([[5, 17, 300, 2, 999, 41], [7, 7, 8, 9, 10, 11]], np.int64)


def interface(name: str) -> ModelInputs:
    return ModelInputs.of(load_model(model(name)), name)


def run(name: str, feeds) -> list:
    return ort.InferenceSession(str(model(name)), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", EXPORTS)
def test_every_export_runs_from_token_ids_alone(name):
    iface = interface(name)
    assert [i.vocab for i in iface.inputs if i.role == "input_ids"] == [VOCAB]  # also via Transpose / EmbedLayerNorm
    feeds = iface.complete({"input_ids": IDS})
    assert set(feeds) == {i.name for i in iface.inputs}
    first = run(name, feeds)[0]
    assert first.shape[:2] == IDS.shape and np.all(np.isfinite(first))


def test_optimum_kv_inputs_are_what_transformers_feeds():
    feeds = interface("optimum-smollm2").complete({"input_ids": IDS})
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((2, 6), np.int64))
    np.testing.assert_array_equal(feeds["position_ids"], np.tile(np.arange(6), (2, 1)))
    past = [k for k in feeds if k.startswith("past_key_values")]
    assert len(past) == 4 and all(feeds[k].shape == (2, 2, 0, 16) and feeds[k].dtype == np.float32 for k in past)
    # left padding: positions count over the mask, as transformers' generate does
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.int64)
    padded = interface("optimum-smollm2").complete({"input_ids": IDS, "attention_mask": mask})
    np.testing.assert_array_equal(padded["position_ids"], [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])


def test_genai_head_size_comes_from_group_query_attention():
    """genai declares past [batch, 2, past, 'kv_cache_dim']: the head size (16) is only in the
    graph: fused QKV width 160 = (6 query + 2 x 2 kv heads) x 16 (the eval failure of issue 13
    was an empty head axis)."""
    iface = interface("genai-smollm2")
    past = [i for i in iface.inputs if i.role == "past"]
    assert len(past) == 4
    for item in past:
        assert item.spec.shape[3] == "kv_cache_dim"
        assert item.layout == ("batch", 2, "past", 16)
        assert "GroupQueryAttention" in item.note
    np.testing.assert_allclose(run("genai-smollm2", iface.complete({"input_ids": IDS}))[0],
                               run("optimum-smollm2", interface("optimum-smollm2").complete({"input_ids": IDS}))[0],
                               rtol=1e-4, atol=1e-5)  # the same weights, two exporters


def test_int32_ids_are_cast_to_the_model_type_and_checked_against_the_table():
    iface = interface("optimum-minilm")
    feeds = iface.complete({"input_ids": IDS.astype(np.int32)})
    assert feeds["input_ids"].dtype == np.int64 and feeds["token_type_ids"].dtype == np.int64
    assert not feeds["token_type_ids"].any()
    with pytest.raises(CalibrationError, match=r"token id 1024 .* 1024 rows .*does not belong"):
        iface.complete({"input_ids": np.array([[1, 1024]], np.int64)}, "calibration batch 3")


def test_what_cannot_be_synthesized_is_named():
    iface = interface("genai-smollm2")
    with pytest.raises(CalibrationError, match=r"batch is missing model input 'input_ids'.*int64"):
        iface.complete({"attention_mask": np.ones((1, 3), np.int64)})
    # a past whose head size nothing in the graph says
    past = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["batch", 4, "past", "dim"])
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    table = numpy_helper.from_array(np.zeros((8, 4), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["e"]),
                               helper.make_node("Identity", ["past_key_values.0.key"], ["y"])],
                              "g", [ids, past], [out], [table])
    odd = ModelInputs.of(helper.make_model(graph), "odd.onnx")
    with pytest.raises(CalibrationError, match=r"'past_key_values.0.key'.*axis 3 \('dim'\) is symbolic.*\(no attention node reads it\)"):
        odd.complete({"input_ids": np.zeros((1, 2), np.int64)})


def test_calibration_from_token_ids_of_a_kv_cache_model(tmp_path):
    """What issue 13 quotes ('calibration batch 0 is missing model input attention_mask'):
    an .npz holding only input_ids now calibrates optimum's KV-cache export."""
    path = model("optimum-smollm2")
    npz = tmp_path / "ids.npz"
    np.savez(npz, input_ids=np.random.default_rng(0).integers(0, VOCAB, (6, 12)))
    proto = load_model(path)
    site = find_sites(proto).linear[0]
    cache = CalibrationCache(str(npz), proto, batch_size=4)
    assert len(cache) == 2 and cache.batches[1]["past_key_values.1.value"].shape == (2, 2, 0, 16)
    stats = calibrate(path, [site.input], str(npz), batch_size=4, progress=False)
    assert stats[site.input].count == 6 * 12
    # the same statistics as from the complete batches a user would have had to build
    full = calibrate(path, [site.input], cache, progress=False)
    np.testing.assert_array_equal(full[site.input].absmax, stats[site.input].absmax)


def test_unknown_model_input_is_still_refused_by_name():
    proto = load_model(model("dynamo-smollm2"))
    with pytest.raises(CalibrationError, match="'token_type_ids', which the model does not have"):
        CalibrationCache([{"input_ids": IDS, "token_type_ids": IDS * 0}], proto)


def test_eval_cli_runs_kv_cache_exports_from_their_tokenizer(capsys):
    """Issue 13: 'onnxq eval could not run the genai model even in float'. Task and tokenizer
    come from the export itself (input_ids + logits; tokenizer.json beside it)."""
    from onnxq.cli import main

    for name in ("genai-smollm2", "optimum-smollm2"):
        assert main(["eval", str(model(name)), str(model(name)), "--max-tokens", "200", "--ctx", "100", "--json",
                     "--quiet"]) == 0
        report = __import__("json").loads(capsys.readouterr().out)
        assert report["task"] == "lm" and report["data"]["predicted_tokens"] == 198
        assert report["candidates"][0]["kl_divergence"] == 0.0
        assert report["settings"]["tokenizer"].endswith(f"{name}/tokenizer.json")


def test_int32_interfaces_get_int32_inputs():
    """Some genai builds take int32 ids and mask: the tokenizer's int64 ids are cast (they
    fit) and the synthesized mask follows the declared type."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])]
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    graph = helper.make_graph(nodes, "int32", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "total"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table, axes])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    feeds = ModelInputs.of(proto).complete({"input_ids": np.array([[1, 9, 3]], np.int64)})
    assert feeds["input_ids"].dtype == np.int32 and feeds["attention_mask"].dtype == np.int32
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(out[0, 1], [36, 37, 38, 39])
