"""Calibration text shipped for the zoo models never overlaps the evaluation data."""
import re
from pathlib import Path

from onnxq.zoo.calibration import CALIBRATION_SENTENCES, python_reference_sentences

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
