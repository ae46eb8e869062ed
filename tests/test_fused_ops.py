"""onnxruntime's fused ops that carry weights as inputs are opened up into plain ops with
the same outputs (checked against onnxruntime's own kernels), and what cannot be opened up
is listed with the reason."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_fixtures import feeds, path, rel_err, run, session
from onnxq.fused_ops import unfuse_weights, weights_left_float
from onnxq.modelio import ensure_node_names
from onnxq.sites import find_sites

H, HEADS, VOCAB, SEQ = 16, 2, 50, 6


def _opened(model: onnx.ModelProto):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = unfuse_weights(out)
    onnx.checker.check_model(out)
    return out, result


def _run_all_levels(model: onnx.ModelProto, x):
    """Outputs with onnxruntime's graph optimizations off and fully on (its fusions must not
    trip over the opened-up graph)."""
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        sess = session(model, level=level)
        outs.append(dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x))))
    return outs


MASKS = {
    "right-padded": np.array([[1] * 7, [1] * 4 + [0] * 3]),
    "left-padded": np.array([[1] * 7, [0, 0] + [1] * 5]),
    "not 0/1": np.array([[1] * 7, [1, 2, 1, 0, 1, 1, 1]]),
}


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_optimizer_bert_opens_up_with_the_same_outputs(mask):
    model = onnx.load(path("ortopt-minilm"))
    ensure_node_names(model)
    opened, result = _opened(model)
    assert sorted(result.replaced.values()) == ["Attention", "Attention", "EmbedLayerNormalization"]
    assert not result.skipped
    ops = {n.op_type for n in opened.graph.node}
    assert {"Attention", "EmbedLayerNormalization"}.isdisjoint(ops) and "MultiHeadAttention" in ops
    x = feeds("ortopt-minilm", batch=2, seq=7)
    x["attention_mask"] = MASKS[mask].astype(np.int64)
    x["token_type_ids"][1, 3:] = 1
    want = run(model, x)["last_hidden_state"]
    for got in _run_all_levels(opened, x):
        assert rel_err(got["last_hidden_state"], want) < 1e-5
    # the mask matters: the padded row differs from the same row without padding
    plain = dict(x, attention_mask=np.ones_like(x["attention_mask"]))
    assert rel_err(run(model, plain)["last_hidden_state"][1], want[1]) > 1e-3
    # every weight is now a site: q/k/v MatMuls and the three tables
    analysis = find_sites(opened)
    assert len(analysis.linear) == 12 and len(analysis.embeddings) == 3
    assert weights_left_float(opened, analysis) == []


def _embed_model(segments: bool, mask: bool, outputs=(0, 1, 2)) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    table = lambda rows: numpy_helper.from_array(rng.standard_normal((rows, H)).astype(np.float32), f"t{rows}")
    inits = [table(VOCAB), table(20), table(2), numpy_helper.from_array((1 + rng.random(H)).astype(np.float32), "g"),
             numpy_helper.from_array(rng.random(H).astype(np.float32), "b")]
    ins = ["ids", "seg" if segments else "", "t50", "t20", "t2" if segments else "", "g", "b", "mask" if mask else ""]
    outs = [["out", "mask_index", "sum"][i] if i in outputs else "" for i in range(3)]
    node = helper.make_node("EmbedLayerNormalization", ins, outs, name="eln", domain="com.microsoft", epsilon=1e-6)
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["B", "S"])
                    for n in ("ids", "seg", "mask") if n in ins]
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.INT32, ["B"]) if o == "mask_index" else
                     helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B", "S", H]) for o in outs if o]
    g = helper.make_graph([node], "eln", graph_inputs, graph_outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("segments, mask", [(True, True), (False, True), (True, False)])
def test_embed_layer_normalization_all_outputs(segments, mask):
    model = _embed_model(segments, mask)
    opened, result = _opened(model)
    assert result.replaced == {"eln": "EmbedLayerNormalization"}
    rng = np.random.default_rng(0)
    x = {"ids": rng.integers(0, VOCAB, (3, SEQ)).astype(np.int32)}
    if segments:
        x["seg"] = rng.integers(0, 2, (3, SEQ)).astype(np.int32)
    if mask:
        x["mask"] = np.array([[1] * SEQ, [1] * 3 + [0] * 3, [0, 1, 1, 2, 1, 0]], np.int32)
    want = run(model, x)
    for got in _run_all_levels(opened, x):
        assert np.array_equal(got["mask_index"], want["mask_index"])
        assert rel_err(got["out"], want["out"]) < 1e-5 and rel_err(got["sum"], want["sum"]) < 1e-6
    kinds = sorted(e.table for e in find_sites(opened).embeddings)
    assert kinds == (["t2", "t20", "t50"] if segments else ["t20", "t50"])


def _attention_model(**extra) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((H, 3 * H)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(3 * H).astype(np.float32), "bias")]
    ins = ["x", "w", "bias", ""] + (["past"] if "past" in extra else [])
    outs = ["y"] + (["present"] if "past" in extra else [])
    attrs = {k: v for k, v in extra.items() if k != "past"}
    node = helper.make_node("Attention", ins, outs, name="attn", domain="com.microsoft", num_heads=HEADS, **attrs)
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", H])]
    if "past" in extra:
        graph_inputs.append(helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, "B", HEADS, "P", H // HEADS]))
    shapes = {"y": ["B", "S", H], "present": [2, "B", HEADS, "T", H // HEADS]}
    g = helper.make_graph([node], "attn", graph_inputs,
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("attrs", [{}, {"unidirectional": 1}, {"scale": 0.3}], ids=["plain", "causal", "scale"])
def test_attention_opens_up_into_multihead_attention(attrs):
    model = _attention_model(**attrs)
    opened, result = _opened(model)
    assert result.replaced == {"attn": "Attention"}
    x = {"x": np.random.default_rng(1).standard_normal((2, SEQ, H)).astype(np.float32)}
    want = run(model, x)["y"]
    for got in _run_all_levels(opened, x):
        assert rel_err(got["y"], want) < 1e-5


def test_attention_with_past_stays_and_says_why():
    model = _attention_model(past=True)
    opened, result = _opened(model)
    assert not result.replaced and [s.node for s in result.skipped] == ["attn"]
    assert "past state" in result.skipped[0].reason
    (left,) = weights_left_float(opened, find_sites(opened))
    assert left.node == "attn" and "'w' [16, 48]" in left.reason and "stays float: Attention with past state" in left.reason


def test_quantize_opens_up_the_optimizer_bert_and_leaves_the_input_alone(tmp_path):
    import onnxq

    src = path("ortopt-minilm")
    before = hashlib.sha256(open(src, "rb").read()).hexdigest()
    report = onnxq.quantize(src, tmp_path / "q.onnx", type="q6_k", progress=False)
    assert hashlib.sha256(open(src, "rb").read()).hexdigest() == before
    assert any("2 Attention into MatMul + MultiHeadAttention" in n for n in report.notes)
    assert {l.role for l in report.layers} == {"q", "k", "v", "o", "up", "down", "embedding"}
    assert not [s for s in report.skipped if s.op_type in ("Attention", "EmbedLayerNormalization")]
    # every weight of the model is quantized (all of them: K = 64 or 256, one Q6_K row is
    # then its Q8_0 tail or one super-block)
    float_model = onnx.load(src, load_external_data=False)
    weights = sum(int(np.prod(t.dims)) for t in float_model.graph.initializer if len(t.dims) == 2)
    assert report.quantized_params == weights == 2 * (64 * 192 + 64 * 64 + 2 * 64 * 256) + (1024 + 512 + 2) * 64
    assert report.size_ratio > 3.6, report.size_ratio


def test_smoothquant_file_api_opens_up_the_optimizer_bert_too(tmp_path):
    from onnxq.smoothquant import quantize_model

    rng = np.random.default_rng(2)
    calib = [{"input_ids": rng.integers(3, 1024, (2, 16)).astype(np.int64)} for _ in range(4)]
    out = tmp_path / "sq.onnx"
    report = quantize_model(path("ortopt-minilm"), str(out), calib, progress=False)
    assert sum("opened up Attention" in n for n in report.notes) == 2
    assert {s.role for s in report.quantized} == {"q", "k", "v", "o", "up", "down"}
    ops = {n.op_type for n in onnx.load(out, load_external_data=False).graph.node}
    assert "MultiHeadAttention" in ops and "Attention" not in ops
    x = feeds("ortopt-minilm", batch=2, seq=7, seed=3)
    got, want = run(str(out), x)["last_hidden_state"], run(path("ortopt-minilm"), x)["last_hidden_state"]
    assert rel_err(got, want) < 0.1
