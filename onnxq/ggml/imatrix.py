"""Importance matrices: per input column, the mean of x² over calibration tokens.

ggml's imatrix (``llama-imatrix``) weights each weight column's quantization error by how
strongly that input channel is driven; onnxq computes the same statistic by running the
float model with onnxruntime (:func:`onnxq.calibrate.calibrate`) and observing the input
tensor of every chosen linear site (in :func:`onnxq.quantize`, within the one calibration
pass that also serves AWQ and SmoothQuant). Sites that read the same tensor (q/k/v after one
norm) share one vector. Matrices are saved as ``.npz`` (no pickles) and reused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from ..errors import CalibrationError
from ..modelio import atomic_write

FORMAT_KEY = "onnxq_imatrix_version"
FORMAT_VERSION = 1


@dataclass
class ImportanceMatrix:
    """``values[tensor]``: float32 [K] mean of x² per column; ``counts[tensor]``: rows seen."""

    values: Dict[str, np.ndarray] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def __len__(self) -> int:
        return len(self.values)

    def keys(self):
        return self.values.keys()

    def save(self, path: Union[str, os.PathLike]) -> str:
        """Write an ``.npz`` atomically (temporary file, then rename); returns the path."""
        path = os.path.abspath(os.fspath(path))
        names = sorted(self.values)
        arrays: Dict[str, np.ndarray] = {
            FORMAT_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
            "names": np.array(names, dtype=np.str_),
            "counts": np.array([self.counts.get(n, 0) for n in names], dtype=np.int64),
        }
        for i, name in enumerate(names):
            arrays[f"v{i}"] = np.asarray(self.values[name], dtype=np.float32)
        return atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ImportanceMatrix":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CalibrationError(f"importance matrix file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if FORMAT_KEY not in npz.files:
                    raise CalibrationError(f"{path} is not an onnxq importance matrix (no {FORMAT_KEY!r} entry)")
                version = int(npz[FORMAT_KEY])
                if version != FORMAT_VERSION:
                    raise CalibrationError(f"{path}: importance matrix format {version}, this onnxq reads {FORMAT_VERSION}")
                names = [str(n) for n in npz["names"]]
                counts = [int(c) for c in npz["counts"]]
                values = {n: np.asarray(npz[f"v{i}"], dtype=np.float32) for i, n in enumerate(names)}
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f"{path}: not a readable importance matrix ({type(exc).__name__}: {exc})") from None
        for name, v in values.items():
            if v.ndim != 1 or not np.all(np.isfinite(v)) or np.any(v < 0):
                raise CalibrationError(f"{path}: importance of {name!r} must be a finite non-negative vector")
        return cls(values, dict(zip(names, counts)))


def is_imatrix_file(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` is an ``.npz`` written by :meth:`ImportanceMatrix.save`
    (rather than calibration inputs)."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as npz:
            return isinstance(npz, np.lib.npyio.NpzFile) and FORMAT_KEY in npz.files
    except Exception:
        return False


def compute_imatrix(
    model: Union[str, os.PathLike, onnx.ModelProto],
    tensors: Sequence[str],
    data: Any,
    *,
    base_dir: Optional[str] = None,
    batch_size: int = 1,
    max_batches: Optional[int] = None,
    progress: bool = True,
) -> ImportanceMatrix:
    """Run the float ``model`` on calibration ``data`` and return the mean of x² per
    column of each tensor in ``tensors`` (the inputs of the sites to quantize).

    ``data``: an ``.npz`` of model inputs (leading axis = samples), a dict of arrays, an
    iterable of input dicts, or an onnxruntime ``CalibrationDataReader``.
    """
    from ..calibrate import calibrate

    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return ImportanceMatrix()
    stats = calibrate(
        model, tensors, data, batch_size=batch_size, max_batches=max_batches, bins=16,
        base_dir=base_dir, progress=progress,
    )
    return imatrix_from_stats(stats, tensors)


def imatrix_from_stats(stats: Mapping[str, Any], tensors: Sequence[str]) -> ImportanceMatrix:
    """The importance matrix of ``tensors`` from calibration statistics
    (:class:`onnxq.calibrate.TensorStats`: the mean of x² per channel)."""
    out = ImportanceMatrix()
    for name in dict.fromkeys(tensors):
        st = stats.get(name)
        if st is None or st.count == 0:
            raise CalibrationError(f"calibration produced no rows for tensor {name!r}")
        out.values[name] = np.asarray(st.mean_square(), dtype=np.float32)
        out.counts[name] = int(st.count)
    return out


def as_imatrix(source: Union[ImportanceMatrix, Mapping[str, np.ndarray]]) -> ImportanceMatrix:
    """An :class:`ImportanceMatrix` from itself or a ``{tensor: vector}`` mapping."""
    if isinstance(source, ImportanceMatrix):
        return source
    return ImportanceMatrix({k: np.asarray(v, dtype=np.float32) for k, v in source.items()}, {})
