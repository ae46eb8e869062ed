"""Calibration text for the zoo models, disjoint from the evaluation data in onnxq/data.

Calibrating on the text a model is then evaluated on flatters it; these sources never
overlap with ``onnxq-sentences-64`` (encoders) or ``python-reference-prose`` (LMs).
"""
from __future__ import annotations

import re
from typing import Dict, List

import numpy as np

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
#: topics that quote the evaluation topics at length (``naming`` repeats ``execmodel``)
QUOTING_TOPICS = frozenset({"naming", "dynamic-features"})


def python_reference_text() -> str:
    """The Python reference topics of ``pydoc_data.topics`` other than the evaluation
    corpus's and those quoting it, as written (line breaks kept: a language model's
    activations on newline tokens differ a lot from those on words, and calibration text
    without them leaves those activations out of range), topics separated by blank lines."""
    import pydoc_data.topics as topics

    return "\n\n\n".join(v.strip("\n") for k, v in sorted(topics.topics.items())
                          if k not in EVAL_TOPICS and k not in QUOTING_TOPICS)


def python_reference_sentences() -> List[str]:
    """Sentences (6 to 60 words) of the Python reference topics in ``pydoc_data.topics``
    other than the evaluation corpus's four, in a fixed order. Some topics quote the
    corpus's (``naming`` repeats parts of ``execmodel``): sentences found in the corpus
    are dropped."""
    import pydoc_data.topics as topics

    from ..corpora import DEFAULT_CORPUS_FILE

    corpus = _squash(DEFAULT_CORPUS_FILE.read_text(encoding="utf-8"))
    text = _squash(" ".join(v for k, v in sorted(topics.topics.items()) if k not in EVAL_TOPICS))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences
            if 6 <= len(s.split()) <= 60 and not s.startswith(">>>") and s not in corpus]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


#: first words of self-generated calibration sequences (the model writes the rest)
SELF_PROMPTS = ("The", "In", "A", "It", "When", "This", "One", "There", "We", "Many", "After", "If", "Most",
                "For", "Some", "His")


def self_generated_batches(model: str = "smollm2-135m", sequences: int = 16, length: int = 256, seed: int = 0,
                           progress: bool = True) -> List[Dict[str, np.ndarray]]:
    """Calibration batches ``[{"input_ids": [1, length]}]`` written by the float model itself:
    each sequence starts from a one-word prompt and continues with tokens sampled from the
    model's own next-token distribution (temperature 1, seeded). No outside text is needed,
    and nothing can overlap an evaluation corpus except by chance."""
    from tqdm.auto import tqdm

    import onnxruntime as ort

    from ..errors import ModelError
    from . import ensure, load_tokenizer
    from .generation import sample_generate
    from .registry import available

    if sequences < 1 or length < 2:
        raise ModelError(f"need sequences >= 1 and length >= 2, got {sequences} and {length}")
    kv_name = f"{model}-kv"
    if kv_name not in available():
        raise ModelError(f"{model!r} has no KV-cache twin in the zoo to generate with (available: {', '.join(available())})")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(ensure(kv_name, progress=progress)), options,
                                   providers=["CPUExecutionProvider"])
    tok = load_tokenizer(model)
    rng = np.random.default_rng(seed)
    batches = []
    for i in tqdm(range(sequences), desc="self-calibration", unit="seq", disable=not progress, leave=False):
        prompt = tok.encode(SELF_PROMPTS[i % len(SELF_PROMPTS)])[:length - 1]
        ids = prompt + sample_generate(session, prompt, length - len(prompt), rng)
        batches.append({"input_ids": np.asarray([ids], dtype=np.int64)})
    return batches
