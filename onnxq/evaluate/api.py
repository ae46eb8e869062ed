"""``evaluate``: open the models, pick the task, run the task's evaluator, build the report."""
from __future__ import annotations

import os
import platform
from typing import Any, Mapping, Optional, Sequence, Union

import onnxruntime as ort

from .._version import __version__
from ..errors import OnnxqError
from . import encoder as encoder_eval
from . import lm as lm_eval
from . import outputs as outputs_eval
from ..corpora import Corpus, SentenceSet, resolve_corpus, resolve_sentences
from .models import KIND_KEY, TimedModel, check_same_interface, open_model
from .report import EvalReport, ModelResult
from ..text_inputs import tokenizer_beside
from .tokenizer import resolve_tokenizer

PathLike = Union[str, os.PathLike]

TASKS = ("lm", "encoder", "outputs")
#: onnxq.model.kind metadata -> task
KIND_TASKS = {"causal-lm": "lm", "causal-lm-kv": "lm", "encoder": "encoder"}


#: output name -> task, for models without onnxq's kind metadata (the names transformers
#: exporters give: optimum, torch.onnx, onnxruntime-genai, onnxruntime's optimizer)
OUTPUT_TASKS = {"logits": "lm", "last_hidden_state": "encoder"}


def detect_task(reference: TimedModel, task: Optional[str], has_tokenizer: bool = False) -> tuple[str, str]:
    """(task, why): the given task, else from the reference's kind metadata, else, when there
    is a tokenizer (given, or a tokenizer.json beside the reference), from its interface
    (``input_ids`` in, ``logits`` or ``last_hidden_state`` out), else outputs."""
    if task not in (None, "auto"):
        if task not in TASKS:
            raise OnnxqError(f"unknown task {task!r}: expected one of auto, {', '.join(TASKS)}")
        return task, "given"
    kind = reference.kind
    if kind in KIND_TASKS:
        return KIND_TASKS[kind], f"{KIND_KEY}={kind}"
    why = f"{KIND_KEY}={kind} is not a known kind" if kind else f"no {KIND_KEY} metadata"
    if "input_ids" in reference.input_names and (has_tokenizer or tokenizer_beside(reference.path)):
        for output, found in OUTPUT_TASKS.items():
            if output in reference.output_names:
                return found, f"{why}; input 'input_ids' and output {output!r}"
    return "outputs", f"{why}: comparing outputs"


def evaluate(
    reference: PathLike,
    candidates: Union[PathLike, Sequence[PathLike]],
    *,
    task: Optional[str] = None,
    tokenizer: Any = None,
    corpus: Union[Corpus, PathLike, None] = None,
    ctx: int = lm_eval.DEFAULT_CTX,
    max_tokens: Optional[int] = lm_eval.DEFAULT_MAX_TOKENS,
    sentences: Union[SentenceSet, Sequence[str], PathLike, None] = None,
    batch_size: int = encoder_eval.DEFAULT_BATCH_SIZE,
    max_length: int = encoder_eval.DEFAULT_MAX_LENGTH,
    inputs: outputs_eval.InputSets = None,
    dims: Optional[Mapping[str, int]] = None,
    vocab_size: Optional[int] = None,
    seed: int = 0,
    repeat: int = outputs_eval.DEFAULT_REPEAT,
    threads: int = 0,
    session_config: Optional[Mapping[str, str]] = None,
    progress: bool = True,
) -> EvalReport:
    """Compare each candidate with the reference on the same inputs.

    task: "lm" (perplexity, KL, top-1 on ``corpus`` in windows of ``ctx`` tokens, at most
    ``max_tokens``), "encoder" (cosine of mean-pooled embeddings of ``sentences``), "outputs"
    (relative error of every output on ``inputs`` or generated inputs), or None/"auto": from
    the reference's ``onnxq.model.kind`` metadata, outputs when unknown. ``tokenizer``: a
    ``tokenizers.Tokenizer`` or tokenizer.json path; default onnxq.zoo's for the model family.
    Every model also gets its wall time on the same work (``threads`` intra-op threads,
    0 = onnxruntime's default). ``session_config``: onnxruntime session config entries for
    every model (e.g. ``{"session.qdq_matmulnbits_accuracy_level": "0"}``).
    """
    cand_paths = [candidates] if isinstance(candidates, (str, os.PathLike)) else list(candidates)
    if not cand_paths:
        raise OnnxqError("no candidate model: give at least one model to compare with the reference")
    if task not in (None, "auto", *TASKS):  # before the (slow) sessions are created
        raise OnnxqError(f"unknown task {task!r}: expected one of auto, {', '.join(TASKS)}")
    ref = open_model(reference, threads, session_config)
    cands = [open_model(p, threads, session_config) for p in cand_paths]
    task_name, task_source = detect_task(ref, task, tokenizer is not None)

    settings: dict[str, Any] = {
        "task_source": task_source,
        "threads": threads,
        "providers": ["CPUExecutionProvider"],
        "onnxq": __version__,
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
    }
    if task_name == "lm":
        needed = [lm_eval.logits_output(ref)]
    elif task_name == "encoder":
        needed = [encoder_eval.embedding_output(ref)]
    else:
        needed = ref.output_names
    for cand in cands:
        # lm and encoder build each model's inputs from the text (a KV-cache variant may be
        # compared with the plain model); outputs feeds the same arrays to every model
        check_same_interface(ref, cand, needed, inputs=task_name == "outputs")

    if task_name == "lm":
        tok, settings["tokenizer"] = resolve_tokenizer(tokenizer, ref)
        data, ref_metrics, cand_metrics = lm_eval.evaluate_lm(
            ref, cands, tok, resolve_corpus(corpus), ctx=ctx, max_tokens=max_tokens, progress=progress
        )
    elif task_name == "encoder":
        tok, settings["tokenizer"] = resolve_tokenizer(tokenizer, ref)
        data, ref_metrics, cand_metrics = encoder_eval.evaluate_encoder(
            ref, cands, tok, resolve_sentences(sentences), batch_size=batch_size, max_length=max_length,
            progress=progress,
        )
    else:
        data, ref_metrics, cand_metrics = outputs_eval.evaluate_outputs(
            ref, cands, inputs=inputs, dims=dims, vocab_size=vocab_size, seed=seed, repeat=repeat,
            progress=progress,
        )

    reference_result = ModelResult(ref.path, ref.seconds, ref.runs, ref_metrics)
    candidate_results = [
        ModelResult(c.path, c.seconds, c.runs, m, time_ratio=(c.seconds / ref.seconds) if ref.seconds > 0 else None)
        for c, m in zip(cands, cand_metrics)
    ]
    return EvalReport(task_name, reference_result, candidate_results, data, settings)
