"""onnxq.gguf.import_gguf on small GGUF files written here with the ``gguf`` package.

Checks: the imported blocks are the file's bytes (every type the op library runs, mixed as
llama.cpp mixes them); the imported model (exact mode, with and without KV cache) equals an
independent float64 numpy forward over the dequantized tensors and the float32 model of the same
weights; unsupported types, architectures and broken files are refused naming the tensor;
``requantize`` converts and records; the tokenizer beside the model serves ``onnxq eval``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

import onnxq
from gguf_toys import ALL_TYPES, cycle_types, q4_k_m_like, write_decoder
from numpy_reference import SmolLM2Reference
from onnxq.errors import ModelError
from onnxq.ggml.nodes import ggml_node_attributes, is_ggml_node
from onnxq.gguf import import_gguf
from onnxq.zoo import empty_past, greedy_generate, read_metadata

gguf = pytest.importorskip("gguf")

# name -> (type_for, write_decoder options)
FILES = {
    "all-types-untied": (cycle_types(), dict(tied=False, n_kv_heads=2)),
    "q4_k_m-tied": (q4_k_m_like(), dict(ffn=544, n_kv_heads=1)),
    "qwen2-bias-float": (lambda name, i: {"attn_q": "F16", "attn_k": "BF16"}.get(name, "Q8_0"),
                         dict(architecture="qwen2", bias=True, tied=True)),
    "llama-f32-bias": (lambda name, i: "F32", dict(tied=False, bias=True, n_kv_heads=4, hidden=128, ffn=96)),
}


def _session(path):
    return onnxq.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=list(FILES))
def imported(request, tmp_path_factory):
    type_for, options = FILES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    src = write_decoder(d / "toy.gguf", type_for, **options)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    full = import_gguf(src, d / "full.onnx", kv_cache=False, progress=False)
    kv = import_gguf(src, d / "kv.onnx", progress=False)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the GGUF is never modified
    return src, full, kv


def _ids(n, seed=3):
    return np.random.default_rng(seed).integers(0, 263, size=n).tolist()


def test_blocks_are_the_files_bytes(imported):
    src, full, _ = imported
    reader = gguf.GGUFReader(str(src))
    model = onnx.load(full.output)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    seen = {}
    for node in model.graph.node:
        if is_ggml_node(node):
            seen[node.input[0 if node.op_type == "GgmlGather" else 1]] = ggml_node_attributes(node)["quant_type"]
    by_onnx = {r.onnx_name: r for r in full.tensors}
    quantized = [t for t in reader.tensors if t.tensor_type.name in ALL_TYPES]
    for t in quantized:
        rec = next(r for r in full.tensors if r.name == t.name)
        assert rec.stored_as == t.tensor_type.name and not rec.requantized
        assert seen[rec.onnx_name] == t.tensor_type.name
        np.testing.assert_array_equal(inits[rec.onnx_name], np.asarray(t.data))  # byte for byte
    assert set(seen) == {r.onnx_name for r in full.tensors if r.stored_as != "float32"}
    assert all(by_onnx[name].stored_as == qt for name, qt in seen.items())
    types = json.loads(read_metadata(full.output)["onnxq.gguf.tensor_types"])
    assert types == {t.name: t.tensor_type.name for t in reader.tensors}


def test_every_supported_type_is_imported(tmp_path):
    src = write_decoder(tmp_path / "t.gguf", cycle_types(), tied=False)
    report = import_gguf(src, tmp_path / "m.onnx", kv_cache=False, progress=False, tokenizer=False)
    assert {r.stored_as for r in report.tensors} == set(ALL_TYPES)
    assert all(r.stored_as == r.gguf_type for r in report.tensors)
    model = onnx.load(report.output)
    ops = {ggml_node_attributes(n)["quant_type"] for n in model.graph.node if is_ggml_node(n)}
    assert ops == set(ALL_TYPES)


def test_exact_mode_equals_float_reference(imported):
    src, full, _ = imported
    ref = SmolLM2Reference(src)
    sess = _session(full.output)
    for length in (1, 5, 13):
        ids = _ids(length, seed=length)
        got = sess.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
        want = ref.logits(ids)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max() + 1e-5, (length, np.abs(got - want).max())


def test_exact_mode_equals_dequantized_float32_model(imported, tmp_path):
    src, full, _ = imported
    flt = import_gguf(src, tmp_path / "f32.onnx", kv_cache=False, dequantize=True, progress=False)
    model = onnx.load(flt.output, load_external_data=False)
    assert not any(is_ggml_node(n) for n in model.graph.node)
    ids = np.array([_ids(17)], dtype=np.int64)
    want = _session(flt.output).run(["logits"], {"input_ids": ids})[0]
    got = _session(full.output).run(["logits"], {"input_ids": ids})[0]
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    assert read_metadata(flt.output)["onnxq.gguf.weights"] == "dequantized"


def test_kv_prefill_and_decode_equal_full_forward(imported):
    _, full, kv = imported
    fs, ks = _session(full.output), _session(kv.output)
    ids = _ids(9)
    want = fs.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
    names = [o.name for o in ks.get_outputs()]
    past, total, got = empty_past(ks), 0, []
    for chunk in (ids[:4], ids[4:5], ids[5:8], ids[8:]):
        n = len(chunk)
        out = dict(zip(names, ks.run(names, {
            "input_ids": np.array([chunk], dtype=np.int64), "attention_mask": np.ones((1, total + n), dtype=np.int64),
            "position_ids": np.arange(total, total + n, dtype=np.int64)[None], **past})))
        total += n
        past = {k.replace("present.", "past_key_values.", 1): v for k, v in out.items() if k.startswith("present.")}
        got.append(out["logits"][0])
    np.testing.assert_allclose(np.concatenate(got), want, rtol=0, atol=2e-5 * np.abs(want).max())
    assert greedy_generate(fs, ids[:3], 4) == greedy_generate(ks, ids[:3], 4)


def test_fast_mode_sets_the_attribute_and_stays_close(tmp_path):
    src = write_decoder(tmp_path / "t.gguf", q4_k_m_like(), ffn=544)
    exact = import_gguf(src, tmp_path / "e.onnx", kv_cache=False, progress=False, tokenizer=False)
    fast = import_gguf(src, tmp_path / "f.onnx", kv_cache=False, mode="fast", progress=False, tokenizer=False)
    modes = {ggml_node_attributes(n)["mode"] for n in onnx.load(fast.output).graph.node if n.op_type == "GgmlMatMul"}
    assert modes == {"fast"}
    ids = np.array([_ids(12)], dtype=np.int64)
    a = _session(exact.output).run(["logits"], {"input_ids": ids})[0]
    b = _session(fast.output).run(["logits"], {"input_ids": ids})[0]
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 0.05, rel  # 8-bit activation blocks: close, not equal


def test_q4_k_m_mix_and_fallbacks_are_kept(tmp_path):
    src = write_decoder(tmp_path / "t.gguf", q4_k_m_like(), ffn=544, n_kv_heads=1)
    full = import_gguf(src, tmp_path / "m.onnx", kv_cache=False, progress=False, tokenizer=False)
    stored = {r.name: r.stored_as for r in full.tensors}
    # ffn_down has rows of 544: Q8_0 (Q6_K's fallback) where use_more_bits holds, else Q5_0 (Q4_K's)
    assert stored["blk.0.ffn_down.weight"] == "Q8_0" and stored["blk.1.ffn_down.weight"] == "Q5_0"
    assert stored["blk.0.attn_v.weight"] == "Q6_K" and stored["blk.0.attn_q.weight"] == "Q4_K"
    assert stored["token_embd.weight"] == "Q6_K"
    # the tied head reads the embedding's blocks: one initializer, two ops
    model = onnx.load(full.output)
    readers = [n.op_type for n in model.graph.node if "model.embed_tokens.weight.q6_k" in n.input]
    assert sorted(readers) == ["GgmlGather", "GgmlMatMul"]


@pytest.mark.parametrize("bad_type", ["Q2_K", "IQ4_XS"])
def test_unsupported_type_is_refused_naming_the_tensor(tmp_path, bad_type):
    src = write_decoder(tmp_path / "t.gguf", lambda n, i: bad_type if (n, i) == ("ffn_up", 1) else "Q8_0")
    with pytest.raises(ModelError, match=rf"'blk\.1\.ffn_up\.weight' has type {bad_type}.*--requantize"):
        import_gguf(src, tmp_path / "m.onnx", progress=False)
    assert not (tmp_path / "m.onnx").exists()


def test_requantize_converts_records_and_runs(tmp_path):
    types = {"ffn_gate": "Q2_K", "ffn_down": "IQ4_NL"}  # ffn_down rows: 544, not a multiple of 256
    src = write_decoder(tmp_path / "t.gguf", lambda n, i: types.get(n, "Q8_0"), ffn=544)
    report = import_gguf(src, tmp_path / "m.onnx", kv_cache=False, requantize="q4_k", progress=False)
    conv = {r.name: r for r in report.requantized}
    assert set(conv) == {f"blk.{i}.{n}.weight" for i in range(2) for n in types}
    assert all(r.gguf_type == types[r.name.split(".")[2]] and r.stored_as == "Q4_K" for r in conv.values())
    assert {r.tail_type for r in conv.values()} == {None, "Q5_0"}  # onnxq's tail blocks for the 544-wide rows
    meta = json.loads(read_metadata(report.output)["onnxq.gguf.requantized"])
    assert meta["blk.0.ffn_gate.weight"] == "Q2_K -> Q4_K"
    assert meta["blk.1.ffn_down.weight"] == "IQ4_NL -> Q4_K (tail Q5_0)"
    assert "requantized: blk.0.ffn_gate.weight Q2_K -> Q4_K" in report.table()
    # the blocks are onnxq's Q4_K of the dequantized rows, and the model computes with exactly them
    reader = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    inits = {t.name: t for t in onnx.load(report.output).graph.initializer}
    ref = SmolLM2Reference(src)
    for name, rec in conv.items():
        t = reader[name]
        q = onnxq.GGMLQuantizer("Q4_K", tail_type=rec.tail_type).quantize(gguf.quants.dequantize(t.data, t.tensor_type))
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(inits[rec.onnx_name]), np.asarray(q.data))
        ref.w[name] = np.asarray(q.dequantize(), dtype=np.float64)
    ids = _ids(7)
    logits = _session(report.output).run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0][0]
    want = ref.logits(ids)
    assert np.abs(logits - want).max() <= 1e-4 * np.abs(want).max()


def test_unsupported_architecture_is_refused(tmp_path):
    src = write_decoder(tmp_path / "t.gguf", lambda n, i: "Q8_0", architecture="gemma")
    with pytest.raises(ModelError, match=r"general\.architecture is 'gemma'.*supported: llama"):
        import_gguf(src, tmp_path / "m.onnx", progress=False)


def test_unknown_tensors_and_missing_tensors_are_refused(tmp_path):
    extra = {"blk.0.attn_q_norm.weight": np.ones(64, np.float32)}
    src = write_decoder(tmp_path / "t.gguf", lambda n, i: "Q8_0", extra_tensors=extra)
    with pytest.raises(ModelError, match=r"blk\.0\.attn_q_norm\.weight.*not part of the llama graph"):
        import_gguf(src, tmp_path / "m.onnx", progress=False)
    src = write_decoder(tmp_path / "q.gguf", lambda n, i: "Q8_0", architecture="qwen2", bias=False)
    with pytest.raises(ModelError, match=r"qwen2 tensor\(s\) missing: blk\.0\.attn_k\.bias"):
        import_gguf(src, tmp_path / "m.onnx", progress=False)


def test_truncated_file_names_the_tensor(tmp_path):
    src = write_decoder(tmp_path / "t.gguf", lambda n, i: "Q4_K")
    data = src.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-1000])
    with pytest.raises(ModelError, match=r"tensor 'output_norm\.weight' \(F32.*needs bytes .* truncated file"):
        import_gguf(cut, tmp_path / "m.onnx", progress=False)
    cut.write_bytes(data[:200])
    with pytest.raises(ModelError, match="truncated or not a GGUF file"):
        import_gguf(cut, tmp_path / "m.onnx", progress=False)
    cut.write_bytes(b"GGML" + data[4:])
    with pytest.raises(ModelError, match="not a GGUF file"):
        import_gguf(cut, tmp_path / "m.onnx", progress=False)


def test_lying_shape_is_refused(tmp_path):
    """A tensor table claiming more rows than the data holds is caught before any read."""
    src = write_decoder(tmp_path / "t.gguf", lambda n, i: "Q8_0")
    data = bytearray(src.read_bytes())
    name = b"output_norm.weight"
    at = data.rindex(name) + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    assert n_dims == 1
    data[at + 4:at + 12] = (1 << 20).to_bytes(8, "little")  # 256 -> 1M elements
    (tmp_path / "lie.gguf").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"'output_norm\.weight' \(F32, shape \[1048576\]\) needs bytes"):
        import_gguf(tmp_path / "lie.gguf", tmp_path / "m.onnx", progress=False)


def test_external_data_and_cli(tmp_path, capsys):
    from onnxq.cli import main

    src = write_decoder(tmp_path / "t.gguf", q4_k_m_like(), ffn=544)
    out = tmp_path / "m.onnx"
    assert main(["import-gguf", str(src), "-o", str(out), "--external-data", "--quiet", "--no-kv-cache"]) == 0
    printed = capsys.readouterr().out
    assert "Q4_K" in printed and "Q6_K" in printed and "tokenizer:" in printed
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    inline = import_gguf(src, tmp_path / "inline.onnx", kv_cache=False, progress=False)
    ids = np.array([_ids(6)], dtype=np.int64)
    np.testing.assert_array_equal(_session(out).run(["logits"], {"input_ids": ids})[0],
                                  _session(inline.output).run(["logits"], {"input_ids": ids})[0])
    bad = write_decoder(tmp_path / "g.gguf", lambda n, i: "Q8_0", architecture="gemma")
    assert main(["import-gguf", str(bad), "-o", str(tmp_path / "g.onnx"), "--quiet"]) == 1
    assert "general.architecture is 'gemma'" in capsys.readouterr().err


def test_tokenizer_beside_the_model_serves_eval(tmp_path):
    from onnxq.evaluate import evaluate
    from onnxq.zoo.gguf_reader import GGUFCheckpoint
    from onnxq.zoo.tokenizer import gguf_bpe_tokenizer

    src = write_decoder(tmp_path / "t.gguf", cycle_types())
    report = import_gguf(src, tmp_path / "toy.q.onnx", kv_cache=False, progress=False)
    assert report.tokenizer == str(tmp_path / "toy.q.tokenizer.json")
    assert read_metadata(report.output)["onnxq.model.tokenizer"] == "toy.q.tokenizer.json"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(report.tokenizer)
    zoo_tok = gguf_bpe_tokenizer(GGUFCheckpoint(src), "toy")
    text = "hello world, well well 123"
    assert tok.encode(text, add_special_tokens=False).ids == zoo_tok.encode(text)
    flt = import_gguf(src, tmp_path / "toy.f32.onnx", kv_cache=False, dequantize=True, progress=False)
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello well " * 60)
    result = evaluate(flt.output, [report.output], corpus=str(corpus), ctx=32, max_tokens=128, progress=False)
    assert result.settings["tokenizer"] == str(tmp_path / "toy.f32.tokenizer.json")
    ref_ppl, cand_ppl = result.reference.metrics["perplexity"], result.candidates[0].metrics["perplexity"]
    assert result.data["tokens"] > 100 and cand_ppl == pytest.approx(ref_ppl, rel=1e-4)
