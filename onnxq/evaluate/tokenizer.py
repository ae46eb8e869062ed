"""Find the tokenizer for a language model or encoder under evaluation."""
from __future__ import annotations

import os
from typing import Any, Union

from ..errors import ModelError, OnnxqError
from ..text_inputs import TOKENIZER_FILE, copy_tokenizer, load_tokenizer, tokenizer_beside, tokenizers_module
from .models import FAMILY_KEY, TimedModel

__all__ = ["resolve_tokenizer", "copy_tokenizer"]

PathLike = Union[str, os.PathLike]


def _backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` of ``tokenizer``: itself, or the ``backend`` of a wrapper
    such as onnxq.zoo's tokenizers."""
    tokenizers = tokenizers_module()
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
    path to a tokenizer.json, or None: then onnxq.zoo's tokenizer for the model family
    recorded in the reference's metadata, else the tokenizer.json beside the reference (as
    optimum and onnxruntime-genai write it).
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return _backend(tokenizer), "given"
    if tokenizer is not None:
        return load_tokenizer(tokenizer), os.fspath(tokenizer)
    family = reference.family
    if not family:
        beside = tokenizer_beside(reference.path)
        if beside is not None:
            return load_tokenizer(beside), os.fspath(beside)
        raise ModelError(
            f"{reference.path}: no known tokenizer: the model has no {FAMILY_KEY} metadata and there is no "
            f"{TOKENIZER_FILE} beside it; pass --tokenizer PATH/TO/tokenizer.json (Python: evaluate(..., tokenizer=...))"
        )
    from .. import zoo

    try:
        loaded = zoo.load_tokenizer(family)
    except Exception as exc:
        raise ModelError(
            f"{reference.path}: no known tokenizer for model family {family!r} ({str(exc).splitlines()[0]}); "
            "pass --tokenizer PATH/TO/tokenizer.json (Python: evaluate(..., tokenizer=...))"
        ) from None
    return _backend(loaded), f"onnxq.zoo:{family}"
