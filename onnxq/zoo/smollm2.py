"""Build SmolLM2-135M-Instruct (a LLaMA decoder) as a float32 ONNX model from its GGUF file.

Every hyper-parameter comes from the GGUF metadata and every weight is dequantized to float32;
the graph is :class:`onnxq.zoo.llama.LlamaGraph` (shaped like an optimum / torch.onnx export
of ``LlamaForCausalLM``, with the LM head tied to the embedding table).
"""
from __future__ import annotations

import os
from pathlib import Path

from .checkpoints import file_sha256
from .graph_builder import GraphBuilder
from .gguf_reader import open_gguf, read_llama_config
from .llama import KIND_FULL, KIND_KV, LlamaGraph, config_metadata

# Bump when the graph or its bytes change on purpose; the cache key also hashes this source.
BUILDER_VERSION = "1"

__all__ = ["build_smollm2", "BUILDER_VERSION", "KIND_FULL", "KIND_KV"]


def build_smollm2(
    gguf_path: os.PathLike,
    output_path: os.PathLike,
    *,
    kv_cache: bool = False,
    family: str = "smollm2-135m",
    builder_version: str = BUILDER_VERSION,
    progress: bool = True,
) -> Path:
    """Build the float32 ONNX decoder from ``gguf_path`` into ``output_path`` (written atomically).

    ``kv_cache=True`` gives the generation variant: inputs ``input_ids``, ``attention_mask``
    [batch, past+seq], ``position_ids``, ``past_key_values.{i}.key/value`` [batch, kv_heads,
    past, head_dim]; outputs ``logits`` and ``present.{i}.key/value``.
    """
    ckpt = open_gguf(gguf_path)
    cfg = read_llama_config(ckpt)
    b = GraphBuilder("smollm2_kv" if kv_cache else "smollm2")
    graph = LlamaGraph(b, ckpt, cfg, kv_cache)
    graph.progress_label = "smollm2 layers"
    graph.build(progress)
    metadata = {
        "onnxq.model.family": family,
        "onnxq.model.kind": KIND_KV if kv_cache else KIND_FULL,
        "onnxq.model.source": Path(gguf_path).name,
        "onnxq.model.source_sha256": file_sha256(gguf_path),
        "onnxq.model.builder_version": builder_version,
        **config_metadata(cfg),
    }
    doc = f"{family} ({'with KV cache' if kv_cache else 'full sequence'}), float32, built by onnxq.zoo from {Path(gguf_path).name}"
    return b.save(output_path, metadata, doc)
