"""A model's input interface, and the standard inputs a user does not have, synthesized.

Exported language models take more than token ids: optimum's KV-cache export takes
``attention_mask`` (past + current length), ``position_ids`` and two empty
``past_key_values.N.key/value`` per layer; onnxruntime-genai's takes past tensors whose head
size is written nowhere but in the graph's structure; BERT exports take ``token_type_ids``.
A user calibrating or evaluating such a model has token ids (or text). :class:`ModelInputs`
reads the interface once and :meth:`ModelInputs.complete` fills in, per batch, what is
missing:

* ``attention_mask``: ones over past + current positions;
* ``position_ids``: 0.. per row, counted over the attention mask (as transformers does);
* ``token_type_ids``: zeros (one segment);
* past key/value inputs: empty (past length 0), batch from the ids, head count and head
  size from the declared shape, else from the attention node that reads them
  (``GroupQueryAttention``/``MultiHeadAttention``/``Attention`` attributes and the width of
  its query input);
* ``use_cache_branch`` (optimum's merged decoders): false when the past is empty;

each in the dtype the graph declares (genai's int32 inputs included). Anything else that
is missing is a :class:`~onnxq.errors.CalibrationError` naming the input, its type and
shape, and what the batch holds. Used by calibration and by evaluation alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from .errors import CalibrationError, ModelError
from .sites import ModelGraph

__all__ = ["InputSpec", "ModelInputs", "model_input_specs", "indexed_rows", "format_shape"]

Dim = Union[int, str, None]

IDS, MASK, POSITIONS, TOKEN_TYPES, PAST, CACHE_BRANCH, OTHER = (
    "input_ids", "attention_mask", "position_ids", "token_type_ids", "past", "use_cache_branch", "other")
#: axis labels of a past key/value input once resolved
BATCH_AXIS, PAST_AXIS = "batch", "past"

#: ops a token id passes through unchanged on its way to an embedding table
_PASSTHROUGH_OPS = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
#: attention ops that read a past key/value input: op -> {input index: "key"|"value"}
_PAST_READERS = {
    "GroupQueryAttention": {3: "key", 4: "value"},
    "MultiHeadAttention": {6: "key", 7: "value"},
    "Attention": {4: "key", 5: "value"},  # ONNX opset 23 Attention (past_key, past_value)
}


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and declared shape (ints, symbolic names or None)."""

    name: str
    dtype: np.dtype
    shape: Optional[Tuple[Dim, ...]]


def model_input_specs(model: onnx.ModelProto) -> List[InputSpec]:
    """The graph inputs that are not initializers, with dtype and (symbolic) shape."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception as exc:  # pragma: no cover - exotic element types
            raise ModelError(f"model input {vi.name!r} has an unsupported element type {tt.elem_type}") from exc
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def format_shape(shape: Optional[Sequence[Dim]]) -> str:
    """``[batch, 2, ?, 16]`` for error messages."""
    if shape is None:
        return "[any shape]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def role_of(spec: InputSpec) -> str:
    """What a graph input holds, from its name (an exported model's interface names are the
    exporters' conventions, unlike its weight names) and dtype."""
    name = spec.name.lower()
    if name == "use_cache_branch":
        return CACHE_BRANCH
    if name.startswith("past") and spec.dtype.kind == "f":
        return PAST
    if spec.dtype.kind not in "iub":
        return OTHER
    if name.endswith("input_ids"):
        return IDS
    if "attention_mask" in name:
        return MASK
    if "position_ids" in name:
        return POSITIONS
    if "token_type_ids" in name:
        return TOKEN_TYPES
    return OTHER


# ----------------------------------------------------------------------------- graph reading


def _table_rows(graph: ModelGraph, tensor: str) -> Optional[int]:
    """Rows of a constant table, or of ``Transpose(constant)`` (a tied head weight read as
    the embedding, as onnxruntime-genai writes it)."""
    shape = graph.constant_shape(tensor)
    if shape is not None:
        return shape[0] if shape else None
    node = graph.producer(tensor)
    if node is not None and node.op_type == "Transpose":
        inner = graph.constant_shape(node.input[0])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if inner is not None and len(inner) == 2:
            return inner[perm[0]] if perm else inner[1]
    return None


def indexed_rows(graph: ModelGraph, input_name: str) -> Optional[int]:
    """Rows of the smallest embedding table ``input_name`` indexes (a Gather on axis 0, or
    the word table of ``EmbedLayerNormalization``), followed through casts and reshapes;
    None when it indexes none."""
    seen, frontier, rows = {input_name}, [input_name], []
    while frontier:
        tensor = frontier.pop()
        for node in graph.consumers(tensor):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                count = _table_rows(graph, node.input[0]) if axis == 0 else None
                rows.extend([count] if count else [])
            elif node.op_type == "EmbedLayerNormalization" and node.input[0] == tensor and len(node.input) > 2:
                count = _table_rows(graph, node.input[2])
                rows.extend([count] if count else [])
            elif node.op_type in _PASSTHROUGH_OPS and node.input[0] == tensor:
                fresh = [o for o in node.output if o not in seen]
                seen.update(fresh)
                frontier.extend(fresh)
    return min(rows) if rows else None


def _last_dim(graph: ModelGraph, tensor: str, value_info: Mapping[str, Sequence[Dim]]) -> Optional[int]:
    """The static size of the last axis of ``tensor``: from a linear layer's constant weight
    (through a bias Add), else from the graph's value_info."""
    for _ in range(8):
        node = graph.producer(tensor)
        if node is None:
            break
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            shape = graph.constant_shape(node.input[1])
            if shape is not None and len(shape) == 2:
                trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
                return shape[0] if trans_b else shape[1]
            break
        if node.op_type == "Add" and len(node.input) == 2:
            const = [i for i in node.input if graph.is_constant(i)]
            if len(const) == 1:
                tensor = node.input[0] if node.input[1] == const[0] else node.input[1]
                continue
        break
    dims = value_info.get(tensor)
    if dims and isinstance(dims[-1], int) and dims[-1] > 0:
        return dims[-1]
    return None


def _value_info(model: onnx.ModelProto) -> Dict[str, Tuple[Dim, ...]]:
    out: Dict[str, Tuple[Dim, ...]] = {}
    for vi in [*model.graph.value_info, *model.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in tt.shape.dim)
    return out


def _attention_dims(graph: ModelGraph, name: str, value_info) -> Tuple[Optional[int], Optional[int], str]:
    """(key/value heads, head size, which node said so) from the attention node reading
    past input ``name``; Nones when no known node reads it."""
    for node in graph.consumers(name):
        slots = _PAST_READERS.get(node.op_type, {})
        if not any(i < len(node.input) and node.input[i] == name for i in slots):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        heads = attrs.get("num_heads", attrs.get("q_num_heads"))
        kv_heads = attrs.get("kv_num_heads", heads)
        if not heads:
            return None, None, node.name
        width = _last_dim(graph, node.input[0], value_info)
        packed = node.op_type == "GroupQueryAttention" and (len(node.input) < 2 or not node.input[1])
        # a packed QKV input holds q (heads) and k, v (kv heads each) side by side
        parts = heads + 2 * kv_heads if packed else heads
        head_size = width // parts if width and width % parts == 0 else None
        return int(kv_heads), head_size, f"{node.op_type} node {node.name!r}"
    return None, None, ""


# ----------------------------------------------------------------------------- the interface


@dataclass(frozen=True)
class ModelInput:
    """One graph input with its role. ``layout`` (past inputs): per axis ``"batch"``,
    ``"past"``, a size, or None when nothing in the graph says; ``vocab`` (token ids): rows of
    the table the ids index."""

    spec: InputSpec
    role: str
    layout: Optional[Tuple[Union[int, str, None], ...]] = None
    vocab: Optional[int] = None
    note: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


def _past_layout(spec: InputSpec, graph: ModelGraph, value_info) -> Tuple[Tuple, str]:
    """Resolve every axis of a past key/value input: batch, past length, or a size."""
    if spec.shape is None:
        return (), "its shape is not declared"
    kv_heads, head_size, source = (None, None, "")
    layout: List[Union[int, str, None]] = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            layout.append(dim)
        elif axis == 0:
            layout.append(BATCH_AXIS)
        elif isinstance(dim, str) and ("past" in dim.lower() or "seq" in dim.lower()):
            layout.append(PAST_AXIS)
        else:
            if not source:
                kv_heads, head_size, source = _attention_dims(graph, spec.name, value_info)
                source = source or "no attention node reads it"
            # [batch, kv heads, past, head size] is the layout every known reader uses
            layout.append(kv_heads if axis == 1 else head_size if axis == len(spec.shape) - 1 else None)
    if PAST_AXIS not in layout and len(layout) == 4 and layout[2] is None:
        layout[2] = PAST_AXIS
    return tuple(layout), source


class ModelInputs:
    """The input interface of a model (see the module docstring)."""

    def __init__(self, inputs: Sequence[ModelInput], source: str = "model") -> None:
        self.inputs = list(inputs)
        self.source = source
        self.by_name = {i.name: i for i in self.inputs}

    @classmethod
    def of(cls, model: onnx.ModelProto, source: str = "model") -> "ModelInputs":
        """Read the interface of ``model`` (graph structure only; no weight is loaded)."""
        graph = ModelGraph(model)
        value_info = None
        inputs = []
        for spec in model_input_specs(model):
            role = role_of(spec)
            if role == PAST:
                value_info = value_info if value_info is not None else _value_info(model)
                layout, note = _past_layout(spec, graph, value_info)
                inputs.append(ModelInput(spec, role, layout=layout, note=note))
            elif role == IDS:
                inputs.append(ModelInput(spec, role, vocab=indexed_rows(graph, spec.name)))
            else:
                inputs.append(ModelInput(spec, role))
        return cls(inputs, source)

    @property
    def specs(self) -> List[InputSpec]:
        return [i.spec for i in self.inputs]

    def complete(self, batch: Mapping[str, Any], where: str = "batch") -> Dict[str, Any]:
        """``batch`` plus every missing input this interface can synthesize (see the module
        docstring); token ids are cast to the model's integer type when they fit, and
        checked against the embedding table. Inputs the batch has are kept as given."""
        if not isinstance(batch, Mapping) or any(k not in self.by_name for k in batch):
            return batch  # the caller's validation names the wrong type or the unknown input
        out = dict(batch)
        ids = self._ids(out, where)
        missing = [i for i in self.inputs if i.name not in out]
        if not missing:
            return out
        unknown = [i for i in missing if i.role in (IDS, OTHER)]
        if unknown or ids is None:
            first = unknown[0] if unknown else missing[0]
            why = ("onnxq can synthesize attention_mask, position_ids, token_type_ids and empty past key/values "
                   "from token ids" if unknown else "synthesizing the other inputs needs the token ids")
            raise CalibrationError(
                f"{where} is missing model input {first.name!r}: expected {first.spec.dtype} "
                f"{format_shape(first.spec.shape)}, got only {sorted(out) or 'nothing'} ({why})")
        rows, length = ids.shape[0], ids.shape[1]
        past = self._past_length(out)
        mask = out.get(self._name(MASK))
        order = sorted(missing, key=lambda i: i.role != MASK)  # positions count over the mask
        for item in order:
            out[item.name] = self._synthesize(item, rows, length, past, mask, where)
            if item.role == MASK:
                mask = out[item.name]
        return out

    def _name(self, role: str) -> Optional[str]:
        return next((i.name for i in self.inputs if i.role == role), None)

    def _ids(self, batch: Dict[str, Any], where: str) -> Optional[np.ndarray]:
        name = self._name(IDS)
        if name is None or name not in batch:
            return None
        item = self.by_name[name]
        ids = np.asarray(batch[name])
        if ids.ndim != 2:
            raise CalibrationError(f"{where}: {name!r} must be [batch, sequence] token ids, got shape {list(ids.shape)}")
        if ids.dtype.kind in "iu" and ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or (item.vocab is not None and hi >= item.vocab):
                raise CalibrationError(
                    f"{where}: token id {hi if lo >= 0 else lo} in {name!r} is outside the {item.vocab} rows of the "
                    f"{self.source}'s embedding table: the ids come from a tokenizer that does not belong to it")
            target = item.spec.dtype
            if ids.dtype != target and target.kind in "iu" and np.iinfo(target).max >= hi:
                batch[name] = ids = ids.astype(target)
        return ids

    def _past_length(self, batch: Mapping[str, Any]) -> int:
        for item in self.inputs:
            if item.role == PAST and item.name in batch and PAST_AXIS in (item.layout or ()):
                return int(np.shape(batch[item.name])[item.layout.index(PAST_AXIS)])
        return 0

    def _synthesize(self, item: ModelInput, rows: int, length: int, past: int, mask: Optional[np.ndarray],
                    where: str) -> np.ndarray:
        dtype = item.spec.dtype
        if item.role == MASK:
            return np.ones((rows, past + length), dtype)
        if item.role == TOKEN_TYPES:
            return np.zeros((rows, length), dtype)
        if item.role == POSITIONS:
            if mask is None:
                return np.broadcast_to(np.arange(past, past + length, dtype=dtype), (rows, length)).copy()
            counted = np.cumsum(np.asarray(mask) != 0, axis=-1) - 1
            return np.maximum(counted[:, -length:], 0).astype(dtype)
        if item.role == CACHE_BRANCH:
            return np.full(tuple(d if isinstance(d, int) and d > 0 else 1 for d in item.spec.shape or (1,)),
                           past > 0, dtype)
        return self._empty_past(item, rows, past, where)

    def _empty_past(self, item: ModelInput, rows: int, past: int, where: str) -> np.ndarray:
        layout = item.layout or ()
        unresolved = [axis for axis, size in enumerate(layout) if size is None]
        if not layout or unresolved:
            detail = (f"axis {unresolved[0]} ({item.spec.shape[unresolved[0]]!r})" if unresolved
                      else "its shape")
            raise CalibrationError(
                f"{where} is missing model input {item.name!r} {format_shape(item.spec.shape)} and onnxq cannot "
                f"synthesize an empty past for it: {detail} is symbolic and the graph gives no size for it "
                f"({item.note or 'no declared shape'}); pass the input yourself")
        shape = tuple(rows if size == BATCH_AXIS else past if size == PAST_AXIS else size for size in layout)
        return np.zeros(shape, item.spec.dtype)

    def describe(self) -> List[str]:
        """One line per input: name, dtype, declared shape and what onnxq fills it with."""
        fills = {IDS: "token ids (given)", MASK: "ones", POSITIONS: "0.. over the mask", TOKEN_TYPES: "zeros",
                 CACHE_BRANCH: "false (empty past)", OTHER: "must be given"}
        lines = []
        for item in self.inputs:
            how = fills.get(item.role) or "empty " + format_shape(item.layout)
            lines.append(f"{item.name}: {item.spec.dtype} {format_shape(item.spec.shape)} <- {how}")
        return lines
