"""onnxq eval on the real zoo models (SmolLM2-135M, all-MiniLM-L6-v2): self-comparison is
exact, an 8-bit-rounded copy shows small non-zero differences. Short data keeps them quick."""
import json

import onnx
import pytest

from eval_toys import rounded_8bit
from onnxq.cli import main
from onnxq.evaluate import DEFAULT_CORPUS_SHA256, evaluate

zoo = pytest.importorskip("onnxq.zoo")
pytestmark = pytest.mark.slow


def _ensure(name):
    try:
        return zoo.ensure(name, progress=False)
    except zoo.CheckpointNotFoundError as exc:
        pytest.skip(f"checkpoint package not installed: {exc}")


def _rounded_copy(path, out):
    onnx.save(rounded_8bit(onnx.load(str(path))), str(out))
    return out


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    path = _ensure("smollm2-135m")
    return path, _rounded_copy(path, tmp_path_factory.mktemp("smollm") / "smollm2-r8.onnx")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    path = _ensure("all-minilm-l6-v2")
    return path, _rounded_copy(path, tmp_path_factory.mktemp("minilm") / "minilm-r8.onnx")


def test_smollm2_self_8bit_and_kv_variant(smollm):
    ref, rounded = smollm
    kv = _ensure("smollm2-135m-kv")
    report = evaluate(ref, [ref, rounded, kv], ctx=128, max_tokens=256, progress=False)
    assert report.task == "lm" and report.settings["tokenizer"] == "onnxq.zoo:smollm2-135m"
    d = report.data
    assert (d["corpus_sha256"], d["tokens"], d["windows"], d["predicted_tokens"]) == (DEFAULT_CORPUS_SHA256, 256, 2, 254)
    assert d["corpus_tokens"] == 12660 and d["vocab_size"] == 49152
    ppl = report.reference.metrics["perplexity"]
    # a 135M model on English technical prose: far better than chance (49152), not perfect
    assert 5 < ppl < 60
    same, r8, kv_m = (c.metrics for c in report.candidates)
    assert same["kl_divergence"] == 0.0 and same["top1_agreement"] == 1.0 and same["perplexity"] == ppl
    assert 1e-5 < r8["kl_divergence"] < 0.05
    assert 0.85 < r8["top1_agreement"] < 1.0
    assert 0 < abs(r8["perplexity"] - ppl) / ppl < 0.05
    # the KV-cache export with an empty past: same weights, another graph, float rounding only
    assert kv_m["kl_divergence"] < 1e-6 and kv_m["top1_agreement"] == 1.0
    assert kv_m["perplexity"] == pytest.approx(ppl, rel=1e-4)


def test_minilm_self_and_8bit_through_the_cli(minilm, capsys):
    ref, rounded = minilm
    code = main(["eval", str(ref), str(ref), str(rounded), "--json", "--quiet", "--batch-size", "32"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["task"] == "encoder"
    assert report["settings"]["tokenizer"] == "onnxq.zoo:all-minilm-l6-v2"
    assert report["data"]["sentence_count"] == 64 and report["data"]["embedding_dim"] == 384
    same, r8 = report["candidates"]
    assert same["cosine_mean"] == pytest.approx(1.0, abs=1e-12) and same["relative_error"] == 0.0
    assert 0.99 < r8["cosine_min"] <= r8["cosine_mean"] < 1.0 - 1e-7
    assert 1e-4 < r8["relative_error"] < 0.1
