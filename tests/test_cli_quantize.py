"""``onnxq quantize`` / ``onnxq inspect`` through the command line: tables, JSON, recipes,
and bad input (one-line error, non-zero exit, nothing left behind)."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_factory import finish, tiny_bert_layer, tiny_decoder
from onnxq.cli import main


def _save(model, path):
    onnx.save(model, str(path))
    return str(path)


def _listing(folder):
    return sorted(os.listdir(folder))


def test_quantize_type_prints_table_and_inspect_agrees(tmp_path, capsys):
    src = _save(tiny_decoder(layers=2, hidden=288, ffn=320), tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    assert main(["quantize", src, "-o", out, "--type", "q6_k", "--quiet", "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "Q6_K" in text and "ggml total" in text and "x smaller" in text
    assert "skipped: 4 MatMul: activation x activation" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert main(["inspect", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layer_bytes"] == report["quantized_bytes"]
    assert {r["method"] for r in info["by_method"]} == {"Q6_K"}
    # 288 = 256 + 32: one super-block and one Q8_0 tail block per row
    q = next(l for l in info["layers"] if l["role"] == "q")
    assert q["tail_type"] == "Q8_0" and q["bits_per_weight"] == pytest.approx((210 + 34) * 8 / 288)
    assert main(["inspect", out]) == 0
    table = capsys.readouterr().out
    assert "all layers" in table and "ratio" in table and "recipe q6_k" in table


def test_quantize_recipe_file_and_preset(tmp_path, capsys):
    src = _save(tiny_decoder(layers=8), tmp_path / "in.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mine\ndefault: q4_0\nrules:\n  - {role: [v, down], layers: use_more_bits, method: q8_0}\n"
                      "  - {match: '*nothing*', method: q6_k}\n")
    out = str(tmp_path / "a.onnx")
    assert main(["quantize", src, "-o", out, "--recipe", str(recipe), "-q"]) == 0
    captured = capsys.readouterr()
    assert "warning: rule 2 (match=*nothing*" in captured.err
    assert "Q8_0" in captured.out and "Q4_0" in captured.out
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["onnxq.recipe"])["name"] == "mine"
    out2 = str(tmp_path / "b.onnx")
    assert main(["quantize", src, "-o", out2, "--recipe", "q4_k_m", "--mode", "exact", "-q"]) == 0
    assert json.loads({p.key: p.value for p in onnx.load(out2).metadata_props}["onnxq.recipe"])["mode"] == "exact"
    assert main(["quantize", "--list-presets"]) == 0
    assert "q5_k_m" in capsys.readouterr().out


def test_bert_encoder_through_cli(tmp_path, capsys):
    src = _save(tiny_bert_layer(hidden=64, ffn=128), tmp_path / "bert.onnx")
    out = str(tmp_path / "bert-q8.onnx")
    assert main(["quantize", src, "-o", out, "--type", "q8_0", "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", src, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {r["method"] for r in info["by_method"]} == {"float32"} and len(info["layers"]) == 6


def _no_layer_model():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    return finish(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [])


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxq", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["not_onnx", "no_layer", "missing_folder", "unwritable", "same_as_input",
                                  "bad_recipe", "bad_type", "missing_input"])
def test_bad_input_one_line_error_and_nothing_left(tmp_path, case):
    src = _save(tiny_decoder(layers=1), tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    args = ["quantize", src, "-o", out, "--type", "q4_0"]
    expect = None
    if case == "not_onnx":
        bad = tmp_path / "junk.onnx"
        bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
        args[1], expect = str(bad), "not an ONNX model"
    elif case == "no_layer":
        args[1], expect = _save(_no_layer_model(), tmp_path / "relu.onnx"), "no quantizable layer"
    elif case == "missing_folder":
        args[3], expect = str(tmp_path / "nope" / "out.onnx"), "does not exist"
    elif case == "unwritable":
        args[3], expect = "/proc/onnxq-out.onnx", "not writable"
    elif case == "same_as_input":
        args[3], expect = src, "is the input model"
    elif case == "bad_recipe":
        args[4:6], expect = ["--recipe", "q9_z"], "unknown recipe 'q9_z'"
    elif case == "bad_type":
        args[5], expect = "q3_k", "unknown method 'q3_k'"
    elif case == "missing_input":
        args[1], expect = str(tmp_path / "missing.onnx"), "no such file"
    before = _listing(tmp_path)
    res = _run_cli(*args)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxq quantize: error:") and expect in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert _listing(tmp_path) == before  # nothing written, no temporary files


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    """A codec error during packing: no output, no temporary files, the error propagates."""
    from onnxq.errors import ModelError
    from onnxq import quantize

    model = tiny_decoder(layers=1)
    # a NaN in one weight: the pass refuses it after other tensors were already written
    for t in model.graph.initializer:
        if t.name.endswith("down_proj.weight"):
            arr = numpy_helper.to_array(t).copy()
            arr[0, 0] = np.nan
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    src = _save(model, tmp_path / "in.onnx")
    before = _listing(tmp_path)
    with pytest.raises(ModelError, match="NaN"):
        quantize(src, tmp_path / "out.onnx", type="q4_0", progress=False, external_data=True)
    assert _listing(tmp_path) == before


def test_inspect_bad_file(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_text("nope")
    res = _run_cli("inspect", str(bad))
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "not an ONNX model" in res.stderr
