"""Every command checks its input model up front: external data present and of the
declared size, every node's domain / opset / op loadable by the installed onnxruntime,
and precise wording for a valid model whose graph has no nodes."""
from __future__ import annotations

import os
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_factory import finish, tiny_decoder
from onnxq.cli import main
from onnxq.checks import check_external_data, check_operators, onnxruntime_operators
from onnxq.errors import ModelError
from onnxq.inspect_model import inspect_model
from onnxq.modelio import load_model


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run ``onnxq ARGS`` in this process (as the console script does)."""

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return _Result(code, out, err)

    return run


def _external(tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(tiny_decoder(layers=1), str(path), save_as_external_data=True, location=name + ".data", size_threshold=0)
    return path


def _listing(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- external data


def test_missing_external_data_is_refused_by_inspect_quantize_and_eval(tmp_path, cli):
    src = _external(tmp_path)
    good = cli("inspect", str(src))
    assert good.returncode == 0, good.stderr
    os.rename(str(src) + ".data", tmp_path / "elsewhere.data")
    before = _listing(tmp_path)
    for args in (["inspect", str(src)], ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--type", "q8_0"],
                 ["eval", str(src), str(src), "--quiet"]):
        res = cli(*args)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert f"{src}: external data file {src}.data is missing (needed by 8 initializer(s), e.g. " in lines[0]
        assert res.stdout == ""  # no table of made-up sizes
    assert _listing(tmp_path) == before


def test_truncated_external_data_names_the_tensor_and_sizes(tmp_path):
    src = _external(tmp_path)
    data = str(src) + ".data"
    size = os.path.getsize(data)
    with open(data, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(ModelError) as info:
        inspect_model(src)
    msg = str(info.value)
    assert f"external data {data} has {size - 100} bytes, the tensor needs bytes" in msg
    assert "initializer 'model.layers.0.mlp.down_proj.weight'" in msg or "initializer '" in msg


def test_declared_length_that_contradicts_the_shape_is_refused(tmp_path):
    src = _external(tmp_path)
    model = onnx.load(str(src), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name.endswith("q_proj.weight"))
    for entry in tensor.external_data:
        if entry.key == "length":
            entry.value = str(int(entry.value) - 4)
    onnx.save(model, str(src))
    with pytest.raises(ModelError, match=r"q_proj.weight': external data length 4092 bytes, shape \[32, 32\] of "
                                          r"float32 needs 4096"):
        check_external_data(load_model(src), src)


# ---------------------------------------------------------------- operators


def _with_node(node, opsets):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), node]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 9
    return model


def test_unknown_domain_refused_before_writing(tmp_path, cli):
    model = _with_node(helper.make_node("FancyNorm", ["h"], ["y"], name="norm0", domain="com.example"),
                       [("", 17), ("com.example", 1)])
    src = tmp_path / "custom.onnx"
    onnx.save(model, str(src))
    with pytest.raises(Exception):  # what the user would meet later: onnxruntime refuses it
        ort.InferenceSession(str(src))
    before = _listing(tmp_path)
    res = cli("quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--type", "q8_0")
    assert res.returncode == 1
    assert "node 'norm0' (FancyNorm) has domain 'com.example', which onnxruntime does not know" in res.stderr
    assert "(known: '' (ai.onnx), 'ai.onnx.ml', 'com.microsoft'" in res.stderr
    assert _listing(tmp_path) == before  # nothing written


@pytest.mark.parametrize(
    "node, opsets, expected",
    [
        (helper.make_node("Relu", ["h"], ["y"], name="r"), [("", 99)],
         "the model imports opset 99 of domain '' (ai.onnx), onnxruntime supports up to "),
        (helper.make_node("Relux", ["h"], ["y"], name="r"), [("", 17)],
         "node 'r' (Relux): domain '' (ai.onnx) has no operator 'Relux'"),
        (helper.make_node("Gelu", ["h"], ["y"], name="g"), [("", 17)],
         "node 'g' (Gelu): operator 'Gelu' exists from opset 20 of domain '' (ai.onnx), the model imports opset 17"),
        (helper.make_node("FastGelu", ["h"], ["y"], name="f", domain="com.microsoft"), [("", 17)],
         "node 'f' (FastGelu) has domain 'com.microsoft', which the model's opset_import does not list"),
        (helper.make_node("GgmlConv", ["h"], ["y"], name="c", domain="onnxq"), [("", 17), ("onnxq", 1)],
         "node 'c' (GgmlConv): domain 'onnxq' has no operator 'GgmlConv'"),
    ],
)
def test_operator_rule(node, opsets, expected):
    with pytest.raises(ModelError) as info:
        check_operators(_with_node(node, opsets), "m.onnx")
    assert expected in str(info.value)
    assert str(info.value).startswith("m.onnx: onnxruntime ")


def test_loadable_models_pass_and_agree_with_onnxruntime():
    cases = [
        _with_node(helper.make_node("Relu", ["h"], ["y"]), [("ai.onnx", 17)]),
        _with_node(helper.make_node("FastGelu", ["h"], ["y"], domain="com.microsoft"), [("", 17), ("com.microsoft", 1)]),
        _with_node(helper.make_node("Gelu", ["h"], ["y"]), [("", 20)]),
        tiny_decoder(layers=1),
    ]
    for model in cases:
        check_operators(model, "m.onnx")
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    newest = max(v for versions in onnxruntime_operators()[""].values() for v in versions)
    check_operators(_with_node(helper.make_node("Relu", ["h"], ["y"]), [("", newest)]), "m.onnx")


def test_nodes_inside_subgraphs_and_local_functions():
    then_branch = helper.make_graph([helper.make_node("Mystery", ["h"], ["t"], name="inner", domain="x.y")], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    cond = helper.make_node("If", ["c"], ["y"], name="if0", then_branch=then_branch, else_branch=then_branch)
    model = _with_node(cond, [("", 17), ("x.y", 1)])
    with pytest.raises(ModelError, match="node 'inner' \\(Mystery\\) has domain 'x.y'"):
        check_operators(model, "m.onnx")
    # the same op as a model-local function is loadable
    fn = helper.make_function("x.y", "Mystery", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    check_operators(model, "m.onnx")


# ---------------------------------------------------------------- empty graphs


def test_empty_graph_has_precise_wording(tmp_path, cli):
    empty = finish([], [], [], [])
    path = tmp_path / "empty.onnx"
    onnx.save(empty, str(path))
    onnx.checker.check_model(str(path))  # a valid model
    for args in (["inspect", str(path)], ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--type", "q4_0"],
                 ["eval", str(path), str(path), "--quiet"]):
        res = cli(*args)
        assert res.returncode == 1
        assert f"{path}: the ONNX model's graph has no nodes" in res.stderr, res.stderr
        assert "not an ONNX model" not in res.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"")
    with pytest.raises(ModelError, match="junk.onnx: not an ONNX model"):
        load_model(junk)
