"""The GGML block types onnxq writes, their sizes, and onnxq's row layout: the one table.

Sizes are ggml's (``ggml/src/ggml-common.h``); the ids are ggml's ``enum ggml_type``
values, so a type means the same thing here, in a GGUF file and in the custom op's
``quant_type`` attribute. ``cython_kernels/ggml_blocks.h`` holds the same table for the C
side; ``tests/test_formats.py`` checks the two against each other.

A row of ``K`` weights (one output feature of a MatMul) is stored as blocks of the
main type; for a K-quant (256-element super-blocks) the last ``K mod 256`` elements
may instead go into blocks of a 32-element *tail* type, so widths such as 576 need no
padding to 768. The last block of either part is zero-padded. See :func:`row_layout`.

This module is part of the shared floor (recipes, plans, reports and ``inspect`` name and
size the types too), so it imports nothing from the method wings.
"""
from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

__all__ = [
    "GGMLQuantType",
    "RowLayout",
    "row_layout",
    "row_bytes",
    "effective_bits_per_weight",
    "resolve_tail",
    "default_tail_type",
    "BLOCK_TRAITS",
    "WEIGHT_TYPES",
    "TAIL_TYPES",
    "K_QUANTS",
    "MAX_K",
    "MAX_N",
]

# The limits the op library enforces (ONNXQ_MAX_K in ggml_blocks.h, ONNXQ_MAX_N in ops_common.h).
MAX_K = 1 << 40
MAX_N = 1 << 40


@dataclass(frozen=True)
class _Traits:
    block_size: int  # elements per block
    type_size: int  # bytes per block
    is_weight_type: bool  # Q8_K is an activation type: the op cannot read weights in it


class GGMLQuantType(enum.Enum):
    """A ggml block format. The value is ggml's type id (as stored in GGUF files).

    >>> GGMLQuantType.Q6_K.bits_per_weight
    6.5625
    >>> GGMLQuantType.parse("q4_k").default_tail
    <GGMLQuantType.Q5_0: 6>
    """

    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15

    @property
    def ggml_id(self) -> int:
        """ggml's ``enum ggml_type`` value."""
        return self.value

    @property
    def block_size(self) -> int:
        """Elements per block: 32, or 256 for the K-quants."""
        return _TRAITS[self].block_size

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return _TRAITS[self].type_size

    @property
    def bits_per_weight(self) -> float:
        """Storage cost of one weight in a whole block (scales included)."""
        return 8.0 * self.type_size / self.block_size

    @property
    def is_k_quant(self) -> bool:
        """True for the 256-element super-block types (Q4_K, Q5_K, Q6_K, Q8_K)."""
        return self.block_size == 256

    @property
    def is_weight_type(self) -> bool:
        """False for Q8_K, which ggml uses for activations only (the op cannot read it as W)."""
        return _TRAITS[self].is_weight_type

    @property
    def default_tail(self) -> Optional["GGMLQuantType"]:
        """The 32-element type for the ``K mod 256`` tail of a K-quant row.

        llama.cpp's own fallback when a width is not a multiple of 256: Q4_K -> Q5_0,
        Q5_K -> Q5_1, Q6_K -> Q8_0. None for the 32-element types and Q8_K.
        """
        return _DEFAULT_TAIL.get(self)

    @classmethod
    def parse(cls, value: Union[str, "GGMLQuantType"]) -> "GGMLQuantType":
        """The type named ``value`` in any case ("q6_k", "Q6_K"); a type is returned as is."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise TypeError(f"a GGML quant type must be given as a name or GGMLQuantType, got {type(value).__name__}")
        member = cls.__members__.get(value.strip().upper())
        if member is None:
            raise ValueError(f"unknown GGML quant type {value!r}; expected one of {', '.join(cls.__members__)}")
        return member

    def __str__(self) -> str:
        return self.name


_TRAITS: dict = {
    GGMLQuantType.Q4_0: _Traits(32, 18, True),
    GGMLQuantType.Q4_1: _Traits(32, 20, True),
    GGMLQuantType.Q5_0: _Traits(32, 22, True),
    GGMLQuantType.Q5_1: _Traits(32, 24, True),
    GGMLQuantType.Q8_0: _Traits(32, 34, True),
    GGMLQuantType.Q4_K: _Traits(256, 144, True),
    GGMLQuantType.Q5_K: _Traits(256, 176, True),
    GGMLQuantType.Q6_K: _Traits(256, 210, True),
    GGMLQuantType.Q8_K: _Traits(256, 292, False),
}

_DEFAULT_TAIL: dict = {
    GGMLQuantType.Q4_K: GGMLQuantType.Q5_0,
    GGMLQuantType.Q5_K: GGMLQuantType.Q5_1,
    GGMLQuantType.Q6_K: GGMLQuantType.Q8_0,
}

#: the types a weight may be stored in (the op's ``quant_type`` values), by name
WEIGHT_TYPES: Tuple[str, ...] = tuple(t.name for t in GGMLQuantType if t.is_weight_type)
#: the 32-element weight types (valid as ``tail_type``)
TAIL_TYPES: Tuple[str, ...] = tuple(t.name for t in GGMLQuantType if t.is_weight_type and not t.is_k_quant)
#: the 256-element weight types
K_QUANTS: Tuple[str, ...] = tuple(t.name for t in GGMLQuantType if t.is_weight_type and t.is_k_quant)

#: name -> (elements per block, bytes per block) of every weight type (a view of the table)
BLOCK_TRAITS: Dict[str, Tuple[int, int]] = {
    t.name: (t.block_size, t.type_size) for t in GGMLQuantType if t.is_weight_type
}

#: ``tail_type`` value meaning "the main type's :attr:`GGMLQuantType.default_tail`"
AUTO = "auto"

TypeLike = Union[str, GGMLQuantType]


def default_tail_type(qtype: TypeLike) -> Optional[str]:
    """The name of a K-quant's default 32-element tail (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0),
    else None. These are the types llama.cpp falls back to for a whole tensor whose width
    is not a multiple of 256; onnxq uses them only for the last ``K mod 256`` columns."""
    tail = GGMLQuantType.parse(qtype).default_tail
    return tail.name if tail is not None else None


def resolve_tail(qtype: TypeLike, tail_type: Optional[TypeLike] = AUTO) -> Optional[GGMLQuantType]:
    """Validate a tail type for ``qtype``: ``"auto"`` means :attr:`~GGMLQuantType.default_tail`,
    None means no tail (the last super-block is zero-padded)."""
    qtype = GGMLQuantType.parse(qtype)
    if tail_type is None:
        return None
    if isinstance(tail_type, str) and tail_type.strip().lower() == AUTO:
        return qtype.default_tail
    tail = GGMLQuantType.parse(tail_type)
    if not qtype.is_k_quant or not qtype.is_weight_type:
        raise ValueError(
            f"a tail type is only valid after a K-quant weight type (Q4_K, Q5_K, Q6_K); "
            f"got tail_type={tail.name} for {qtype.name}"
        )
    if tail.is_k_quant or not tail.is_weight_type:
        raise ValueError(
            f"tail_type must be a 32-element weight type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), got {tail.name}"
        )
    return tail


@dataclass(frozen=True)
class RowLayout:
    """How one row of ``K`` weights is stored: ``n_main`` blocks of ``qtype`` covering
    ``main_elems`` elements, then ``n_tail`` blocks of ``tail_type``."""

    qtype: GGMLQuantType
    tail_type: Optional[GGMLQuantType]  # None when the row has no tail blocks
    K: int
    n_main: int
    main_elems: int
    n_tail: int
    main_bytes: int
    row_bytes: int

    @property
    def padded_elems(self) -> int:
        """Elements stored per row, zero padding included."""
        return self.main_elems + 32 * self.n_tail

    @property
    def bits_per_weight(self) -> float:
        """Bits per logical weight of a row (padding counts as overhead)."""
        return 8.0 * self.row_bytes / self.K


def row_layout(qtype: TypeLike, K: int, tail_type: Optional[TypeLike] = None) -> RowLayout:
    """The layout of a row of ``K`` elements (``tail_type`` as in :func:`resolve_tail`), the
    rule of ``onnxq_row_layout_init`` in ``ggml_blocks.h``. A tail that would hold no
    element (``K`` a multiple of 256) is reported as ``tail_type=None``."""
    qtype = GGMLQuantType.parse(qtype)
    tail = resolve_tail(qtype, tail_type)
    if isinstance(K, bool):
        raise TypeError("K must be an integer, got bool")
    try:
        K = operator.index(K)
    except TypeError:
        raise TypeError(f"K must be an integer, got {type(K).__name__}") from None
    if not 1 <= K <= MAX_K:
        raise ValueError(f"K must be in [1, {MAX_K}], got {K}")
    qk = qtype.block_size
    if tail is None:
        n_main, n_tail = -(-K // qk), 0
    else:
        n_main = K // qk
        n_tail = -(-(K - n_main * qk) // 32)
    main_bytes = n_main * qtype.type_size
    return RowLayout(
        qtype=qtype,
        tail_type=tail if n_tail > 0 else None,
        K=K,
        n_main=n_main,
        main_elems=n_main * qk,
        n_tail=n_tail,
        main_bytes=main_bytes,
        row_bytes=main_bytes + (n_tail * tail.type_size if tail is not None else 0),
    )


def row_bytes(qtype: TypeLike, K: int, tail_type: Optional[TypeLike] = None) -> int:
    """Bytes of one row of ``K`` elements."""
    return row_layout(qtype, K, tail_type).row_bytes


def effective_bits_per_weight(qtype: TypeLike, K: int, tail_type: Optional[TypeLike] = None) -> float:
    """Bits per weight of rows of ``K`` elements, padding and tail blocks included.

    >>> effective_bits_per_weight("Q6_K", 576, "Q8_0")   # 2 super-blocks + 2 Q8_0 blocks
    6.777777777777778
    """
    return row_layout(qtype, K, tail_type).bits_per_weight
