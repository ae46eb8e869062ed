"""The tensor table of a GGUF file, read and checked by onnxq before any tensor is used.

A GGUF file is a header, metadata key/values, a table of tensor infos (name, dims, ggml type,
offset) and the aligned tensor data. This module parses the header and the table itself
(skipping the metadata values) so that every tensor is checked against its type and shape —
known type, rows a whole number of blocks, data inside the file — with an error naming the
tensor, before the ``gguf`` package (which would fail on such a file with a bare numpy error)
opens it. Tensor data is memory-mapped: :meth:`GGUFTensors.raw` is a view, never a copy.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from ..errors import ModelError
from ..formats import GGMLQuantType

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> struct format of one scalar (8: string, 9: array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

#: ggml type id -> numpy dtype of the float types onnxq stores as float32
FLOAT_TYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 30: np.dtype("<u2")}
_FLOAT_NAMES = {0: "F32", 1: "F16", 30: "BF16"}


def ggml_type_name(type_id: int) -> str:
    """ggml's name of a type id (``Q4_K``, ``IQ4_XS``), or ``type id N`` if unknown."""
    if type_id in _FLOAT_NAMES:
        return _FLOAT_NAMES[type_id]
    try:
        return GGMLQuantType(type_id).name
    except ValueError:
        pass
    try:
        import gguf

        return gguf.GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        return f"type id {type_id}"


def block_type(type_id: int) -> Optional[GGMLQuantType]:
    """The block type the op library reads for ``type_id``, or None."""
    try:
        qtype = GGMLQuantType(type_id)
    except ValueError:
        return None
    return qtype if qtype.is_weight_type else None


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. ``shape`` is numpy order (ggml's ``ne`` reversed): a
    linear weight is [N, K], N rows (output features) of K elements."""

    name: str
    type_id: int
    shape: Tuple[int, ...]
    offset: int  # absolute, in the file
    nbytes: int  # 0 when the type's size is unknown to onnxq (then it is unsupported)

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.type_id)

    @property
    def is_float(self) -> bool:
        return self.type_id in FLOAT_TYPES

    @property
    def qtype(self) -> Optional[GGMLQuantType]:
        """The op library's block type for this tensor, None for float or unsupported types."""
        return block_type(self.type_id)


class _Cursor:
    """Little-endian reads from the mapped file with bounds checks naming what was being read."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelError(f"{self.path}: file ends inside {what} (needs bytes {self.pos}..{self.pos + n}, "
                             f"file has {len(self.buf)}): truncated or not a GGUF file")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{self.path}: {what} is not valid UTF-8") from None

    def skip_value(self, vtype: int, key: str) -> Optional[int]:
        """Skip one metadata value; returns it when it is an integer scalar (for general.alignment)."""
        if vtype in _SCALARS:
            value = self.scalar(_SCALARS[vtype], f"metadata value {key!r}")
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        if vtype == _STRING:
            self.take(self.scalar("<Q", f"metadata value {key!r}"), f"metadata value {key!r}")
            return None
        if vtype == _ARRAY:
            sub, count = self.scalar("<I", f"metadata array {key!r}"), self.scalar("<Q", f"metadata array {key!r}")
            if sub in _SCALARS:
                self.take(count * struct.calcsize(_SCALARS[sub]), f"metadata array {key!r}")
            else:
                for _ in range(count):
                    self.skip_value(sub, key)
            return None
        raise ModelError(f"{self.path}: metadata key {key!r} has unknown value type {vtype}")


def _expected_nbytes(path: Path, name: str, type_id: int, shape: Tuple[int, ...]) -> int:
    """Bytes the tensor must occupy; ModelError when its rows are not whole blocks."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if type_id in FLOAT_TYPES:
        return count * FLOAT_TYPES[type_id].itemsize
    qtype = block_type(type_id)
    sizes = _gguf_block_sizes(type_id) if qtype is None else (qtype.block_size, qtype.type_size)
    if sizes is None:
        return 0
    block, size = sizes
    K = shape[-1] if shape else 1
    if K % block:
        raise ModelError(f"{path}: tensor {name!r} ({ggml_type_name(type_id)}, shape {list(shape)}) has rows of "
                         f"{K} elements, not a whole number of {block}-element blocks")
    return count // block * size


def _gguf_block_sizes(type_id: int) -> Optional[Tuple[int, int]]:
    try:
        import gguf

        return tuple(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)])  # type: ignore[return-value]
    except (ImportError, ValueError, KeyError):
        return None


class GGUFTensors:
    """The checked tensor table of a GGUF file, its data memory-mapped read-only."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"GGUF file {self.path} does not exist")
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ModelError(f"{self.path} is empty, not a GGUF file")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.infos: Dict[str, TensorInfo] = {}
        self._parse()

    def _parse(self) -> None:
        cur = _Cursor(self._map, self.path)
        if bytes(cur.take(4, "the magic number")) != _MAGIC:
            raise ModelError(f"{self.path} is not a GGUF file (no 'GGUF' magic number)")
        version = cur.scalar("<I", "the version")
        if version not in (2, 3):
            raise ModelError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.scalar("<Q", "the tensor count"), cur.scalar("<Q", "the metadata count")
        alignment = _DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = cur.string("a metadata key")
            value = cur.skip_value(cur.scalar("<I", f"the type of metadata {key!r}"), key)
            if key == "general.alignment" and value is not None:
                alignment = value
        if alignment <= 0 or alignment & (alignment - 1):
            raise ModelError(f"{self.path}: general.alignment {alignment} is not a power of two")
        table = [self._tensor_entry(cur) for _ in range(n_tensors)]
        start = -(-cur.pos // alignment) * alignment
        for name, dims, type_id, rel in table:
            if name in self.infos:
                raise ModelError(f"{self.path}: tensor {name!r} appears twice in the tensor table")
            shape = tuple(reversed(dims))
            nbytes = _expected_nbytes(self.path, name, type_id, shape)
            offset = start + rel
            if rel % alignment:
                raise ModelError(f"{self.path}: tensor {name!r} starts at data offset {rel}, "
                                 f"not a multiple of the alignment {alignment}")
            if offset + nbytes > len(self._map):
                raise ModelError(
                    f"{self.path}: tensor {name!r} ({ggml_type_name(type_id)}, shape {list(shape)}) needs bytes "
                    f"{offset}..{offset + nbytes} but the file has {len(self._map)}: truncated file")
            self.infos[name] = TensorInfo(name, type_id, shape, offset, nbytes)

    def _tensor_entry(self, cur: _Cursor) -> tuple:
        name = cur.string("a tensor name")
        n_dims = cur.scalar("<I", f"the dimensions of tensor {name!r}")
        if not 1 <= n_dims <= 4:
            raise ModelError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (expected 1 to 4)")
        dims = [cur.scalar("<Q", f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
        if any(d <= 0 or d > 1 << 40 for d in dims):
            raise ModelError(f"{self.path}: tensor {name!r} has dimensions {dims}")
        type_id = cur.scalar("<I", f"the type of tensor {name!r}")
        return name, dims, type_id, cur.scalar("<Q", f"the offset of tensor {name!r}")

    # -- access ----------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.infos.values())

    def info(self, name: str) -> TensorInfo:
        found = self.infos.get(name)
        if found is None:
            raise ModelError(f"{self.path}: tensor {name!r} is missing")
        return found

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored: uint8 [N, row bytes] for a block type (a view of the file)."""
        info = self.info(name)
        if info.nbytes == 0:
            raise ModelError(f"{self.path}: tensor {name!r} has type {info.type_name}, whose size onnxq does not know")
        data = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        rows = int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1
        return data.reshape(rows, info.nbytes // rows)

    def floats(self, name: str) -> np.ndarray:
        """A float tensor (F32, F16, BF16) as float32 in numpy order."""
        info = self.info(name)
        if not info.is_float:
            raise ModelError(f"{self.path}: tensor {name!r} is {info.type_name}, not a float type")
        dtype = FLOAT_TYPES[info.type_id]
        data = np.frombuffer(self._map, dtype=dtype, count=info.nbytes // dtype.itemsize,
                             offset=info.offset).reshape(info.shape)
        if info.type_id == 30:  # bfloat16: the high half of a float32
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32)

    def dequantized(self, name: str) -> np.ndarray:
        """Any tensor as float32 [.., K]: floats as they are, block types through the ``gguf``
        package's dequantizers (every ggml type it implements)."""
        info = self.info(name)
        if info.is_float:
            return self.floats(name)
        try:
            import gguf
            from gguf.quants import dequantize
        except ImportError:
            raise ModelError("dequantizing GGUF tensors needs the 'gguf' package: pip install gguf") from None
        try:
            out = dequantize(self.raw(name), gguf.GGMLQuantizationType(info.type_id))
        except (NotImplementedError, ValueError) as exc:
            raise ModelError(f"{self.path}: tensor {name!r} has type {info.type_name}, which the gguf package "
                             f"cannot dequantize ({exc})") from None
        return np.asarray(out, dtype=np.float32).reshape(info.shape)

    def data_bytes(self) -> int:
        """Bytes of all tensor data."""
        return sum(i.nbytes for i in self.infos.values())
