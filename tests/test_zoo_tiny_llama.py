"""Fast checks of the LLaMA builder on tiny random GGUF files (no checkpoint package needed).

Each tiny model is compared with the independent numpy reference, which applies rotary in the
GGUF's own pair layout while the builder un-permutes q/k and uses HF's rotate_half.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from numpy_reference import SmolLM2Reference
from onnxq.errors import ModelError
from onnxq.zoo import empty_past, greedy_generate, read_metadata
from onnxq.zoo.gguf_reader import GGUFCheckpoint, read_llama_config, unpermute_rotary_rows
from onnxq.zoo.smollm2 import build_smollm2
from zoo_tiny_gguf import hf_to_gguf_rows, write_tiny_llama


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=[(True, 4, 2), (False, 4, 1), (True, 2, 2)],
                ids=["tied-gqa", "untied-mqa", "tied-mha"])
def tiny(request, tmp_path_factory):
    tied, heads, kv_heads = request.param
    d = tmp_path_factory.mktemp("tiny")
    gguf_path = write_tiny_llama(d / "tiny.gguf", tied=tied, n_heads=heads, n_kv_heads=kv_heads)
    full = build_smollm2(gguf_path, d / "full.onnx", family="tiny", progress=False)
    kv = build_smollm2(gguf_path, d / "kv.onnx", kv_cache=True, family="tiny", progress=False)
    return gguf_path, full, kv


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(1)
    for heads, head_dim in ((9, 64), (3, 64), (4, 16)):
        w = rng.standard_normal((heads * head_dim, 12)).astype(np.float32)
        permuted = hf_to_gguf_rows(w, heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute_rotary_rows(permuted, heads), w)
    with pytest.raises(ModelError, match="un-permute"):
        unpermute_rotary_rows(np.zeros((10, 4), np.float32), 3)


def test_full_model_matches_numpy_reference(tiny):
    gguf_path, full, _ = tiny
    ref = SmolLM2Reference(gguf_path)
    sess = _session(full)
    rng = np.random.default_rng(2)
    for length in (1, 3, 11):
        ids = rng.integers(0, 263, size=length).tolist()
        got = sess.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
        want = ref.logits(ids)
        scale = np.abs(want).max()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-5 * scale + 1e-5, (length, np.abs(got - want).max(), scale)


def test_batch_rows_are_independent(tiny):
    _, full, _ = tiny
    sess = _session(full)
    batch = np.array([[5, 9, 200, 17], [44, 3, 3, 120]], dtype=np.int64)
    both = sess.run(["logits"], {"input_ids": batch})[0]
    for r in range(2):
        one = sess.run(["logits"], {"input_ids": batch[r:r + 1]})[0]
        np.testing.assert_allclose(both[r], one[0], rtol=0, atol=1e-5)


def test_kv_prefill_and_decode_equal_full_forward(tiny):
    _, full, kv = tiny
    fs, ks = _session(full), _session(kv)
    ids = [7, 100, 250, 3, 64, 12, 9, 180]
    want = fs.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
    names = [o.name for o in ks.get_outputs()]
    past, total, got = empty_past(ks), 0, []
    for chunk in (ids[:3], ids[3:4], ids[4:6], ids[6:7], ids[7:]):
        n = len(chunk)
        out = dict(zip(names, ks.run(names, {
            "input_ids": np.array([chunk], dtype=np.int64),
            "attention_mask": np.ones((1, total + n), dtype=np.int64),
            "position_ids": np.arange(total, total + n, dtype=np.int64)[None],
            **past,
        })))
        total += n
        assert out["present.0.key"].shape[2] == total
        past = {k.replace("present.", "past_key_values.", 1): v for k, v in out.items() if k.startswith("present.")}
        got.append(out["logits"][0])
    np.testing.assert_allclose(np.concatenate(got), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_kv_left_padding_is_masked(tiny):
    _, full, kv = tiny
    fs, ks = _session(full), _session(kv)
    short, long_ = [10, 20, 30], [40, 50, 60, 70, 80, 90]
    ids = np.array([[0, 0, 0] + short, long_], dtype=np.int64)
    mask = np.array([[0, 0, 0, 1, 1, 1], [1] * 6], dtype=np.int64)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits = ks.run(["logits"], {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                 **empty_past(ks, batch=2)})[0]
    for row, seq in ((0, short), (1, long_)):
        want = fs.run(["logits"], {"input_ids": np.array([seq], dtype=np.int64)})[0][0]
        np.testing.assert_allclose(logits[row, -len(seq):], want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_greedy_generation_same_with_and_without_cache(tiny):
    _, full, kv = tiny
    prompt = [4, 8, 15, 16, 23, 42]
    assert greedy_generate(_session(full), prompt, 6) == greedy_generate(_session(kv), prompt, 6)


def test_graph_is_export_shaped(tiny):
    gguf_path, full, kv = tiny
    model = onnx.load(str(full))
    assert model.ir_version <= 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    inits = {t.name: t for t in model.graph.initializer}
    cfg = read_llama_config(GGUFCheckpoint(gguf_path))
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    weighted = {n.input[1]: n for n in matmuls if n.input[1] in inits}
    expected = {"q_proj": cfg.hidden_size, "k_proj": cfg.n_kv_heads * cfg.head_dim,
                "v_proj": cfg.n_kv_heads * cfg.head_dim, "o_proj": cfg.hidden_size}
    for i in range(cfg.n_layers):
        for proj, n_out in expected.items():
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            assert list(inits[name].dims) == [cfg.hidden_size, n_out]
            assert weighted[name].name == f"/model/layers.{i}/self_attn/{proj}/MatMul"
        for proj, dims in (("gate_proj", [cfg.hidden_size, cfg.intermediate_size]),
                           ("up_proj", [cfg.hidden_size, cfg.intermediate_size]),
                           ("down_proj", [cfg.intermediate_size, cfg.hidden_size])):
            assert list(inits[f"model.layers.{i}.mlp.{proj}.weight"].dims) == dims
    # two activation x activation MatMuls per layer (QK^T, PV), plus the head
    assert len(matmuls) == len(weighted) + 2 * cfg.n_layers + (1 if cfg.tied_embeddings else 0)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == read_metadata(full)
    assert meta["onnxq.model.kind"] == "causal-lm" and meta["onnxq.model.family"] == "tiny"
    assert read_metadata(kv)["onnxq.model.kind"] == "causal-lm-kv"


def test_config_comes_from_metadata(tmp_path):
    path = write_tiny_llama(tmp_path / "t.gguf", n_layers=3, hidden=48, ffn=80, n_heads=6, n_kv_heads=3)
    cfg = read_llama_config(GGUFCheckpoint(path))
    assert (cfg.n_layers, cfg.hidden_size, cfg.intermediate_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == \
        (3, 48, 80, 6, 3, 8)
    assert cfg.rope_theta == 10000.0 and cfg.tied_embeddings and cfg.n_rep == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"architecture": "gpt2"}, "only 'llama'"),
    ({"drop_key": "block_count"}, "llama.block_count"),
    ({"drop_key": "rms_eps"}, "layer_norm_rms_epsilon"),
])
def test_bad_gguf_metadata_is_a_clear_error(tmp_path, kwargs, message):
    path = write_tiny_llama(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(ModelError, match=message):
        build_smollm2(path, tmp_path / "out.onnx", progress=False)
    assert not (tmp_path / "out.onnx").exists()
    assert not list(tmp_path.glob(".out.onnx*"))


def test_head_counts_that_do_not_divide_are_refused(tmp_path):
    with pytest.raises(ModelError, match="multiple of head_count_kv"):
        build_smollm2(_write_bad_heads(tmp_path / "bad.gguf"), tmp_path / "out.onnx", progress=False)


def _write_bad_heads(path):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, 1), (w.add_context_length, 16), (w.add_embedding_length, 64),
                       (w.add_feed_forward_length, 32), (w.add_head_count, 4), (w.add_head_count_kv, 3),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, 8)):
        add(value)
    w.add_tensor("token_embd.weight", np.zeros((8, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelError, match="not a readable GGUF"):
        build_smollm2(bad, tmp_path / "out.onnx", progress=False)
    with pytest.raises(ModelError, match="does not exist"):
        build_smollm2(tmp_path / "missing.gguf", tmp_path / "out.onnx", progress=False)
