"""Run onnxq models with onnxruntime: find and register onnxq's custom-op library."""
from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

import onnxruntime as ort

from .errors import OnnxqError

_LIB_NAME = "libonnxq_ops.dylib" if sys.platform == "darwin" else "libonnxq_ops.so"


def get_library_path() -> str:
    """Absolute path of onnxq's onnxruntime custom-op library (shipped in the package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIB_NAME)
    if not os.path.isfile(path):
        raise OnnxqError(
            f"onnxq's custom-op library is missing: {path} does not exist. "
            "Reinstall onnxq (pip install .) so that setup.py builds it."
        )
    return path


def register_library(sess_options: ort.SessionOptions) -> ort.SessionOptions:
    """Register onnxq's custom ops on ``sess_options`` (returned for chaining)."""
    sess_options.register_custom_ops_library(get_library_path())
    return sess_options


def InferenceSession(
    path_or_bytes: Any,
    sess_options: Optional[ort.SessionOptions] = None,
    providers: Optional[Sequence[Any]] = None,
    **kwargs: Any,
) -> ort.InferenceSession:
    """An ``onnxruntime.InferenceSession`` with onnxq's custom ops registered.

    Takes the same arguments as onnxruntime's; the CPU provider is the default.
    """
    options = sess_options if sess_options is not None else ort.SessionOptions()
    register_library(options)
    return ort.InferenceSession(
        path_or_bytes,
        sess_options=options,
        providers=list(providers) if providers is not None else ["CPUExecutionProvider"],
        **kwargs,
    )
