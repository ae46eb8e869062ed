import numpy as np
import onnxruntime as ort
import pytest

from onnxq.sites import ModelGraph, bias_vector, find_sites, infer_role, input_groups, layer_index, weight_matrix_kn
from graph_factory import gemm_model, tiny_bert_layer, tiny_decoder


def test_decoder_sites_roles_layers_and_tied_head():
    model = tiny_decoder(layers=3)
    analysis = find_sites(model)
    by_name = {s.name: s for s in analysis.linear}
    # 7 projections per layer + head; the two activation x activation MatMuls per layer are skipped
    assert len(analysis.linear) == 3 * 7 + 1
    act = [s for s in analysis.skipped if s.op_type == "MatMul"]
    assert len(act) == 6 and all("activation x activation" in s.reason for s in act)
    q = by_name["/model/layers.1/self_attn/q_proj/MatMul"]
    assert (q.role, q.layer, q.K, q.N, q.weight_transposed, q.bias) == ("q", 1, 32, 32, False, None)
    roles = sorted({s.role for s in analysis.linear})
    assert roles == ["down", "gate", "head", "k", "o", "q", "up", "v"]
    head = by_name["/lm_head/MatMul"]
    assert head.weight == "model.embed_tokens.weight" and head.weight_transposed
    assert (head.K, head.N) == (32, 64) and head.weight_shared
    assert head.nodes == ("/lm_head/Transpose", "/lm_head/MatMul")
    (emb,) = analysis.embeddings
    assert emb.tied_heads == ("/lm_head/MatMul",) and (emb.N, emb.K) == (64, 32)
    assert analysis.num_layers == 3
    groups = input_groups(analysis.linear)
    qkv = groups["h0"]
    assert sorted(s.role for s in qkv) == ["k", "q", "v"]


def test_bert_bias_fusion_and_roles():
    model = tiny_bert_layer()
    analysis = find_sites(model)
    roles = {s.name: s.role for s in analysis.linear}
    assert sorted(roles.values()) == ["down", "k", "o", "q", "up", "v"]
    for site in analysis.linear:
        assert site.bias is not None and site.bias.endswith(".bias")
        assert len(site.nodes) == 2 and site.nodes[1].endswith("/Add")
        assert site.layer == 0
    # the fused output is the Add's output, which is what downstream nodes consume
    q = next(s for s in analysis.linear if s.role == "q")
    assert q.output == "q"


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [(0, 1.0, 1.0, (24,)), (1, 0.5, 2.0, (1, 24)), (1, 1.0, 1.0, None)])
def test_gemm_weight_and_bias_match_onnxruntime(trans_b, alpha, beta, bias_shape):
    model = gemm_model(trans_b, alpha, beta, bias_shape)
    (site,) = find_sites(model).linear
    graph = ModelGraph(model)
    w = weight_matrix_kn(graph, site)
    b = bias_vector(graph, site)
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = x @ w + (b if b is not None else 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_gemm_trans_a_is_skipped_with_reason():
    model = gemm_model(0)
    for attr in model.graph.node[0].attribute:
        pass
    from onnx import helper

    model.graph.node[0].attribute.append(helper.make_attribute("transA", 1))
    analysis = find_sites(model)
    assert analysis.linear == [] and "transA=1" in analysis.skipped[0].reason


def test_weight_that_is_a_graph_input_is_not_a_site():
    from onnx import TensorProto, helper

    model = gemm_model(0)
    model.graph.input.append(helper.make_tensor_value_info("fc.weight", TensorProto.FLOAT, [16, 24]))
    analysis = find_sites(model)
    assert analysis.linear == [] and "graph input" in analysis.skipped[0].reason


@pytest.mark.parametrize(
    "names,role",
    [
        (("/model/layers.0/self_attn/q_proj/MatMul", "onnx::MatMul_123"), "q"),
        (("/encoder/layer.3/attention/output/dense/MatMul", "x"), "o"),
        (("/encoder/layer.3/output/dense/MatMul", "x"), "down"),
        (("/encoder/layer.3/intermediate/dense/MatMul", "x"), "up"),
        (("/transformer/h.2/attn/c_proj/MatMul", "x"), "o"),
        (("/transformer/h.2/mlp/c_proj/MatMul", "x"), "down"),
        (("/transformer/h.2/attn/c_attn/MatMul", "x"), "qkv"),
        (("/lm_head/MatMul", "x"), "head"),
        (("/something/MatMul", "x"), "other"),
    ],
)
def test_infer_role(names, role):
    assert infer_role(*names) == role


def test_layer_index():
    assert layer_index("/model/layers.12/mlp/down_proj/MatMul") == 12
    assert layer_index("/transformer/h.3/attn/c_attn/MatMul") == 3
    assert layer_index("encoder.layer.5.output.dense.weight") == 5
    assert layer_index("/lm_head/MatMul") is None
