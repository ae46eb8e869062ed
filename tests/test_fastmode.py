"""The numpy simulation of fast mode's activation rounding (onnxq.ggml.fastmode) against
onnxruntime running GgmlMatMul in fast mode, on real activations of SmolLM2."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxq.ggml.codec import GGMLQuantizer
from onnxq.ggml.fastmode import round_activations, round_blocks
from onnxq.ggml.nodes import make_ggml_matmul_node

from ops_testlib import make_model, session, vinfo


def test_round_blocks_by_hand():
    x = np.array([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    out = round_blocks(x, 4)
    d = np.float32(2.0) / np.float32(127.0)
    q = np.rint(x[0] * (np.float32(127.0) / np.float32(2.0)))
    assert np.array_equal(out[0], (q * d).astype(np.float32))
    assert q.tolist() == [64.0, -127.0, 32.0, 0.0]  # 63.5 rounds half to even
    assert np.array_equal(out[1], np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="whole number of 4-element blocks"):
        round_blocks(np.zeros((1, 6), np.float32), 4)


def test_every_type_rounds_32_element_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 576)).astype(np.float32)
    x[:, 5] = 50.0  # an outlier in the first 32-element block only
    y = round_activations(x, "Q6_K", "Q8_0")
    assert np.array_equal(y, round_blocks(x, 32))
    # the outlier coarsens its own 32 elements, not its 256-element super-block (ggml's Q8_K would)
    err = np.abs(y - x)
    assert err[:, :32].max() > 5 * err[:, 32:256].max()
    assert np.array_equal(round_activations(x[:, :512], "Q4_K"), round_activations(x[:, :512], "Q4_0"))
    # K not a multiple of 32 pads with zeros
    z = round_activations(x[:, :70], "Q4_0")
    assert z.shape == (3, 70)
    assert np.array_equal(z[:, 64:], round_blocks(np.pad(x[:, 64:70], ((0, 0), (0, 26))), 32)[:, :6])


def _fast_op_output(x: np.ndarray, w: np.ndarray, qtype: str, tail) -> tuple:
    """(onnxruntime fast-mode output, the simulation's output) of X @ W for W [K, N]."""
    K, N = w.shape
    q = GGMLQuantizer(qtype, tail_type=tail, num_threads=1).quantize(np.ascontiguousarray(w.T))
    made = make_ggml_matmul_node("mm", "X", "Y", q.data, quant_type=qtype, K=K, N=N,
                                 tail_type=q.tail_type.name if q.tail_type else None, mode="fast")
    model = make_model([made.node], [vinfo("X", TensorProto.FLOAT, [None, K])], [vinfo("Y")], made.initializers)
    got = session(model).run(None, {"X": x})[0]
    sim = round_activations(x, qtype, q.tail_type).astype(np.float64) @ q.dequantize().T.astype(np.float64)
    return got, sim, x.astype(np.float64) @ q.dequantize().T.astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("qtype,site", [
    ("Q4_0", "/model/layers.3/mlp/down_proj/MatMul"), ("Q4_1", "/model/layers.3/self_attn/q_proj/MatMul"),
    ("Q5_1", "/model/layers.3/mlp/gate_proj/MatMul"), ("Q8_0", "/model/layers.0/mlp/down_proj/MatMul"),
    ("Q4_K", "/model/layers.3/self_attn/o_proj/MatMul"), ("Q6_K", "/model/layers.0/mlp/down_proj/MatMul"),
    ("Q5_K", "/model/layers.3/mlp/down_proj/MatMul"),
])
def test_simulation_matches_the_op_on_real_activations(qtype, site, smollm2_rows):
    x, w = smollm2_rows[site]
    got, sim, exact = _fast_op_output(x, w, qtype, "auto")
    scale = np.abs(exact).max()
    # the op and the simulation agree to float summation order ...
    assert np.abs(got - sim).max() < 2e-5 * scale
    # ... far closer than fast mode is to exact mode, so the simulation measures fast mode's cost
    assert np.abs(got - sim).max() < 0.02 * np.abs(exact - sim).max()


@pytest.fixture(scope="module")
def smollm2_rows():
    """{site: (64 activation rows, float weight [K, N])} of a few SmolLM2 layers."""
    from onnxq import zoo
    from onnxq.calibrate import calibrate
    from onnxq.modelio import load_model, model_dir
    from onnxq.sites import ModelGraph, find_sites

    path = str(zoo.ensure("smollm2-135m", progress=False))
    model = load_model(path)
    sites = {s.name: s for s in find_sites(model).linear}
    wanted = ["/model/layers.3/mlp/down_proj/MatMul", "/model/layers.3/self_attn/q_proj/MatMul",
              "/model/layers.3/mlp/gate_proj/MatMul", "/model/layers.0/mlp/down_proj/MatMul",
              "/model/layers.3/self_attn/o_proj/MatMul"]
    tok = zoo.load_tokenizer("smollm2-135m")
    ids = tok.encode("The quick brown fox jumps over the lazy dog.\nimport numpy as np\nfor i in range(10):")
    stats = calibrate(model, [sites[n].input for n in wanted], [{"input_ids": np.asarray([ids], np.int64)}],
                      sample_rows=64, base_dir=model_dir(path), progress=False)
    graph = ModelGraph(model)
    return {n: (stats[sites[n].input].samples, np.asarray(graph.constant_value(sites[n].weight, model_dir(path)),
                                                          np.float32)) for n in wanted}
