"""Import llama.cpp GGUF files: run their quantized blocks in onnxruntime, byte for byte.

>>> from onnxq.gguf import import_gguf
>>> report = import_gguf("model.Q4_K_M.gguf", "model.onnx")      # KV-cache interface, exact mode
>>> print(report.table())

Modules: ``tensors`` (the file's tensor table, checked), ``archs`` (supported architectures and
their tensor names), ``blocks_graph`` (the LLaMA-family graph over the file's blocks),
``tokenizer_json`` (the tokenizer beside the model), ``importer`` (the whole job).
"""
from __future__ import annotations

from .archs import ARCHITECTURES
from .importer import ImportReport, import_gguf, tokenizer_path_for

__all__ = ["import_gguf", "ImportReport", "ARCHITECTURES", "tokenizer_path_for"]
