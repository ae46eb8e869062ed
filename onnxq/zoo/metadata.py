"""Read an ONNX file's ``metadata_props`` without loading its graph or weights.

A ModelProto's top-level fields are read one by one from the file and the graph (hundreds of
megabytes) is skipped with a seek, so asking a model for its family costs microseconds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import onnx

from ..errors import ModelError

_METADATA_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["metadata_props"].number


def _read_varint(f: BinaryIO, path: Path) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ModelError(f"{path} is not an ONNX model (bad protobuf varint)")


def read_metadata(path: os.PathLike) -> dict[str, str]:
    """``metadata_props`` of the ONNX model at ``path`` as a dict."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc}") from exc
    size = path.stat().st_size
    props: dict[str, str] = {}
    with f:
        while f.tell() < size:
            try:
                key = _read_varint(f, path)
            except EOFError:
                break
            field, wire = key >> 3, key & 7
            try:
                if wire == 0:
                    _read_varint(f, path)
                elif wire == 1:
                    f.seek(8, os.SEEK_CUR)
                elif wire == 5:
                    f.seek(4, os.SEEK_CUR)
                elif wire == 2:
                    length = _read_varint(f, path)
                    if f.tell() + length > size:
                        raise ModelError(f"{path} is truncated or not an ONNX model")
                    if field == _METADATA_FIELD:
                        entry = onnx.StringStringEntryProto()
                        entry.ParseFromString(f.read(length))
                        props[entry.key] = entry.value
                    else:
                        f.seek(length, os.SEEK_CUR)
                else:
                    raise ModelError(f"{path} is not an ONNX model (protobuf wire type {wire})")
            except EOFError:
                raise ModelError(f"{path} is truncated or not an ONNX model") from None
            except Exception as exc:  # DecodeError from a corrupt entry
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{path}: cannot parse metadata_props ({exc})") from exc
    return props
