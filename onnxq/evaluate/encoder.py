"""Encoder quality: cosine similarity of pooled sentence embeddings.

Protocol: the sentences are tokenized with the model's tokenizer (special tokens added,
truncated to ``max_length`` tokens), batched in file order and padded to the longest
sentence of the batch; ``last_hidden_state`` is mean-pooled over the attention mask (as
sentence-transformers does for all-MiniLM-L6-v2) in float64, and the cosine similarity of
the reference's and the candidate's embedding of each sentence is averaged (and its
minimum reported). A model whose output is already pooled ([batch, dim]) is compared as is.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ModelError
from . import metrics
from ..corpora import SentenceSet
from .models import TimedModel
from .progress import progress_bar
from ..text_inputs import encode_batch, pad_id as _pad_id
from .tokenizer import copy_tokenizer

DEFAULT_BATCH_SIZE = 16
#: sentence-transformers' max_seq_length for all-MiniLM-L6-v2
DEFAULT_MAX_LENGTH = 256


def embedding_output(model: TimedModel) -> str:
    """``last_hidden_state`` if present, else the only output."""
    return model.output_for("last_hidden_state", "embeddings")


def encoder_feeds(model: TimedModel, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch arrays the model takes; inputs the batch lacks synthesized (see
    :class:`onnxq.model_inputs.ModelInputs`); anything else is an error naming the input."""
    if "input_ids" not in model.input_names:
        raise ModelError(
            f"{model.path}: an encoder needs an input named 'input_ids' (inputs: {', '.join(model.input_names)})"
        )
    return model.feeds_from(batch, "encoder batch")


def _embed(model: TimedModel, output: str, batch: dict[str, np.ndarray]) -> np.ndarray:
    hidden = model.run([output], encoder_feeds(model, batch))[0]
    rows = batch["input_ids"].shape[0]
    if hidden.ndim == 3 and hidden.shape[:2] == batch["input_ids"].shape:
        return metrics.mean_pool(hidden, batch["attention_mask"])
    if hidden.ndim == 2 and hidden.shape[0] == rows:
        return hidden.astype(np.float64)
    raise ModelError(
        f"{model.path}: output {output!r} has shape {hidden.shape}; expected [batch, seq, dim] "
        f"with batch, seq = {batch['input_ids'].shape}, or pooled [batch, dim]"
    )


def evaluate_encoder(
    reference: TimedModel,
    candidates: Sequence[TimedModel],
    tokenizer: Any,
    sentences: SentenceSet,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, float]]]:
    """Embed the same batches with every model; return (data description, reference
    metrics, metrics of each candidate)."""
    if batch_size < 1:
        raise ModelError(f"batch size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ModelError(f"max length must be >= 2 tokens, got {max_length}")
    output = embedding_output(reference)
    for cand in candidates:
        cand.output(output)
    tok = copy_tokenizer(tokenizer)
    tok.no_padding()
    tok.enable_truncation(max_length)
    pad_id = _pad_id(tokenizer)
    texts = list(sentences.sentences)
    batches = [encode_batch(tok, texts[i : i + batch_size], pad_id) for i in range(0, len(texts), batch_size)]

    warm = {k: v[:2] for k, v in batches[0].items()}
    for model in (reference, *candidates):
        model.warm_up([output], encoder_feeds(model, warm))

    cosines: list[list[np.ndarray]] = [[] for _ in candidates]
    sums = [[0.0, 0.0] for _ in candidates]  # ||cand - ref||^2, ||ref||^2 of the embeddings
    dim = None
    for batch in progress_bar(batches, "embeddings", "batch", progress):
        ref_emb = _embed(reference, output, batch)
        dim = ref_emb.shape[1]
        for index, cand in enumerate(candidates):
            cand_emb = _embed(cand, output, batch)
            if cand_emb.shape != ref_emb.shape:
                raise ModelError(
                    f"models do not match: {reference.path} gives embeddings {ref_emb.shape}, "
                    f"{cand.path} gives {cand_emb.shape}"
                )
            cosines[index].append(metrics.cosine_similarity(ref_emb, cand_emb))
            diff2, ref2 = metrics.squared_norms(ref_emb, cand_emb)
            sums[index][0] += diff2
            sums[index][1] += ref2

    results = []
    for cos_parts, (diff2, ref2) in zip(cosines, sums):
        cos = np.concatenate(cos_parts)
        results.append(
            {
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "cosine_min_index": int(np.argmin(cos)),
                "cosine_min_sentence": texts[int(np.argmin(cos))],
                "relative_error": metrics.relative_error_from_sums(diff2, ref2),
            }
        )
    data = {
        "sentences": sentences.name,
        "sentences_sha256": sentences.sha256,
        "sentence_count": len(texts),
        "tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
        "batch_size": batch_size,
        "batches": len(batches),
        "max_length": max_length,
        "output": output,
        "pooling": "mean over attention mask",
        "embedding_dim": dim,
    }
    return data, {}, results
