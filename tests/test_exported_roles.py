"""Roles and block indices come from the graph's structure: on every exported fixture the
linear layers are q k v o gate up down (qkv where the exporter fused them) per block, in
order, whatever the exporter named them — also after every name in the graph is replaced
by a meaningless one — so recipes place their types on exported graphs as on the zoo's."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graph_fixtures import ENCODERS, FIXTURES, LLMS, path
from onnxq.fused_ops import unfuse_weights
from onnxq.modelio import ensure_node_names
from onnxq.recipe import get_preset, plan
from onnxq.sites import find_sites

LLAMA_BLOCK = ["q", "k", "v", "o", "gate", "up", "down"]
BERT_BLOCK = ["q", "k", "v", "o", "up", "down"]
EXPECTED = {
    "optimum-smollm2": LLAMA_BLOCK * 2 + ["head"],
    "dynamo-smollm2": LLAMA_BLOCK * 2 + ["head"],
    "genai-smollm2": ["qkv", "o", "gate", "up", "down"] * 2 + ["head"],
    "optimum-minilm": BERT_BLOCK * 2,
    "dynamo-minilm": BERT_BLOCK * 2 + ["other"],  # the pooler (Gemm + Tanh) belongs to no block
    "ortopt-minilm": BERT_BLOCK * 2,  # q, k, v out of the fused Attention
}


def _model(name: str, load_data: bool = False) -> onnx.ModelProto:
    model = onnx.load(path(name), load_external_data=load_data)
    ensure_node_names(model)
    unfuse_weights(model, None if load_data else path(name).rsplit("/", 1)[0])
    return model


def _scramble(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node, initializer and inner tensor renamed ``t17`` / ``n42``: names say nothing."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {""}
    names = {}

    def new(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in g.initializer:
        t.name = new(t.name)
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        node.input[:] = [new(x) for x in node.input]
        node.output[:] = [new(x) for x in node.output]
    for vi in g.value_info:
        vi.name = new(vi.name)
    return out


def _roles(model: onnx.ModelProto):
    analysis = find_sites(model)
    return [s.role for s in analysis.linear], [s.layer for s in analysis.linear], analysis.num_layers


@pytest.mark.parametrize("name", FIXTURES)
def test_roles_and_blocks_of_every_exported_linear_layer(name):
    roles, layers, depth = _roles(_model(name))
    assert roles == EXPECTED[name]
    assert depth == 2
    per_block = len(EXPECTED[name]) // 2
    block_layers = [l for r, l in zip(roles, layers) if r not in ("head", "other")]
    assert block_layers == [0] * per_block + [1] * per_block
    assert all(l is None for r, l in zip(roles, layers) if r in ("head", "other"))


@pytest.mark.parametrize("name", FIXTURES)
def test_roles_survive_meaningless_names(name):
    model = _model(name, load_data=True)
    assert _roles(_scramble(model)) == _roles(model)


def _methods(name: str, preset: str):
    analysis = find_sites(_model(name))
    by_site = {s.name: (s.role, s.layer) for s in analysis.linear}
    by_site.update({e.name: ("embedding", None) for e in analysis.embeddings})
    return [(by_site[d.site], d.method.label) for d in plan(analysis, get_preset(preset)).decisions]


def test_llama_cpp_mix_places_q6_k_by_structure_on_every_llm_export():
    # use_more_bits(i, 2) holds for block 1 only: its v and down get Q6_K, as the head and table
    optimum = _methods("optimum-smollm2", "q4_k_m")
    assert optimum == _methods("dynamo-smollm2", "q4_k_m")  # names val_82 ... select the same
    q6 = sorted(site for site, method in optimum if method == "Q6_K")
    assert q6 == [("down", 1), ("embedding", None), ("head", None), ("v", 1)]
    genai = dict(_methods("genai-smollm2", "q4_k_m"))
    assert genai[("qkv", 0)] == "Q5_K" and genai[("qkv", 1)] == "Q6_K" and genai[("down", 1)] == "Q6_K"


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_recipe_selects_value_projections_by_structure(name):
    methods = _methods(name, "encoder-q6")
    assert sorted(site for site, m in methods if m == "Q8_0") == [("v", 0), ("v", 1)]


def test_llm_exports_have_a_tied_head():
    for name in LLMS:
        analysis = find_sites(_model(name))
        (table,) = [e for e in analysis.embeddings if e.N == 1024]
        head = [s for s in analysis.linear if s.role == "head"]
        assert table.tied_heads == (head[0].name,) and head[0].weight_shared


def test_a_classifier_after_the_pooler_is_no_mlp():
    """pooler -> Tanh -> classifier reads like up -> act -> down, but starts at no norm."""
    model = _model("dynamo-minilm")
    tanh = next(n for n in model.graph.node if n.op_type == "Tanh")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((64, 3), np.float32), "val_999"))
    model.graph.node.append(onnx.helper.make_node("MatMul", [tanh.output[0], "val_999"], ["scores"],
                                                  name="node_linear_99"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, None))
    roles, layers, _ = _roles(model)
    assert roles == BERT_BLOCK * 2 + ["other", "other"] and layers[-2:] == [None, None]
