"""Build and read onnxq's custom-op nodes (``GgmlMatMul``, ``GgmlGather``, domain ``onnxq``).

The one place where the op names, the domain and the attribute names are spelled
(the contract is ``cython_kernels/ops/README.md``). Graph passes build nodes with
:func:`make_ggml_matmul_node` / :func:`make_ggml_gather_node` and must add
:func:`onnxq_opset` to the model's ``opset_import``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np
from onnx import AttributeProto, NodeProto, OperatorSetIdProto, TensorProto, helper, numpy_helper

from ..errors import ModelError
from ..formats import K_QUANTS, MAX_K, MAX_N, TAIL_TYPES, WEIGHT_TYPES, row_bytes
from ..plan import OP_MODES

DOMAIN = "onnxq"
OPSET_VERSION = 1
MATMUL_OP = "GgmlMatMul"
GATHER_OP = "GgmlGather"
OP_TYPES = (MATMUL_OP, GATHER_OP)

ATTR_QUANT_TYPE = "quant_type"
ATTR_K = "K"
ATTR_N = "N"
ATTR_TAIL_TYPE = "tail_type"
ATTR_MODE = "mode"
MODES = OP_MODES


def onnxq_opset() -> OperatorSetIdProto:
    """The ``opset_import`` entry a model using onnxq's ops needs."""
    return helper.make_opsetid(DOMAIN, OPSET_VERSION)


def _check_types(quant_type: str, tail_type: Optional[str]) -> Tuple[str, Optional[str]]:
    qt = str(quant_type).upper()
    if qt not in WEIGHT_TYPES:
        raise ModelError(f"unknown ggml quant_type {quant_type!r}; expected one of {', '.join(WEIGHT_TYPES)}")
    if not tail_type:
        return qt, None
    tt = str(tail_type).upper()
    if tt not in TAIL_TYPES:
        raise ModelError(f"tail_type {tail_type!r} is not a 32-element type ({', '.join(TAIL_TYPES)})")
    if qt not in K_QUANTS:
        raise ModelError(f"tail_type is only valid with a K-quant quant_type, not {qt}")
    return qt, tt


def checked_row_bytes(quant_type: str, K: int, tail_type: Optional[str] = None) -> int:
    """Bytes of one weight row of ``K`` elements; attribute values a node could carry are
    checked and refused with a ModelError (the layout of cython_kernels/ops/README.md)."""
    qt, tt = _check_types(quant_type, tail_type)
    K = int(K)
    if not 1 <= K <= MAX_K:
        raise ModelError(f"K={K} must be in [1, {MAX_K}]")
    return row_bytes(qt, K, tt)


@dataclass
class GgmlNode:
    """A node and the initializers it brings (blocks, bias) for the caller to add to the graph."""

    node: NodeProto
    initializers: List[TensorProto] = field(default_factory=list)


def _blocks_input(blocks: Union[np.ndarray, str], default_name: str, node: str, op: str, attrs: dict, rb: int,
                  inits: List[TensorProto]) -> str:
    """The name of the blocks tensor a node reads: ``blocks`` itself when it names an existing
    tensor, else a new checked initializer ``[N, row_bytes]`` appended to ``inits``."""
    if isinstance(blocks, str):
        return blocks
    arr = np.asarray(blocks)
    N = attrs[ATTR_N]
    where = f"{op} {node!r}: blocks {default_name!r}"
    if arr.dtype != np.uint8:
        raise ModelError(f"{where} must be uint8, got {arr.dtype}")
    if arr.size != N * rb:
        layout = attrs[ATTR_QUANT_TYPE] + (f" (tail {attrs[ATTR_TAIL_TYPE]})" if ATTR_TAIL_TYPE in attrs else "")
        raise ModelError(
            f"{where} have {arr.size} bytes, {layout} with K={attrs[ATTR_K]} N={N} needs {N * rb}"
        )
    inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.reshape(N, rb)), default_name))
    return default_name


def _common_attrs(quant_type: str, K: int, N: int, tail_type: Optional[str]) -> Tuple[dict, int]:
    qt, tt = _check_types(quant_type, tail_type)
    K, N = int(K), int(N)
    if not 1 <= N <= MAX_N:
        raise ModelError(f"N={N} must be in [1, {MAX_N}]")
    rb = checked_row_bytes(qt, K, tt)
    attrs = {ATTR_QUANT_TYPE: qt, ATTR_K: K, ATTR_N: N}
    if tt is not None:
        attrs[ATTR_TAIL_TYPE] = tt
    return attrs, rb


def make_ggml_matmul_node(
    name: str,
    x: str,
    y: str,
    weight: Union[np.ndarray, str],
    *,
    quant_type: str,
    K: int,
    N: int,
    bias: Union[np.ndarray, str, None] = None,
    tail_type: Optional[str] = None,
    mode: str = "fast",
    weight_name: Optional[str] = None,
    bias_name: Optional[str] = None,
) -> GgmlNode:
    """A ``GgmlMatMul`` computing ``y = x @ dequant(weight).T (+ bias)``.

    ``weight`` is either the packed blocks (uint8, ``N * row_bytes`` bytes, becomes an
    initializer ``[N, row_bytes]`` named ``weight_name`` or ``<name>.W``) or the name of an
    existing tensor (e.g. a tied embedding table). ``bias`` likewise: float32 ``[N]`` or a name.
    """
    attrs, rb = _common_attrs(quant_type, K, N, tail_type)
    if mode not in MODES:
        raise ModelError(f"{MATMUL_OP} {name!r}: mode {mode!r} must be one of {MODES}")
    attrs[ATTR_MODE] = mode
    inits: List[TensorProto] = []
    inputs = [x, _blocks_input(weight, weight_name or f"{name}.W", name, MATMUL_OP, attrs, rb, inits)]
    if bias is not None:
        if isinstance(bias, str):
            b_name = bias
        else:
            b = np.asarray(bias)
            if b.dtype != np.float32 or b.shape != (attrs[ATTR_N],):
                raise ModelError(
                    f"{MATMUL_OP} {name!r}: bias must be float32 [{attrs[ATTR_N]}], got {b.dtype} {list(b.shape)}"
                )
            b_name = bias_name or f"{name}.bias"
            inits.append(numpy_helper.from_array(b, b_name))
        inputs.append(b_name)
    node = helper.make_node(MATMUL_OP, inputs, [y], name=name, domain=DOMAIN, **attrs)
    return GgmlNode(node, inits)


def make_ggml_gather_node(
    name: str,
    indices: str,
    y: str,
    table: Union[np.ndarray, str],
    *,
    quant_type: str,
    K: int,
    N: int,
    tail_type: Optional[str] = None,
    table_name: Optional[str] = None,
) -> GgmlNode:
    """A ``GgmlGather``: ``y[*indices.shape, K]`` = dequantized rows of ``table`` (``[N, K]``
    as blocks, or the name of an existing blocks tensor, e.g. shared with a tied lm_head)."""
    attrs, rb = _common_attrs(quant_type, K, N, tail_type)
    inits: List[TensorProto] = []
    t_name = _blocks_input(table, table_name or f"{name}.table", name, GATHER_OP, attrs, rb, inits)
    node = helper.make_node(GATHER_OP, [t_name, indices], [y], name=name, domain=DOMAIN, **attrs)
    return GgmlNode(node, inits)


def is_ggml_node(node: NodeProto) -> bool:
    """True for a node of onnxq's custom-op domain."""
    return node.domain == DOMAIN and node.op_type in OP_TYPES


def ggml_node_attributes(node: NodeProto) -> dict:
    """The attributes of a GgmlMatMul / GgmlGather node with defaults filled in:
    ``quant_type``, ``K``, ``N``, ``tail_type`` (None if absent), ``mode`` (matmul only)."""
    if not is_ggml_node(node):
        raise ModelError(f"node {node.name!r} ({node.domain}:{node.op_type}) is not an onnxq ggml op")
    got = {}
    for a in node.attribute:
        if a.type == AttributeProto.STRING:
            got[a.name] = a.s.decode("utf-8", "replace")
        elif a.type == AttributeProto.INT:
            got[a.name] = int(a.i)
    for req in (ATTR_QUANT_TYPE, ATTR_K, ATTR_N):
        if req not in got:
            raise ModelError(f"{node.op_type} {node.name!r}: missing attribute {req!r}")
    out = {
        ATTR_QUANT_TYPE: got[ATTR_QUANT_TYPE],
        ATTR_K: got[ATTR_K],
        ATTR_N: got[ATTR_N],
        ATTR_TAIL_TYPE: got.get(ATTR_TAIL_TYPE) or None,
    }
    if node.op_type == MATMUL_OP:
        out[ATTR_MODE] = got.get(ATTR_MODE, "fast")
    return out
