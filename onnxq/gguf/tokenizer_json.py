"""Write a GGUF's tokenizer as a ``tokenizers`` JSON file beside the imported model.

The tokenizer is the one onnxq.zoo builds from GGUF metadata as llama.cpp tokenizes: byte-level
BPE over the file's tokens and merges, pre-tokenized by llama.cpp's regexes for
``tokenizer.ggml.pre`` (``gpt2``: SmolLM2, Qwen2, LLaMA 3), or SentencePiece BPE with byte
fallback (``llama``: LLaMA 1/2, Mistral); control tokens are special; a GGUF whose ``add_bos_token`` is true gets a
post-processor that prepends BOS when special tokens are added, as llama.cpp does.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from ..modelio import atomic_write
from ..zoo.gguf_reader import GGUFCheckpoint
from ..zoo.tokenizer import gguf_tokenizer


def tokenizer_json(ckpt: GGUFCheckpoint, family: str) -> str:
    """The tokenizer of ``ckpt`` as tokenizers JSON; ModelError for tokenizers onnxq cannot rebuild."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.processors import TemplateProcessing
    except ImportError:
        raise ModelError("writing the tokenizer needs the 'tokenizers' package: pip install tokenizers "
                         "(or import without it: --no-tokenizer)") from None
    try:
        tok = gguf_tokenizer(ckpt, family)
    except ModelError as exc:
        raise ModelError(f"{exc} (import the model without its tokenizer with --no-tokenizer)") from None
    backend = Tokenizer.from_str(tok.backend.to_str())  # a copy: the zoo's may be shared
    if ckpt.get("tokenizer.ggml.add_bos_token", False) and tok.bos_id is not None:
        bos = backend.id_to_token(tok.bos_id)
        backend.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                    special_tokens=[(bos, tok.bos_id)])
    return backend.to_str(pretty=False)


def write_tokenizer(text: str, path: os.PathLike) -> Path:
    """Write tokenizer JSON ``text`` (from :func:`tokenizer_json`) to ``path`` atomically."""
    return Path(atomic_write(path, lambda fh: fh.write(text.encode("utf-8"))))
