"""Calibration text shipped for the zoo models never overlaps the evaluation data."""
import re
from pathlib import Path

import pytest

from onnxq.zoo.calibration import CALIBRATION_SENTENCES, python_reference_sentences, python_reference_text

DATA = Path(__file__).resolve().parents[1] / "onnxq" / "data"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_calibration_sentences_are_not_evaluation_sentences():
    evaluation = {_norm(s) for s in (DATA / "sentences.txt").read_text(encoding="utf-8").splitlines() if s.strip()}
    assert len(CALIBRATION_SENTENCES) == 16 and len(set(CALIBRATION_SENTENCES)) == 16
    assert not evaluation & {_norm(s) for s in CALIBRATION_SENTENCES}


def test_python_reference_calibration_text_is_disjoint_from_the_lm_corpus():
    corpus = _norm((DATA / "python-reference-prose.txt").read_text(encoding="utf-8"))
    sentences = python_reference_sentences()
    assert len(sentences) > 500
    assert all(6 <= len(s.split()) <= 60 for s in sentences)
    # no calibration sentence occurs in the corpus (some pydoc topics quote the corpus topics)
    leaked = [s for s in sentences if s in corpus]
    assert not leaked, leaked[:3]


def test_python_reference_calibration_text_keeps_lines_and_never_quotes_the_corpus():
    corpus = _norm((DATA / "python-reference-prose.txt").read_text(encoding="utf-8"))
    text = python_reference_text()
    assert text.count("\n") > 5_000 and len(text) > 300_000
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", _norm(text))]
    long = [s for s in sentences if len(s.split()) >= 6]
    assert len(long) > 2000
    leaked = [s for s in long if s in corpus]
    assert not leaked, leaked[:3]


@pytest.mark.slow
def test_self_generated_calibration_is_seeded_model_text():
    from onnxq import zoo
    from onnxq.errors import ModelError
    from onnxq.zoo.calibration import self_generated_batches

    try:
        a = self_generated_batches(sequences=2, length=12, seed=0, progress=False)
    except zoo.CheckpointNotFoundError as exc:  # the checkpoint package is not installed
        pytest.skip(str(exc))
    b = self_generated_batches(sequences=2, length=12, seed=0, progress=False)
    c = self_generated_batches(sequences=2, length=12, seed=1, progress=False)
    assert [x["input_ids"].shape for x in a] == [(1, 12), (1, 12)]
    assert all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, b))
    assert any((x["input_ids"] != y["input_ids"]).any() for x, y in zip(a, c))
    tok = zoo.load_tokenizer("smollm2-135m")
    assert tok.decode(list(a[0]["input_ids"][0])).startswith("The")
    assert int(a[0]["input_ids"].max()) < 49152 and int(a[0]["input_ids"].min()) >= 0
    with pytest.raises(ModelError, match="needs a causal language model"):
        self_generated_batches("all-minilm-l6-v2", progress=False)
