"""The GGML pass on the real models of onnxq.zoo (built once into the cache)."""
import numpy as np
import pytest

from onnxq.evaluate import evaluate
from onnxq.inspect_model import inspect_model
from onnxq.modelio import load_model
from onnxq import quantize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    from onnxq import zoo

    return str(zoo.ensure("all-minilm-l6-v2", progress=False))


@pytest.fixture(scope="module")
def smollm2():
    from onnxq import zoo

    return str(zoo.ensure("smollm2-135m", progress=False))


def test_minilm_types_and_encoder_presets(minilm, tmp_path):
    jobs = {"q8_0": dict(type="q8_0"), "q6_k": dict(type="q6_k"), "q5_0": dict(type="q5_0"),
            "encoder-q6": dict(recipe="encoder-q6"), "encoder-q5": dict(recipe="encoder-q5")}
    outs = []
    for label, kw in jobs.items():
        out = str(tmp_path / f"{label}.onnx")
        report = quantize(minilm, out, mode="exact", progress=False, **kw)
        assert report.output_bytes < report.input_bytes / 3
        outs.append(out)
    ev = evaluate(minilm, outs, progress=False)
    cos = {label: c.metrics["cosine_mean"] for label, c in zip(jobs, ev.candidates)}
    # measured: q8_0 0.99986, q6_k 0.99842, q5_0 0.99113, encoder-q6 0.9992, encoder-q5 0.997
    assert cos["q8_0"] > 0.9995
    assert cos["q6_k"] > 0.998
    assert cos["q5_0"] > 0.99
    assert cos["encoder-q6"] > 0.999
    assert cos["encoder-q5"] > 0.995
    assert cos["q8_0"] > cos["encoder-q6"] > cos["q6_k"] > cos["encoder-q5"] > cos["q5_0"]
    # MatMul + bias Add fused, three embedding tables as GgmlGather
    ops = [n.op_type for n in load_model(outs[0]).graph.node]
    assert ops.count("GgmlMatMul") == 36 and ops.count("GgmlGather") == 3


def test_smollm2_q5_k_m_tails_tied_table_quality(smollm2, tmp_path):
    out = str(tmp_path / "q5km.onnx")
    report = quantize(smollm2, out, recipe="q5_k_m", progress=False)
    assert report.recipe.name == "q5_k_m"
    layers = {l.name: l for l in report.layers}
    emb, head = layers["/model/embed_tokens/Gather"], layers["/lm_head/MatMul"]
    # the tied table is stored once, in Q6_K with Q8_0 tails (576 = 2 x 256 + 64)
    assert (emb.method, emb.tail_type, head.shared_with, head.nbytes) == ("Q6_K", "Q8_0", emb.name, 0)
    assert emb.nbytes == 49152 * (2 * 210 + 2 * 34)
    q = layers["/model/layers.10/self_attn/q_proj/MatMul"]
    assert (q.method, q.tail_type, q.nbytes) == ("Q5_K", "Q5_1", 576 * (2 * 176 + 2 * 24))
    down = layers["/model/layers.5/mlp/down_proj/MatMul"]  # use_more_bits(5, 30), K = 1536: no tail
    assert (down.method, down.tail_type, down.nbytes) == ("Q6_K", None, 576 * 6 * 210)
    assert {l.method for l in report.layers} == {"Q5_K", "Q6_K"}
    assert sum(l.method == "Q6_K" for l in report.layers) == 2 * 14 + 2
    info = inspect_model(out)
    assert info.layer_bytes == report.quantized_bytes
    assert 5.8 < report.bits_per_weight < 6.0
    ev = evaluate(smollm2, [out], max_tokens=512, progress=False)
    ppl0, ppl1 = ev.reference.metrics["perplexity"], ev.candidates[0].metrics["perplexity"]
    # measured (exact mode, 511 tokens): +2.6 % perplexity, 90.8 % top-1, KL 0.0177
    assert ppl1 / ppl0 - 1 < 0.05 and ev.candidates[0].metrics["top1_agreement"] > 0.88
    assert ev.candidates[0].metrics["kl_divergence"] < 0.03


def test_demo_command_on_minilm(minilm, tmp_path, capsys):
    import json

    from onnxq.cli import main

    assert main(["demo", "--model", "all-minilm-l6-v2", "--recipe", "encoder-q6", "--out-dir", str(tmp_path),
                 "--json", str(tmp_path / "demo.json"), "-q"]) == 0
    text = capsys.readouterr().out
    assert "size" in text and "quality" in text and "speed" in text and "cosine" in text
    numbers = json.loads((tmp_path / "demo.json").read_text())
    # encoder-q6: 0.99911 all exact; the auto default runs all 36 layers fast here, 0.99890
    assert numbers["cosine_mean"] > 0.9986 and numbers["quantized_bytes"] < numbers["float_bytes"] / 3
    assert (tmp_path / "all-minilm-l6-v2-encoder-q6.onnx").is_file()


def test_demo_command_on_smollm2_reports_decode_speed(smollm2, tmp_path, capsys):
    """The main job on the default model (short evaluation): size, quality, prefill time and
    token-by-token decoding of the KV-cache twin quantized with the same recipe."""
    import json

    from onnxq.cli import main

    assert main(["demo", "--max-tokens", "128", "--out-dir", str(tmp_path), "--json", str(tmp_path / "d.json"),
                 "-q"]) == 0
    text = capsys.readouterr().out
    assert "recipe q4_k_m" in text and "prefill" in text and "decode" in text and "tok/s" in text
    numbers = json.loads((tmp_path / "d.json").read_text())
    decode = numbers["decode"]
    assert decode["tokens"] == 32 and decode["float_tokens_per_second"] > 0 and decode["quantized_tokens_per_second"] > 0
    assert decode["text"].startswith(" Paris")  # the quantized model still answers
    assert (tmp_path / "smollm2-135m-q4_k_m-kv.onnx").is_file()
    # on 128 tokens q4_k_m costs +4.5 % in exact mode, +5.0 % with the auto default (whole corpus: +1.4 / +1.5 %)
    assert numbers["perplexity_quantized"] / numbers["perplexity_float"] - 1 < 0.07
