"""Quantizing the exported fixtures with default settings, calibrated from token ids only:
every weight is quantized whatever carries it (a table read through Transpose shares the
head's blocks, the optimizer's fused BERT is opened up), so the exports of one set of
weights give the same quantized model whatever the exporter made of the graph; SmoothQuant
folds into the exporter's norms where that is legal."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxq
from graph_fixtures import ENCODERS, LLMS, feeds, path, rel_err, run
from onnxq.inspect_model import inspect_model
from onnxq.smoothquant.step import smoothquant_recipe

pytestmark = pytest.mark.slow  # eight quantize runs of the fixtures (a few seconds each)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _quantize_all(names, tmp_path, qtype, mode=None):
    out = {}
    for name in names:
        target = tmp_path / name / "model.onnx"
        target.parent.mkdir()
        report = onnxq.quantize(path(name), target, type=qtype, mode=mode, progress=False)
        out[name] = (str(target), report)
    return out


@pytest.mark.parametrize("names, qtype, output", [(LLMS, "q4_k", "logits"), (ENCODERS, "q6_k", "last_hidden_state")],
                         ids=["smollm2-q4_k", "minilm-q6_k"])
def test_every_export_of_the_same_weights_quantizes_to_the_same_model(names, qtype, output, tmp_path):
    # exact mode: the auto mode measures a fused QKV (onnxruntime-genai) as one layer and may give it
    # another mode than the three separate projections get, which is a different model on purpose
    done = _quantize_all(names, tmp_path, qtype, mode="exact")
    # the same token ids for each (feeds synthesizes what else each export takes)
    outs = {name: run(q, feeds(name, batch=2, seq=8, seed=4))[output] for name, (q, _) in done.items()}
    want = run(path(names[0]), feeds(names[0], batch=2, seq=8, seed=4))[output]
    first = outs[names[0]]
    for name, got in outs.items():
        assert rel_err(got, first) < 1e-4, name  # same blocks, other graph around them
        assert _cosine(got, want) > (0.99 if qtype == "q4_k" else 0.998), name
    params = {name: r.quantized_params for name, (_, r) in done.items()}
    if qtype == "q4_k":  # every export has all of its weights quantized
        assert len(set(params.values())) == 1, params
    else:  # dynamo's BertModel also has the pooler (64 x 64)
        assert params["optimum-minilm"] == params["ortopt-minilm"] == params["dynamo-minilm"] - 64 * 64, params
    for name, (q, report) in done.items():
        assert all(l.method == qtype.upper() for l in report.layers), name
        # onnxq inspect reads the same roles and blocks off the quantized graph's structure
        seen = [(l.role, l.layer) for l in inspect_model(q).layers]
        assert seen == [(l.role, l.layer) for l in report.layers], name
        assert not [s for s in report.skipped if "float" in s.reason and s.op_type != "GroupQueryAttention"], name


def test_genai_table_read_through_transpose_shares_the_heads_blocks(tmp_path):
    out = tmp_path / "genai.onnx"
    report = onnxq.quantize(path("genai-smollm2"), out, type="q4_k", progress=False)
    model = onnx.load(out, load_external_data=False)
    gather = [n for n in model.graph.node if n.op_type == "GgmlGather"]
    head = [n for n in model.graph.node if n.op_type == "GgmlMatMul" and n.output[0] == "logits"]
    assert len(gather) == 1 and len(head) == 1 and gather[0].input[0] == head[0].input[1]
    assert not [n for n in model.graph.node if n.op_type in ("Transpose", "Gather") and "embed_tokens" in n.name]
    (emb,) = [l for l in report.layers if l.kind == "embedding"]
    (lm_head,) = [l for l in report.layers if l.role == "head"]
    assert lm_head.shared_with == emb.name and lm_head.nbytes == 0 and emb.nbytes == 1024 * 66
    # the only float initializers left are the norms and the rotary caches (2 x 2048 x 8)
    floats = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert floats == 5 * 96 + 2 * 2048 * 8


@pytest.mark.parametrize("name, folds", [
    ("genai-smollm2", {"qkv": {"norm:SimplifiedLayerNormalization", "norm:SkipSimplifiedLayerNormalization"},
                       "gate": {"norm:SkipSimplifiedLayerNormalization"}, "up": {"norm:SkipSimplifiedLayerNormalization"}}),
    ("ortopt-minilm", {"q": {"explicit-mul"}, "k": {"explicit-mul"}, "v": {"explicit-mul"}, "up": {"explicit-mul"}}),
])
def test_smoothquant_from_token_ids_folds_into_the_exporters_norms_where_legal(name, folds, tmp_path):
    rng = np.random.default_rng(0)
    calib = [{"input_ids": rng.integers(3, 1024, (2, 32)).astype(np.int64)} for _ in range(4)]
    out = tmp_path / "sq.onnx"
    report = onnxq.quantize(path(name), out, recipe=smoothquant_recipe(), calibration_data=calib, progress=False)
    sites = [s for s in report.smoothquant.sites if s.quantized]
    for role, kinds in folds.items():
        assert {s.fold for s in sites if s.role == role} == kinds, role
    if name == "ortopt-minilm":  # post-norm: the norm output also feeds the residual
        notes = [n for n in report.smoothquant.notes if "explicit Mul" in n and "also feeds SkipLayerNormalization" in n]
        assert len(notes) == 4
    x = feeds(name, batch=2, seq=9, seed=7)
    key = "logits" if "smollm2" in name else "last_hidden_state"
    assert _cosine(run(str(out), x)[key], run(path(name), x)[key]) > 0.99
