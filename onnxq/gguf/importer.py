"""``onnxq.gguf.import_gguf``: a llama.cpp GGUF file -> an ONNX decoder that onnxruntime runs
with the file's quantized blocks unchanged (``GgmlMatMul`` / ``GgmlGather``), plus its tokenizer.

The file's tensor table is checked first (every tensor's type, shape and bytes; see
:mod:`onnxq.gguf.tensors`), then the architecture and every tensor name, then the tokenizer,
before anything is written. Tensors stream one at a time from the memory-mapped file into an
:class:`~onnxq.modelio.ModelWriter` (external data when the model is large), so memory stays
near the graph plus one tensor; the output appears only when complete.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .._version import __version__
from ..errors import ModelError
from ..evaluate.tokenizer import TOKENIZER_KEY
from ..formats import GGMLQuantType
from ..ggml.nodes import MODES, onnxq_opset
from ..modelio import EXTERNAL_DATA_THRESHOLD, ModelWriter, check_output_path, file_bytes
from ..units import format_bytes
from ..zoo.checkpoints import file_sha256
from ..zoo.graph_builder import GraphBuilder
from ..zoo.gguf_reader import LlamaConfig, open_gguf, read_decoder_config
from ..zoo.llama import KIND_FULL, KIND_KV, LlamaGraph, config_metadata
from .archs import architecture, check_tensor_names
from .blocks_graph import BlocksGraph, TensorRecord
from .tensors import GGUFTensors
from .tokenizer_json import tokenizer_json, write_tokenizer

__all__ = ["import_gguf", "ImportReport", "TOKENIZER_KEY", "tokenizer_path_for"]

PathLike = Union[str, os.PathLike]

TYPES_KEY = "onnxq.gguf.tensor_types"
REQUANTIZED_KEY = "onnxq.gguf.requantized"
#: the graph's weights: "blocks" (the GGUF's own, in GgmlMatMul/GgmlGather) or "dequantized" (float32)
WEIGHTS_KEY = "onnxq.gguf.weights"


@dataclass
class ImportReport:
    """What :func:`import_gguf` wrote: files, sizes, and how every tensor was stored."""

    source: str
    output: str
    tokenizer: Optional[str]
    architecture: str
    kv_cache: bool
    weights: str  # "blocks" or "dequantized"
    mode: Optional[str]
    source_bytes: int
    output_bytes: int
    source_sha256: str
    tensors: List[TensorRecord] = field(default_factory=list)

    @property
    def requantized(self) -> List[TensorRecord]:
        return [t for t in self.tensors if t.requantized]

    def type_counts(self) -> "OrderedDict[tuple, list]":
        """(GGUF type, stored as) -> [tensors, bytes], in first-seen order."""
        out: "OrderedDict[tuple, list]" = OrderedDict()
        for t in self.tensors:
            row = out.setdefault((t.gguf_type, t.stored_as), [0, 0])
            row[0] += 1
            row[1] += t.nbytes
        return out

    def table(self) -> str:
        lines = [f"{self.source} ({self.architecture}, {format_bytes(self.source_bytes)}) -> {self.output} "
                 f"({format_bytes(self.output_bytes)}, {'KV cache' if self.kv_cache else 'full sequence'}, "
                 + (f"{self.mode} mode)" if self.weights == "blocks" else "dequantized to float32)")]
        lines.append(f"{'GGUF type':<10} {'stored as':<10} {'tensors':>7} {'bytes':>12}")
        for (gtype, stored), (count, nbytes) in self.type_counts().items():
            lines.append(f"{gtype:<10} {stored:<10} {count:>7} {format_bytes(nbytes):>12}")
        for t in self.requantized:
            tail = f" (tail {t.tail_type})" if t.tail_type else ""
            lines.append(f"requantized: {t.name} {t.gguf_type} -> {t.stored_as}{tail}")
        if self.tokenizer:
            lines.append(f"tokenizer: {self.tokenizer}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in ("source", "output", "tokenizer", "architecture", "kv_cache", "weights",
                                           "mode", "source_bytes", "output_bytes", "source_sha256")}
        d["tensors"] = [dict(t.__dict__, shape=list(t.shape)) for t in self.tensors]
        return d


def tokenizer_path_for(output: PathLike) -> Path:
    """Where the tokenizer of a model written to ``output`` goes: ``<name>.tokenizer.json`` beside it."""
    out = Path(output)
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(stem + ".tokenizer.json")


def _family(ckpt, path: Path) -> str:
    name = ckpt.get("general.name") or path.stem
    return re.sub(r"[^a-z0-9.]+", "-", str(name).lower()).strip("-") or path.stem


def _estimated_bytes(tensors: GGUFTensors, dequantize: bool) -> int:
    """Bytes of the weights as the model will store them (float tensors become float32)."""
    total = 0
    for t in tensors:
        count = 1
        for d in t.shape:
            count *= d
        total += 4 * count if (dequantize or t.is_float) else t.nbytes
    return total


def import_gguf(
    gguf_path: PathLike,
    output_path: PathLike,
    *,
    kv_cache: bool = True,
    mode: str = "exact",
    requantize: Optional[Union[str, GGMLQuantType]] = None,
    dequantize: bool = False,
    tokenizer: bool = True,
    external_data: Optional[bool] = None,
    progress: bool = True,
) -> ImportReport:
    """Import a LLaMA-family GGUF (``llama`` incl. SmolLM2 and Mistral, ``qwen2``) as an ONNX decoder.

    Every tensor of a type the op library executes keeps the file's bytes in a ``GgmlMatMul`` /
    ``GgmlGather`` (``mode``: ``exact`` or ``fast`` for the matmuls); F32/F16/BF16 tensors become
    float32. Other types (IQ*, Q2_K, Q3_K, TQ*, MXFP4, ...) are refused with the tensor named,
    or with ``requantize=TYPE`` dequantized and re-packed with onnxq's codec (recorded in the
    metadata and the report). ``dequantize=True`` writes the float32 model of the same weights
    (the reference the blocks must match). ``kv_cache`` gives the zoo's KV interface
    (``past_key_values.*`` / ``present.*``). The tokenizer goes to ``<name>.tokenizer.json``
    beside the model. ``external_data``: None chooses it when the weights exceed 1.8 GB.
    The GGUF is never modified.
    """
    src = Path(gguf_path)
    if mode not in MODES:
        raise ModelError(f"mode {mode!r} must be one of {', '.join(MODES)}")
    target = GGMLQuantType.parse(requantize) if requantize is not None else None
    if target is not None and not target.is_weight_type:
        raise ModelError(f"--requantize {target.name}: not a weight type the op library runs")
    out = Path(check_output_path(src, output_path))
    tensors = GGUFTensors(src)  # checks every tensor's type, shape and bytes first
    ckpt = open_gguf(src)
    arch = architecture(ckpt.require("general.architecture", str), src)
    cfg = read_decoder_config(ckpt, arch.name, qk_rows_permuted=arch.qk_rows_permuted)
    check_tensor_names(tensors.infos, arch, cfg.n_layers, cfg.tied_embeddings, src)
    family = _family(ckpt, src)
    tok_text = tokenizer_json(ckpt, family) if tokenizer else None  # fail before the long part
    tok_path = tokenizer_path_for(out) if tokenizer else None
    if external_data is None:
        external_data = _estimated_bytes(tensors, dequantize) > EXTERNAL_DATA_THRESHOLD
    sha = file_sha256(src)

    with ModelWriter(out, external_data=external_data) as writer:
        b = GraphBuilder(f"{family}_kv" if kv_cache else family, writer=writer)
        if dequantize:
            graph: LlamaGraph = LlamaGraph(b, ckpt, cfg, kv_cache)
        else:
            graph = BlocksGraph(b, ckpt, cfg, kv_cache, tensors, mode=mode, requantize=target)
        graph.progress_label = f"importing {src.name}"
        graph.build(progress)
        records = graph.records if isinstance(graph, BlocksGraph) else []
        metadata = _metadata(cfg, family, src, sha, kv_cache, tensors, records, dequantize, mode, tok_path)
        doc = (f"{ckpt.get('general.name') or src.stem} ({arch.name}), imported by onnxq {__version__} from "
               f"{src.name}" + (" (dequantized to float32)" if dequantize else " with its blocks unchanged"))
        b.save(out, metadata, doc, producer="onnxq.gguf", opsets=[] if dequantize else [onnxq_opset()])
    if tok_path is not None and tok_text is not None:
        write_tokenizer(tok_text, tok_path)
    return ImportReport(
        source=str(src), output=str(out), tokenizer=str(tok_path) if tok_path else None, architecture=arch.name,
        kv_cache=kv_cache, weights="dequantized" if dequantize else "blocks", mode=None if dequantize else mode,
        source_bytes=src.stat().st_size, output_bytes=file_bytes(out), source_sha256=sha, tensors=records,
    )


def _metadata(cfg: LlamaConfig, family: str, src: Path, sha: str, kv_cache: bool, tensors: GGUFTensors,
              records: List[TensorRecord], dequantize: bool, mode: str, tok_path: Optional[Path]) -> Dict[str, str]:
    meta = {
        "onnxq.version": __version__,
        "onnxq.model.family": family,
        "onnxq.model.kind": KIND_KV if kv_cache else KIND_FULL,
        "onnxq.model.source": src.name,
        "onnxq.model.source_sha256": sha,
        **config_metadata(cfg),
        "onnxq.gguf.architecture": cfg.architecture,
        TYPES_KEY: json.dumps({t.name: t.type_name for t in tensors}),
        WEIGHTS_KEY: "dequantized" if dequantize else "blocks",
    }
    if not dequantize:
        meta["onnxq.gguf.mode"] = mode
    requantized = {r.name: f"{r.gguf_type} -> {r.stored_as}" + (f" (tail {r.tail_type})" if r.tail_type else "")
                   for r in records if r.requantized}
    if requantized:
        meta[REQUANTIZED_KEY] = json.dumps(requantized)
    if tok_path is not None:
        meta[TOKENIZER_KEY] = tok_path.name
    return meta
