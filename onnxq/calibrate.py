"""Calibration: run the float model with onnxruntime and collect streaming statistics.

``calibrate(model, tensors, data)`` adds the requested tensors as extra graph outputs,
runs the model on every calibration batch and folds each batch into a
:class:`TensorStats` per tensor; no batch is kept after it has been folded in (the
optional row samples are a fixed-size reservoir), so memory is bounded by one batch's
activations plus the statistics. :func:`calibrate_many` serves several consumers (the
SmoothQuant pass, the importance matrix, AWQ) from one run over the data.

Calibration data can be any of:

* an ``onnxruntime.quantization.CalibrationDataReader`` (anything with ``get_next()``
  returning an input dict or ``None`` at the end), so existing readers work unchanged;
* an iterable of input dicts ``{input name: np.ndarray}``;
* an ``.npz`` file (or a dict of arrays) with one array per model input whose leading
  axis is the sample axis; samples are cut into batches of ``batch_size``.

A batch may hold only the token ids: the standard inputs exported language models also
take (attention mask, position ids, token type ids, empty past key/values) are synthesized
per batch by :class:`onnxq.model_inputs.ModelInputs`. Every batch is then checked against
the model's inputs (names, dtypes, ranks, fixed dimensions) and a mismatch raises
:class:`~onnxq.errors.CalibrationError` naming the input, what the model expects and what
the data holds.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .errors import CalibrationError, ModelError
from .model_inputs import InputSpec, ModelInputs, format_shape, model_input_specs

__all__ = [
    "TensorStats",
    "CalibrationCache",
    "StatsRequest",
    "calibrate",
    "calibrate_many",
    "iter_batches",
    "model_input_specs",
    "validate_batch",
]

DEFAULT_BINS = 2048

CalibrationData = Union[str, os.PathLike, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], Any]


# --------------------------------------------------------------------------- statistics


def _pow2_ceil(x: float) -> float:
    """Smallest power of two >= x (x > 0): histogram ranges are powers of two so that
    growing a range is an exact merge of bin pairs."""
    return float(2.0 ** math.ceil(math.log2(x)))


@dataclass
class TensorStats:
    """Streaming statistics of one tensor, channels on its last axis.

    * ``channel_min`` / ``channel_max`` [C]: per-channel extrema (abs-max via :attr:`absmax`).
    * ``sum_squares`` [C] and ``count`` (rows = product of the leading axes): the mean of
      x² per channel (:meth:`mean_square`), the importance matrix of ggml's imatrix.
    * ``sum_abs`` [C]: the mean of |x| per channel (:meth:`mean_abs`), the activation
      salience activation-aware weight scaling (:mod:`onnxq.awq`) uses.
    * ``hist_pos`` / ``hist_neg``: counts of x >= 0 and of -x for x < 0 over
      ``[0, hist_range]`` in ``bins`` equal bins each. The range is a power of two and
      doubles when a batch exceeds it; doubling merges bin pairs exactly (no
      re-interpolation error) and keeps at least half of the bins in use, so the
      resolution never drops below ``bins / 2`` over the observed range.
    * ``samples``: a uniform reservoir of up to ``sample_rows`` rows from the batches
      that fed the statistics; ``holdout``: rows from held-out batches only (those did
      not feed any statistic), for measuring errors on data the scales never saw.
    """

    name: str
    channels: int
    bins: int = DEFAULT_BINS
    count: int = 0
    channel_min: Optional[np.ndarray] = None
    channel_max: Optional[np.ndarray] = None
    sum_squares: Optional[np.ndarray] = None
    sum_abs: Optional[np.ndarray] = None
    hist_pos: Optional[np.ndarray] = None
    hist_neg: Optional[np.ndarray] = None
    hist_range: float = 0.0
    samples: Optional[np.ndarray] = None
    holdout: Optional[np.ndarray] = None
    _seen_samples: int = field(default=0, repr=False)
    _seen_holdout: int = field(default=0, repr=False)

    # -- accumulation -----------------------------------------------------------------

    def update(self, x: np.ndarray) -> None:
        """Fold one batch (any shape [..., C]) into the statistics."""
        rows = self._rows(x)
        if rows.shape[0] == 0:
            return
        if self.channel_min is None:
            self.channel_min = np.full(self.channels, np.inf, np.float32)
            self.channel_max = np.full(self.channels, -np.inf, np.float32)
            self.sum_squares = np.zeros(self.channels, np.float64)
            self.sum_abs = np.zeros(self.channels, np.float64)
            self.hist_pos = np.zeros(self.bins, np.int64)
            self.hist_neg = np.zeros(self.bins, np.int64)
        if not np.all(np.isfinite(rows)):
            raise CalibrationError(
                f"tensor {self.name!r} has NaN or infinite values during calibration; "
                "check the calibration data and the float model"
            )
        np.minimum(self.channel_min, rows.min(axis=0), out=self.channel_min)
        np.maximum(self.channel_max, rows.max(axis=0), out=self.channel_max)
        r64 = rows.astype(np.float64)
        self.sum_squares += np.einsum("ij,ij->j", r64, r64)
        self.sum_abs += np.abs(r64).sum(axis=0)
        self.count += rows.shape[0]
        self._update_hist(rows)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.channels:
            raise CalibrationError(
                f"tensor {self.name!r}: expected last axis of {self.channels} channels, "
                f"got shape {tuple(x.shape)}"
            )
        return x.reshape(-1, self.channels).astype(np.float32, copy=False)

    def _update_hist(self, rows: np.ndarray) -> None:
        flat = rows.ravel()
        peak = float(np.abs(flat).max())
        if peak > 0 and peak > self.hist_range:
            new_range = _pow2_ceil(peak)
            if self.hist_range == 0.0:
                self.hist_range = new_range
            else:
                while self.hist_range < new_range:
                    self.hist_pos = self.hist_pos.reshape(-1, 2).sum(axis=1)
                    self.hist_pos = np.concatenate([self.hist_pos, np.zeros(self.bins // 2, np.int64)])
                    self.hist_neg = self.hist_neg.reshape(-1, 2).sum(axis=1)
                    self.hist_neg = np.concatenate([self.hist_neg, np.zeros(self.bins // 2, np.int64)])
                    self.hist_range *= 2.0
        if self.hist_range == 0.0:  # an all-zero batch: everything lands in bin 0
            self.hist_pos[0] += flat.size
            return
        scale = self.bins / self.hist_range
        pos = flat[flat >= 0]
        neg = -flat[flat < 0]
        self.hist_pos += np.bincount(
            np.minimum((pos * scale).astype(np.int64), self.bins - 1), minlength=self.bins
        )
        self.hist_neg += np.bincount(
            np.minimum((neg * scale).astype(np.int64), self.bins - 1), minlength=self.bins
        )

    def add_samples(self, x: np.ndarray, capacity: int, rng: np.random.Generator, holdout: bool = False) -> None:
        """Reservoir-sample rows of ``x`` (Algorithm R): every row seen so far has the same
        chance ``capacity / seen`` of being kept."""
        if capacity <= 0:
            return
        rows = self._rows(x)
        store = self.holdout if holdout else self.samples
        seen = self._seen_holdout if holdout else self._seen_samples
        if store is None:
            store = np.empty((0, self.channels), np.float32)
        n = rows.shape[0]
        take = max(0, min(capacity - store.shape[0], n))
        if take:
            store = np.concatenate([store, rows[:take]])
        if n > take:
            idx = np.arange(seen + take, seen + n)
            slots = (rng.random(n - take) * (idx + 1)).astype(np.int64)
            keep = slots < capacity
            if np.any(keep):
                store = store.copy() if not store.flags.writeable else store
                store[slots[keep]] = rows[take:][keep]
        if holdout:
            self.holdout, self._seen_holdout = store, seen + n
        else:
            self.samples, self._seen_samples = store, seen + n

    # -- queries ----------------------------------------------------------------------

    def _require(self) -> None:
        if self.count == 0 or self.channel_max is None:
            raise CalibrationError(f"tensor {self.name!r} has no calibration statistics (no rows seen)")

    @property
    def absmax(self) -> np.ndarray:
        """Per-channel max |x| [C]."""
        self._require()
        return np.maximum(np.abs(self.channel_min), np.abs(self.channel_max))

    @property
    def min(self) -> float:
        self._require()
        return float(self.channel_min.min())

    @property
    def max(self) -> float:
        self._require()
        return float(self.channel_max.max())

    def mean_square(self) -> np.ndarray:
        """Per-channel mean of x² [C] (float64)."""
        self._require()
        return self.sum_squares / self.count

    def mean_abs(self) -> np.ndarray:
        """Per-channel mean of |x| [C] (float64)."""
        self._require()
        return self.sum_abs / self.count

    def _cdf_value(self, q: float) -> float:
        """Value below which a fraction ``q`` of all values fall, by linear interpolation
        inside the histogram bins (signed: negative bins first)."""
        counts = np.concatenate([self.hist_neg[::-1], self.hist_pos]).astype(np.float64)
        total = counts.sum()
        edges = np.linspace(-self.hist_range, self.hist_range, 2 * self.bins + 1)
        cum = np.concatenate([[0.0], np.cumsum(counts)]) / total
        q = min(max(q, 0.0), 1.0)
        i = int(np.searchsorted(cum, q, side="left"))
        i = min(max(i, 1), len(cum) - 1)
        lo_c, hi_c = cum[i - 1], cum[i]
        frac = 0.0 if hi_c <= lo_c else (q - lo_c) / (hi_c - lo_c)
        return float(edges[i - 1] + frac * (edges[i] - edges[i - 1]))

    def range(self, percentile: Optional[float] = None) -> tuple[float, float]:
        """Per-tensor (lo, hi) clip range, always containing 0.

        ``percentile=None`` gives the exact min/max; ``percentile=p`` (e.g. 99.99) clips
        the ``(100-p)/2`` % tails on each side, never beyond the observed min/max.
        """
        self._require()
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if percentile is None or percentile >= 100.0 or self.hist_range == 0.0:
            return lo, hi
        if not 0.0 < percentile < 100.0:
            raise CalibrationError(f"activation percentile must be in (0, 100], got {percentile}")
        tail = (100.0 - percentile) / 200.0
        plo = self._cdf_value(tail)
        phi = self._cdf_value(1.0 - tail)
        return max(lo, min(plo, 0.0)), min(hi, max(phi, 0.0))

    def abs_percentile(self, percentile: Optional[float] = None) -> float:
        """Symmetric clip value: the ``percentile`` % quantile of |x| (exact max for None)."""
        self._require()
        peak = max(abs(self.min), abs(self.max))
        if percentile is None or percentile >= 100.0 or self.hist_range == 0.0:
            return peak
        counts = (self.hist_pos + self.hist_neg).astype(np.float64)
        cum = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
        q = percentile / 100.0
        i = int(np.searchsorted(cum, q, side="left"))
        i = min(max(i, 1), len(cum) - 1)
        width = self.hist_range / self.bins
        frac = 0.0 if cum[i] <= cum[i - 1] else (q - cum[i - 1]) / (cum[i] - cum[i - 1])
        return float(min(peak, (i - 1 + frac) * width))

    def scaled(self, s: np.ndarray) -> "TensorStats":
        """The statistics of X / s (s > 0 per channel) from those of X: exact for the
        per-channel quantities and the sampled rows; the per-tensor histograms cannot be
        rescaled per channel and are dropped (percentiles then fall back to min/max)."""
        s = np.asarray(s, np.float32)
        s64 = s.astype(np.float64)
        out = TensorStats(self.name, self.channels, self.bins, self.count)
        if self.channel_min is not None:
            out.channel_min = (self.channel_min / s).astype(np.float32)
            out.channel_max = (self.channel_max / s).astype(np.float32)
            out.sum_squares = self.sum_squares / np.square(s64)
            out.sum_abs = self.sum_abs / s64
        out.samples = None if self.samples is None else (self.samples / s).astype(np.float32)
        out.holdout = None if self.holdout is None else (self.holdout / s).astype(np.float32)
        out._seen_samples, out._seen_holdout = self._seen_samples, self._seen_holdout
        return out

    def rows_for_evaluation(self) -> Optional[np.ndarray]:
        """Held-out rows when there are any, else the in-sample reservoir."""
        if self.holdout is not None and self.holdout.shape[0]:
            return self.holdout
        return self.samples


# --------------------------------------------------------------------------- data input


def validate_batch(batch: Mapping[str, Any], specs: Sequence[InputSpec], index: int) -> dict[str, np.ndarray]:
    """Check one batch against the model inputs; return it as a dict of arrays."""
    if not isinstance(batch, Mapping):
        raise CalibrationError(
            f"calibration batch {index} is a {type(batch).__name__}, expected a dict "
            "{input name: array}"
        )
    expected = {s.name: s for s in specs}
    unknown = [k for k in batch if k not in expected]
    if unknown:
        raise CalibrationError(
            f"calibration batch {index} has input {unknown[0]!r}, which the model does not have "
            f"(model inputs: {', '.join(expected) or 'none'})"
        )
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in batch:
            raise CalibrationError(
                f"calibration batch {index} is missing model input {spec.name!r}: expected "
                f"{spec.dtype} {format_shape(spec.shape)}, got only {sorted(batch)}"
            )
        arr = np.asarray(batch[spec.name])
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"calibration input {spec.name!r} (batch {index}): expected dtype {spec.dtype}, "
                f"got {arr.dtype}"
            )
        if spec.shape is not None:
            bad = arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d > 0 and d != g for d, g in zip(spec.shape, arr.shape)
            )
            if bad:
                raise CalibrationError(
                    f"calibration input {spec.name!r} (batch {index}): expected shape "
                    f"{format_shape(spec.shape)}, got {list(arr.shape)}"
                )
        out[spec.name] = arr
    return out


def _batches_from_arrays(arrays: Mapping[str, np.ndarray], batch_size: int, source: str) -> Iterator[dict]:
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if not arrays:
        raise CalibrationError(f"calibration data {source} holds no arrays")
    lengths = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if any(n is None for n in lengths.values()):
        bad = next(k for k, n in lengths.items() if n is None)
        raise CalibrationError(
            f"calibration array {bad!r} in {source} is a scalar; expected a leading sample axis"
        )
    if len(set(lengths.values())) != 1:
        raise CalibrationError(
            f"calibration arrays in {source} have different numbers of samples: "
            + ", ".join(f"{k}={n}" for k, n in lengths.items())
        )
    n = next(iter(lengths.values()))
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in arrays.items()}


def iter_batches(data: CalibrationData, batch_size: int = 8) -> Iterator[dict]:
    """Normalise any supported calibration source into an iterator of input dicts."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise CalibrationError(f"calibration file {str(path)!r} does not exist")
        try:
            npz = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise CalibrationError(f"calibration file {str(path)!r} is not a readable .npz file: {exc}") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CalibrationError(f"calibration file {str(path)!r} is a single array, expected an .npz archive")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
        yield from _batches_from_arrays(arrays, batch_size, repr(str(path)))
        return
    if isinstance(data, Mapping):
        yield from _batches_from_arrays(data, batch_size, "dict")
        return
    get_next = getattr(data, "get_next", None)
    if callable(get_next):
        while True:
            batch = get_next()
            if batch is None:
                return
            yield batch
    if isinstance(data, Iterable):
        yield from data
        return
    raise CalibrationError(
        f"unsupported calibration data of type {type(data).__name__}: expected a "
        "CalibrationDataReader, an iterable of input dicts, a dict of arrays or an .npz path"
    )


def _batch_len(batch: Mapping[str, np.ndarray]) -> Optional[int]:
    """Samples in a batch: the leading axis shared by its arrays (None if they disagree)."""
    lens = {v.shape[0] for v in batch.values() if np.ndim(v)}
    return lens.pop() if len(lens) == 1 else None


class CalibrationCache:
    """Re-iterable calibration batches: validates once and keeps the (small) model inputs
    so that a second calibration pass (e.g. after smoothing) sees the same data even when
    the source was a one-shot reader. Activations are never cached."""

    def __init__(self, data: CalibrationData, model: onnx.ModelProto, batch_size: int = 8,
                 max_batches: Optional[int] = None, max_samples: Optional[int] = None) -> None:
        inputs = ModelInputs.of(model)
        self.batches: list[dict[str, np.ndarray]] = []
        samples = 0
        for i, batch in enumerate(iter_batches(data, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            if max_samples is not None and samples >= max_samples:
                break
            batch = validate_batch(inputs.complete(batch, f"calibration batch {i}"), inputs.specs, i)
            n = _batch_len(batch)
            if max_samples is not None and n is not None and samples + n > max_samples:
                keep = max_samples - samples
                batch = {k: (v[:keep] if v.ndim else v) for k, v in batch.items()}
                n = keep
            samples += n or 1
            self.batches.append(batch)
        if not self.batches:
            raise CalibrationError(
                "calibration data is empty: the reader/iterable/file produced no batches"
            )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# --------------------------------------------------------------------------- running


def _load(model: Union[str, os.PathLike, onnx.ModelProto], base_dir: Optional[str]) -> tuple[onnx.ModelProto, Optional[str]]:
    if isinstance(model, onnx.ModelProto):
        return model, base_dir
    from .modelio import load_model, model_dir

    return load_model(model), model_dir(model)


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )


class _Session:
    """An onnxruntime session over ``model`` with ``tensors`` as extra outputs."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], base_dir: Optional[str],
                 session_options: Any = None, providers: Optional[Sequence[str]] = None) -> None:
        import onnxruntime as ort

        graph_tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        missing = [t for t in tensors if t not in graph_tensors]
        if missing:
            raise CalibrationError(
                f"tensor {missing[0]!r} requested for calibration is not produced by any node "
                "or input of the model"
            )
        present = {o.name for o in model.graph.output}
        n_outputs = len(model.graph.output)
        opts = session_options if session_options is not None else ort.SessionOptions()
        self._tmp: Optional[str] = None
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        # the extra outputs are added to the caller's proto only while it is serialized
        # (copying a model of hundreds of MB just to add outputs costs seconds) and removed
        # again in all cases
        try:
            for t in tensors:
                if t not in present:
                    # no type: onnxruntime takes it from the producer
                    model.graph.output.append(onnx.ValueInfoProto(name=t))
            self.output_names = [o.name for o in model.graph.output]
            if _has_external_data(model):
                if base_dir is None:
                    raise ModelError("the model has external data but no base directory was given")
                # external data locations are relative to the model file: the temporary copy
                # goes next to the original so they resolve without loading the weights
                fd, self._tmp = tempfile.mkstemp(suffix=".calib.onnx", dir=base_dir)
                os.close(fd)
                onnx.save(model, self._tmp)
                target: Any = self._tmp
            else:
                target = model.SerializeToString()
        finally:
            del model.graph.output[n_outputs:]
        try:
            self.session = ort.InferenceSession(target, sess_options=opts, providers=providers)
        except Exception:
            self.close()
            raise

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(feeds))))

    def close(self) -> None:
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None


@dataclass(frozen=True)
class StatsRequest:
    """What one consumer of a calibration pass needs: statistics of ``tensors`` with its
    own histogram resolution, row samples and held-out batches (see :func:`calibrate`)."""

    tensors: tuple
    bins: int = DEFAULT_BINS
    sample_rows: int = 0
    holdout_every: int = 0


def calibrate(
    model: Union[str, os.PathLike, onnx.ModelProto],
    tensors: Sequence[str],
    data: Union[CalibrationData, CalibrationCache],
    *,
    batch_size: int = 8,
    max_batches: Optional[int] = None,
    bins: int = DEFAULT_BINS,
    sample_rows: int = 0,
    holdout_every: int = 0,
    seed: int = 0,
    base_dir: Optional[str] = None,
    progress: bool = True,
    session_options: Any = None,
    providers: Optional[Sequence[str]] = None,
) -> dict[str, TensorStats]:
    """Run ``model`` on calibration ``data`` and return statistics of ``tensors``.

    Args:
        model: path of an ONNX model, or an in-memory ``ModelProto`` (which is not modified;
            pass ``base_dir`` if its initializers point to external data).
        tensors: names of graph tensors (node outputs or graph inputs) to observe; each is
            treated as [..., C] with channels on the last axis.
        data: a ``CalibrationDataReader``, an iterable of input dicts, a dict of arrays or an
            ``.npz`` path (leading axis = samples, cut into ``batch_size`` batches), or a
            :class:`CalibrationCache`.
        max_batches: stop after this many batches.
        bins: histogram bins per sign (percentile resolution).
        sample_rows: keep a uniform reservoir of this many rows per tensor (for error
            measurements such as the alpha search); 0 keeps none.
        holdout_every: when k > 0, every k-th batch (indices k-1, 2k-1, ...) is held out: its
            rows only go to the ``holdout`` reservoir and feed no statistic.
    Returns:
        ``{tensor name: TensorStats}``.
    Raises:
        CalibrationError: empty data, inputs that do not match the model, unknown tensors,
            non-finite activations.
    """
    request = StatsRequest(tuple(dict.fromkeys(tensors)), bins, sample_rows, holdout_every)
    return calibrate_many(model, {"": request}, data, batch_size=batch_size, max_batches=max_batches, seed=seed,
                          base_dir=base_dir, progress=progress, session_options=session_options,
                          providers=providers)[""]


def calibrate_many(
    model: Union[str, os.PathLike, onnx.ModelProto],
    requests: Mapping[str, StatsRequest],
    data: Union[CalibrationData, CalibrationCache],
    *,
    batch_size: int = 8,
    max_batches: Optional[int] = None,
    seed: int = 0,
    base_dir: Optional[str] = None,
    progress: bool = True,
    session_options: Any = None,
    providers: Optional[Sequence[str]] = None,
) -> dict[str, dict[str, TensorStats]]:
    """One onnxruntime pass over ``data`` that serves several consumers at once:
    ``{consumer: StatsRequest}`` -> ``{consumer: {tensor: TensorStats}}``. Each consumer
    gets its own statistics (its own bins, samples and held-out batches, its sampling
    seeded with ``seed``), exactly as a :func:`calibrate` call of its own would give."""
    proto, base_dir = _load(model, base_dir)
    if isinstance(data, CalibrationCache):
        source: Iterable[dict] = data
        inputs = None
        total: Optional[int] = len(data)
    else:
        source = iter_batches(data, batch_size)
        inputs: Optional[ModelInputs] = ModelInputs.of(proto)
        try:
            total = len(data)  # type: ignore[arg-type]
        except Exception:
            total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    wanted = list(dict.fromkeys(t for r in requests.values() for t in r.tensors))
    stats: dict[str, dict[str, TensorStats]] = {key: {} for key in requests}
    rngs = {key: np.random.default_rng(seed) for key in requests}
    session = _Session(proto, wanted, base_dir, session_options, providers)
    seen = 0
    try:
        bar = _progress(total, progress)
        for i, batch in enumerate(source):
            if max_batches is not None and i >= max_batches:
                break
            if inputs is not None:
                batch = validate_batch(inputs.complete(batch, f"calibration batch {i}"), inputs.specs, i)
            outputs = session.run(batch)
            for key, request in requests.items():
                _fold_batch(stats[key], request, outputs, i, rngs[key])
            seen += 1
            bar.update(1)
        bar.close()
    finally:
        session.close()
    if seen == 0:
        raise CalibrationError("calibration data is empty: the reader/iterable/file produced no batches")
    for request, got in zip(requests.values(), stats.values()):
        for name, st in got.items():
            if st.count == 0:
                raise CalibrationError(
                    f"no statistics for tensor {name!r}: every batch was held out "
                    f"(holdout_every={request.holdout_every} with {seen} batches)"
                )
    return stats


def _fold_batch(stats: dict[str, TensorStats], request: StatsRequest, outputs: Mapping[str, np.ndarray],
                index: int, rng: np.random.Generator) -> None:
    """Fold batch ``index`` into one consumer's statistics."""
    k = request.holdout_every
    held_out = k > 0 and index % k == k - 1
    for name in request.tensors:
        value = np.asarray(outputs[name])
        st = stats.get(name)
        if st is None:
            c = value.shape[-1] if value.ndim else 0
            if c <= 0:
                raise CalibrationError(f"tensor {name!r} is a scalar; it has no channel axis to calibrate")
            st = stats[name] = TensorStats(name, int(c), bins=request.bins)
        if held_out:
            st.add_samples(value, request.sample_rows, rng, holdout=True)
        else:
            st.update(value)
            st.add_samples(value, request.sample_rows, rng)


def _progress(total: Optional[int], enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="calibrating", unit="batch", disable=not enabled, leave=False)
