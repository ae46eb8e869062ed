"""Small synthetic ONNX graphs shaped like real exports, for analysis and pass tests."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9


def finish(nodes, inputs, outputs, inits, name="test") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def tiny_decoder(vocab=64, hidden=32, ffn=48, layers=2, seed=0, tied=True) -> onnx.ModelProto:
    """Gather embedding, per layer q/k/v/o + gate/up/down MatMuls ([in, out] weights,
    HF-style names), attention scores as activation x activation MatMul, tied head
    through Transpose of the embedding table."""
    rng = np.random.default_rng(seed)
    inits: List[TensorProto] = []
    nodes = []

    def weight(name, k, n):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), name))
        return name

    table = "model.embed_tokens.weight"
    inits.append(numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), table))
    nodes.append(helper.make_node("Gather", [table, "input_ids"], ["h0"], name="/model/embed_tokens/Gather"))
    h = "h0"
    for i in range(layers):
        p = f"/model/layers.{i}"
        w = f"model.layers.{i}"
        outs = {}
        for proj in ("q", "k", "v"):
            nodes.append(
                helper.make_node("MatMul", [h, weight(f"{w}.self_attn.{proj}_proj.weight", hidden, hidden)],
                                 [f"{p}/{proj}"], name=f"{p}/self_attn/{proj}_proj/MatMul")
            )
            outs[proj] = f"{p}/{proj}"
        nodes.append(helper.make_node("Transpose", [outs["k"]], [f"{p}/kT"], perm=[0, 2, 1], name=f"{p}/self_attn/Transpose"))
        nodes.append(helper.make_node("MatMul", [outs["q"], f"{p}/kT"], [f"{p}/scores"], name=f"{p}/self_attn/MatMul"))
        nodes.append(helper.make_node("Softmax", [f"{p}/scores"], [f"{p}/probs"], axis=-1, name=f"{p}/self_attn/Softmax"))
        nodes.append(helper.make_node("MatMul", [f"{p}/probs", outs["v"]], [f"{p}/ctx"], name=f"{p}/self_attn/MatMul_1"))
        nodes.append(helper.make_node("MatMul", [f"{p}/ctx", weight(f"{w}.self_attn.o_proj.weight", hidden, hidden)],
                                      [f"{p}/o"], name=f"{p}/self_attn/o_proj/MatMul"))
        nodes.append(helper.make_node("Add", [h, f"{p}/o"], [f"{p}/res1"], name=f"{p}/Add"))
        nodes.append(helper.make_node("MatMul", [f"{p}/res1", weight(f"{w}.mlp.gate_proj.weight", hidden, ffn)],
                                      [f"{p}/gate"], name=f"{p}/mlp/gate_proj/MatMul"))
        nodes.append(helper.make_node("MatMul", [f"{p}/res1", weight(f"{w}.mlp.up_proj.weight", hidden, ffn)],
                                      [f"{p}/up"], name=f"{p}/mlp/up_proj/MatMul"))
        nodes.append(helper.make_node("Sigmoid", [f"{p}/gate"], [f"{p}/sig"], name=f"{p}/mlp/act/Sigmoid"))
        nodes.append(helper.make_node("Mul", [f"{p}/gate", f"{p}/sig"], [f"{p}/silu"], name=f"{p}/mlp/act/Mul"))
        nodes.append(helper.make_node("Mul", [f"{p}/silu", f"{p}/up"], [f"{p}/gu"], name=f"{p}/mlp/Mul"))
        nodes.append(helper.make_node("MatMul", [f"{p}/gu", weight(f"{w}.mlp.down_proj.weight", ffn, hidden)],
                                      [f"{p}/down"], name=f"{p}/mlp/down_proj/MatMul"))
        nodes.append(helper.make_node("Add", [f"{p}/res1", f"{p}/down"], [f"{p}/out"], name=f"{p}/Add_1"))
        h = f"{p}/out"
    if tied:
        nodes.append(helper.make_node("Transpose", [table], ["lm_head_w"], perm=[1, 0], name="/lm_head/Transpose"))
        nodes.append(helper.make_node("MatMul", [h, "lm_head_w"], ["logits"], name="/lm_head/MatMul"))
    else:
        nodes.append(helper.make_node("MatMul", [h, weight("lm_head.weight", hidden, vocab)], ["logits"], name="/lm_head/MatMul"))
    return finish(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        inits,
        name="tiny_decoder",
    )


def tiny_bert_layer(hidden=32, ffn=64, seed=1) -> onnx.ModelProto:
    """One BERT block: LayerNormalization, query/key/value MatMul + bias Add, attention
    output dense, intermediate dense + GELU (erf), output dense — optimum-style names."""
    rng = np.random.default_rng(seed)
    inits: List[TensorProto] = []
    nodes = []

    def linear(x, name, k, n, out):
        wname, bname = f"{name}.weight", f"{name}.bias"
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), wname))
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.1, bname))
        node_prefix = "/" + name.replace(".", "/").replace("layer/0", "layer.0")
        nodes.append(helper.make_node("MatMul", [x, wname], [out + "_mm"], name=f"{node_prefix}/MatMul"))
        nodes.append(helper.make_node("Add", [bname, out + "_mm"], [out], name=f"{node_prefix}/Add"))
        return out

    inits.append(numpy_helper.from_array(np.ones(hidden, np.float32), "ln.gamma"))
    inits.append(numpy_helper.from_array(np.zeros(hidden, np.float32), "ln.beta"))
    nodes.append(helper.make_node("LayerNormalization", ["x", "ln.gamma", "ln.beta"], ["ln"], axis=-1, epsilon=1e-12,
                                  name="/encoder/layer.0/LayerNorm"))
    q = linear("ln", "encoder.layer.0.attention.self.query", hidden, hidden, "q")
    k = linear("ln", "encoder.layer.0.attention.self.key", hidden, hidden, "k")
    v = linear("ln", "encoder.layer.0.attention.self.value", hidden, hidden, "v")
    nodes.append(helper.make_node("Transpose", [k], ["kT"], perm=[0, 2, 1], name="/encoder/layer.0/attention/self/Transpose"))
    nodes.append(helper.make_node("MatMul", [q, "kT"], ["s"], name="/encoder/layer.0/attention/self/MatMul"))
    nodes.append(helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="/encoder/layer.0/attention/self/Softmax"))
    nodes.append(helper.make_node("MatMul", ["p", v], ["ctx"], name="/encoder/layer.0/attention/self/MatMul_1"))
    o = linear("ctx", "encoder.layer.0.attention.output.dense", hidden, hidden, "o")
    i = linear(o, "encoder.layer.0.intermediate.dense", hidden, ffn, "i")
    nodes.append(helper.make_node("Erf", [i], ["erf"], name="/encoder/layer.0/intermediate/Erf"))
    d = linear("erf", "encoder.layer.0.output.dense", ffn, hidden, "y")
    return finish(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info(d, TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
        name="tiny_bert_layer",
    )


def gemm_model(trans_b: int, alpha=1.0, beta=1.0, bias_shape=(24,), seed=2) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    k, n = 16, 24
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "fc.weight")]
    inputs = ["x", "fc.weight"]
    if bias_shape is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "fc.bias"))
        inputs.append("fc.bias")
    node = helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta, name="/fc/Gemm")
    return finish(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        inits,
    )
