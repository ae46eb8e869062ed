"""Calibration text for the zoo models, disjoint from the evaluation data in onnxq/data.

Calibrating on the text a model is then evaluated on flatters it; these sources never
overlap with ``onnxq-sentences-64`` (encoders) or ``python-reference-prose`` (LMs).
"""
from __future__ import annotations

import re
from typing import List

#: 16 general-English sentences, none in onnxq/data/sentences.txt (checked by the tests)
CALIBRATION_SENTENCES: List[str] = [
    "The committee will publish its annual report on energy prices next spring.",
    "Rivers carry sediment from the mountains down to the plains.",
    "He repaired the bicycle chain with a borrowed set of pliers.",
    "Most compilers translate source code into an intermediate representation first.",
    "The museum opened a new wing dedicated to medieval manuscripts.",
    "Heavy snowfall closed the mountain pass for three days.",
    "A balanced diet includes vegetables, grains, and some protein.",
    "The orchestra rehearsed the symphony twice before the concert.",
    "Investors reacted nervously to the central bank's announcement.",
    "She planted tulip bulbs along the fence in late October.",
    "The database query returned far more rows than expected.",
    "Volcanic ash can disrupt air traffic across an entire continent.",
    "Children learn languages faster when they hear them every day.",
    "The ferry crossing was rough because of the strong westerly wind.",
    "A good referee keeps the game flowing without drawing attention.",
    "The spacecraft adjusted its orbit with a short engine burn.",
]

#: the pydoc topics that make up onnxq/data/python-reference-prose.txt (the LM evaluation corpus)
EVAL_TOPICS = frozenset({"objects", "types", "execmodel", "exceptions"})


def python_reference_sentences() -> List[str]:
    """Sentences (6 to 60 words) of the Python reference topics in ``pydoc_data.topics``
    other than the evaluation corpus's four, in a fixed order. Some topics quote the
    corpus's (``naming`` repeats parts of ``execmodel``): sentences found in the corpus
    are dropped."""
    import pydoc_data.topics as topics

    from ..evaluate.corpus import DEFAULT_CORPUS_FILE

    corpus = _squash(DEFAULT_CORPUS_FILE.read_text(encoding="utf-8"))
    text = _squash(" ".join(v for k, v in sorted(topics.topics.items()) if k not in EVAL_TOPICS))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences
            if 6 <= len(s.split()) <= 60 and not s.startswith(">>>") and s not in corpus]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)
