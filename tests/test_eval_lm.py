"""Language-model evaluation on a toy causal LM: self-comparison is exact, an 8-bit-rounded
copy shows small non-zero differences, and perplexity matches an independent computation."""
import math

import numpy as np
import onnxruntime as ort
import pytest

from eval_toys import rounded_8bit, save, toy_lm, toy_lm_kv, unigram_log_probs, word_tokenizer
from onnxq.errors import ModelError, OnnxqError
from onnxq.evaluate import Corpus, DataError, default_corpus, evaluate
from onnxq.evaluate.lm import make_windows


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tok = word_tokenizer([default_corpus().text])
    bias = unigram_log_probs(tok, default_corpus().text)
    model = toy_lm(bias=bias)
    tok_path = root / "tokenizer.json"
    tok.save(str(tok_path))
    return {
        "ref": save(model, root / "ref.onnx"),
        "rounded": save(rounded_8bit(model), root / "rounded.onnx"),
        "other": save(toy_lm(seed=5), root / "other.onnx"),
        "kv": save(toy_lm_kv(bias=bias), root / "kv.onnx"),
        "tokenizer": tok,
        "tokenizer_path": tok_path,
        "root": root,
    }


def _independent_perplexity(path, tokenizer, text, ctx, max_tokens):
    """Plain onnxruntime + numpy, written without onnxq.evaluate's helpers."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:max_tokens]
    total, count = 0.0, 0
    for start in range(0, len(ids), ctx):
        window = ids[start : start + ctx]
        if len(window) < 2:
            continue
        logits = sess.run(None, {"input_ids": np.array([window], dtype=np.int64)})[0][0].astype(np.float64)
        for pos in range(len(window) - 1):
            row = logits[pos]
            m = row.max()
            total += (m + math.log(np.exp(row - m).sum())) - row[window[pos + 1]]
            count += 1
    return math.exp(total / count), count


def test_self_comparison_is_exact_and_reports_the_data(lm_files):
    report = evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer"], ctx=128,
                      max_tokens=1000, progress=False)
    assert report.task == "lm"
    assert report.settings["task_source"] == "onnxq.model.kind=causal-lm"
    cand = report.candidates[0].metrics
    assert cand["kl_divergence"] == 0.0 and cand["kl_max"] == 0.0
    assert cand["top1_agreement"] == 1.0
    assert cand["perplexity"] == report.reference.metrics["perplexity"]
    d = report.data
    assert d["corpus"] == "python-reference-prose"
    assert d["corpus_sha256"] == default_corpus().sha256
    # 1000 tokens in windows of 128: 7 full + one of 104; each window predicts n - 1 tokens
    assert (d["tokens"], d["windows"], d["predicted_tokens"], d["ctx"]) == (1000, 8, 992, 128)
    assert d["corpus_tokens"] > 1000
    assert d["vocab_size"] == 300


def test_perplexity_matches_an_independent_computation(lm_files):
    report = evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer"], ctx=100,
                      max_tokens=450, progress=False)
    expected, count = _independent_perplexity(lm_files["ref"], lm_files["tokenizer"], default_corpus().text, 100, 450)
    assert report.data["predicted_tokens"] == count == 450 - 5
    assert report.reference.metrics["perplexity"] == pytest.approx(expected, rel=1e-9)
    # random weights on top of unigram log-frequencies: better than uniform over 300 words
    assert 5 < expected < 300


def test_rounded_weights_show_a_small_nonzero_difference(lm_files):
    report = evaluate(lm_files["ref"], [lm_files["ref"], lm_files["rounded"], lm_files["other"]],
                      tokenizer=lm_files["tokenizer"], ctx=256, max_tokens=2048, progress=False)
    same, rounded, other = (c.metrics for c in report.candidates)
    ref_ppl = report.reference.metrics["perplexity"]
    assert same["kl_divergence"] == 0.0
    # 8-bit rounding: visible but small
    assert 1e-7 < rounded["kl_divergence"] < 1e-3
    assert 0.97 < rounded["top1_agreement"] < 1.0
    assert 0 < abs(rounded["perplexity"] - ref_ppl) / ref_ppl < 0.01
    # a different random model: large
    assert other["kl_divergence"] > 1.0 and other["top1_agreement"] < 0.2
    assert rounded["kl_divergence"] < other["kl_divergence"]
    for result in report.candidates:
        assert result.runs == report.data["windows"] == 8 and result.seconds > 0
        assert result.time_ratio == pytest.approx(result.seconds / report.reference.seconds)


def test_windows_and_max_tokens():
    ids = list(range(10))
    assert make_windows(ids, 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert make_windows(ids, 4, 9) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a 1-token tail predicts nothing
    assert make_windows(ids, 20, 5) == [[0, 1, 2, 3, 4]]
    with pytest.raises(DataError, match="at least 2"):
        make_windows(ids, 1, None)


def test_corpus_file_and_corpus_object(lm_files, tmp_path):
    text = "the object is a value . " * 60
    path = tmp_path / "mine.txt"
    path.write_text(text, encoding="utf-8")
    from_file = evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer_path"], corpus=path,
                         ctx=64, max_tokens=None, progress=False)
    from_obj = evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer"],
                        corpus=Corpus("mine.txt", text), ctx=64, max_tokens=None, progress=False)
    assert from_file.data["corpus"] == "mine.txt"
    assert from_file.data["corpus_sha256"] == from_obj.data["corpus_sha256"] == Corpus("x", text).sha256
    assert from_file.data["tokens"] == 360
    assert from_file.reference.metrics["perplexity"] == from_obj.reference.metrics["perplexity"]
    assert from_file.settings["tokenizer"] == str(lm_files["tokenizer_path"])


def test_empty_and_too_short_corpora(lm_files, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer"], corpus=empty, progress=False)
    with pytest.raises(DataError, match="no such file"):
        evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer"], corpus=tmp_path / "nope.txt",
                 progress=False)
    with pytest.raises(DataError, match="at least 2"):
        evaluate(lm_files["ref"], lm_files["ref"], tokenizer=lm_files["tokenizer"], corpus=Corpus("one", "object"),
                 progress=False)


def test_unknown_family_without_tokenizer_says_how_to_pass_one(lm_files):
    with pytest.raises(ModelError, match=r"toy-lm.*--tokenizer"):
        evaluate(lm_files["ref"], lm_files["ref"], progress=False)
    alone = lm_files["root"] / "alone"
    alone.mkdir(exist_ok=True)
    no_family = save(toy_lm(family=None), alone / "nofamily.onnx")
    with pytest.raises(ModelError, match=r"no onnxq.model.family metadata and there is no tokenizer.json.*--tokenizer"):
        evaluate(no_family, no_family, task="lm", progress=False)


def test_tokenizer_json_beside_an_exported_model_is_the_default(lm_files):
    no_family = save(toy_lm(family=None), lm_files["root"] / "exported.onnx")
    report = evaluate(no_family, no_family, task="lm", ctx=64, max_tokens=200, progress=False)
    assert report.settings["tokenizer"] == str(lm_files["tokenizer_path"])
    assert report.data["predicted_tokens"] > 100


def test_tokenizer_that_does_not_fit_the_model(lm_files, tmp_path):
    big = word_tokenizer([default_corpus().text], vocab=1000)
    with pytest.raises(ModelError, match="does not belong to this model"):
        evaluate(lm_files["ref"], lm_files["ref"], tokenizer=big, ctx=128, max_tokens=2000, progress=False)
    bad = tmp_path / "tok.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(OnnxqError, match="not a tokenizers JSON"):
        evaluate(lm_files["ref"], lm_files["ref"], tokenizer=bad, progress=False)


def test_vocabulary_mismatch_is_named(lm_files):
    small = save(toy_lm(vocab=200, family="toy-lm"), lm_files["root"] / "small.onnx")
    tok = word_tokenizer([default_corpus().text], vocab=200)
    with pytest.raises(ModelError, match="300 logits.*200"):
        evaluate(lm_files["ref"], small, tokenizer=tok, ctx=64, max_tokens=200, progress=False)


def test_kv_cache_model_is_fed_an_empty_past(lm_files):
    """A KV-cache export (attention_mask, position_ids, past_key_values.*) of the same
    network gives the same logits: KL 0 against the plain model."""
    report = evaluate(lm_files["ref"], lm_files["kv"], tokenizer=lm_files["tokenizer"], ctx=128, max_tokens=600,
                      progress=False)
    kv = report.candidates[0].metrics
    assert kv["kl_max"] < 1e-12 and kv["top1_agreement"] == 1.0
    assert kv["perplexity"] == pytest.approx(report.reference.metrics["perplexity"], rel=1e-9)
    as_reference = evaluate(lm_files["kv"], lm_files["rounded"], tokenizer=lm_files["tokenizer"], ctx=128,
                            max_tokens=600, progress=False)
    assert as_reference.settings["task_source"] == "onnxq.model.kind=causal-lm-kv"
    assert as_reference.candidates[0].metrics["kl_divergence"] > 0


def test_context_longer_than_the_model_allows(lm_files):
    model = toy_lm()
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxq.model.context_length", "64"
    path = save(model, lm_files["root"] / "short-context.onnx")
    with pytest.raises(DataError, match="context length 128 exceeds the model's 64"):
        evaluate(path, path, tokenizer=lm_files["tokenizer"], ctx=128, progress=False)
