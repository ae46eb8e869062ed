"""Run onnxq models with onnxruntime: find and register onnxq's custom-op library.

The library (``onnxq/libonnxq_ops.so``) implements the ``onnxq`` domain (``GgmlMatMul``,
``GgmlGather``; contract in ``cython_kernels/ops/README.md``). It needs onnxruntime >= 1.17
and loads the same way from C, C++, C#, Java: their register-custom-ops-library call with
:func:`get_library_path`.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref
from typing import Any, Optional, Sequence, Union

import onnxruntime as ort

from .errors import ModelError, OnnxqError

_LIB_NAME = "libonnxq_ops.dylib" if sys.platform == "darwin" else "libonnxq_ops.so"
DOMAIN = "onnxq"

# Session options the library was registered on: onnxruntime refuses a session whose options
# carry the same domain twice ("Domain already set in registry"), so registration is idempotent.
_registered: "weakref.WeakSet[ort.SessionOptions]" = weakref.WeakSet()
_lock = threading.Lock()
_cdll: Optional[ctypes.CDLL] = None


def get_library_path() -> str:
    """Absolute path of onnxq's onnxruntime custom-op library (shipped in the package).

    ``ONNXQ_OPS_LIBRARY`` in the environment names another build to use instead (a
    sanitizer or debug build of the same sources).
    """
    override = os.environ.get("ONNXQ_OPS_LIBRARY")
    if override:
        if not os.path.isfile(override):
            raise OnnxqError(f"ONNXQ_OPS_LIBRARY={override!r} is not a file")
        return os.path.abspath(override)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIB_NAME)
    if not os.path.isfile(path):
        raise OnnxqError(
            f"onnxq's custom-op library is missing: {path} does not exist. "
            "Reinstall onnxq (pip install .) so that setup.py builds it."
        )
    return path


def register_library(sess_options: ort.SessionOptions) -> ort.SessionOptions:
    """Register onnxq's custom ops on ``sess_options`` (returned for chaining).

    Calling it again on the same options does nothing. (Registering the library on them
    by other means as well makes onnxruntime fail with "Domain already set in registry".)
    Raises onnxruntime's error when the runtime is older than 1.17.
    """
    with _lock:
        if sess_options in _registered:
            return sess_options
        sess_options.register_custom_ops_library(get_library_path())
        _registered.add(sess_options)
    return sess_options


def quiet_between_runs(sess_options: ort.SessionOptions) -> ort.SessionOptions:
    """Make the session's worker threads stop spinning when a run ends (returned for chaining).

    By default onnxruntime's intra-op workers spin for tens of milliseconds after a run (measured
    here: about 50 ms of a core after each run of a 2-thread session). When several sessions are
    timed in turn in one process, those spinning threads take cores from the next session's run:
    op_speed's 2-thread figures came out 1.3-1.6x the 1-thread ones with spinning and 1.9-2.1x
    without. Use this on every session of a comparison; within a run the workers still spin.
    """
    sess_options.add_session_config_entry("session.force_spinning_stop", "1")
    return sess_options


def InferenceSession(
    path_or_bytes: Any,
    sess_options: Optional[ort.SessionOptions] = None,
    providers: Optional[Sequence[Any]] = None,
    **kwargs: Any,
) -> ort.InferenceSession:
    """An ``onnxruntime.InferenceSession`` with onnxq's custom ops registered.

    Takes the same arguments as onnxruntime's; the CPU provider is the default. Errors of
    onnxq's ops (a malformed node, wrong sizes) are raised as onnxruntime's exceptions
    carrying a message that names the op and the node.
    """
    options = sess_options if sess_options is not None else ort.SessionOptions()
    register_library(options)
    return ort.InferenceSession(
        path_or_bytes,
        sess_options=options,
        providers=list(providers) if providers is not None else ["CPUExecutionProvider"],
        **kwargs,
    )


def _library() -> ctypes.CDLL:
    global _cdll
    with _lock:
        if _cdll is None:
            # Loading it alone is safe: it links no onnxruntime and runs nothing at load.
            _cdll = ctypes.CDLL(get_library_path())
        return _cdll


def kernel_isa() -> str:
    """The instruction set onnxq's kernels dispatch to on this CPU: ``"avx512vnni"``,
    ``"avxvnni"``, ``"avx2"`` or ``"scalar"`` on x86-64, ``"i8mm"``, ``"dotprod"``, ``"neon"`` or
    ``"scalar"`` on aarch64 (``ONNXQ_ISA`` in the environment can force a lower one, read
    once per process)."""
    fn = _library().onnxq_ops_kernel_isa
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    value = fn()
    return value.decode("ascii") if value else "unknown"


def _graph_uses_domain(graph: Any) -> bool:
    import onnx

    for node in graph.node:
        if node.domain == DOMAIN:
            return True
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH and _graph_uses_domain(attr.g):
                return True
            if attr.type == onnx.AttributeProto.GRAPHS and any(_graph_uses_domain(g) for g in attr.graphs):
                return True
    return False


def model_needs_library(model_or_path: Union[Any, str, bytes, "os.PathLike[str]"]) -> bool:
    """Does the model use a node of domain ``onnxq`` (in its graph, subgraphs or functions)?

    Accepts an ``onnx.ModelProto``, a path or serialized bytes; external data is not loaded.
    """
    import onnx
    from google.protobuf.message import DecodeError

    model = model_or_path
    try:
        if isinstance(model_or_path, (bytes, bytearray, memoryview)):
            model = onnx.load_model_from_string(bytes(model_or_path))
        elif isinstance(model_or_path, (str, os.PathLike)):
            model = onnx.load(os.fspath(model_or_path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        what = repr(os.fspath(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else "from bytes"
        raise ModelError(f"cannot read ONNX model {what}: {exc}") from exc
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"expected an onnx.ModelProto, a path or bytes, got {type(model_or_path).__name__}")
    if _graph_uses_domain(model.graph):
        return True
    return any(node.domain == DOMAIN for f in model.functions for node in f.node)
