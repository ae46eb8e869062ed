"""Encoder evaluation on a toy encoder: cosine of mean-pooled embeddings."""
import numpy as np
import onnxruntime as ort
import pytest

from eval_toys import encoder_tokenizer, rounded_8bit, save, toy_encoder
from onnxq.evaluate import DataError, SentenceSet, default_sentences, evaluate
from onnxq.corpora import DEFAULT_SENTENCES_SHA256


@pytest.fixture(scope="module")
def enc_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    model = toy_encoder()
    tok = encoder_tokenizer(default_sentences().sentences)
    tok_path = root / "tokenizer.json"
    tok.save(str(tok_path))
    return {
        "ref": save(model, root / "ref.onnx"),
        "rounded": save(rounded_8bit(model), root / "rounded.onnx"),
        "other": save(toy_encoder(seed=3), root / "other.onnx"),
        "tokenizer": tok,
        "tokenizer_path": tok_path,
        "root": root,
    }


def test_self_comparison_gives_cosine_one(enc_files):
    report = evaluate(enc_files["ref"], enc_files["ref"], tokenizer=enc_files["tokenizer"], batch_size=5,
                      progress=False)
    assert report.task == "encoder"
    m = report.candidates[0].metrics
    assert m["cosine_mean"] == pytest.approx(1.0, abs=1e-12)
    assert m["cosine_min"] == pytest.approx(1.0, abs=1e-12)
    assert m["relative_error"] == 0.0
    d = report.data
    assert d["sentences_sha256"] == DEFAULT_SENTENCES_SHA256
    assert (d["sentence_count"], d["batches"], d["batch_size"], d["embedding_dim"]) == (64, 13, 5, 24)
    assert report.reference.runs == 13


def test_rounded_weights_lower_cosine_a_little(enc_files):
    report = evaluate(enc_files["ref"], [enc_files["rounded"], enc_files["other"]], tokenizer=enc_files["tokenizer"],
                      progress=False)
    rounded, other = (c.metrics for c in report.candidates)
    assert 0.999 < rounded["cosine_mean"] < 1.0 - 1e-8
    assert 0.99 < rounded["cosine_min"] <= rounded["cosine_mean"]
    assert 1e-5 < rounded["relative_error"] < 0.05
    assert other["cosine_mean"] < 0.9
    assert 0 <= rounded["cosine_min_index"] < 64


def test_pooling_matches_an_independent_computation(enc_files):
    """Cosine of one sentence computed by hand with onnxruntime and numpy."""
    sentences = ["The cat slept on the warm windowsill all afternoon.", "Thank you!"]
    tok = enc_files["tokenizer"]
    pooled = []
    for path in (enc_files["ref"], enc_files["rounded"]):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rows = []
        for text in sentences:  # one at a time: no padding involved
            enc = tok.encode(text)
            feeds = {
                "input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.ones((1, len(enc.ids)), dtype=np.int64),
                "token_type_ids": np.zeros((1, len(enc.ids)), dtype=np.int64),
            }
            rows.append(sess.run(None, feeds)[0][0].astype(np.float64).mean(axis=0))
        pooled.append(np.array(rows))
    a, b = pooled
    expected = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    report = evaluate(enc_files["ref"], enc_files["rounded"], tokenizer=tok, sentences=sentences, batch_size=2,
                      progress=False)
    m = report.candidates[0].metrics
    assert m["cosine_mean"] == pytest.approx(expected.mean(), abs=1e-9)
    assert m["cosine_min"] == pytest.approx(expected.min(), abs=1e-9)
    assert report.data["sentences"] == "sentences"


def test_sentence_file_and_errors(enc_files, tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("first sentence here\n\nsecond one\n", encoding="utf-8")
    report = evaluate(enc_files["ref"], enc_files["ref"], tokenizer=enc_files["tokenizer_path"], sentences=path,
                      progress=False)
    assert report.data["sentence_count"] == 2
    assert report.data["sentences_sha256"] == SentenceSet.from_list(["first sentence here", "second one"]).sha256
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        evaluate(enc_files["ref"], enc_files["ref"], tokenizer=enc_files["tokenizer"], sentences=empty, progress=False)
    with pytest.raises(DataError, match="empty"):
        evaluate(enc_files["ref"], enc_files["ref"], tokenizer=enc_files["tokenizer"], sentences=[], progress=False)


def test_truncation_to_max_length(enc_files):
    long = " ".join(["cat"] * 50)
    report = evaluate(enc_files["ref"], enc_files["ref"], tokenizer=enc_files["tokenizer"], sentences=[long],
                      max_length=10, progress=False)
    assert report.data["tokens"] == 10  # [CLS] + 8 words + [SEP]
