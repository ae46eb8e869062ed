"""Load and save ONNX models safely.

* Loading never pulls external data into memory: initializers stored outside the .onnx
  file are read one tensor at a time (memory-mapped) with :func:`get_initializer_array`.
* Saving is atomic: everything is written to temporary files in the destination folder
  and renamed into place only when complete, so a failure never leaves a half-written
  model (or clobbers a good one).
* Large outputs go to an external data file, written tensor by tensor
  (:class:`ModelWriter`), so peak memory stays near the largest tensor.
"""
from __future__ import annotations

import os
from typing import IO, Callable, Dict, Iterable, Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import tempfiles
from .errors import ExternalDataMissing, ModelError, OutputPathError

PathLike = Union[str, os.PathLike]

#: Models whose initializers exceed this many bytes are saved with external data by default
#: (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: Tensors smaller than this stay inside the .onnx file even when saving with external data.
SMALL_TENSOR_BYTES = 1024
_COPY_CHUNK = 64 << 20
#: data types stored two elements a byte (INT4, UINT4, FLOAT4E2M1)
_PACKED_4BIT = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


# ----------------------------------------------------------------------------- loading


def check_model_file(path: PathLike) -> str:
    """``path`` as a string; ModelError when it is missing or a directory."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, expected an .onnx file")
    return path


def load_model(path: PathLike) -> onnx.ModelProto:
    """Load an ONNX model without its external data; every node gets a unique name.

    Raises ModelError naming the file when it is missing, is not an ONNX model, or is
    one whose graph has no nodes.
    """
    path = check_model_file(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError / RuntimeWarning-like errors
        raise ModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.HasField("graph") and not model.ir_version and not len(model.opset_import):
        raise ModelError(f"{path}: not an ONNX model (no graph, no IR version, no opset)")
    if len(model.graph.node) == 0:
        raise ModelError(f"{path}: the ONNX model's graph has no nodes (nothing to work on)")
    ensure_node_names(model)
    return model


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node of the main graph a unique, stable name (in place)."""
    seen: set = set()
    for index, node in enumerate(model.graph.node):
        base = node.name or f"{node.op_type}_{index}"
        name = base
        suffix = 1
        while name in seen:
            name = f"{base}_{suffix}"
            suffix += 1
        node.name = name
        seen.add(name)


def model_dir(path: Optional[PathLike]) -> str:
    """The folder external data of a model at ``path`` is resolved against."""
    return os.path.dirname(os.path.abspath(os.fspath(path))) if path is not None else os.getcwd()


def _external_info(tensor: TensorProto) -> Dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes of the tensor's data (without reading it)."""
    if is_external(tensor):
        info = _external_info(tensor)
        if "length" in info:
            return int(info["length"])
    count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    if tensor.data_type in _PACKED_4BIT:  # two elements a byte
        return (count + 1) // 2
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def get_initializer_array(
    model: onnx.ModelProto, tensor: Union[str, TensorProto], base_dir: Optional[PathLike] = None
) -> np.ndarray:
    """The value of an initializer as a numpy array.

    External data is memory-mapped read-only (no copy): call ``np.array(x)`` for a
    writable copy. ``base_dir`` is the folder of the model file (needed for external data).
    """
    if isinstance(tensor, str):
        found = find_initializer(model, tensor)
        if found is None:
            raise ModelError(f"initializer {tensor!r} not found in the model")
        tensor = found
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    file_path, offset, _ = external_location(tensor, base_dir)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(int(d) for d in tensor.dims)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(file_path, dtype=dtype, mode="r", offset=offset, shape=shape)


def external_location(tensor: TensorProto, base_dir: Optional[PathLike]) -> tuple:
    """(file, offset, length) of an external initializer's bytes, checked without reading
    them: the file exists (else :class:`ExternalDataMissing`), the declared length is what
    dims and dtype need, and the file holds offset + length bytes (else ModelError)."""
    info = _external_info(tensor)
    location = info.get("location")
    if not location:
        raise ModelError(f"initializer {tensor.name!r}: external data without a location")
    base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    file_path = os.path.join(base, location)
    if not os.path.isfile(file_path):
        raise ExternalDataMissing(f"initializer {tensor.name!r}: external data file {file_path} not found", file_path)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    offset = int(info.get("offset", 0))
    length = int(info.get("length", count * dtype.itemsize))
    if length != count * dtype.itemsize:
        raise ModelError(
            f"initializer {tensor.name!r}: external data length {length} bytes, "
            f"shape {list(shape)} of {dtype} needs {count * dtype.itemsize}"
        )
    file_size = os.path.getsize(file_path)
    if offset + length > file_size:
        raise ModelError(
            f"initializer {tensor.name!r}: external data {file_path} has {file_size} bytes, "
            f"the tensor needs bytes {offset}..{offset + length}"
        )
    return file_path, offset, length


def find_initializer(model: onnx.ModelProto, name: str) -> Optional[TensorProto]:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return tensor
    return None


def file_bytes(path: PathLike, model: Optional[onnx.ModelProto] = None) -> int:
    """Bytes of an .onnx file plus every external data file it references (``model``:
    the same file already loaded, to avoid parsing it again)."""
    path = os.fspath(path)
    total = os.path.getsize(path)
    if model is None:
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception:
            return total
    base = model_dir(path)
    seen = set()
    for t in model.graph.initializer:
        if is_external(t):
            loc = _external_info(t).get("location")
            if loc and loc not in seen:
                seen.add(loc)
                full = os.path.join(base, loc)
                if os.path.isfile(full):
                    total += os.path.getsize(full)
    return total


def set_metadata(model: onnx.ModelProto, values: Dict[str, str]) -> None:
    """Set (replace) metadata_props entries of ``model`` in place."""
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


# ----------------------------------------------------------------------------- saving


def check_output_path(input_path: Optional[PathLike], output_path: PathLike) -> str:
    """Validate an output path before any work is done; returns it absolute.

    Refuses an output equal to the input (or to its external data file), a folder, and
    a destination folder that does not exist or is not writable. Removes onnxq's stale
    temporary files in that folder (left by a killed run; see :mod:`onnxq.tempfiles`).
    """
    out = os.path.abspath(os.fspath(output_path))
    if os.path.isdir(out):
        raise OutputPathError(f"output path {out} is a directory")
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise OutputPathError(f"output folder {folder} does not exist")
    # Try it: os.access says yes to root even on read-only mounts.
    try:
        tempfiles.TempFile(folder, "onnxq-write-test").discard()
    except OSError as exc:
        raise OutputPathError(f"output folder {folder} is not writable ({exc.strerror})") from None
    tempfiles.remove_stale(folder)
    if input_path is not None:
        src = os.path.abspath(os.fspath(input_path))
        if os.path.realpath(src) == os.path.realpath(out) or (
            os.path.exists(out) and os.path.exists(src) and os.path.samefile(src, out)
        ):
            raise OutputPathError(f"output path {out} is the input model: choose another output path")
        data = external_data_path(out)
        if os.path.exists(data) and os.path.exists(src):
            for tensor_location in _input_external_files(src):
                if os.path.exists(tensor_location) and os.path.samefile(tensor_location, data):
                    raise OutputPathError(
                        f"output data file {data} is the input's external data: choose another output path"
                    )
    return out


def _input_external_files(model_path: str) -> set:
    try:
        model = onnx.load(model_path, load_external_data=False)
    except Exception:
        return set()
    base = model_dir(model_path)
    return {
        os.path.join(base, _external_info(t).get("location", ""))
        for t in model.graph.initializer
        if is_external(t)
    }


def external_data_path(onnx_path: PathLike) -> str:
    """Where onnxq puts the external data of a model saved at ``onnx_path``."""
    return os.fspath(onnx_path) + ".data"


class ModelWriter:
    """Write a model atomically, streaming large tensors to an external data file.

    Usage::

        with ModelWriter(out_path, external_data=True) as writer:
            proto = writer.tensor_proto(name, array)     # or writer.copy_tensor(src, base)
            ...                                          # put the protos into the graph
            writer.write(model)

    Nothing appears at ``out_path`` unless ``write`` completed and the block exits
    without an exception; temporary files are removed on failure.
    """

    def __init__(self, path: PathLike, external_data: bool = True, small_tensor_bytes: int = SMALL_TENSOR_BYTES):
        self.path = os.path.abspath(os.fspath(path))
        self.external_data = external_data
        self.small_tensor_bytes = small_tensor_bytes
        self.data_path = external_data_path(self.path)
        self.data_location = os.path.basename(self.data_path)
        folder = os.path.dirname(self.path)
        tempfiles.remove_stale(folder)
        self._onnx_tmp = tempfiles.TempFile(folder, os.path.basename(self.path))
        try:
            self._data_tmp = tempfiles.TempFile(folder, self.data_location) if external_data else None
        except BaseException:
            self._onnx_tmp.discard()
            raise
        self._offset = 0
        self._written = False
        self._closed = False

    # -- tensors
    def _append(self, chunks: Iterable[bytes], nbytes: int) -> int:
        assert self._data_tmp is not None
        align = 4096 if nbytes >= (1 << 20) else 64
        pad = (-self._offset) % align
        if pad:
            self._data_tmp.write(b"\0" * pad)
            self._offset += pad
        start = self._offset
        total = 0
        for chunk in chunks:
            self._data_tmp.write(chunk)
            total += len(chunk)
        if total != nbytes:
            raise ModelError(f"external data copy wrote {total} bytes, expected {nbytes}")
        self._offset += total
        return start

    def _external_proto(self, name: str, data_type: int, dims, start: int, nbytes: int) -> TensorProto:
        proto = TensorProto()
        proto.name = name
        proto.data_type = data_type
        proto.dims.extend(int(d) for d in dims)
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_location), ("offset", str(start)), ("length", str(nbytes))):
            entry = proto.external_data.add()
            entry.key = key
            entry.value = value
        return proto

    def tensor_proto(self, name: str, array: np.ndarray) -> TensorProto:
        """A TensorProto for ``array``: its bytes go to the data file when large."""
        array = np.asarray(array)
        if not self.external_data or array.nbytes < self.small_tensor_bytes or array.dtype == object:
            return numpy_helper.from_array(np.ascontiguousarray(array), name=name)
        data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        contiguous = np.ascontiguousarray(array)
        if contiguous.dtype.byteorder == ">":
            contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
        flat = contiguous.reshape(-1).view(np.uint8)
        chunks = (flat[i : i + _COPY_CHUNK].tobytes() for i in range(0, flat.size, _COPY_CHUNK))
        start = self._append(chunks, int(flat.size))
        return self._external_proto(name, data_type, array.shape, start, int(flat.size))

    def raw_tensor_proto(self, name: str, data_type: int, dims, raw: np.ndarray) -> TensorProto:
        """A TensorProto of ``data_type`` and ``dims`` whose bytes are ``raw`` as given (types
        numpy has no dtype for, e.g. INT4 / UINT4 packed two per byte)."""
        flat = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
        if not self.external_data or flat.size < self.small_tensor_bytes:
            proto = helper.make_tensor(name, data_type, [int(d) for d in dims], vals=flat.tobytes(), raw=True)
            return proto
        chunks = (flat[i : i + _COPY_CHUNK].tobytes() for i in range(0, flat.size, _COPY_CHUNK))
        start = self._append(chunks, int(flat.size))
        return self._external_proto(name, data_type, dims, start, int(flat.size))

    def copy_tensor(self, tensor: TensorProto, base_dir: Optional[PathLike]) -> TensorProto:
        """Carry an input initializer over unchanged, streaming external bytes in chunks."""
        if not self.external_data:
            if is_external(tensor):
                return numpy_helper.from_array(np.array(get_initializer_array_proto(tensor, base_dir)), tensor.name)
            return tensor
        nbytes = tensor_nbytes(tensor)
        if not is_external(tensor):
            if nbytes < self.small_tensor_bytes or not tensor.HasField("raw_data"):
                return tensor
            raw = tensor.raw_data
            start = self._append([raw], len(raw))
            return self._external_proto(tensor.name, tensor.data_type, tensor.dims, start, len(raw))
        source = get_initializer_array_proto(tensor, base_dir)
        flat = np.asarray(source).reshape(-1).view(np.uint8)
        chunks = (flat[i : i + _COPY_CHUNK].tobytes() for i in range(0, flat.size, _COPY_CHUNK))
        start = self._append(chunks, int(flat.size))
        return self._external_proto(tensor.name, tensor.data_type, tensor.dims, start, int(flat.size))

    # -- model
    def write(self, model: onnx.ModelProto) -> None:
        """Serialise ``model`` (its initializers already converted by this writer)."""
        data = model.SerializeToString()
        self._onnx_tmp.write(data)
        self._written = True

    def write_parts(self, parts: Iterable[bytes]) -> None:
        """Write a model serialized in pieces (e.g. one initializer at a time, whose protos came
        from this writer), so the whole serialization is never in memory at once."""
        for part in parts:
            self._onnx_tmp.write(part)
        self._written = True

    def _cleanup(self) -> None:
        try:
            self._onnx_tmp.discard()
        finally:
            if self._data_tmp is not None:
                self._data_tmp.discard()

    def __enter__(self) -> "ModelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        self._closed = True
        if exc_type is not None or not self._written:
            self._cleanup()
            if exc_type is None:
                raise ModelError(f"{self.path}: ModelWriter closed before write() was called")
            return
        try:
            # data first: the .onnx that references it appears last
            if self._data_tmp is not None and self._offset > 0:
                self._data_tmp.commit(self.data_path)
            elif self._data_tmp is not None:
                self._data_tmp.discard()
            self._onnx_tmp.commit(self.path)
        except BaseException:
            self._cleanup()
            raise


def get_initializer_array_proto(tensor: TensorProto, base_dir: Optional[PathLike]) -> np.ndarray:
    """Like :func:`get_initializer_array` for a TensorProto already in hand."""
    return get_initializer_array(onnx.ModelProto(), tensor, base_dir)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> str:
    """Write a (small) file atomically: ``write(fh)`` fills a temporary file in the target's
    folder (onnxq's locked kind, see :mod:`onnxq.tempfiles`), which is renamed over ``path``
    only when complete. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    tempfiles.remove_stale(folder)
    with tempfiles.TempFile(folder, os.path.basename(path)) as tmp:
        write(tmp.file)
        tmp.commit(path)
    return path


def total_initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def save_model(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    base_dir: Optional[PathLike] = None,
    external_data: Optional[bool] = None,
) -> str:
    """Save ``model`` atomically to ``path``; returns the absolute path.

    ``base_dir`` resolves external data the model still references (the input model's
    folder). ``external_data=None`` chooses external data when the initializers exceed
    :data:`EXTERNAL_DATA_THRESHOLD` or the model already references external data.
    The model object is not modified.
    """
    if external_data is None:
        external_data = total_initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD or any(
            is_external(t) for t in model.graph.initializer
        )
    out = os.path.abspath(os.fspath(path))
    with ModelWriter(out, external_data=external_data) as writer:
        originals = list(model.graph.initializer)
        converted = [writer.copy_tensor(t, base_dir) for t in originals]
        if all(a is b for a, b in zip(converted, originals)):
            writer.write(model)
        else:
            writer.write(with_initializers(model, converted))
    return out


def _is_repeated(field) -> bool:
    # protobuf >= 5.28 has is_repeated; `label` was removed in protobuf 7.
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _copy_fields(dst, src, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if _is_repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def with_initializers(model: onnx.ModelProto, initializers: Iterable[TensorProto]) -> onnx.ModelProto:
    """A new model equal to ``model`` but with ``initializers``; the old ones are not copied."""
    shell = onnx.ModelProto()
    _copy_fields(shell, model, skip="graph")
    _copy_fields(shell.graph, model.graph, skip="initializer")
    shell.graph.initializer.extend(initializers)
    return shell
