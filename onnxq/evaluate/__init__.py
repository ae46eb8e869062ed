"""Evaluate quantized models against their float reference on the same inputs.

``evaluate(reference, candidates, ...) -> EvalReport`` picks the task from the reference's
``onnxq.model.kind`` metadata (or ``task=``):

* ``lm``: perplexity of every model on a text corpus, KL(P_ref || P_cand) of the
  next-token distributions (float64, from log-softmax), top-1 agreement, in
  non-overlapping windows of ``ctx`` tokens (protocol in :mod:`onnxq.evaluate.lm`);
* ``encoder``: cosine similarity of mean-pooled sentence embeddings (:mod:`.encoder`);
* ``outputs``: relative error ||cand - ref|| / ||ref|| of every output (:mod:`.outputs`).

Every model is also timed on the same work (sessions created outside the timed region).
"""
from __future__ import annotations

from .api import KIND_TASKS, TASKS, detect_task, evaluate
from ..corpora import (
    DEFAULT_CORPUS_NAME,
    DEFAULT_CORPUS_SHA256,
    DEFAULT_SENTENCES_NAME,
    DEFAULT_SENTENCES_SHA256,
    Corpus,
    DataError,
    SentenceSet,
    default_corpus,
    default_sentences,
)
from .encoder import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH
from .lm import DEFAULT_CTX, DEFAULT_MAX_TOKENS
from .metrics import (
    cosine_similarity,
    kl_divergence,
    log_softmax,
    mean_pool,
    perplexity,
    relative_error,
    token_nll,
    top1_matches,
)
from .outputs import generate_inputs, parse_dims
from .report import EvalReport, ModelResult

__all__ = [
    "evaluate",
    "detect_task",
    "EvalReport",
    "ModelResult",
    "Corpus",
    "SentenceSet",
    "DataError",
    "default_corpus",
    "default_sentences",
    "generate_inputs",
    "parse_dims",
    "log_softmax",
    "token_nll",
    "perplexity",
    "kl_divergence",
    "top1_matches",
    "mean_pool",
    "cosine_similarity",
    "relative_error",
    "TASKS",
    "KIND_TASKS",
    "DEFAULT_CTX",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_CORPUS_NAME",
    "DEFAULT_CORPUS_SHA256",
    "DEFAULT_SENTENCES_NAME",
    "DEFAULT_SENTENCES_SHA256",
]
