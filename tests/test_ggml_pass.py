"""The GGML pass on synthetic models: every site form, tied tables, shapes, determinism,
metadata, external data, float16 sites, importance matrices, inspect totals."""
import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gguf_quants
from onnx import TensorProto, helper, numpy_helper

from graph_factory import finish, gemm_model, tiny_bert_layer, tiny_decoder
from onnxq.sites import find_sites
from onnxq.formats import BLOCK_TRAITS
from onnxq.ggml.nodes import ggml_node_attributes, is_ggml_node
from onnxq.inspect_model import inspect_model
from onnxq.modelio import get_initializer_array, load_model, save_model
from onnxq import quantize
from onnxq.runtime import InferenceSession


# ----------------------------------------------------------------------------- oracle helpers


def dequantize_rows(blocks: np.ndarray, qtype: str, K: int, tail: str = None) -> np.ndarray:
    """Independent dequantizer (the gguf package) for onnxq's row layout: main blocks, then tail blocks."""
    qk, size = BLOCK_TRAITS[qtype]
    blocks = np.asarray(blocks, dtype=np.uint8).reshape(blocks.shape[0], -1)
    if tail is None:
        n_main = -(-K // qk)
        out = gguf_quants.dequantize(blocks[:, : n_main * size], GQ[qtype])
        return out[:, :K].astype(np.float32)
    n_main = K // qk
    main_bytes = n_main * size
    parts = []
    if n_main:
        parts.append(gguf_quants.dequantize(blocks[:, :main_bytes], GQ[qtype]))
    parts.append(gguf_quants.dequantize(blocks[:, main_bytes:], GQ[tail]))
    return np.concatenate(parts, axis=1)[:, :K].astype(np.float32)


def dequantized_reference(original: onnx.ModelProto, quantized_path: str) -> onnx.ModelProto:
    """The original float graph with every quantized weight replaced by the dequantized
    blocks of the quantized model (in the original orientation)."""
    q = load_model(quantized_path)
    base = os.path.dirname(quantized_path)
    qnodes = {n.name: n for n in q.graph.node if is_ggml_node(n)}
    ref = onnx.ModelProto()
    ref.CopyFrom(original)
    analysis = find_sites(ref)
    new_values = {}
    for site in analysis.linear:
        node = qnodes.get(site.name)
        if node is None:
            continue
        a = ggml_node_attributes(node)
        rows = dequantize_rows(get_initializer_array(q, node.input[1], base), a["quant_type"], a["K"], a["tail_type"])
        if site.gemm_alpha != 1.0:
            rows = rows / np.float32(site.gemm_alpha)
        value = rows if site.weight_transposed else rows.T
        tied_emb = next((e for e in analysis.embeddings if e.table == site.weight), None)
        if tied_emb is not None and (tied_emb.name not in qnodes or qnodes[tied_emb.name].input[0] != node.input[1]):
            # head and table packed differently: untie them in the reference
            own = site.weight + ".head_ref"
            for n in ref.graph.node:
                if n.name in site.nodes:
                    for i, name in enumerate(n.input):
                        if name == site.weight:
                            n.input[i] = own
            ref.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), own))
            continue
        new_values[site.weight] = value
    for emb in analysis.embeddings:
        node = qnodes.get(emb.name)
        if node is not None:
            a = ggml_node_attributes(node)
            new_values[emb.table] = dequantize_rows(get_initializer_array(q, node.input[0], base), a["quant_type"],
                                                    a["K"], a["tail_type"])
    for t in ref.graph.initializer:
        if t.name in new_values:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new_values[t.name]).astype(dtype), t.name))
    return ref


def assert_rel_close(got, expected, tol=1e-4):
    """Norm-relative closeness: summation order differs between the op and MatMul, and the
    toy graphs (no norms, sharp softmax) amplify rounding differences elementwise."""
    assert got.shape == expected.shape
    rel = np.linalg.norm(got.astype(np.float64) - expected) / max(np.linalg.norm(expected.astype(np.float64)), 1e-30)
    assert rel < tol, f"relative error {rel:.3g} >= {tol}"


def run_float(model: onnx.ModelProto, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_quantized(path: str, feeds):
    return InferenceSession(path).run(None, feeds)


def save(model, path):
    onnx.save(model, str(path))
    return str(path)


def file_digest(path):
    h = hashlib.sha256()
    for p in (path, path + ".data"):
        if os.path.exists(p):
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def decoder_feeds(batch, seq, vocab=64, seed=0):
    return {"input_ids": np.random.default_rng(seed).integers(0, vocab, (batch, seq)).astype(np.int64)}


# ----------------------------------------------------------------------------- site forms


@pytest.mark.parametrize("qtype", ["q4_0", "q5_1", "q8_0", "q4_k", "q6_k"])
def test_decoder_matmul_transpose_and_gather_equal_dequantized_float(tmp_path, qtype):
    model = tiny_decoder(layers=2, hidden=288, ffn=320)  # K = 288, 320: K-quants need tails
    src = save(model, tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    report = quantize(src, out, type=qtype, mode="exact", progress=False)
    q = load_model(out)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("GgmlMatMul") == 2 * 7 + 1 and ops.count("GgmlGather") == 1
    assert "Gather" not in ops and "Transpose" in ops  # only the attention's activation transpose stays
    assert ops.count("MatMul") == 4  # activation x activation MatMuls are untouched
    # no float copy of any weight survives
    assert all(t.data_type == TensorProto.UINT8 for t in q.graph.initializer)
    ref = dequantized_reference(model, out)
    for batch, seq in ((1, 5), (3, 17)):  # shapes stay dynamic
        feeds = decoder_feeds(batch, seq)
        (expected,) = run_float(ref, feeds)
        (got,) = run_quantized(out, feeds)
        assert got.shape == (batch, seq, 64)
        assert_rel_close(got, expected)
    assert report.bits_per_weight is not None and len(report.layers) == 16


def test_error_against_float_falls_with_more_bits(tmp_path):
    # (this toy has no norms, so errors grow through depth: one block)
    model = tiny_decoder(layers=1, hidden=288, ffn=320)
    src = save(model, tmp_path / "in.onnx")
    feeds = decoder_feeds(3, 17)
    (flt,) = run_float(model, feeds)
    errors = []
    for qtype in ("q4_0", "q5_1", "q6_k", "q8_0"):
        out = str(tmp_path / f"{qtype}.onnx")
        quantize(src, out, type=qtype, mode="exact", progress=False)
        errors.append(np.linalg.norm(run_quantized(out, feeds)[0] - flt) / np.linalg.norm(flt))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.03


def test_tied_table_stored_once_and_bpw_with_tails(tmp_path):
    model = tiny_decoder(layers=1, hidden=288, ffn=320, vocab=100)
    src = save(model, tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    report = quantize(src, out, type="q6_k", mode="exact", progress=False)
    q = load_model(out)
    gather = next(n for n in q.graph.node if n.op_type == "GgmlGather")
    head = next(n for n in q.graph.node if n.name == "/lm_head/MatMul")
    assert gather.input[0] == head.input[1]  # one initializer
    tables = [t for t in q.graph.initializer if t.name == gather.input[0]]
    assert len(tables) == 1 and list(tables[0].dims) == [100, 210 + 34]  # 1 super-block + 1 Q8_0 tail block
    layers = {l.name: l for l in report.layers}
    emb, lm = layers["/model/embed_tokens/Gather"], layers["/lm_head/MatMul"]
    assert emb.nbytes == 100 * 244 and lm.nbytes == 0 and lm.shared_with == emb.name
    assert emb.bits_per_weight == pytest.approx(244 * 8 / 288)
    # K=320 rows (down_proj): 1 super-block + 2 Q8_0 tail blocks
    down = next(l for l in report.layers if l.role == "down")
    assert (down.tail_type, down.nbytes) == ("Q8_0", 288 * (210 + 2 * 34))
    # different types for head and table: stored twice, and the float table is gone
    out2 = str(tmp_path / "out2.onnx")
    quantize(src, out2, mode="exact", recipe={"default": "q6_k", "rules": [{"role": "embedding", "method": "q8_0"}]}, progress=False)
    q2 = load_model(out2)
    assert len({n.input[0] if n.op_type == "GgmlGather" else n.input[1]
                for n in q2.graph.node if n.name in (gather.name, head.name)}) == 2
    assert "model.embed_tokens.weight" not in {t.name for t in q2.graph.initializer}
    # embedding kept float, head quantized: the float table stays for the Gather only
    out3 = str(tmp_path / "out3.onnx")
    quantize(src, out3, mode="exact", recipe={"default": "q6_k", "rules": [{"role": "embedding", "method": "keep"}]}, progress=False)
    q3 = load_model(out3)
    assert "model.embed_tokens.weight" in {t.name for t in q3.graph.initializer}
    assert [n.op_type for n in q3.graph.node if n.name == gather.name] == ["Gather"]
    assert "/lm_head/Transpose" not in {n.name for n in q3.graph.node}
    feeds = decoder_feeds(2, 7, vocab=100)
    for path in (out, out2, out3):
        assert_rel_close(run_quantized(path, feeds)[0], run_float(dequantized_reference(model, path), feeds)[0])


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [
    (0, 1.0, 1.0, (24,)), (1, 1.0, 1.0, (24,)), (1, 0.5, 2.0, (1, 24)), (0, 1.5, 0.25, (1,)), (1, 1.0, 1.0, None),
])
def test_gemm_forms(tmp_path, trans_b, alpha, beta, bias_shape):
    model = gemm_model(trans_b, alpha, beta, bias_shape)
    src = save(model, tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    quantize(src, out, type="q8_0", mode="exact", progress=False)
    q = load_model(out)
    assert [n.op_type for n in q.graph.node] == ["GgmlMatMul"]
    assert len(q.graph.node[0].input) == (3 if bias_shape else 2)
    ref = dequantized_reference(model, out)
    for batch in (1, 9):
        x = {"x": np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)}
        np.testing.assert_allclose(run_quantized(out, x)[0], run_float(ref, x)[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(run_quantized(out, x)[0], run_float(model, x)[0], rtol=0.05, atol=0.05)


def test_bert_matmul_add_bias_fused(tmp_path):
    model = tiny_bert_layer(hidden=64, ffn=128)
    src = save(model, tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    quantize(src, out, type="q5_0", mode="exact", progress=False)
    q = load_model(out)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("GgmlMatMul") == 6 and "Add" not in ops
    for n in q.graph.node:
        if n.op_type == "GgmlMatMul":
            assert n.input[2].endswith(".bias")  # the original float32 [N] bias, reused
    ref = dequantized_reference(model, out)
    for shape in ((1, 3, 64), (2, 11, 64)):
        x = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        np.testing.assert_allclose(run_quantized(out, x)[0], run_float(ref, x)[0], rtol=2e-4, atol=2e-4)


def test_fast_mode_close_to_exact(tmp_path):
    model = tiny_decoder(layers=2, hidden=256, ffn=512)
    src = save(model, tmp_path / "in.onnx")
    exact, fast = str(tmp_path / "e.onnx"), str(tmp_path / "f.onnx")
    quantize(src, exact, type="q4_k", mode="exact", progress=False)
    quantize(src, fast, type="q4_k", mode="fast", progress=False)
    modes = {ggml_node_attributes(n).get("mode") for n in load_model(fast).graph.node if n.op_type == "GgmlMatMul"}
    assert modes == {"fast"}
    feeds = decoder_feeds(2, 9)
    a, b = run_quantized(exact, feeds)[0], run_quantized(fast, feeds)[0]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05


def test_shared_transpose_stays_and_outputs_preserved(tmp_path):
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["w"], ["wT"], perm=[1, 0], name="T"),
        helper.make_node("MatMul", ["x", "wT"], ["y"], name="mm"),
        helper.make_node("Identity", ["wT"], ["wT_out"], name="id"),
    ]
    model = finish(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8]),
                    helper.make_tensor_value_info("wT_out", TensorProto.FLOAT, [16, 8])], [w])
    src = save(model, tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    quantize(src, out, type="q8_0", progress=False)
    q = load_model(out)
    assert [n.op_type for n in q.graph.node] == ["Transpose", "GgmlMatMul", "Identity"]
    assert "w" in {t.name for t in q.graph.initializer}
    x = {"x": rng.standard_normal((3, 16)).astype(np.float32)}
    y, wt = run_quantized(out, x)
    np.testing.assert_array_equal(wt, numpy_helper.to_array(w).T)


def test_float16_site_gets_casts(tmp_path):
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float16), "fc.weight")
    model = finish([helper.make_node("MatMul", ["x", "fc.weight"], ["y"], name="/fc/MatMul")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["b", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["b", 32])], [w])
    src = save(model, tmp_path / "in.onnx")
    out = str(tmp_path / "out.onnx")
    quantize(src, out, type="q8_0", mode="exact", progress=False)
    assert [n.op_type for n in load_model(out).graph.node] == ["Cast", "GgmlMatMul", "Cast"]
    x = {"x": rng.standard_normal((4, 64)).astype(np.float16)}
    (y,) = run_quantized(out, x)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), run_float(model, x)[0].astype(np.float32), rtol=0.05, atol=0.1)


# ----------------------------------------------------------------------------- files


def test_deterministic_metadata_and_input_untouched(tmp_path):
    model = tiny_decoder(layers=2, hidden=288, ffn=320)
    src = save(model, tmp_path / "in.onnx")
    before = file_digest(src)
    a, b = str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")
    recipe = {"name": "mix", "default": "q4_k", "rules": [{"role": ["v", "down"], "method": "q6_k"}]}
    quantize(src, a, recipe=recipe, progress=False)
    quantize(src, b, recipe=recipe, progress=False)
    assert file_digest(a) == file_digest(b)
    assert file_digest(src) == before
    meta = {p.key: p.value for p in load_model(a).metadata_props}
    import onnxq

    assert meta["onnxq.version"] == onnxq.__version__
    recorded = json.loads(meta["onnxq.recipe"])
    assert recorded["name"] == "mix" and recorded["default"] == {"method": "q4_k"}
    assert recorded["rules"] == [{"role": ["v", "down"], "method": "q6_k"}]
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx", "in.onnx"]  # no temporary files left


def test_external_data_in_and_out(tmp_path):
    model = tiny_decoder(layers=2, hidden=288, ffn=320)
    src = str(tmp_path / "in.onnx")
    save_model(model, src, external_data=True)
    assert os.path.exists(src + ".data")
    before = file_digest(src)
    out = str(tmp_path / "out.onnx")
    quantize(src, out, type="q5_k", mode="exact", progress=False)
    assert os.path.exists(out + ".data") and file_digest(src) == before
    q = onnx.load(out, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in q.graph.initializer)
    feeds = decoder_feeds(1, 6)
    assert_rel_close(run_quantized(out, feeds)[0], run_float(dequantized_reference(model, out), feeds)[0])
    # the same bytes as from the inline input
    src2 = save(model, tmp_path / "inline.onnx")
    out2 = str(tmp_path / "out2.onnx")
    quantize(src2, out2, type="q5_k", mode="exact", progress=False, external_data=True)
    with open(out + ".data", "rb") as f1, open(out2 + ".data", "rb") as f2:
        assert f1.read() == f2.read()


# ----------------------------------------------------------------------------- imatrix


def test_imatrix_is_mean_square_of_site_inputs_and_changes_blocks(tmp_path):
    from onnxq.ggml.imatrix import ImportanceMatrix, compute_imatrix

    model = tiny_decoder(layers=1, hidden=256, ffn=256)
    src = save(model, tmp_path / "in.onnx")
    ids = np.random.default_rng(1).integers(0, 64, (6, 12)).astype(np.int64)
    data = tmp_path / "calib.npz"
    np.savez(data, input_ids=ids)
    analysis = find_sites(model)
    q_site = next(s for s in analysis.linear if s.role == "q")
    imx = compute_imatrix(src, [q_site.input], str(data), progress=False)
    # by hand: the q_proj input is the embedding output
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "model.embed_tokens.weight"))
    x = table[ids].reshape(-1, 256).astype(np.float64)
    np.testing.assert_allclose(imx[q_site.input], (x ** 2).mean(axis=0), rtol=1e-5)
    assert imx.counts[q_site.input] == 72
    saved = tmp_path / "imx.npz"
    imx.save(saved)
    back = ImportanceMatrix.load(saved)
    np.testing.assert_array_equal(back[q_site.input], imx[q_site.input])

    plain, with_imx, reused = (str(tmp_path / n) for n in ("p.onnx", "i.onnx", "r.onnx"))
    # one mode for all three: mode auto would measure on the inputs in one run and not in the other
    quantize(src, plain, type="q4_k", mode="exact", progress=False)
    rep = quantize(src, with_imx, type="q4_k", mode="exact", imatrix_data=str(data), save_imatrix=tmp_path / "all.npz",
                   progress=False)
    assert rep.imatrix_tensors == 5  # q/k/v share one input, gate/up another; o, down, head
    quantize(src, reused, type="q4_k", mode="exact", imatrix_data=str(tmp_path / "all.npz"), progress=False)
    assert file_digest(with_imx) == file_digest(reused)
    assert file_digest(plain) != file_digest(with_imx)
    meta = {p.key: p.value for p in load_model(with_imx).metadata_props}
    assert json.loads(meta["onnxq.imatrix"]) == {"rows": 72, "tensors": 5}
    # the imatrix lowers the error where it matters: output error on the calibration data
    feeds = {"input_ids": ids}
    (flt,) = run_float(model, feeds)
    err = {p: np.linalg.norm(run_quantized(p, feeds)[0] - flt) for p in (plain, with_imx)}
    assert err[with_imx] < err[plain]


# ----------------------------------------------------------------------------- inspect


def test_inspect_totals_on_float_and_quantized(tmp_path):
    model = tiny_decoder(layers=2, hidden=288, ffn=320, vocab=100)
    src = save(model, tmp_path / "in.onnx")
    info = inspect_model(src)
    assert len(info.layers) == 2 * 7 + 1 + 1 and {l.method for l in info.layers} == {"float32"}
    head = next(l for l in info.layers if l.role == "head")
    assert head.shared_with == "/model/embed_tokens/Gather" and head.nbytes == 0
    assert info.initializer_bytes == sum(np.prod(t.dims) * 4 for t in model.graph.initializer)
    assert info.ratio_to_float32 == pytest.approx(1.0)

    out = str(tmp_path / "out.onnx")
    report = quantize(src, out, recipe="q4_k_m", progress=False)
    qi = inspect_model(out)
    assert qi.layer_bytes == report.quantized_bytes
    assert qi.initializer_bytes == sum(t.raw_data.__len__() for t in load_model(out).graph.initializer)
    by_layer = {l.name: l for l in qi.layers}
    for l in report.layers:
        assert by_layer[l.name].method == l.method
        assert by_layer[l.name].nbytes == l.nbytes
        assert by_layer[l.name].bits_per_weight == pytest.approx(l.bits_per_weight)
    assert qi.ratio_to_float32 == pytest.approx(info.initializer_bytes / qi.initializer_bytes)
    assert qi.metadata["onnxq.version"]
