"""Portable export (issue 11): GGML blocks re-encoded as MatMulNBits / GatherBlockQuantized or
blocked DequantizeLinear, run by stock onnxruntime with no onnxq library.

The reference is onnxq's one dequantizer (QuantizedGGMLTensor.dequantize, ggml's arithmetic
bit for bit). Portable weights are read back through the operators themselves: a linear
layer run on the identity matrix returns its weight (each output is 1 * w plus zeros, exact
but for the sign of zero), an embedding gathered at every row returns its table (bit for bit)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxq
from graph_factory import finish, tiny_decoder
from onnxq.errors import ModelError, OnnxqError
from onnxq.formats import AUTO, GGMLQuantType
from onnxq.ggml.codec import GGMLQuantizer
from onnxq.ggml.nodes import make_ggml_gather_node, make_ggml_matmul_node, onnxq_opset
from onnxq.ggml.portable import row_segments
from onnxq.ggml.portable_ops import float_zero_points
from onnxq.ggml.portable_rewrite import convert_model
from onnxq.inspect_model import inspect_model
from onnxq.modelio import tensor_nbytes
from onnxq.runtime import InferenceSession

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
MIN_TYPES = {"Q4_1", "Q4_K", "Q5_1", "Q5_K"}
OPS = ["matmulnbits", "qdq"]


def _widths(qtype: str):
    """A width with K-quant tail blocks (576 = 2 x 256 + 64), a multiple of 256, and for
    the 32-element types one whose last block is padded (100)."""
    return (576, 512) if GGMLQuantType.parse(qtype).is_k_quant else (576, 100)


def _blocks(qtype: str, N: int, K: int, seed: int = 0):
    w = (np.random.default_rng(seed).standard_normal((N, K)) * 0.05).astype(np.float32)
    return GGMLQuantizer(qtype, tail_type=AUTO).quantize(w)


def _save(model: onnx.ModelProto, path) -> str:
    model.ir_version = 10
    onnx.save(model, str(path))
    return str(path)


def _linear_model(q, path) -> str:
    N, K = q.shape
    g = make_ggml_matmul_node("layer", "X", "Y", q.data, quant_type=q.qtype.name, K=K, N=N, mode="exact",
                              tail_type=q.tail_type.name if q.tail_type else None)
    m = finish([g.node], [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", K])],
               [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], g.initializers)
    m.opset_import.append(onnxq_opset())
    return _save(m, path)


def _gather_model(q, path) -> str:
    N, K = q.shape
    g = make_ggml_gather_node("embed", "ids", "Y", q.data, quant_type=q.qtype.name, K=K, N=N,
                              tail_type=q.tail_type.name if q.tail_type else None)
    m = finish([g.node], [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
               [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "S", K])], g.initializers)
    m.opset_import.append(onnxq_opset())
    return _save(m, path)


def _stock_session(path, optimize: bool = True, accuracy_level: str = "0") -> ort.InferenceSession:
    """A plain onnxruntime session: no onnxq library registered. ``optimize=False`` runs the
    operators as the file defines them (no DQ -> MatMulNBits fusion)."""
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", accuracy_level)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _min_bound(q) -> np.ndarray:
    """Per element: one float32 ulp of the block's min plus one of the weight (the float
    zero point's one rounding, then the op's subtraction)."""
    segs = row_segments(q.data, q.qtype.name, q.shape[1], q.tail_type.name if q.tail_type else None)
    ref = q.dequantize()
    mins = [s.codes.mins if s.codes.mins is not None else np.zeros_like(s.codes.scales) for s in segs]
    full = np.concatenate([np.repeat(m, s.codes.group, axis=1)[:, :s.length] for m, s in zip(mins, segs)], axis=1)
    return np.spacing(np.abs(full)) + np.spacing(np.abs(ref))


# ----------------------------------------------------------------------------- codes


@pytest.mark.parametrize("qtype", TYPES)
def test_codes_dequantize_to_ggml_bit_for_bit(qtype):
    for K in _widths(qtype):
        q = _blocks(qtype, 9, K, seed=K)
        segs = row_segments(q.data, qtype, K, q.tail_type.name if q.tail_type else None)
        got = np.concatenate([s.codes.dequantize()[:, :s.length] for s in segs], axis=1)
        assert got.view(np.uint32).tolist() == q.dequantize().view(np.uint32).tolist(), (qtype, K)
        assert all(s.codes.codes.max() < (1 << s.codes.bits) for s in segs)


def test_float_zero_points_reproduce_the_min_within_one_rounding():
    for qtype in ("Q4_1", "Q4_K"):
        q = _blocks(qtype, 64, 512, seed=3)
        c = row_segments(q.data, qtype, 512, None)[0].codes
        z = float_zero_points(c.scales, c.mins)
        assert np.mean(z * c.scales == -c.mins) > 0.8  # most blocks exact after the ulp nudge
        assert np.all(np.abs(z * c.scales + c.mins) <= np.spacing(np.abs(c.mins)))
    # a block with scale 0 and a min: no zero point expresses it
    assert float_zero_points(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)) is None


# ----------------------------------------------------------------------------- per-layer weights


def _converted_layers(qtype, ops, N, tmp_path, make_model, float_zp=False):
    """(K, the GGML blocks, a plain session on the converted one-layer model) per width."""
    for K in _widths(qtype):
        q = _blocks(qtype, N, K, seed=K + N)
        src = make_model(q, tmp_path / f"g{K}.onnx")
        convert_model(src, tmp_path / f"p{K}.onnx", ops=ops, float_zero_points=float_zp, progress=False)
        # optimize=False: the operators as the file defines them (no DQ -> MatMulNBits fusion)
        yield K, q, _stock_session(tmp_path / f"p{K}.onnx", optimize=False)


@pytest.mark.parametrize("ops", OPS)
@pytest.mark.parametrize("qtype", TYPES)
def test_portable_linear_weights_equal_ggml(qtype, ops, tmp_path):
    for K, q, session in _converted_layers(qtype, ops, 40, tmp_path, _linear_model):
        got = session.run(None, {"X": np.eye(K, dtype=np.float32)})[0].T
        # equal values; reading through a GEMM turns -0.0 into 0.0 (1 * -0.0 + 0 * ... = +0)
        assert np.array_equal(got, q.dequantize()), (qtype, ops, K)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_K"])
def test_float_zero_point_weights_within_one_rounding(qtype, tmp_path):
    for K, q, session in _converted_layers(qtype, "matmulnbits", 40, tmp_path, _linear_model, float_zp=True):
        got = session.run(None, {"X": np.eye(K, dtype=np.float32)})[0].T
        ref = q.dequantize()
        assert np.all(np.abs(got - ref) <= _min_bound(q)), (qtype, K, float(np.abs(got - ref).max()))
        m = onnx.load(str(tmp_path / f"p{K}.onnx"))
        floats = {t.name for t in m.graph.initializer if t.data_type == TensorProto.FLOAT}
        assert any(n.op_type == "MatMulNBits" and len(n.input) == 4 and n.input[3] in floats for n in m.graph.node)


@pytest.mark.parametrize("ops", OPS)
@pytest.mark.parametrize("qtype", TYPES)
def test_portable_embedding_rows_equal_ggml(qtype, ops, tmp_path):
    ids = np.arange(24, dtype=np.int64)[::-1].reshape(2, 12).copy()
    for K, q, session in _converted_layers(qtype, ops, 24, tmp_path, _gather_model):
        got = session.run(None, {"ids": ids})[0]
        ref = q.dequantize()[ids]
        assert got.shape == ref.shape
        assert got.view(np.uint32).tolist() == ref.view(np.uint32).tolist(), (qtype, ops, K)


# ----------------------------------------------------------------------------- whole models


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoder")
    return _save(tiny_decoder(vocab=VOCAB, hidden=320, ffn=96, layers=1, seed=5), folder / "float.onnx")


VOCAB = 80


def _ids():
    return np.random.default_rng(7).integers(0, VOCAB, (2, 6)).astype(np.int64)


@pytest.mark.parametrize("qtype", TYPES)
def test_portable_model_matches_exact_mode(decoder, qtype, tmp_path):
    ggml = tmp_path / "ggml.onnx"
    onnxq.quantize(decoder, ggml, type=qtype, mode="exact", progress=False)
    ref = InferenceSession(str(ggml)).run(None, {"input_ids": _ids()})[0]
    for ops in OPS:
        out = tmp_path / f"{ops}.onnx"
        report = convert_model(ggml, out, ops=ops, progress=False)
        got = _stock_session(out).run(None, {"input_ids": _ids()})[0]
        scale = float(np.abs(ref).max())
        assert np.abs(got - ref).max() <= 2e-5 * scale, (qtype, ops, float(np.abs(got - ref).max()), scale)
        assert {l.name for l in report.layers} >= {"/model/embed_tokens/Gather", "/lm_head/MatMul"}
        m = onnx.load(str(out))
        assert not any(n.domain == "onnxq" for n in m.graph.node)
        assert not any(o.domain == "onnxq" for o in m.opset_import)


def test_recipe_mixing_types_converts_per_layer(decoder, tmp_path):
    """q4_k_m gives layers different types (Q4_K, Q6_K, their tails): each converts on its own."""
    ggml = tmp_path / "ggml.onnx"
    report = onnxq.quantize(decoder, ggml, recipe="q4_k_m", mode="exact", progress=False)
    assert len({l.method for l in report.layers}) > 1
    ref = InferenceSession(str(ggml)).run(None, {"input_ids": _ids()})[0]
    for ops in OPS:
        out = tmp_path / f"{ops}.onnx"
        convert_model(ggml, out, ops=ops, progress=False)
        got = _stock_session(out).run(None, {"input_ids": _ids()})[0]
        assert np.abs(got - ref).max() <= 2e-5 * float(np.abs(ref).max()), ops


def test_tied_head_table_matmulnbits_shares_qdq_costs(decoder, tmp_path):
    """MatMulNBits and GatherBlockQuantized read one codes tensor (the head only adds its
    scales); QDQ stores the head [K, N] for the DQ -> MatMul fusion and the table's rows as
    8-bit codes for Gather (which takes no int4): two tables."""
    ggml = tmp_path / "ggml.onnx"
    onnxq.quantize(decoder, ggml, type="q4_0", mode="exact", progress=False)
    for ops, tables in (("matmulnbits", 1), ("qdq", 2)):
        out = tmp_path / f"{ops}.onnx"
        convert_model(ggml, out, ops=ops, progress=False)
        info = {l.name: l for l in inspect_model(out).layers}
        head, emb = info["/lm_head/MatMul"], info["/model/embed_tokens/Gather"]
        m = onnx.load(str(out))
        codes = [t for t in m.graph.initializer if VOCAB in t.dims
                 and tensor_nbytes(t) >= VOCAB * 320 // 2]  # the codes of a [VOCAB, 320] table
        assert len(codes) == tables, [(t.name, list(t.dims)) for t in codes]
        if ops == "matmulnbits":
            assert head.shared_with == "/model/embed_tokens/Gather" and head.nbytes == VOCAB * 10 * 4  # scales
        else:
            assert head.shared_with is None and emb.nbytes == VOCAB * 320 + VOCAB * 10 * 4  # 8-bit rows + scales


def test_portable_model_runs_without_onnxq(decoder, tmp_path):
    ggml = tmp_path / "ggml.onnx"
    onnxq.quantize(decoder, ggml, type="q4_k", mode="exact", progress=False)
    ref = InferenceSession(str(ggml)).run(None, {"input_ids": _ids()})[0]
    for ops in OPS:
        out = tmp_path / f"{ops}.onnx"
        convert_model(ggml, out, ops=ops, progress=False)
        np.save(tmp_path / "ids.npy", _ids())
        script = (
            "import sys, numpy as np, onnxruntime as ort\n"
            "so = ort.SessionOptions()\n"
            "so.add_session_config_entry('session.qdq_matmulnbits_accuracy_level', '0')\n"
            f"s = ort.InferenceSession({str(out)!r}, so, providers=['CPUExecutionProvider'])\n"
            f"y = s.run(None, {{'input_ids': np.load({str(tmp_path / 'ids.npy')!r})}})[0]\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'onnxq'], 'onnxq was imported'\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path), timeout=120)
        got = np.load(tmp_path / "y.npy")
        assert np.abs(got - ref).max() <= 2e-5 * float(np.abs(ref).max())


# ----------------------------------------------------------------------------- command line, errors, files


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_quantize_portable_cli_reports_both_sizes_and_inspect_shows_ops(decoder, tmp_path, capsys):
    from onnxq.cli import main

    before = _digest(decoder)
    out = tmp_path / "p.onnx"
    assert main(["quantize", str(decoder), "-o", str(out), "--type", "q6_k", "--mode", "exact", "--portable",
                 "--portable-ops", "qdq", "-q", "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "portable (qdq, stock onnxruntime ops)" in text and "the GGML file would be" in text
    report = json.load(open(tmp_path / "r.json"))
    assert report["portable_ops"] == "qdq" and report["ggml_bytes"] > 0
    assert report["output_bytes"] == os.path.getsize(out)
    assert _digest(decoder) == before
    assert sorted(os.listdir(tmp_path)) == ["p.onnx", "r.json"]  # the GGML temporary is gone
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "DequantizeLinear+MatMul 8-bit" in shown and "re-encoded Q6_K+Q8_0 blocks" in shown


def test_convert_cli_and_refusals(decoder, tmp_path, capsys):
    from onnxq.cli import main

    ggml = tmp_path / "ggml.onnx"
    onnxq.quantize(decoder, ggml, type="q5_k", mode="exact", progress=False)
    before = _digest(ggml)
    out = tmp_path / "p.onnx"
    assert main(["convert", str(ggml), "-o", str(out), "--portable"]) == 0
    text = capsys.readouterr().out
    assert "MatMulNBits" in text and "GatherBlockQuantized" in text and "portable (matmulnbits)" in text
    assert _digest(ggml) == before
    with pytest.raises(ModelError, match="not an onnxq GGML model"):
        convert_model(decoder, tmp_path / "x.onnx", progress=False)
    with pytest.raises(OnnxqError, match="--portable-ops must be one of"):
        convert_model(ggml, tmp_path / "x.onnx", ops="int3", progress=False)
    assert main(["convert", str(ggml), "-o", str(tmp_path / "x.onnx")]) != 0
    assert main(["quantize", str(decoder), "-o", str(tmp_path / "x.onnx"), "--type", "q4_0",
                 "--portable-ops", "qdq"]) != 0
    assert main(["quantize", str(decoder), "-o", str(tmp_path / "x.onnx"), "--method", "smoothquant",
                 "--calib", "none.npz", "--portable"]) != 0
    assert not os.path.exists(tmp_path / "x.onnx")


def test_failed_conversion_leaves_nothing(decoder, tmp_path, monkeypatch):
    import onnxq.ggml.portable_rewrite as rewrite

    ggml = tmp_path / "ggml.onnx"
    onnxq.quantize(decoder, ggml, type="q8_0", mode="exact", progress=False)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    real = rewrite.linear
    monkeypatch.setattr(rewrite, "linear", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_model(ggml, tmp_path / "p.onnx", external_data=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ggml.onnx"]


@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_K"])
def test_constant_block_with_zero_scale_stays_exact(qtype, tmp_path):
    """A block of equal weights has scale 0 and a min: no float zero point expresses it, so
    that layer takes the exact min term instead."""
    w = (np.random.default_rng(4).standard_normal((16, 512)) * 0.05).astype(np.float32)
    w[:, :32] = -0.7  # K-quants keep mins <= 0: a negative block
    q = GGMLQuantizer(qtype).quantize(w)
    c = row_segments(q.data, qtype, 512, None)[0].codes
    assert np.any((c.scales == 0) & (c.mins != 0))
    src = _linear_model(q, tmp_path / "g.onnx")
    report = convert_model(src, tmp_path / "p.onnx", float_zero_points=True, progress=False)
    assert report.layers[0].notes == []  # no float zero point
    got = _stock_session(tmp_path / "p.onnx", optimize=False).run(None, {"X": np.eye(512, dtype=np.float32)})[0].T
    assert np.array_equal(got, q.dequantize())


def test_accuracy_level_option(decoder, tmp_path):
    """--accuracy-level 4 writes int8-activation MatMulNBits nodes: close to exact mode, not
    equal; it is refused for qdq (a session option there) and out of range."""
    ggml = tmp_path / "ggml.onnx"
    onnxq.quantize(decoder, ggml, type="q8_0", mode="exact", progress=False)
    ref = InferenceSession(str(ggml)).run(None, {"input_ids": _ids()})[0]
    out = tmp_path / "acc4.onnx"
    convert_model(ggml, out, accuracy_level=4, progress=False)
    levels = {a.i for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    got = _stock_session(out).run(None, {"input_ids": _ids()})[0]
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert 0 < rel < 0.05, rel
    for kwargs in ({"ops": "qdq", "accuracy_level": 4}, {"accuracy_level": 7}):
        with pytest.raises(ModelError, match="accuracy_level"):
            convert_model(ggml, tmp_path / "x.onnx", progress=False, **kwargs)
    assert not os.path.exists(tmp_path / "x.onnx")
