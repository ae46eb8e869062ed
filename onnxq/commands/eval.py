"""``onnxq eval REFERENCE.onnx CANDIDATE.onnx [...]``: quality and speed of candidates
against a reference on the same inputs."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import OnnxqError


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def configure(parser: argparse.ArgumentParser) -> None:
    from ..evaluate import DEFAULT_BATCH_SIZE, DEFAULT_CTX, DEFAULT_MAX_LENGTH, DEFAULT_MAX_TOKENS
    from ..evaluate.outputs import DEFAULT_REPEAT

    parser.description = (
        "Run a reference model and one or more candidates on the same inputs and report quality "
        "(language models: perplexity, KL divergence, top-1 agreement; encoders: cosine similarity of "
        "mean-pooled embeddings; any model: relative error of every output) and wall time."
    )
    parser.epilog = (
        "examples:  onnxq eval model.onnx model-q4_k.onnx model-q8_0.onnx   |   "
        "onnxq eval ref.onnx cand.onnx --task outputs --dim batch=1 --dim seq=128 --json"
    )
    parser.add_argument("reference", help="the reference model (usually float32)")
    parser.add_argument("candidates", nargs="+", metavar="candidate", help="model(s) to compare with the reference")
    parser.add_argument(
        "--task", choices=["auto", "lm", "encoder", "outputs"], default="auto",
        help="what to measure (default: from the reference's onnxq.model.kind metadata, else lm / encoder for a model "
             "with input_ids and a logits / last_hidden_state output when a tokenizer is known; outputs otherwise)",
    )
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json (default: onnxq.zoo's for the model family, else the tokenizer.json beside the reference)")
    parser.add_argument("--threads", metavar="N", type=_non_negative, default=0, help="intra-op threads per session (default 0: onnxruntime's choice)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--json-out", metavar="FILE", help="also write the JSON report to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    lm = parser.add_argument_group("language models (--task lm)")
    lm.add_argument("--corpus", metavar="FILE", help="UTF-8 text to measure perplexity on (default: shipped Python reference prose)")
    lm.add_argument("--ctx", metavar="N", type=_positive, default=DEFAULT_CTX, help=f"tokens per window (default {DEFAULT_CTX})")
    lm.add_argument(
        "--max-tokens", metavar="N", type=_non_negative, default=DEFAULT_MAX_TOKENS,
        help=f"use at most this many corpus tokens, 0 = all (default {DEFAULT_MAX_TOKENS})",
    )

    enc = parser.add_argument_group("encoders (--task encoder)")
    enc.add_argument("--sentences", metavar="FILE", help="one sentence per line (default: shipped set of 64)")
    enc.add_argument("--batch-size", metavar="N", type=_positive, default=DEFAULT_BATCH_SIZE, help=f"sentences per batch (default {DEFAULT_BATCH_SIZE})")
    enc.add_argument("--max-length", metavar="N", type=_positive, default=DEFAULT_MAX_LENGTH, help=f"truncate sentences to this many tokens (default {DEFAULT_MAX_LENGTH})")

    out = parser.add_argument_group("any model (--task outputs)")
    out.add_argument("--inputs", metavar="FILE.npz", help="one array per model input (default: generated)")
    out.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE", help="value of a symbolic input dim for generated inputs (repeatable; also INPUT:AXIS=VALUE)")
    out.add_argument("--vocab-size", metavar="N", type=_positive, help="integer (id) inputs are drawn from [0, N) (default: the rows of the table they index)")
    out.add_argument("--seed", metavar="N", type=int, default=0, help="seed of generated inputs (default 0)")
    out.add_argument("--repeat", metavar="N", type=_positive, default=DEFAULT_REPEAT, help=f"timed runs per input set (default {DEFAULT_REPEAT})")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..evaluate.outputs import parse_dims

    if args.json_out and os.path.isdir(args.json_out):
        raise OnnxqError(f"--json-out {args.json_out}: is a directory")
    report = evaluate(
        args.reference,
        args.candidates,
        task=args.task,
        tokenizer=args.tokenizer,
        corpus=args.corpus,
        ctx=args.ctx,
        max_tokens=args.max_tokens or None,
        sentences=args.sentences,
        batch_size=args.batch_size,
        max_length=args.max_length,
        inputs=args.inputs,
        dims=parse_dims(args.dim),
        vocab_size=args.vocab_size,
        seed=args.seed,
        repeat=args.repeat,
        threads=args.threads,
        progress=not args.quiet,
    )
    text = report.to_json()
    if args.json_out:
        try:
            with open(args.json_out, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            raise OnnxqError(f"--json-out {args.json_out}: cannot write ({exc.strerror})") from None
    sys.stdout.write(text + "\n" if args.json else report.format_table())
    return 0
