"""Language-model quality: perplexity, KL divergence and top-1 agreement on a text corpus.

Protocol (the one every quality claim of onnxq uses):

* The corpus is tokenized once, as a whole, without special tokens; the first
  ``max_tokens`` tokens are kept and cut into consecutive, non-overlapping windows of
  ``ctx`` tokens (the last window may be shorter; one of fewer than 2 tokens is dropped).
* Each window is one forward pass with batch 1 and no past (no state carries across
  windows). In a window of n tokens, positions 0..n-2 each predict the next token, so a
  window contributes n-1 predicted tokens; the first token of each window is context only.
* Perplexity = exp(mean over all predicted tokens of -log p(next token)), natural log,
  log-softmax in float64. KL(P_ref || P_cand) and top-1 agreement (argmax equal) are
  averaged over exactly the same positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ModelError
from . import metrics
from ..corpora import Corpus
from ..errors import DataError
from .models import TimedModel
from .progress import progress_bar
from .tokenizer import copy_tokenizer

DEFAULT_CTX = 512
#: 4096 tokens = 8 windows of 512 (4088 predicted tokens). SmolLM2-135M float needs about
#: 3.6 s of CPU per window with 2 threads: about 15 s wall per model on 2 idle cores.
DEFAULT_MAX_TOKENS = 4096
CONTEXT_KEY = "onnxq.model.context_length"
#: tokens of the warm-up run (untimed) before the timed windows
_WARMUP_TOKENS = 16


@dataclass
class _Stats:
    """Running sums for one model over all predicted tokens."""

    nll_sum: float = 0.0
    count: int = 0
    correct: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    agree: int = 0

    def add(self, part: dict[str, Any], count: int) -> None:
        self.nll_sum += part["nll"]
        self.correct += part["correct"]
        self.count += count
        self.agree += part.get("agree", 0)
        self.kl_sum += part.get("kl", 0.0)
        self.kl_max = max(self.kl_max, part.get("kl_max", 0.0))

    def result(self, is_candidate: bool) -> dict[str, float]:
        out = {
            "perplexity": metrics.perplexity(self.nll_sum, self.count),
            "mean_nll": self.nll_sum / self.count,
            "next_token_accuracy": self.correct / self.count,
        }
        if is_candidate:
            out["kl_divergence"] = self.kl_sum / self.count
            out["kl_max"] = self.kl_max
            out["top1_agreement"] = self.agree / self.count
        return out


def logits_output(model: TimedModel) -> str:
    """The output holding next-token logits: ``logits`` if present, else the only output."""
    return model.output_for("logits", "logits")


def lm_feeds(model: TimedModel, tokens: Sequence[int]) -> dict[str, np.ndarray]:
    """Inputs for one window: input_ids [1, n]; the other inputs a language model takes
    (attention mask, position ids, an empty past for KV-cache models) synthesized by
    :class:`onnxq.model_inputs.ModelInputs`, in the model's dtypes."""
    if "input_ids" not in model.input_names:
        raise ModelError(
            f"{model.path}: a language model needs an input named 'input_ids' "
            f"(inputs: {', '.join(model.input_names)})"
        )
    return model.feeds_from({"input_ids": np.asarray(tokens, dtype=np.int64).reshape(1, len(tokens))},
                            "language-model window")


def tokenize_corpus(tokenizer: Any, corpus: Corpus) -> list[int]:
    """Token ids of the whole corpus, without special tokens (no BOS)."""
    tok = copy_tokenizer(tokenizer)
    tok.no_padding()
    tok.no_truncation()
    ids = list(tok.encode(corpus.text, add_special_tokens=False).ids)
    if len(ids) < 2:
        raise DataError(
            f"corpus {corpus.name!r} gives {len(ids)} token(s); perplexity needs at least 2"
        )
    return ids


def make_windows(ids: Sequence[int], ctx: int, max_tokens: Optional[int]) -> list[list[int]]:
    """Non-overlapping windows of ``ctx`` tokens over the first ``max_tokens`` ids."""
    if ctx < 2:
        raise DataError(f"context length must be at least 2 tokens, got {ctx}")
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"max tokens must be at least 2, got {max_tokens}")
    ids = list(ids[:max_tokens] if max_tokens is not None else ids)
    windows = [ids[i : i + ctx] for i in range(0, len(ids), ctx)]
    return [w for w in windows if len(w) >= 2]


def _static_vocab(model: TimedModel, output: str) -> Optional[int]:
    shape = model.output(output).shape
    return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None


def _check_ids(model: TimedModel, windows: Sequence[Sequence[int]], vocab: int) -> None:
    max_id = max(max(w) for w in windows)
    if max_id >= vocab:
        raise ModelError(
            f"tokenizer gives token id {max_id} but {model.path} has {vocab} logits: "
            "the tokenizer does not belong to this model"
        )


def _window_logits(model: TimedModel, output: str, window: Sequence[int]) -> np.ndarray:
    logits = model.run([output], lm_feeds(model, window))[0]
    if logits.ndim != 3 or logits.shape[:2] != (1, len(window)):
        raise ModelError(
            f"{model.path}: output {output!r} has shape {logits.shape}; expected [1, {len(window)}, vocab] "
            "(batch, sequence, vocabulary logits)"
        )
    return logits[0]


def evaluate_lm(
    reference: TimedModel,
    candidates: Sequence[TimedModel],
    tokenizer: Any,
    corpus: Corpus,
    ctx: int = DEFAULT_CTX,
    max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, float]]]:
    """Run every model on the same windows; return (data description, reference metrics,
    metrics of each candidate). Times accumulate on the models."""
    output = logits_output(reference)
    for cand in candidates:
        cand.output(output)
    limit = reference.metadata.get(CONTEXT_KEY, "")
    if limit.isdigit() and ctx > int(limit):
        raise DataError(f"context length {ctx} exceeds the model's {int(limit)} ({CONTEXT_KEY} of {reference.path})")
    corpus_ids = tokenize_corpus(tokenizer, corpus)
    windows = make_windows(corpus_ids, ctx, max_tokens)

    # Before any run, from the declared shapes: a bad id would fail inside Gather.
    static_vocab = _static_vocab(reference, output)
    if static_vocab is not None:
        _check_ids(reference, windows, static_vocab)
        for cand in candidates:
            other = _static_vocab(cand, output)
            if other is not None and other != static_vocab:
                raise ModelError(
                    f"models do not match: {reference.path} has {static_vocab} logits, {cand.path} has {other}"
                )

    warm = windows[0][:_WARMUP_TOKENS]
    for model in (reference, *candidates):
        model.warm_up([output], lm_feeds(model, warm))

    ref_stats = _Stats()
    cand_stats = [_Stats() for _ in candidates]
    vocab = None
    for window in progress_bar(windows, "perplexity", "window", progress):
        ref_logits = _window_logits(reference, output, window)
        if vocab is None:
            vocab = ref_logits.shape[-1]
            _check_ids(reference, windows, vocab)
        cand_logits = []
        for cand in candidates:
            logits = _window_logits(cand, output, window)
            if logits.shape[-1] != vocab:
                raise ModelError(
                    f"models do not match: {reference.path} has {vocab} logits, {cand.path} has {logits.shape[-1]}"
                )
            cand_logits.append(logits[:-1])
        # row t of a window predicts token t + 1: the last row predicts nothing in the window
        sums = metrics.lm_window_stats(ref_logits[:-1], cand_logits, np.asarray(window[1:]))
        del ref_logits, cand_logits
        ref_stats.add(sums["ref"], len(window) - 1)
        for stats, part in zip(cand_stats, sums["cands"]):
            stats.add(part, len(window) - 1)

    data = {
        "corpus": corpus.name,
        "corpus_sha256": corpus.sha256,
        "corpus_tokens": len(corpus_ids),
        "max_tokens": max_tokens,
        "tokens": sum(len(w) for w in windows),
        "predicted_tokens": ref_stats.count,
        "ctx": ctx,
        "windows": len(windows),
        "vocab_size": vocab,
        "output": output,
    }
    return data, ref_stats.result(False), [s.result(True) for s in cand_stats]
