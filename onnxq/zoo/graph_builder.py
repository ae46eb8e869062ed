"""A small ONNX graph builder that names things the way torch.onnx / optimum exports do.

Nodes are named ``<scope>/<OpType>`` (``_1``, ``_2``... on repeats within a scope) and their
outputs ``<node name>_output_0``, so a layer's MatMul reads ``/model/layers.3/self_attn/q_proj/MatMul``.
Weights become TensorProtos as they are added, so the caller can drop its numpy copy, and the
model is streamed to disk tensor by tensor: building never holds more than one copy of the
weights plus one tensor (the checker's read-back of the file is the second copy).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import tempfiles
from ..errors import ModelError, OutputPathError

OPSET = 17
# onnxruntime 1.31 rejects onnx 1.23's default IR version 14; IR 8 is the one opset 17 shipped with.
IR_VERSION = 8
# protobuf cannot serialize a single message of 2 GiB or more
_PROTOBUF_LIMIT = 2**31 - 1

Dim = Union[int, str]

_ELEM_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def _elem_type(dtype) -> int:
    try:
        return _ELEM_TYPES[np.dtype(dtype)]
    except KeyError:
        raise ModelError(f"unsupported tensor dtype {np.dtype(dtype)} (use float32, uint8, int64 or bool)") from None


class GraphBuilder:
    """Accumulates nodes, initializers and graph inputs/outputs in creation order.

    With a ``writer`` (an :class:`onnxq.modelio.ModelWriter`), each initializer goes through
    it as it is added (large ones straight to its external data file) and :meth:`save` writes
    through it, so only the graph and the small tensors stay in memory.
    """

    def __init__(self, graph_name: str, writer=None) -> None:
        self._writer = writer
        self._model = onnx.ModelProto()
        self._graph = self._model.graph
        self._graph.name = graph_name
        self._names: set[str] = set()
        self._node_counts: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}
        self._initializers: list[TensorProto] = []

    # -- graph interface -------------------------------------------------------------
    def add_input(self, name: str, dtype, dims: Sequence[Dim]) -> str:
        """Declare a graph input with (possibly symbolic) dims."""
        self._claim(name)
        self._graph.input.append(helper.make_tensor_value_info(name, _elem_type(dtype), list(dims)))
        return name

    def add_output(self, name: str, dtype, dims: Sequence[Dim]) -> str:
        """Declare a graph output; some node must produce ``name`` (see ``op(outputs=...)``)."""
        self._graph.output.append(helper.make_tensor_value_info(name, _elem_type(dtype), list(dims)))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add a float32 initializer; its bytes are copied now, so ``array`` may be dropped."""
        if array.dtype != np.float32:
            raise ModelError(f"weight {name!r}: expected float32, got {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ModelError(f"weight {name!r}: contains NaN or infinity")
        self._add_initializer(name, array)
        return name

    def blocks(self, name: str, array: np.ndarray) -> str:
        """Add a uint8 initializer (packed GGML blocks) as is."""
        if array.dtype != np.uint8:
            raise ModelError(f"blocks {name!r}: expected uint8, got {array.dtype}")
        self._add_initializer(name, array)
        return name

    def const(self, value: Union[float, int, Sequence], dtype=np.int64) -> str:
        """A small constant initializer, shared by every node that uses the same value."""
        arr = np.array(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        name = self._consts.get(key)
        if name is None:
            flat = ",".join(repr(v.item()) for v in arr.reshape(-1))
            name = f"const.{arr.dtype.name}.{list(arr.shape)}.{flat}".replace(" ", "")
            self._add_initializer(name, arr)
            self._consts[key] = name
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        scope: str,
        n_outputs: int = 1,
        outputs: Optional[Sequence[str]] = None,
        **attrs,
    ) -> Union[str, list[str]]:
        """Add a node named ``<scope>/<op_type>[_k]``; returns its output name(s).

        Outputs are named ``<node name>_output_<i>`` unless ``outputs`` gives names (graph outputs).
        """
        name = self.node_name(scope, op_type)
        if outputs is None:
            outputs = [f"{name}_output_{i}" for i in range(n_outputs)]
        outputs = list(outputs)
        self.add_node(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def node_name(self, scope: str, op_type: str) -> str:
        """The next node name ``<scope>/<op_type>[_k]`` (outputs: ``<name>_output_<i>``)."""
        base = f"{scope}/{op_type}"
        k = self._node_counts.get(base, 0)
        self._node_counts[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    def add_node(self, node: onnx.NodeProto) -> None:
        """Append a node built elsewhere (e.g. onnxq's custom ops); its outputs must be new names."""
        for out in node.output:
            self._claim(out)
        self._graph.node.append(node)

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ModelError(f"duplicate tensor name {name!r} in the graph being built")
        self._names.add(name)

    def _add_initializer(self, name: str, arr: np.ndarray) -> None:
        self._claim(name)
        if self._writer is not None:
            self._initializers.append(self._writer.tensor_proto(name, arr))
            return
        t = TensorProto()
        t.name = name
        t.data_type = _elem_type(arr.dtype)
        t.dims.extend(arr.shape)
        # little-endian raw bytes, as ONNX requires
        t.raw_data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        self._initializers.append(t)

    # -- model -----------------------------------------------------------------------
    def save(self, output_path: os.PathLike, metadata: Mapping[str, str], doc: str = "", *,
             producer: str = "onnxq.zoo", opsets: Sequence[onnx.OperatorSetIdProto] = ()) -> Path:
        """Write the model (opset 17 plus ``opsets``, IR 8, ``metadata`` in metadata_props) and check it.

        The protobuf is streamed: the graph without its initializers is serialized once, then
        each initializer is appended as its own ``GraphProto.initializer`` record, so only the
        weights themselves plus one tensor's serialization are in memory. Without a writer the
        file is written atomically and onnx.checker (with shape inference) reads the temp file;
        only a model that passes is moved into place. With a writer, the graph is checked
        before it is written (large initializers stand in as graph inputs of their type and
        shape) and the writer's context puts the files in place. The builder is emptied.
        """
        out = Path(output_path)
        if out.is_dir():
            raise OutputPathError(f"output path {out} is a directory; give a file name such as {out / 'model.onnx'}")
        if not out.parent.is_dir():
            raise OutputPathError(f"cannot write {out}: directory {out.parent} does not exist")
        model, inits = self._model, self._initializers
        model.ir_version = IR_VERSION
        model.producer_name = producer
        model.doc_string = doc
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.opset_import.extend(opsets)
        for key in sorted(metadata):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(metadata[key])
        if self._writer is not None:
            _check(_skeleton(model, inits))

        graph_head = model.graph.SerializeToString()
        model.ClearField("graph")
        model_head = model.SerializeToString()
        init_sizes = [t.ByteSize() for t in inits]
        graph_len = len(graph_head) + sum(len(_INIT_KEY) + len(_varint(n)) + n for n in init_sizes)
        total = len(model_head) + len(_GRAPH_KEY) + len(_varint(graph_len)) + graph_len
        if total > _PROTOBUF_LIMIT:
            raise ModelError(f"model would be {total} bytes, over protobuf's 2 GiB limit for one file"
                             + ("" if self._writer is None else "; write the weights as external data"))

        def parts() -> Iterator[bytes]:
            yield model_head
            yield _GRAPH_KEY + _varint(graph_len)
            yield graph_head
            for t, n in zip(inits, init_sizes):
                yield _INIT_KEY + _varint(n)
                yield t.SerializeToString()

        if self._writer is not None:
            self._writer.write_parts(parts())
            self._model, self._initializers = None, []  # type: ignore[assignment]
            return out
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                for part in parts():
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            self._model, self._initializers = None, []  # type: ignore[assignment]
            del model, inits
            _check(tmp)
        return out


def _check(model: Union[str, onnx.ModelProto]) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the built model fails onnx.checker: {exc}") from exc


def _skeleton(model: onnx.ModelProto, inits: Sequence[TensorProto]) -> onnx.ModelProto:
    """``model`` with its small inline initializers, and every other one as a graph input of the
    same type and shape: what onnx.checker needs, without the weights or their external files."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in inits:
        if t.data_location != TensorProto.EXTERNAL and t.ByteSize() <= _SKELETON_INLINE_BYTES:
            skeleton.graph.initializer.append(t)
        else:
            skeleton.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return skeleton


#: inline initializers up to this size (shape constants) stay in the skeleton checked by onnx.checker
_SKELETON_INLINE_BYTES = 4096


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_key(message, field: str) -> bytes:
    """Wire key of a length-delimited field (wire type 2), from onnx's own descriptor."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


_GRAPH_KEY = _field_key(onnx.ModelProto, "graph")
_INIT_KEY = _field_key(onnx.GraphProto, "initializer")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temp file name beside ``path`` (onnxq's locked kind, see
    :mod:`onnxq.tempfiles`); on success it replaces ``path``, on error it is removed."""
    tempfiles.remove_stale(str(path.parent))
    try:
        tmp = tempfiles.TempFile(str(path.parent), path.name)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc}") from exc
    with tmp:
        yield tmp.path
        tmp.commit(str(path))
