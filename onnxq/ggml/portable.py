"""GGML blocks re-encoded as integer codes, scales and offsets: the numbers of portable export.

Every GGML weight type dequantizes as ``w = scale * (code - zero_point)`` (the types without
a min) or ``w = scale * code + min`` (Q4_1, Q5_1, Q4_K, Q5_K), per group of 32 elements
(16 for Q6_K). One plain function per type reads a block's bytes into that form
(:class:`BlockCodes`), keeping ggml's arithmetic: the scale is the float32 ggml multiplies
by (``d``, or ``d * sc`` for the K-quants) and the min is the float32 ggml adds (``m``, or
``-(dmin * m)``), so ``scale * code + min`` and ``scale * (code - zero_point)`` evaluated in
float32 are ggml's dequantization bit for bit (``tests/test_portable.py`` checks this against
:meth:`~onnxq.ggml.codec.QuantizedGGMLTensor.dequantize`, the one dequantizer).

A row in onnxq's layout may end in tail blocks of another type: :func:`row_segments` splits
it into one :class:`Segment` per part, each of a single type.

The emitters (:mod:`onnxq.ggml.portable_ops`) turn segments into operators of stock
onnxruntime; this module holds no graph code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import ModelError
from ..formats import GGMLQuantType, row_layout

__all__ = ["BlockCodes", "Segment", "DECODERS", "decode_blocks", "row_segments"]


@dataclass
class BlockCodes:
    """Rows of blocks as integer codes: ``w = scales * (codes - zero_point)`` per group of
    ``group`` elements, plus ``mins`` (float32 ``[N, groups]``) when the type has a min
    (then ``zero_point`` is 0 and ``w = scales * codes + mins``)."""

    qtype: GGMLQuantType
    group: int  # elements per scale: 32, or 16 for Q6_K
    bits: int  # width of the codes: 4, 5, 6 or 8
    codes: np.ndarray  # uint8 [N, groups * group], values < 2**bits
    scales: np.ndarray  # float32 [N, groups]
    zero_point: int
    mins: Optional[np.ndarray] = None  # float32 [N, groups]

    @property
    def groups(self) -> int:
        return int(self.scales.shape[1])

    def dequantize(self) -> np.ndarray:
        """float32 ``[N, groups * group]`` in ggml's operation order (for checks and tests)."""
        N = self.codes.shape[0]
        c = self.codes.reshape(N, self.groups, self.group).astype(np.float32)
        if self.mins is not None:
            w = self.scales[:, :, None] * c + self.mins[:, :, None]
        else:
            w = (c - np.float32(self.zero_point)) * self.scales[:, :, None]
        return w.reshape(N, -1)


def _blocks(data: np.ndarray, qtype: GGMLQuantType) -> np.ndarray:
    """uint8 ``[N, nb, type_size]`` view of ``[N, nb * type_size]`` bytes."""
    N, nbytes = data.shape
    if nbytes % qtype.type_size:
        raise ModelError(f"{nbytes} bytes per row is not a whole number of {qtype.name} blocks")
    return np.ascontiguousarray(data).reshape(N, nbytes // qtype.type_size, qtype.type_size)


def _f16(b: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 at byte ``offset`` of every block, as float32 ``[N, nb]``."""
    return np.ascontiguousarray(b[..., offset:offset + 2]).view("<f2")[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``[..., n]`` bytes -> ``[..., 2n]``: the low nibbles, then the high nibbles (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits_of(qh: np.ndarray, count: int) -> np.ndarray:
    """Bit ``e`` of the little-endian bytes ``qh`` for ``e < count``, as uint8 0/1 ``[..., count]``."""
    e = np.arange(count)
    return (qh[..., e // 8] >> (e % 8).astype(np.uint8)) & 1


def _result(qtype: GGMLQuantType, group: int, bits: int, codes: np.ndarray, scales: np.ndarray,
            zero_point: int, mins: Optional[np.ndarray] = None) -> BlockCodes:
    N = codes.shape[0]
    return BlockCodes(qtype, group, bits, np.ascontiguousarray(codes.reshape(N, -1), dtype=np.uint8),
                      np.ascontiguousarray(scales.reshape(N, -1), dtype=np.float32), zero_point,
                      None if mins is None else np.ascontiguousarray(mins.reshape(N, -1), dtype=np.float32))


def decode_q4_0(data: np.ndarray) -> BlockCodes:
    """Q4_0: ``d * (q - 8)``, 4-bit codes."""
    b = _blocks(data, GGMLQuantType.Q4_0)
    return _result(GGMLQuantType.Q4_0, 32, 4, _nibbles(b[..., 2:18]), _f16(b, 0), 8)


def decode_q4_1(data: np.ndarray) -> BlockCodes:
    """Q4_1: ``d * q + m``."""
    b = _blocks(data, GGMLQuantType.Q4_1)
    return _result(GGMLQuantType.Q4_1, 32, 4, _nibbles(b[..., 4:20]), _f16(b, 0), 0, _f16(b, 2))


def decode_q5_0(data: np.ndarray) -> BlockCodes:
    """Q5_0: ``d * (q - 16)``, the fifth bit of element ``e`` is bit ``e`` of ``qh``."""
    b = _blocks(data, GGMLQuantType.Q5_0)
    codes = _nibbles(b[..., 6:22]) | (_bits_of(b[..., 2:6], 32) << 4)
    return _result(GGMLQuantType.Q5_0, 32, 5, codes, _f16(b, 0), 16)


def decode_q5_1(data: np.ndarray) -> BlockCodes:
    """Q5_1: ``d * q + m``, 5-bit codes."""
    b = _blocks(data, GGMLQuantType.Q5_1)
    codes = _nibbles(b[..., 8:24]) | (_bits_of(b[..., 4:8], 32) << 4)
    return _result(GGMLQuantType.Q5_1, 32, 5, codes, _f16(b, 0), 0, _f16(b, 2))


def decode_q8_0(data: np.ndarray) -> BlockCodes:
    """Q8_0: ``d * q`` with int8 ``q``, stored as ``q + 128`` with zero point 128."""
    b = _blocks(data, GGMLQuantType.Q8_0)
    codes = (b[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return _result(GGMLQuantType.Q8_0, 32, 8, codes, _f16(b, 0), 128)


def _k_scales(scales: np.ndarray) -> tuple:
    """The eight 6-bit scales and mins of Q4_K / Q5_K super-blocks (``get_scale_min_k4``):
    uint8 ``[N, nb, 8]`` each."""
    q = scales.astype(np.uint8)
    sc = np.concatenate([q[..., 0:4] & 63, (q[..., 8:12] & 0x0F) | ((q[..., 0:4] >> 6) << 4)], axis=-1)
    m = np.concatenate([q[..., 4:8] & 63, (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, m


def _k_min_form(b: np.ndarray, codes: np.ndarray, qtype: GGMLQuantType, bits: int) -> BlockCodes:
    """Q4_K / Q5_K: sub-block ``j`` is ``(d * sc_j) * q - dmin * m_j``: scale ``d * sc_j``,
    min ``-(dmin * m_j)`` (negating is exact)."""
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, m = _k_scales(b[..., 4:16])
    scales = d[..., None] * sc.astype(np.float32)
    mins = -(dmin[..., None] * m.astype(np.float32))
    return _result(qtype, 32, bits, codes, scales, 0, mins)


def _k_sub_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K low bits: chunk ``c`` of 32 bytes holds sub-block ``2c`` (low nibbles)
    and ``2c + 1`` (high nibbles). -> uint8 ``[N, nb, 256]``."""
    N, nb = qs.shape[:2]
    chunks = qs.reshape(N, nb, 4, 32)
    return np.stack([chunks & 0x0F, chunks >> 4], axis=3).reshape(N, nb, 256)


def decode_q4_k(data: np.ndarray) -> BlockCodes:
    b = _blocks(data, GGMLQuantType.Q4_K)
    return _k_min_form(b, _k_sub_nibbles(b[..., 16:144]), GGMLQuantType.Q4_K, 4)


def decode_q5_k(data: np.ndarray) -> BlockCodes:
    """Q5_K: the fifth bit of element ``l`` of sub-block ``j`` is bit ``j`` of ``qh[l]``."""
    b = _blocks(data, GGMLQuantType.Q5_K)
    N, nb = b.shape[:2]
    qh = b[..., 16:48]  # [N, nb, 32]
    j = np.arange(8, dtype=np.uint8)
    high = ((qh[..., None, :] >> j[:, None]) & 1).reshape(N, nb, 256)  # [j, l] order
    return _k_min_form(b, _k_sub_nibbles(b[..., 48:176]) | (high << 4), GGMLQuantType.Q5_K, 5)


def decode_q6_k(data: np.ndarray) -> BlockCodes:
    """Q6_K: group ``g`` of 16 is ``(d * sc_g) * (q - 32)``; in each half of 128, element
    ``l + 32 i`` (i = 0..3) takes a nibble of ``ql`` and two bits of ``qh[l]``."""
    b = _blocks(data, GGMLQuantType.Q6_K)
    N, nb = b.shape[:2]
    ql = b[..., 0:128].reshape(N, nb, 2, 2, 32)  # [half, first/second 32 bytes, l]
    qh = b[..., 128:192].reshape(N, nb, 2, 32)
    low = np.stack([ql[..., 0, :] & 0x0F, ql[..., 1, :] & 0x0F, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4], axis=3)
    high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=3)  # [N, nb, half, i, l]
    codes = (low | (high << 4)).reshape(N, nb, 256)
    scales = _f16(b, 208)[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
    return _result(GGMLQuantType.Q6_K, 16, 6, codes, scales, 32)


DECODERS: Dict[GGMLQuantType, Callable[[np.ndarray], BlockCodes]] = {
    GGMLQuantType.Q4_0: decode_q4_0,
    GGMLQuantType.Q4_1: decode_q4_1,
    GGMLQuantType.Q5_0: decode_q5_0,
    GGMLQuantType.Q5_1: decode_q5_1,
    GGMLQuantType.Q8_0: decode_q8_0,
    GGMLQuantType.Q4_K: decode_q4_k,
    GGMLQuantType.Q5_K: decode_q5_k,
    GGMLQuantType.Q6_K: decode_q6_k,
}



def decode_blocks(qtype: GGMLQuantType, data: np.ndarray) -> BlockCodes:
    """The codes of rows of ``qtype`` blocks (uint8 ``[N, nb * type_size]``)."""
    decoder = DECODERS.get(qtype)
    if decoder is None:
        raise ModelError(f"{qtype.name} is not a weight type: no portable form")
    return decoder(data)


@dataclass
class Segment:
    """Columns ``[start, stop)`` of every row, all of one type (``codes`` may run past
    ``stop``: the zero padding of the last block)."""

    start: int
    stop: int
    codes: BlockCodes

    @property
    def length(self) -> int:
        return self.stop - self.start


def row_segments(data: np.ndarray, qtype: str, K: int, tail_type: Optional[str]) -> List[Segment]:
    """Rows in onnxq's layout (uint8 ``[N, row_bytes]``) as one segment per block type:
    the main blocks, then the tail blocks when the row has some."""
    layout = row_layout(qtype, K, tail_type)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != layout.row_bytes:
        raise ModelError(f"blocks of {layout.qtype.name} rows of K={K} must be uint8 [N, {layout.row_bytes}], "
                         f"got {data.dtype} {list(data.shape)}")
    segments = []
    if layout.n_main:
        segments.append(Segment(0, min(K, layout.main_elems), decode_blocks(layout.qtype, data[:, :layout.main_bytes])))
    if layout.tail_type is not None:
        segments.append(Segment(layout.main_elems, K, decode_blocks(layout.tail_type, data[:, layout.main_bytes:])))
    return segments
