"""Portable operators for GGML segments: the nodes and initializers stock onnxruntime runs.

Two targets (``--portable-ops``):

* ``matmulnbits``: ``com.microsoft.MatMulNBits`` for linear layers, ``GatherBlockQuantized``
  for embeddings. Codes are stored 4-bit (Q4_0, Q4_1, Q4_K) or 8-bit (Q5_0, Q5_1, Q5_K, Q6_K,
  Q8_0) with the ops' default zero point (8 / 128) after shifting the codes by
  ``2**(bits-1) - zero_point``, so the exact types carry no zero-point tensor. A type with a
  min is written exactly as ``scale * code`` plus the min term (below). On request
  (``float_zero_points``) Q4_1 / Q4_K in MatMulNBits take a float zero point
  ``-min / scale`` instead (within float32 rounding of ggml; not the default: onnxruntime's CPU
  kernel with float zero points is measured 40x slower, 8-bit refuses them, and
  GatherBlockQuantized takes integer zero points only).
* ``qdq``: opset-21 blocked ``DequantizeLinear`` (int4 / int8 codes minus the zero point,
  uint4 / uint8 codes of the min types) feeding ``MatMul`` / ``Gather``.

The min term, exact and in plain ops: for a linear layer ``X @ M_expanded = (X @ P) @ M``
with ``P`` the ``[K, groups]`` 0/1 matrix summing each group of ``X`` (one per shape, shared
by layers); for an embedding ``Gather(M, ids) @ P.T`` (one nonzero term per output, so
exact). A K-quant row with tail blocks of another type becomes one operator per segment on
a ``Slice`` of the input columns, summed (linear) or concatenated (embedding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import NodeProto, TensorProto, helper

from ..errors import ModelError
from .portable import BlockCodes, Segment

__all__ = ["MATMULNBITS", "QDQ", "PORTABLE_OPS", "MS_DOMAIN", "Tensor", "Emitted", "Emitter", "check_portable_ops", "NODE_MARK",
           "linear", "gather", "tied_tables"]

MATMULNBITS = "matmulnbits"
QDQ = "qdq"
PORTABLE_OPS = (MATMULNBITS, QDQ)
MS_DOMAIN = "com.microsoft"
#: the default-domain opset blocked DequantizeLinear needs
QDQ_OPSET = 21
#: MatMulNBits' accuracy levels: 0 unset, 1 float32, 2 float16, 3 bfloat16, 4 int8 activations
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
#: in the name of every node a conversion writes (``onnxq inspect`` groups them by layer)
NODE_MARK = ".portable"


@dataclass
class Tensor:
    """An initializer to write: ``array`` as is, or (``data_type`` set) raw packed bytes of
    a 4-bit tensor of shape ``dims``."""

    name: str
    array: np.ndarray
    data_type: Optional[int] = None
    dims: Tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


@dataclass
class Emitted:
    """What one GGML node became: nodes in order, new initializers, and for reports the op,
    the code width and the bytes."""

    op: str
    bits: str  # storage width of the codes, "4", "8", or "4+8" (a K-quant main part and an 8-bit tail)
    nodes: List[NodeProto] = field(default_factory=list)
    tensors: List[Tensor] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def pack4(codes: np.ndarray) -> np.ndarray:
    """uint8 codes < 16 along the last axis, two per byte, the first in the low nibble
    (MatMulNBits, GatherBlockQuantized and ONNX int4 all pack this way)."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.zeros(c.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def storage_bits(codes: BlockCodes) -> int:
    """4 when the codes fit a nibble, else 8 (5- and 6-bit codes are stored in bytes)."""
    return 4 if codes.bits <= 4 else 8


def shifted_codes(codes: BlockCodes, bits: int) -> np.ndarray:
    """Codes re-centred on the ops' default zero point ``2**(bits-1)``: the same integers
    minus ``zero_point``, plus the default (an exact type then needs no zero-point input)."""
    shifted = codes.codes.astype(np.int16) - codes.zero_point + (1 << (bits - 1))
    if shifted.min(initial=0) < 0 or shifted.max(initial=0) >= (1 << bits):
        raise ModelError(f"{codes.qtype.name} codes do not fit {bits} bits around zero point {1 << (bits - 1)}")
    return shifted.astype(np.uint8)


def float_zero_points(scales: np.ndarray, mins: np.ndarray) -> Optional[np.ndarray]:
    """Float zero points ``z`` with ``scale * code - z * scale`` = ``scale * code + min``
    (MatMulNBits' float-zero-point form): ``-min / scale``, nudged by an ulp where that makes
    ``z * scale`` round to ``-min`` exactly. None when a block has scale 0 and a min != 0
    (no zero point can express it)."""
    if np.any((scales == 0) & (mins != 0)):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scales != 0, -mins / scales, np.float32(0)).astype(np.float32)
    target = -mins
    for direction in (np.inf, -np.inf):
        nudged = np.nextafter(z, np.float32(direction)).astype(np.float32)
        better = (z * scales != target) & (nudged * scales == target)
        z = np.where(better, nudged, z)
    return z


def check_portable_ops(ops: str) -> str:
    """``ops`` if it names a portable target, else a ModelError listing them."""
    if ops not in PORTABLE_OPS:
        raise ModelError(f"--portable-ops must be one of {', '.join(PORTABLE_OPS)}, got {ops!r}")
    return ops


class Emitter:
    """Builds portable nodes with fresh names; shared helper tensors (the 0/1 group matrices,
    Slice bounds) are made once per model."""

    def __init__(self, ops: str, taken: set, float_zero_points: bool = False,
                 accuracy_level: Optional[int] = None) -> None:
        self.ops = check_portable_ops(ops)
        self.float_zero_points = float_zero_points
        if accuracy_level is not None and (ops != MATMULNBITS or accuracy_level not in ACCURACY_LEVELS):
            raise ModelError(f"accuracy_level must be one of {ACCURACY_LEVELS} and only applies to matmulnbits "
                             f"(QDQ: the session option session.qdq_matmulnbits_accuracy_level), got {accuracy_level}")
        #: MatMulNBits' ``accuracy_level`` (None: unset, float32 activations; 4: int8 activations)
        self.accuracy_level = accuracy_level
        self.taken = taken
        self._shared: Dict[tuple, str] = {}

    def name(self, base: str) -> str:
        from ..graph_edit import unique_name

        return unique_name(None, base, self.taken, sep=".")

    def shared(self, key: tuple, base: str, make: Callable[[], np.ndarray], out: Emitted) -> str:
        """The name of a helper initializer, written with the first node that needs it."""
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = self.name(base)
            out.tensors.append(Tensor(found, make()))
        return found

    def const_i64(self, values: Sequence[int], out: Emitted) -> str:
        key = ("i64",) + tuple(int(v) for v in values)
        return self.shared(key, "portable.i64." + "_".join(str(int(v)).replace("-", "m") for v in values),
                           lambda: np.asarray(values, dtype=np.int64), out)

    def group_matrix(self, length: int, group: int, out: Emitted, transposed: bool = False) -> str:
        """``P[k, k // group] = 1`` (``[length, groups]``), or its transpose."""
        def make() -> np.ndarray:
            groups = -(-length // group)
            p = np.zeros((length, groups), dtype=np.float32)
            p[np.arange(length), np.arange(length) // group] = 1.0
            return np.ascontiguousarray(p.T) if transposed else p
        kind = "expand" if transposed else "sum"
        return self.shared(("group", length, group, transposed), f"portable.group_{kind}.{length}x{group}", make, out)

    def node(self, out: Emitted, op: str, inputs: Sequence[str], base: str, domain: str = "", **attrs) -> str:
        y = self.name(base)
        out.nodes.append(helper.make_node(op, list(inputs), [y], name=self.name(base), domain=domain or None, **attrs))
        return y

    def slice_columns(self, out: Emitted, x: str, start: int, stop: int, base: str) -> str:
        return self.node(out, "Slice", [x, self.const_i64([start], out), self.const_i64([stop], out),
                                        self.const_i64([-1], out)], f"{base}.cols{start}")


def _trim(codes: BlockCodes, length: int) -> BlockCodes:
    """The groups that hold the first ``length`` elements (drops whole padding groups)."""
    groups = -(-length // codes.group)
    if groups == codes.groups:
        return codes
    mins = None if codes.mins is None else codes.mins[:, :groups]
    return BlockCodes(codes.qtype, codes.group, codes.bits, codes.codes[:, :groups * codes.group],
                      codes.scales[:, :groups], codes.zero_point, mins)


def matmulnbits_segment(em: Emitter, out: Emitted, x: str, seg: Segment, N: int, base: str,
                        blocks: Optional[str] = None) -> str:
    """``x[..., seg] @ W_seg.T`` with MatMulNBits (+ the exact min term when needed).
    ``blocks``: an existing ``B`` to read (a tied table written by the embedding)."""
    c = _trim(seg.codes, seg.length)
    bits = storage_bits(c)
    inputs = [x, blocks or "", ""]
    float_zp = float_zero_points(c.scales, c.mins) if _raw_codes(c) and em.float_zero_points else None
    if blocks is None:
        inputs[1] = em.name(f"{base}.B{bits}")
        out.tensors.append(Tensor(inputs[1], _stored_blocks(c, N)))
    inputs[2] = em.name(f"{base}.scales")
    out.tensors.append(Tensor(inputs[2], c.scales))
    if _raw_codes(c):
        zp_name = em.name(f"{base}.zero_points")
        if float_zp is not None:
            out.tensors.append(Tensor(zp_name, float_zp))
            out.notes.append("float zero point")
        else:  # integer zero point 0; the min term is added below
            out.tensors.append(Tensor(zp_name, pack4(np.zeros((N, c.groups), np.uint8))))
        inputs.append(zp_name)
    extra = {} if em.accuracy_level is None else {"accuracy_level": em.accuracy_level}
    y = em.node(out, "MatMulNBits", inputs, f"{base}.MatMulNBits", MS_DOMAIN,
                K=seg.length, N=N, bits=bits, block_size=c.group, **extra)
    if c.mins is not None and float_zp is None:
        y = _linear_min_term(em, out, x, y, c, seg.length, base)
    return y


def _linear_min_term(em: Emitter, out: Emitted, x: str, y: str, c: BlockCodes, length: int, base: str) -> str:
    """``y + (x @ P) @ mins.T``: each group's input sum times its min."""
    sums = em.node(out, "MatMul", [x, em.group_matrix(length, c.group, out)], f"{base}.group_sums")
    mins_t = compact_floats(em, out, np.ascontiguousarray(c.mins.T), f"{base}.mins")
    term = em.node(out, "MatMul", [sums, mins_t], f"{base}.min_term")
    return em.node(out, "Add", [y, term], f"{base}.with_mins")


def _qdq_values(c: BlockCodes, length: int) -> np.ndarray:
    """int16 ``[N, length]``: ``code - zero_point`` (signed) for the exact types, the codes
    (unsigned, the min term added apart) for the types with a min."""
    return (c.codes.astype(np.int16) - (c.zero_point if c.mins is None else 0))[:, :length]


def _int8_codes(c: BlockCodes, values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values.astype(np.int8 if c.mins is None else np.uint8))


def qdq_weight(em: Emitter, out: Emitted, c: BlockCodes, length: int, base: str) -> str:
    """A blocked DequantizeLinear (axis 0) of a MatMul weight ``[length, N]``: int4 / int8
    codes minus the zero point with no zero-point input, or uint4 / uint8 codes of a type
    with a min."""
    bits = storage_bits(c)
    values = np.ascontiguousarray(_qdq_values(c, length).T)
    q_name, s_name = em.name(f"{base}.q{bits}"), em.name(f"{base}.scales")
    if bits == 4:
        data_type = TensorProto.INT4 if c.mins is None else TensorProto.UINT4
        raw = pack4((values.reshape(-1) & 0x0F).astype(np.uint8))
        out.tensors.append(Tensor(q_name, raw, data_type, tuple(values.shape)))
    else:
        out.tensors.append(Tensor(q_name, _int8_codes(c, values)))
    out.tensors.append(Tensor(s_name, np.ascontiguousarray(c.scales.T)))
    return em.node(out, "DequantizeLinear", [q_name, s_name], f"{base}.DequantizeLinear", axis=0,
                   block_size=c.group)


def qdq_gather(em: Emitter, out: Emitted, ids: str, c: BlockCodes, length: int, base: str) -> str:
    """Rows of a table as Gather of 8-bit codes and of scales, then a blocked
    DequantizeLinear of just those rows (``Gather`` takes no int4, and dequantizing the whole
    table for every call would cost vocabulary x K work per token)."""
    q_name, s_name = em.name(f"{base}.q8"), em.name(f"{base}.scales")
    out.tensors.append(Tensor(q_name, _int8_codes(c, _qdq_values(c, length))))
    out.tensors.append(Tensor(s_name, c.scales))
    rows = em.node(out, "Gather", [q_name, ids], f"{base}.Gather", axis=0)
    scales = em.node(out, "Gather", [s_name, ids], f"{base}.row_scales", axis=0)
    return em.node(out, "DequantizeLinear", [rows, scales], f"{base}.DequantizeLinear", axis=-1,
                   block_size=c.group)


def qdq_segment(em: Emitter, out: Emitted, x: str, seg: Segment, N: int, base: str) -> str:
    """``x[..., seg] @ W_seg.T`` as DequantizeLinear -> MatMul (the weight ``[length, N]``,
    blocked along axis 0: the form onnxruntime fuses into MatMulNBits)."""
    c = _trim(seg.codes, seg.length)
    w = qdq_weight(em, out, c, seg.length, base)
    y = em.node(out, "MatMul", [x, w], f"{base}.MatMul")
    if c.mins is not None:
        y = _linear_min_term(em, out, x, y, c, seg.length, base)
    return y


def _bits_label(segments: Sequence[Segment]) -> str:
    return "+".join(dict.fromkeys(str(storage_bits(s.codes)) for s in segments))


def _raw_codes(c: BlockCodes) -> bool:
    """True for 4-bit codes of a type with a min: stored as they are, read with a zero-point
    input (MatMulNBits: the float one; GatherBlockQuantized: zeros). Every other segment is
    stored shifted to the ops' default zero point and needs none."""
    return c.mins is not None and storage_bits(c) == 4


def _stored_blocks(c: BlockCodes, N: int) -> np.ndarray:
    """MatMulNBits' ``B`` (also GatherBlockQuantized's data): ``[N, groups, bytes per group]``."""
    bits = storage_bits(c)
    stored = c.codes if _raw_codes(c) else shifted_codes(c, bits)
    return (pack4(stored) if bits == 4 else stored).reshape(N, c.groups, -1)


def compact_floats(em: Emitter, out: Emitted, values: np.ndarray, base: str) -> str:
    """A float32 constant, stored as float16 (+ a Cast, folded by onnxruntime at load) when
    every value survives the round trip (Q4_1 / Q5_1 mins are float16 in ggml)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.array_equal(half.astype(np.float32).view(np.uint32), values.view(np.uint32)):
        name = em.name(base)
        out.tensors.append(Tensor(name, values))
        return name
    name = em.name(base + ".f16")
    out.tensors.append(Tensor(name, half))
    return em.node(out, "Cast", [name], base + ".cast", to=TensorProto.FLOAT)


def tied_tables(em: Emitter, out: Emitted, segments: Sequence[Segment], N: int, base: str) -> List[str]:
    """MatMulNBits' ``B`` per segment, for a tied embedding and head to share
    (GatherBlockQuantized reads it as rank-3 data)."""
    if em.ops != MATMULNBITS:
        raise ModelError("internal: only MatMulNBits / GatherBlockQuantized share a table")
    names = []
    for seg in segments:
        c = _trim(seg.codes, seg.length)
        name = em.name(f"{base}.seg{seg.start}.B{storage_bits(c)}")
        out.tensors.append(Tensor(name, _stored_blocks(c, N)))
        names.append(name)
    return names


def linear(em: Emitter, name: str, x: str, y: str, segments: Sequence[Segment], N: int,
           bias: Optional[str], tables: Optional[Sequence[str]] = None) -> Emitted:
    """The nodes computing ``y = x @ W.T (+ bias)`` for a GgmlMatMul; ``tables``: the tied
    per-segment tables to read instead of writing weights."""
    out = Emitted(op="MatMulNBits" if em.ops == MATMULNBITS else "DequantizeLinear+MatMul",
                  bits=_bits_label(segments))
    parts = []
    for i, seg in enumerate(segments):
        base = f"{name}{NODE_MARK}" + (f".seg{seg.start}" if len(segments) > 1 else "")
        xs = x if len(segments) == 1 else em.slice_columns(out, x, seg.start, seg.stop, base)
        table = tables[i] if tables else None
        if em.ops == MATMULNBITS:
            parts.append(matmulnbits_segment(em, out, xs, seg, N, base, blocks=table))
        else:
            parts.append(qdq_segment(em, out, xs, seg, N, base))
    total = parts[0]
    for part in parts[1:]:
        total = em.node(out, "Add", [total, part], f"{name}{NODE_MARK}.sum")
    if bias:
        total = em.node(out, "Add", [total, bias], f"{name}{NODE_MARK}.bias")
    _rename_output(out, total, y)
    return out


def _gbq_segment(em: Emitter, out: Emitted, ids: str, seg: Segment, N: int, base: str, table: Optional[str]) -> str:
    """GatherBlockQuantized of one segment's columns: rank-2 data of its own, or the rank-3
    tied ``B`` (then the ``[..., groups, group]`` result is merged back to ``[..., groups * group]``)."""
    c = _trim(seg.codes, seg.length)
    bits = storage_bits(c)
    rank3 = table is not None
    if table is None:
        table = em.name(f"{base}.data{bits}")
        out.tensors.append(Tensor(table, _stored_blocks(c, N).reshape(N, -1)))
    scales = em.name(f"{base}.scales")
    out.tensors.append(Tensor(scales, c.scales[:, :, None] if rank3 else c.scales))
    inputs = [table, ids, scales]
    if _raw_codes(c):  # 4-bit codes as stored, zero point 0 (the op's zero points are integers)
        zp = em.name(f"{base}.zero_points")
        out.tensors.append(Tensor(zp, pack4(np.zeros((N, c.groups, 1) if rank3 else (N, c.groups), np.uint8))))
        inputs.append(zp)
    y = em.node(out, "GatherBlockQuantized", inputs, f"{base}.GatherBlockQuantized", MS_DOMAIN,
                bits=bits, block_size=c.group, gather_axis=0, quantize_axis=2 if rank3 else 1)
    if rank3:
        shape = em.node(out, "Shape", [y], f"{base}.shape", end=-2)
        target = em.node(out, "Concat", [shape, em.const_i64([-1], out)], f"{base}.target", axis=0)
        y = em.node(out, "Reshape", [y, target], f"{base}.merged")
    if c.groups * c.group != seg.length:
        y = em.node(out, "Slice", [y, em.const_i64([0], out), em.const_i64([seg.length], out),
                                   em.const_i64([-1], out)], f"{base}.unpadded")
    return y


def gather(em: Emitter, name: str, ids: str, y: str, segments: Sequence[Segment], N: int,
           tables: Optional[Sequence[str]] = None) -> Emitted:
    """The nodes computing ``y = table[ids]`` for a GgmlGather."""
    out = Emitted(op="GatherBlockQuantized" if em.ops == MATMULNBITS else "Gather+DequantizeLinear",
                  bits=_bits_label(segments) if em.ops == MATMULNBITS else "8")
    parts = []
    for i, seg in enumerate(segments):
        base = f"{name}{NODE_MARK}" + (f".seg{seg.start}" if len(segments) > 1 else "")
        table = tables[i] if tables else None
        c = _trim(seg.codes, seg.length)
        if em.ops == MATMULNBITS:
            part = _gbq_segment(em, out, ids, seg, N, base, table)
        else:
            part = qdq_gather(em, out, ids, c, seg.length, base)
        if c.mins is not None:
            mins = compact_floats(em, out, c.mins, f"{base}.mins")
            rows = em.node(out, "Gather", [mins, ids], f"{base}.row_mins", axis=0)
            term = em.node(out, "MatMul", [rows, em.group_matrix(seg.length, c.group, out, transposed=True)],
                           f"{base}.min_term")
            part = em.node(out, "Add", [part, term], f"{base}.with_mins")
        parts.append(part)
    total = parts[0] if len(parts) == 1 else em.node(out, "Concat", parts, f"{name}{NODE_MARK}.concat", axis=-1)
    _rename_output(out, total, y)
    return out


def _rename_output(out: Emitted, produced: str, y: str) -> None:
    """The last node writes ``y`` (the GGML node's output), so consumers are untouched."""
    for node in out.nodes:
        for i, o in enumerate(node.output):
            if o == produced:
                node.output[i] = y
                return
    raise ModelError(f"internal: portable nodes do not produce {produced!r}")
