"""Building a model again gives byte-identical files (same bytes as the cached build)."""
from __future__ import annotations

import hashlib

import pytest

from onnxq import zoo
from onnxq.zoo.smollm2 import build_smollm2
from zoo_tiny_gguf import write_tiny_llama


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_tiny_llama_builds_are_identical(tmp_path):
    gguf_path = write_tiny_llama(tmp_path / "t.gguf")
    for kv in (False, True):
        a = build_smollm2(gguf_path, tmp_path / "a.onnx", kv_cache=kv, progress=False)
        b = build_smollm2(gguf_path, tmp_path / "b.onnx", kv_cache=kv, progress=False)
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["all-minilm-l6-v2", "smollm2-135m"])
def test_rebuild_is_byte_identical_to_cached_build(tmp_path, name):
    cached = zoo.ensure(name, progress=False)
    fresh = zoo.build(name, tmp_path / f"{name}.onnx", progress=False)
    assert fresh.stat().st_size == cached.stat().st_size
    assert _sha(fresh) == _sha(cached)
