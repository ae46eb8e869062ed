import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxq.errors import ModelError, OutputPathError
from onnxq.modelio import (
    ModelWriter,
    check_output_path,
    get_initializer_array,
    is_external,
    load_model,
    save_model,
)
from graph_factory import tiny_decoder


def _run(path, ids):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids})[0]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ModelError, match="bad.onnx: not an ONNX model"):
        load_model(bad)


def test_node_names_made_unique(tmp_path):
    model = tiny_decoder(layers=1)
    model.graph.node[0].name = ""
    model.graph.node[1].name = model.graph.node[2].name
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    loaded = load_model(path)
    names = [n.name for n in loaded.graph.node]
    assert len(set(names)) == len(names) and names[0] == "Gather_0"


def test_external_roundtrip_is_lazy_and_equal(tmp_path):
    model = tiny_decoder(layers=2)
    ids = np.array([[1, 5, 7, 3]], dtype=np.int64)
    src = tmp_path / "src.onnx"
    onnx.save(model, str(src))
    expected = _run(src, ids)
    out = tmp_path / "ext.onnx"
    save_model(model, out, external_data=True)
    assert os.path.exists(str(out) + ".data")
    loaded = load_model(out)
    ext = [t for t in loaded.graph.initializer if is_external(t)]
    assert ext, "large tensors should live in the data file"
    arr = get_initializer_array(loaded, ext[0].name, tmp_path)
    assert isinstance(arr, np.memmap)
    orig = next(t for t in model.graph.initializer if t.name == ext[0].name)
    np.testing.assert_array_equal(arr, onnx.numpy_helper.to_array(orig))
    np.testing.assert_array_equal(_run(out, ids), expected)
    # re-save an externally stored model inline, through another folder
    sub = tmp_path / "sub"
    sub.mkdir()
    inline = sub / "inline.onnx"
    save_model(loaded, inline, base_dir=tmp_path, external_data=False)
    assert not os.path.exists(str(inline) + ".data")
    np.testing.assert_array_equal(_run(inline, ids), expected)
    # the in-memory model was not changed by saving
    assert all(is_external(t) == (t.name in {e.name for e in ext}) for t in loaded.graph.initializer)


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(RuntimeError):
        with ModelWriter(out, external_data=True) as writer:
            writer.tensor_proto("w", np.ones((64, 64), np.float32))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_existing_output_survives_a_failed_write(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with ModelWriter(out, external_data=False):
            raise RuntimeError("boom")
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_check_output_path(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(tiny_decoder(layers=1), str(src))
    with pytest.raises(OutputPathError, match="is the input model"):
        check_output_path(src, src)
    with pytest.raises(OutputPathError, match="is the input model"):
        check_output_path(src, tmp_path / "." / "m.onnx")
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(src, tmp_path / "nope" / "o.onnx")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_path(src, tmp_path)
    # /proc refuses new files even to root
    with pytest.raises(OutputPathError, match="not writable"):
        check_output_path(src, "/proc/onnxq-out.onnx")
    assert check_output_path(src, tmp_path / "o.onnx") == str(tmp_path / "o.onnx")


def test_truncated_external_data_is_reported(tmp_path):
    out = tmp_path / "ext.onnx"
    save_model(tiny_decoder(layers=1), out, external_data=True)
    data = str(out) + ".data"
    with open(data, "r+b") as fh:
        fh.truncate(100)
    loaded = load_model(out)
    big = next(t for t in loaded.graph.initializer if is_external(t))
    with pytest.raises(ModelError, match="has 100 bytes"):
        get_initializer_array(loaded, big.name, tmp_path)
