"""Find the tokenizer for a language model or encoder under evaluation."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Union

from ..errors import ModelError, OnnxqError
from .models import FAMILY_KEY, TimedModel

PathLike = Union[str, os.PathLike]

#: metadata naming a tokenizer.json beside the model, relative to its folder (set by onnxq import-gguf)
TOKENIZER_KEY = "onnxq.model.tokenizer"


def _tokenizers_module() -> Any:
    try:
        return importlib.import_module("tokenizers")
    except ImportError:
        raise OnnxqError(
            "evaluating a language model or encoder needs the 'tokenizers' package: pip install 'onnxq[models]'"
        ) from None


def _backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` of ``tokenizer``: itself, or the ``backend`` of a wrapper
    such as onnxq.zoo's tokenizers."""
    tokenizers = _tokenizers_module()
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend", None)
    if isinstance(backend, tokenizers.Tokenizer):
        return backend
    raise OnnxqError(
        f"tokenizer: expected a tokenizers.Tokenizer or a path to a tokenizer.json, got {type(tokenizer).__name__}"
    )


def resolve_tokenizer(tokenizer: Any, reference: TimedModel) -> tuple[Any, str]:
    """(``tokenizers.Tokenizer``, where it came from) for ``reference``.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (or a wrapper with one as ``.backend``), a
    path to a tokenizer.json, or None: then the tokenizer file the reference's metadata names
    (``onnxq.model.tokenizer``, beside the model), else onnxq.zoo's tokenizer for the model
    family recorded in the reference's metadata.
    """
    tokenizers = _tokenizers_module()
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return _backend(tokenizer), "given"
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise OnnxqError(f"tokenizer {os.fspath(tokenizer)}: no such file (expected a tokenizer.json)")
        try:
            return tokenizers.Tokenizer.from_file(os.fspath(path)), os.fspath(path)
        except Exception as exc:
            raise OnnxqError(
                f"tokenizer {os.fspath(tokenizer)}: not a tokenizers JSON file ({str(exc).splitlines()[0]})"
            ) from None
    beside = reference.metadata.get(TOKENIZER_KEY)
    if beside:  # written next to the model (onnxq import-gguf)
        path = Path(reference.path).parent / beside
        if not path.is_file():
            raise ModelError(f"{reference.path}: its tokenizer {path} ({TOKENIZER_KEY} metadata) is missing; "
                             "pass --tokenizer PATH/TO/tokenizer.json")
        return resolve_tokenizer(path, reference)[0], os.fspath(path)
    family = reference.family
    hint = "pass --tokenizer PATH/TO/tokenizer.json (Python: evaluate(..., tokenizer=...))"
    if not family:
        raise ModelError(
            f"{reference.path}: no known tokenizer: the model has no {FAMILY_KEY} metadata; {hint}"
        )
    from .. import zoo

    try:
        loaded = zoo.load_tokenizer(family)
    except Exception as exc:
        raise ModelError(
            f"{reference.path}: no known tokenizer for model family {family!r} ({str(exc).splitlines()[0]}); {hint}"
        ) from None
    return _backend(loaded), f"onnxq.zoo:{family}"


def copy_tokenizer(tokenizer: Any) -> Any:
    """An independent copy, so padding/truncation can be set without touching the caller's.

    Strings that look like special tokens (``<|im_start|>``, ``[CLS]``) in the evaluated
    text are tokenized as plain text, as llama.cpp does by default: the data is text."""
    tokenizers = _tokenizers_module()
    copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy
