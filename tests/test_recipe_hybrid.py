"""Mixed recipes with SmoothQuant layers on a tiny LLaMA (RMSNorm, rotary, GQA, tied head),
and ``onnxq quantize --method smoothquant``."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxq.cli import main
from onnxq.errors import CalibrationError
from onnxq.inspect_model import inspect_model
from onnxq import quantize
from onnxq.runtime import InferenceSession
from zoo_tiny_gguf import write_tiny_llama


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from onnxq.zoo.smollm2 import build_smollm2

    d = tmp_path_factory.mktemp("tiny_llama")
    gguf_path = write_tiny_llama(d / "t.gguf", n_layers=8, hidden=64, ffn=96)
    model = build_smollm2(gguf_path, d / "tl.onnx", family="tiny", progress=False)
    calib = d / "calib.npz"
    np.savez(calib, input_ids=np.random.default_rng(0).integers(0, 260, (16, 24)).astype(np.int64))
    return str(model), str(calib)


def _rel(path, ref_path, ids):
    ref = ort.InferenceSession(ref_path, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    got = InferenceSession(path).run(None, {"input_ids": ids})[0]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_llama_mixed_preset(tiny_llama, tmp_path):
    model, calib = tiny_llama
    out = str(tmp_path / "mixed.onnx")
    report = quantize(model, out, recipe="llama-mixed", calibration_data=calib, progress=False)
    by_layer = {}
    for layer in report.layers:
        by_layer.setdefault(layer.layer, set()).add(layer.method)
    # 8 blocks: first quarter SmoothQuant, middle half Q6_K, last quarter Q5_0; embedding and head float
    assert by_layer == {None: {"keep"}, 0: {"smoothquant"}, 1: {"smoothquant"}, 2: {"Q6_K"}, 3: {"Q6_K"},
                        4: {"Q6_K"}, 5: {"Q6_K"}, 6: {"Q5_0"}, 7: {"Q5_0"}}
    sq = [l for l in report.layers if l.method == "smoothquant"]
    # int8 weights + per-channel scales/zero points, read back from the written model
    assert all(l.nbytes >= l.params for l in sq) and all(l.nbytes < 1.2 * l.params for l in sq)
    info = inspect_model(out)
    methods = {row["method"]: row["layers"] for row in info.by_method()}
    assert methods == {"float32": 2, "int8 W8A8 (QDQ)": 14, "Q6_K": 28, "Q5_0": 14}
    assert report.smoothquant is not None and len(report.smoothquant.quantized) == 14
    assert json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["onnxq.recipe"])["name"] == "llama-mixed"
    ids = np.random.default_rng(1).integers(0, 260, (2, 10)).astype(np.int64)
    assert _rel(out, model, ids) < 0.3
    # the skipped list is the float model's, plus what the recipe kept
    assert {s.op_type for s in report.skipped} == {"MatMul", "Gather"}
    assert sum("activation x activation" in s.reason for s in report.skipped) == 16


def test_smoothquant_layers_need_calibration_data(tiny_llama, tmp_path):
    model, _ = tiny_llama
    with pytest.raises(CalibrationError, match="needs calibration inputs"):
        quantize(model, tmp_path / "x.onnx", recipe="llama-mixed", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_method_smoothquant_cli(tiny_llama, tmp_path, capsys):
    model, calib = tiny_llama
    out = str(tmp_path / "sq.onnx")
    assert main(["quantize", model, "-o", out, "--method", "smoothquant", "--calib", calib,
                 "--alpha", "0.6", "--format", "qoperator", "-q"]) == 0
    text = capsys.readouterr().out
    assert "SmoothQuant (qoperator): 56 of 56 sites quantized" in text
    info = inspect_model(out)
    assert {row["method"] for row in info.by_method()} == {"float32", "int8 W8A8 (QOperator)"}
    ids = np.random.default_rng(2).integers(0, 260, (1, 12)).astype(np.int64)
    assert _rel(out, model, ids) < 0.3
    assert main(["quantize", model, "-o", out + "2", "--method", "smoothquant"]) == 1
    assert "--calib" in capsys.readouterr().err


def test_keep_globs_leave_layers_float_in_both_methods(tiny_llama, tmp_path, capsys):
    model, calib = tiny_llama
    out = str(tmp_path / "sq-keep.onnx")
    assert main(["quantize", model, "-o", out, "--method", "smoothquant", "--calib", calib, "--alpha", "0.6",
                 "--keep", "*layers.0/mlp/down_proj*", "--keep", "*layers.7/self_attn/o_proj*", "-q"]) == 0
    assert "SmoothQuant (qdq): 54 of 54 sites quantized" in capsys.readouterr().out
    kept = {l.name for l in inspect_model(out).layers if l.method == "float32"}
    assert {n for n in kept if "layers." in n} == {"/model/layers.0/mlp/down_proj/MatMul",
                                                  "/model/layers.7/self_attn/o_proj/MatMul"}
    recipe = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["onnxq.recipe"])
    assert [r["match"] for r in recipe["rules"] if r.get("comment") == "--keep"] == [
        ["*layers.0/mlp/down_proj*"], ["*layers.7/self_attn/o_proj*"]]
    out2 = str(tmp_path / "q4-keep.onnx")
    assert main(["quantize", model, "-o", out2, "--type", "q4_0", "--keep", "*mlp/down_proj*",
                 "--keep", "*nothing*", "-q"]) == 0
    captured = capsys.readouterr()
    assert "match=*nothing*" in captured.err  # a glob that matches nothing is a warning
    layers = inspect_model(out2).layers
    assert {l.method for l in layers if "down_proj" in l.name} == {"float32"}
    assert {l.method for l in layers if "up_proj" in l.name} == {"Q4_0"}


def test_weight_type_int8_stores_signed_weights(tiny_llama, tmp_path, capsys):
    model, calib = tiny_llama
    dtypes, errors = {}, {}
    for wt in ("uint8", "int8"):
        out = str(tmp_path / f"sq-{wt}.onnx")
        assert main(["quantize", model, "-o", out, "--method", "smoothquant", "--calib", calib, "--alpha", "0.6",
                     "--weight-type", wt, "-q"]) == 0
        m = onnx.load(out)
        inits = {t.name: t for t in m.graph.initializer}
        weights = [inits[n.input[0]] for n in m.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
        assert len(weights) == 56
        dtypes[wt] = {w.data_type for w in weights}
        ids = np.random.default_rng(3).integers(0, 260, (1, 12)).astype(np.int64)
        errors[wt] = _rel(out, model, ids)
    assert dtypes == {"uint8": {onnx.TensorProto.UINT8}, "int8": {onnx.TensorProto.INT8}}
    # u8s8 kernels saturate 16-bit pair sums on AVX2 without VNNI: on this random-weight toy the
    # error about doubles (0.18 -> 0.37 measured), hence uint8 as the default; still a working model
    assert errors["uint8"] < 0.3 and errors["int8"] < 0.5, errors
    assert main(["quantize", model, "-o", str(tmp_path / "x.onnx"), "--type", "q4_0", "--weight-type", "int8"]) == 1
    assert "--weight-type" in capsys.readouterr().err
