"""Rewrite an onnxq-quantized model's ``GgmlMatMul`` / ``GgmlGather`` nodes into stock
onnxruntime operators (:mod:`onnxq.ggml.portable_ops`), re-encoding the blocks (no
re-quantization): the file runs with no onnxq library registered.

Rule per node (pattern -> replacement), the node's output tensor kept so consumers are
untouched: ``GgmlMatMul(X, blocks[, b])`` -> per segment ``MatMulNBits`` or
``DequantizeLinear -> MatMul`` (+ ``Add(b)``); ``GgmlGather(blocks, ids)`` -> per segment
``GatherBlockQuantized`` or ``DequantizeLinear -> Gather``. Blocks read by several nodes (a
tied head and its embedding) become one table read by all.

Streams: one blocks tensor is decoded and written at a time through a
:class:`~onnxq.modelio.ModelWriter` (atomic); the input file is never modified.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from ..graph_edit import names_read
from ..modelio import (EXTERNAL_DATA_THRESHOLD, ModelWriter, check_output_path, file_bytes, get_initializer_array,
                       is_external, load_model, model_dir, set_metadata, tensor_nbytes, with_initializers)
from ..units import format_bytes
from .nodes import ATTR_K, ATTR_N, ATTR_QUANT_TYPE, ATTR_TAIL_TYPE, DOMAIN, GATHER_OP, MATMUL_OP, \
    ggml_node_attributes, is_ggml_node
from .portable import Segment, row_segments
from .portable_ops import MATMULNBITS, MS_DOMAIN, NODE_MARK, QDQ, QDQ_OPSET, Emitted, Emitter, Tensor, \
    gather, linear, tied_tables

__all__ = ["PortableLayer", "PortableReport", "convert_model", "PORTABLE_KEY", "NODE_MARK", "portable_record"]

PathLike = Union[str, os.PathLike]
#: metadata key of a converted file: JSON ``{"ops": ..., "layers": [PortableLayer.metadata(), ...]}``
#: (``onnxq inspect`` shows the layers from it; every node the conversion wrote has
#: :data:`NODE_MARK` in its name)
PORTABLE_KEY = "onnxq.portable"


@dataclass
class PortableLayer:
    """One GGML node of the input and what it became."""

    name: str
    kind: str  # "linear" or "embedding"
    quant_type: str
    tail_type: Optional[str]
    op: str
    bits: str
    K: int
    N: int
    ggml_bytes: int  # the blocks (counted once when shared)
    portable_bytes: int  # the new initializers this node brought
    notes: List[str] = field(default_factory=list)
    #: initializers it reads that the conversion wrote (a shared table first), for ``inspect``
    tensors: List[str] = field(default_factory=list)

    def metadata(self) -> dict:
        return {"name": self.name, "kind": self.kind, "quant_type": self.quant_type, "tail_type": self.tail_type,
                "op": self.op, "bits": self.bits, "K": self.K, "N": self.N, "tensors": self.tensors}


@dataclass
class PortableReport:
    input: str
    output: str
    ops: str
    layers: List[PortableLayer]
    input_bytes: int
    output_bytes: int
    seconds: float

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "ops": self.ops, "input_bytes": self.input_bytes,
                "output_bytes": self.output_bytes, "seconds": round(self.seconds, 3),
                "layers": [asdict(layer) for layer in self.layers]}

    def table(self) -> str:
        lines = [f"{'layer':48} {'type':12} {'op':26} {'bits':>4} {'GGML':>10} {'portable':>10}"]
        for l in self.layers:
            t = l.quant_type + (f"+{l.tail_type}" if l.tail_type else "")
            lines.append(f"{l.name[-48:]:48} {t:12} {l.op:26} {l.bits:>4} {format_bytes(l.ggml_bytes):>10} "
                         f"{format_bytes(l.portable_bytes):>10}")
        lines.append(f"{self.output}: {format_bytes(self.output_bytes)} portable ({self.ops}) from "
                     f"{format_bytes(self.input_bytes)} GGML ({self.output_bytes / max(1, self.input_bytes):.3f}x), "
                     f"{len(self.layers)} layers in {self.seconds:.1f} s")
        return "\n".join(lines)


def _ggml_nodes(model: onnx.ModelProto, path: str) -> List[onnx.NodeProto]:
    nodes = [n for n in model.graph.node if is_ggml_node(n)]
    if not nodes:
        raise ModelError(f"{path}: not an onnxq GGML model: no {MATMUL_OP} / {GATHER_OP} nodes (domain {DOMAIN!r}); "
                         "quantize it with `onnxq quantize ... --portable` instead")
    other = [n for n in model.graph.node if n.domain == DOMAIN and not is_ggml_node(n)]
    if other:
        raise ModelError(f"{path}: node {other[0].name!r} is {DOMAIN}:{other[0].op_type}, which has no portable form")
    return nodes


def _upgrade_for_qdq(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """Blocked DequantizeLinear needs default-domain opset 21: older models are converted
    with onnx's version converter (its refusal is reported, nothing is guessed)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= QDQ_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, QDQ_OPSET)
    except Exception as exc:  # the converter raises many kinds
        raise ModelError(f"{path}: --portable-ops qdq needs opset {QDQ_OPSET} (blocked DequantizeLinear); the model "
                         f"has opset {opset} and onnx's version converter failed: {exc}; use --portable-ops "
                         f"matmulnbits") from None
    converted.ir_version = max(converted.ir_version, 10)
    return converted


def portable_record(metadata: dict) -> Optional[dict]:
    """The conversion record of a model's ``onnxq.*`` metadata (None: not a portable file)."""
    text = metadata.get(PORTABLE_KEY)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("layers"), list) else None


class _Conversion:
    """State of one conversion: decoded segments of shared blocks, shared tables, the writer."""

    def __init__(self, model: onnx.ModelProto, base_dir: str, ops: str, writer: ModelWriter,
                 float_zero_points: bool = False, accuracy_level: Optional[int] = None) -> None:
        self.model, self.base_dir, self.writer = model, base_dir, writer
        taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
        taken |= {i.name for i in model.graph.input} | {n.name for n in model.graph.node}
        self.em = Emitter(ops, taken, float_zero_points, accuracy_level)
        self.inits = {t.name: t for t in model.graph.initializer}
        readers: Dict[str, int] = {}
        for node in model.graph.node:
            if is_ggml_node(node):
                blocks = node.input[1] if node.op_type == MATMUL_OP else node.input[0]
                readers[blocks] = readers.get(blocks, 0) + 1
        self.readers = readers
        self.segments: Dict[str, List[Segment]] = {}
        self.tables: Dict[str, List[str]] = {}
        self.table_tensors: Dict[str, List[str]] = {}
        self.protos: List[TensorProto] = []
        self.written_blocks: set = set()

    def segments_of(self, node: onnx.NodeProto, blocks: str, attrs: dict) -> List[Segment]:
        found = self.segments.get(blocks)
        if found is not None:
            return found
        tensor = self.inits.get(blocks)
        if tensor is None:
            raise ModelError(f"{node.op_type} {node.name!r}: blocks {blocks!r} are not an initializer; "
                             "only constant blocks can be re-encoded")
        data = np.asarray(get_initializer_array(self.model, tensor, self.base_dir))
        N, K = attrs[ATTR_N], attrs[ATTR_K]
        if data.dtype != np.uint8 or data.size % N:
            raise ModelError(f"{node.op_type} {node.name!r}: blocks {blocks!r} are {data.dtype} with {data.size} "
                             f"elements, expected uint8 rows for N={N}")
        segments = row_segments(data.reshape(N, -1), attrs[ATTR_QUANT_TYPE], K, attrs[ATTR_TAIL_TYPE])
        if self.readers.get(blocks, 0) > 1:
            self.segments[blocks] = segments
        return segments

    def write(self, tensors: Sequence[Tensor]) -> None:
        for t in tensors:
            if t.data_type is not None:
                self.protos.append(self.writer.raw_tensor_proto(t.name, t.data_type, t.dims, t.array))
            else:
                self.protos.append(self.writer.tensor_proto(t.name, t.array))

    def convert(self, node: onnx.NodeProto) -> tuple:
        attrs = ggml_node_attributes(node)
        is_matmul = node.op_type == MATMUL_OP
        blocks = node.input[1] if is_matmul else node.input[0]
        segments = self.segments_of(node, blocks, attrs)
        tables = None
        shared = Emitted(op="", bits="")
        if self.readers.get(blocks, 0) > 1 and self.em.ops == MATMULNBITS:
            if blocks not in self.tables:
                self.tables[blocks] = tied_tables(self.em, shared, segments, attrs[ATTR_N], blocks + NODE_MARK)
                self.table_tensors[blocks] = [t.name for t in shared.tensors]
            tables = self.tables[blocks]
        if is_matmul:
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            out = linear(self.em, node.name, node.input[0], node.output[0], segments, attrs[ATTR_N], bias, tables)
        else:
            out = gather(self.em, node.name, node.input[1], node.output[0], segments, attrs[ATTR_N], tables)
        self.write(shared.tensors + out.tensors)
        ggml_bytes = 0 if blocks in self.written_blocks else tensor_nbytes(self.inits[blocks])
        self.written_blocks.add(blocks)
        tensors = self.table_tensors.get(blocks, []) + [t.name for t in out.tensors]
        layer = PortableLayer(node.name, "linear" if is_matmul else "embedding", attrs[ATTR_QUANT_TYPE],
                              attrs[ATTR_TAIL_TYPE], out.op, out.bits, attrs[ATTR_K], attrs[ATTR_N], ggml_bytes,
                              shared.nbytes + out.nbytes, sorted(set(out.notes)), tensors)
        return shared.nodes + out.nodes, layer


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="portable", unit="layer", disable=not enabled or total == 0, leave=False,
                dynamic_ncols=True)


def convert_model(input: PathLike, output: PathLike, *, ops: str = MATMULNBITS, external_data: Optional[bool] = None,
                  float_zero_points: bool = False, accuracy_level: Optional[int] = None,
                  progress: bool = True) -> PortableReport:
    """Write the onnxq GGML model at ``input`` to ``output`` with every ``GgmlMatMul`` /
    ``GgmlGather`` in stock operators (``ops``: ``"matmulnbits"`` or ``"qdq"``).

    ``float_zero_points``: Q4_1 / Q4_K linear layers in MatMulNBits with a float zero point
    (``-min / scale``, within one float32 rounding of ggml's weights) instead of the exact min
    term (default; onnxruntime's CPU kernel with float zero points is far slower).
    ``accuracy_level``: MatMulNBits' attribute (None: unset, float32 activations, exact-mode
    numbers; 4: activations quantized to int8 blocks, faster on CPU, fast-mode-like numbers).

    ``external_data``: weights in ``<output>.data`` (None: when the input has external data
    or its weights are large). Raises ModelError for a model with no GGML node."""
    start = time.perf_counter()
    in_path = os.path.abspath(os.fspath(input))
    out_path = check_output_path(in_path, output)
    model = load_model(in_path)
    ggml = _ggml_nodes(model, in_path)
    Emitter(ops, set(), float_zero_points, accuracy_level)  # checks the options before any work
    if ops == QDQ:
        model = _upgrade_for_qdq(model, in_path)
    if external_data is None:
        weights = sum(tensor_nbytes(t) for t in model.graph.initializer)
        external_data = any(is_external(t) for t in model.graph.initializer) or weights > EXTERNAL_DATA_THRESHOLD
    layers: List[PortableLayer] = []
    with ModelWriter(out_path, external_data=external_data) as writer:
        job = _Conversion(model, model_dir(in_path), ops, writer, float_zero_points, accuracy_level)
        nodes: List[onnx.NodeProto] = []
        bar = _progress(len(ggml), progress)
        try:
            for node in model.graph.node:
                if not is_ggml_node(node):
                    nodes.append(node)
                    continue
                new_nodes, layer = job.convert(node)
                nodes.extend(new_nodes)
                layers.append(layer)
                bar.update(1)
        finally:
            bar.close()
        new_model = _assemble(model, nodes, job, ops, layers)
        writer.write(new_model)
    return PortableReport(in_path, out_path, ops, layers, file_bytes(in_path, model), file_bytes(out_path, new_model),
                          time.perf_counter() - start)


def _assemble(model: onnx.ModelProto, nodes: List[onnx.NodeProto], job: _Conversion, ops: str,
              layers: List[PortableLayer]) -> onnx.ModelProto:
    """The output model: the new nodes, the initializers still read (copied through the
    writer) after the new ones, opsets without ``onnxq``."""
    used = names_read(nodes) | {o.name for o in model.graph.output}
    kept = [job.writer.copy_tensor(t, job.base_dir) for t in model.graph.initializer
            if t.name in used]
    new_model = with_initializers(model, kept + job.protos)
    del new_model.graph.node[:]
    new_model.graph.node.extend(nodes)
    opsets = [o for o in new_model.opset_import if o.domain != DOMAIN]
    if ops == MATMULNBITS and not any(o.domain == MS_DOMAIN for o in opsets):
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    del new_model.opset_import[:]
    new_model.opset_import.extend(opsets)
    record = {"ops": ops, "layers": [layer.metadata() for layer in layers]}
    set_metadata(new_model, {PORTABLE_KEY: json.dumps(record, separators=(",", ":"))})
    return new_model
