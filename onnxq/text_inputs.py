"""Model inputs from what users have: a text file and the model's ``tokenizer.json``.

optimum and onnxruntime-genai write ``tokenizer.json`` beside the model they export; it is
the default tokenizer. The text is tokenized once, as a whole, without special tokens, and
cut into ``windows`` windows of ``window`` tokens spread evenly over it (consecutive when the
text is short; a text shorter than one window gives one shorter window). Each window gets
the tokenizer's own special tokens (BERT's ``[CLS] ... [SEP]``; none for SmolLM2) and becomes
one batch ``{"input_ids": int64 [1, window]}``; the model's other inputs (mask, positions,
empty past) are synthesized per batch by :class:`onnxq.model_inputs.ModelInputs`.

Defaults: 32 windows of 256 tokens, the calibration set behind SmoothQuant's measured
+3.9 % on SmolLM2-135M (README, benchmarks/smoothquant_vs_ort.py) and the exported-model
results of docs/exported.md.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError, OnnxqError

__all__ = ["DEFAULT_WINDOW", "DEFAULT_WINDOWS", "TOKENIZER_FILE", "tokenizers_module", "load_tokenizer",
           "tokenizer_beside", "resolve_text_tokenizer", "copy_tokenizer", "token_windows", "text_batches",
           "window_batches", "pad_id", "encode_batch"]

PathLike = Union[str, os.PathLike]

DEFAULT_WINDOW = 256
DEFAULT_WINDOWS = 32
TOKENIZER_FILE = "tokenizer.json"


def tokenizers_module() -> Any:
    """The ``tokenizers`` package (an optional dependency: the ``models`` extra)."""
    try:
        return importlib.import_module("tokenizers")
    except ImportError:
        raise OnnxqError("tokenizing text needs the 'tokenizers' package: pip install 'onnxq[models]'") from None


def load_tokenizer(path: PathLike) -> Any:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json; OnnxqError naming the file otherwise."""
    tokenizers = tokenizers_module()
    path = Path(path)
    if not path.is_file():
        raise OnnxqError(f"tokenizer {os.fspath(path)}: no such file (expected a tokenizer.json)")
    try:
        return tokenizers.Tokenizer.from_file(os.fspath(path))
    except Exception as exc:
        raise OnnxqError(f"tokenizer {os.fspath(path)}: not a tokenizers JSON file ({str(exc).splitlines()[0]})") from None


def tokenizer_beside(model_path: PathLike) -> Optional[Path]:
    """The ``tokenizer.json`` in the model's folder (as the exporters write it), or None."""
    candidate = Path(os.fspath(model_path)).resolve().parent / TOKENIZER_FILE
    return candidate if candidate.is_file() else None


def resolve_text_tokenizer(tokenizer: Any, model_path: PathLike, flag: str = "--tokenizer") -> Any:
    """``tokenizer`` (a ``tokenizers.Tokenizer`` or a path), else the tokenizer.json beside
    the model; an error naming both places when there is neither."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    found = tokenizer_beside(model_path)
    if found is None:
        raise OnnxqError(
            f"text calibration needs a tokenizer: there is no {TOKENIZER_FILE} beside {os.fspath(model_path)}; "
            f"pass {flag} PATH/TO/{TOKENIZER_FILE}")
    return load_tokenizer(found)


def copy_tokenizer(tokenizer: Any) -> Any:
    """An independent copy, so padding/truncation can be set without touching the caller's.

    Strings that look like special tokens (``<|im_start|>``, ``[CLS]``) in the text are
    tokenized as plain text, as llama.cpp does by default: the data is text."""
    copy = tokenizers_module().Tokenizer.from_str(tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy


def _special_tokens(tokenizer: Any) -> Tuple[List[int], List[int]]:
    """(ids before, ids after) the tokenizer's post-processor puts around one sequence."""
    probe = "a"
    plain = list(tokenizer.encode(probe, add_special_tokens=False).ids)
    full = list(tokenizer.encode(probe, add_special_tokens=True).ids)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []  # a post-processor that rewrites the content: add nothing rather than guess


def token_windows(ids: Sequence[int], window: int, windows: int) -> List[List[int]]:
    """``windows`` windows of ``window`` ids spread evenly over ``ids`` (fewer when the ids
    do not hold that many; one shorter window when they hold less than one)."""
    if window < 2:
        raise DataError(f"calibration window must be at least 2 tokens, got {window}")
    if windows < 1:
        raise DataError(f"number of calibration windows must be at least 1, got {windows}")
    if len(ids) <= window:
        return [list(ids)]
    room = len(ids) - window  # last possible start
    fit = min(windows, len(ids) // window)
    if fit <= 1:
        return [list(ids[:window])]
    starts = sorted({round(i * room / (fit - 1)) for i in range(fit)})
    return [list(ids[s:s + window]) for s in starts]


def text_batches(text_file: PathLike, tokenizer: Any, *, window: int = DEFAULT_WINDOW,
                 windows: int = DEFAULT_WINDOWS) -> List[Dict[str, np.ndarray]]:
    """Calibration batches ``[{"input_ids": int64 [1, n]}]`` from a UTF-8 text file (see the
    module docstring); ``tokenizer`` is a ``tokenizers.Tokenizer`` or a tokenizer.json path."""
    path = Path(os.fspath(text_file))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"calibration text {os.fspath(path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"calibration text {os.fspath(path)}: cannot read it as UTF-8 text ({exc})") from None
    return window_batches(text, tokenizer, window=window, windows=windows, source=f"calibration text {path}")


def window_batches(text: str, tokenizer: Any, *, window: int = DEFAULT_WINDOW, windows: int = DEFAULT_WINDOWS,
                   source: str = "calibration text") -> List[Dict[str, np.ndarray]]:
    """:func:`text_batches` of a string."""
    tok = copy_tokenizer(load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer)
    tok.no_padding()  # a tokenizer.json may pad or truncate every encoding (MiniLM's: to 128)
    tok.no_truncation()
    before, after = _special_tokens(tok)
    content = window - len(before) - len(after)
    if content < 2:
        raise DataError(f"calibration window of {window} tokens leaves no room beside the tokenizer's "
                        f"{len(before) + len(after)} special tokens")
    ids = list(tok.encode(text, add_special_tokens=False).ids)
    if len(ids) < 2:
        raise DataError(f"{source} gives {len(ids)} token(s); it needs at least 2")
    return [{"input_ids": np.asarray([before + w + after], np.int64)} for w in token_windows(ids, content, windows)]


def pad_id(tokenizer: Any) -> int:
    """The id a batch of sentences is padded with: the tokenizer's own, else a pad token's."""
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0  # masked out by the attention mask; any valid id will do


def encode_batch(tokenizer: Any, sentences: Sequence[str], pad: int) -> Dict[str, np.ndarray]:
    """int64 input_ids, attention_mask and token_type_ids [B, S] of ``sentences`` (special
    tokens added), padded on the right with ``pad``."""
    encodings = tokenizer.encode_batch(list(sentences))
    length = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), length), pad, dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    types = np.zeros((len(encodings), length), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
