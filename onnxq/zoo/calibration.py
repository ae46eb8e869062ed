"""Calibration text for the zoo models, disjoint from the evaluation data in onnxq/data.

Calibrating on the text a model is then evaluated on flatters it; these sources never
overlap with ``onnxq-sentences-64`` (encoders) or ``python-reference-prose`` (LMs).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

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
    """Calibration batches written by the float model itself: each sequence starts from a
    one-word prompt and continues with tokens sampled from the model's own next-token
    distribution (temperature 1, seeded). No outside text is needed, and nothing can
    overlap an evaluation corpus except by chance.

    ``model``: a zoo name, or the path of any causal LM onnxq can run (its tokenizer from
    its ``onnxq.model.family`` metadata). The text is written with the zoo's KV-cache twin
    when the family has one, else by stepping the model itself (one token at a time with
    ``past_key_values`` inputs, or re-running the prefix without them); each batch holds
    the inputs of ``model`` for one sequence (``input_ids`` [1, length] and, where the
    model takes them, ``attention_mask``, ``position_ids``, empty ``past_key_values.*``)."""
    from tqdm.auto import tqdm

    from ..errors import ModelError
    from . import load_tokenizer
    from .generation import prefill_feeds, sample_generate

    if sequences < 1 or length < 2:
        raise ModelError(f"need sequences >= 1 and length >= 2, got {sequences} and {length}")
    writer, target, family, writer_path = _generation_sessions(model, progress)
    cache = _text_cache_path(writer_path, sequences, length, seed)
    texts = _read_cached_texts(cache, sequences, length)
    if texts is None:
        tok = load_tokenizer(family)
        rng = np.random.default_rng(seed)
        texts = []
        for i in tqdm(range(sequences), desc="self-calibration", unit="seq", disable=not progress, leave=False):
            prompt = tok.encode(SELF_PROMPTS[i % len(SELF_PROMPTS)])[:length - 1]
            texts.append(prompt + sample_generate(writer, prompt, length - len(prompt), rng))
        _write_cached_texts(cache, texts)
    return [prefill_feeds(target, ids) for ids in texts]


def _text_cache_path(writer_path: str, sequences: int, length: int, seed: int):
    """Where the token ids a writer model sampled are kept: the same writer file (path,
    size, mtime), prompts and seed always sample the same text, so it is written once."""
    import hashlib
    import os

    from .registry import cache_dir

    st = os.stat(writer_path)
    key = "|".join(map(str, (os.path.realpath(writer_path), st.st_size, st.st_mtime_ns, sequences, length, seed,
                              ",".join(SELF_PROMPTS))))
    return cache_dir().parent / "calibration" / f"self-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _read_cached_texts(path, sequences: int, length: int) -> Optional[List[List[int]]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            ids = npz["ids"]
    except (OSError, KeyError, ValueError):
        return None
    if ids.shape != (sequences, length):
        return None
    return [list(map(int, row)) for row in ids]


def _write_cached_texts(path, texts: List[List[int]]) -> None:
    from ..modelio import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: np.savez(fh, ids=np.asarray(texts, np.int64)))
    except OSError:
        pass  # a read-only cache only costs the generation next time


def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _generation_sessions(model: str, progress: bool):
    """(session that writes the text, session whose inputs the batches fill, family, the
    writer's file)."""
    import os

    from ..errors import ModelError
    from . import ensure
    from .metadata import read_metadata
    from .registry import available, spec

    if model in available():
        family, path = spec(model).family, str(ensure(model, progress=progress))
    else:
        if not os.path.isfile(model):
            raise ModelError(f"{model!r} is neither a zoo model ({', '.join(available())}) nor a model file")
        family, path = read_metadata(model).get("onnxq.model.family"), model
        if family is None:
            raise ModelError(f"{model}: no 'onnxq.model.family' metadata, so no tokenizer to prompt it with")
    kind = read_metadata(path).get("onnxq.model.kind")
    if kind not in (None, "causal-lm", "causal-lm-kv"):
        raise ModelError(f"{model}: self-generated calibration needs a causal language model to write text; "
                         f"this model is a {kind}")
    target = _session(path)
    twin = f"{family}-kv"
    if twin in available():
        writer_path = str(ensure(twin, progress=progress))
        return _session(writer_path), target, family, writer_path
    return target, target, family, path


#: what the auto mode and the budget measure on when no data is given, per model kind
DEFAULT_SEQUENCES, DEFAULT_LENGTH = 4, 128


def default_batches(model_path: str, progress: bool = True) -> Tuple[Optional[List[Dict[str, np.ndarray]]], str]:
    """(calibration batches, where they come from) for a model given no data: a causal LM
    writes its own text (:func:`self_generated_batches`, 4 x 128 tokens); an encoder gets
    the 16 :data:`CALIBRATION_SENTENCES` in its tokenizer. (None, why) when the model's
    kind or tokenizer is unknown (no ``onnxq.model.*`` metadata)."""
    from ..errors import ModelError
    from .metadata import read_metadata

    meta = read_metadata(model_path)
    kind, family = meta.get("onnxq.model.kind"), meta.get("onnxq.model.family")
    if family is None or kind is None:
        return exported_batches(model_path)
    if kind in ("causal-lm", "causal-lm-kv"):
        try:
            batches = self_generated_batches(model_path, DEFAULT_SEQUENCES, DEFAULT_LENGTH, progress=progress)
        except ModelError as exc:  # e.g. a family whose tokenizer the zoo does not have: the caller says why
            return None, f"no self-generated text: {exc}"
        return batches, (f"self-generated: {DEFAULT_SEQUENCES} x {DEFAULT_LENGTH} tokens sampled from the float "
                         "model, one-word prompts")
    if kind == "encoder":
        return sentence_batches(model_path, CALIBRATION_SENTENCES), \
            f"{len(CALIBRATION_SENTENCES)} shipped calibration sentences (onnxq.zoo.calibration)"
    return None, f"no default calibration text for a model of kind {kind!r}"


def exported_batches(model_path: str) -> Tuple[Optional[List[Dict[str, np.ndarray]]], str]:
    """:func:`default_batches` for a model as an exporter wrote it (no onnxq metadata) with its
    tokenizer.json beside it: a language model (a ``logits`` output) gets DEFAULT_SEQUENCES
    windows of DEFAULT_LENGTH tokens of :func:`python_reference_text`, an encoder the
    :data:`CALIBRATION_SENTENCES`; the model's other inputs are synthesized per batch."""
    from ..modelio import load_model
    from ..text_inputs import TOKENIZER_FILE, copy_tokenizer, encode_batch, load_tokenizer, pad_id, \
        tokenizer_beside, window_batches

    found = tokenizer_beside(model_path)
    if found is None:
        return None, f"the model has no onnxq.model.kind/family metadata and no {TOKENIZER_FILE} beside it"
    tokenizer = load_tokenizer(found)
    if any(o.name == "logits" for o in load_model(model_path).graph.output):
        batches = window_batches(python_reference_text(), tokenizer, window=DEFAULT_LENGTH, windows=DEFAULT_SEQUENCES)
        return batches, (f"{len(batches)} windows of {DEFAULT_LENGTH} tokens of Python Reference text "
                         f"(onnxq.zoo.calibration) in {found}")
    tok = copy_tokenizer(tokenizer)
    tok.no_padding()
    tok.no_truncation()
    return ([encode_batch(tok, CALIBRATION_SENTENCES, pad_id(tokenizer))],
            f"{len(CALIBRATION_SENTENCES)} shipped calibration sentences (onnxq.zoo.calibration) in {found}")


def sentence_batches(model_path: str, sentences: List[str]) -> List[Dict[str, np.ndarray]]:
    """One batch of ``sentences`` in the encoder's tokenizer, padded: the inputs the model takes."""
    from .metadata import read_metadata

    from . import load_tokenizer

    tok = load_tokenizer(read_metadata(model_path)["onnxq.model.family"])
    encoded = [tok.encode(s) for s in sentences]
    n = max(len(e) for e in encoded)
    ids = np.zeros((len(encoded), n), np.int64)
    mask = np.zeros((len(encoded), n), np.int64)
    for i, e in enumerate(encoded):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    names = {i.name for i in _session(model_path).get_inputs()}
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return [{k: v for k, v in batch.items() if k in names}]
