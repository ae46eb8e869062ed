"""Tensor-level SmoothQuant: calibrate and quantize one linear layer from numpy arrays.

Shapes follow ONNX MatMul: ``Y = X @ W`` with activations X [..., K] (channels last) and
weights W [K, N] (in, out). The result holds int8 weights of ``W' = diag(s) W``, their
per-output-channel scales [N], the smoothing vector s [K] (the layer's input must be
divided by it: ``X' = X / s``) and the per-tensor activation scale / zero point of X'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..calibrate import TensorStats
from ..errors import CalibrationError
from ..plan import parse_alpha
from .config import SmoothQuantConfig
from .migration import AlphaChoice, MigrationAnalyzer, smoothing_scales, weight_row_absmax
from .quant import ActivationQParams, activation_qparams, fake_quantize_activation, quantize_weight

__all__ = ["SmoothQuantizer", "QuantizedLinear"]

ArrayOrBatches = Union[np.ndarray, Iterable[np.ndarray]]


@dataclass
class QuantizedLinear:
    """One SmoothQuant W8A8 layer.

    weight: int8 [K, N], values in [-qmax, qmax]; W' ≈ weight * weight_scale.
    weight_scale: float32 [N] (per output channel) or [] (per tensor).
    smoothing: float32 [K], the s of X' = X / s and W' = diag(s) W.
    activation_scale / activation_zero_point: uint8 quantization of X' (None when the
        config does not quantize activations statically).
    """

    name: str
    weight: np.ndarray
    weight_scale: np.ndarray
    smoothing: np.ndarray
    activation_scale: Optional[float]
    activation_zero_point: Optional[int]
    alpha: Optional[float]  # None: no smoothing (alpha "auto" found none better)

    def dequantized_weight(self) -> np.ndarray:
        """W' as the int8 weights represent it, float32 [K, N]."""
        return self.weight.astype(np.float32) * self.weight_scale

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Y ≈ X @ W as the int8 layer computes it (quantize X/s, integer-valued matmul)."""
        xs = np.asarray(x, np.float32) / self.smoothing
        if self.activation_scale is not None:
            xs = fake_quantize_activation(xs, ActivationQParams(self.activation_scale, int(self.activation_zero_point)))
        return xs @ self.dequantized_weight()


def _as_batches(data: ArrayOrBatches) -> Iterable[np.ndarray]:
    if isinstance(data, np.ndarray):
        return [data]
    return data


class SmoothQuantizer:
    """Calibrate activations per layer (streaming), then quantize the layer.

    ``calibrate`` may be called many times for the same name (each call adds batches);
    memory is the statistics plus a reservoir of ``sample_rows`` rows per layer.
    """

    def __init__(self, config: Optional[SmoothQuantConfig] = None, sample_rows: int = 4096, seed: int = 0) -> None:
        self.config = config or SmoothQuantConfig()
        self.sample_rows = int(sample_rows)
        self._rng = np.random.default_rng(seed)
        self.stats: Dict[str, TensorStats] = {}
        self.weights: Dict[str, List[np.ndarray]] = {}
        self._samples_seen: Dict[str, int] = {}

    # -- calibration ------------------------------------------------------------------

    def calibrate(self, name: str, activations: ArrayOrBatches, weights: Union[np.ndarray, Sequence[np.ndarray], None] = None) -> TensorStats:
        """Add activation batches X [..., K] for layer ``name``.

        ``weights``: W [K, N], or a list of them when several layers share this input (they
        then share one s). The leading axis of each batch counts as samples for
        ``num_calibration_samples``.
        """
        if weights is not None:
            ws = [weights] if isinstance(weights, np.ndarray) else list(weights)
            self.weights[name] = [self._check_weight(name, w) for w in ws]
        limit = self.config.num_calibration_samples
        for batch in _as_batches(activations):
            x = np.asarray(batch, dtype=np.float32)
            if x.ndim == 0:
                raise CalibrationError(f"layer {name!r}: activations must be [..., K], got a scalar")
            seen = self._samples_seen.get(name, 0)
            if limit is not None:
                if seen >= limit:
                    break
                if x.ndim > 1 and seen + x.shape[0] > limit:
                    x = x[: limit - seen]
            st = self.stats.get(name)
            if st is None:
                st = self.stats[name] = TensorStats(name, int(x.shape[-1]))
            if name in self.weights and self.weights[name][0].shape[0] != st.channels:
                raise CalibrationError(
                    f"layer {name!r}: activations have {st.channels} channels, weight is "
                    f"[{self.weights[name][0].shape[0]}, N]: expected K = {st.channels}"
                )
            st.update(x)
            st.add_samples(x, self.sample_rows, self._rng)
            self._samples_seen[name] = seen + (x.shape[0] if x.ndim > 1 else 1)
        if name not in self.stats or self.stats[name].count == 0:
            raise CalibrationError(f"layer {name!r}: calibration got no activations (empty data)")
        return self.stats[name]

    @staticmethod
    def _check_weight(name: str, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise CalibrationError(f"layer {name!r}: weight must be 2-D [K, N], got shape {list(w.shape)}")
        if not np.all(np.isfinite(w)):
            raise CalibrationError(f"layer {name!r}: weight has NaN or infinite values")
        return w

    # -- smoothing --------------------------------------------------------------------

    def _stats(self, name: str) -> TensorStats:
        st = self.stats.get(name)
        if st is None:
            raise CalibrationError(f"layer {name!r} has not been calibrated: call calibrate() first")
        return st

    def smoothing_vector(self, name: str, alpha: Union[float, str, None] = None,
                         weights: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
        """s [K] for layer ``name`` (alpha defaults to the config's; "auto" searches it)."""
        st = self._stats(name)
        ws = list(weights) if weights is not None else self.weights.get(name)
        if not ws:
            raise CalibrationError(f"layer {name!r}: no weights given to compute the smoothing vector")
        c = self.config
        a = self._resolve_alpha(name, alpha, ws)
        if a is None:
            return np.ones(st.channels, np.float32)
        return smoothing_scales(
            st.absmax, weight_row_absmax(ws), a,
            strength=c.migration_strength, min_scale=c.min_scale, max_scale=c.max_scale, tiny=c.tiny,
        )

    def _resolve_alpha(self, name: str, alpha: Union[float, str, None], weights: Sequence[np.ndarray]) -> Optional[float]:
        """A number, or for "auto" the searched alpha (None: no smoothing was best)."""
        a = parse_alpha(self.config.alpha if alpha is None else alpha)
        if a != "auto":
            return float(a)
        analyzer = MigrationAnalyzer(self.config)
        analyzer.add_stats(name, self._stats(name), {f"{name}[{i}]": w for i, w in enumerate(weights)})
        return analyzer.find_optimal_alpha([name], include_unsmoothed=True)[name].alpha

    def analyzer(self, names: Optional[Sequence[str]] = None) -> MigrationAnalyzer:
        """A :class:`MigrationAnalyzer` over the calibrated layers (their reservoir rows)."""
        an = MigrationAnalyzer(self.config)
        for name in names if names is not None else list(self.stats):
            ws = self.weights.get(name)
            if not ws:
                raise CalibrationError(f"layer {name!r}: no weights registered")
            an.add_stats(name, self._stats(name), {f"{name}[{i}]" if len(ws) > 1 else name: w for i, w in enumerate(ws)})
        return an

    def find_optimal_alpha(self, name: str, grid: Optional[Sequence[float]] = None, metric=None) -> AlphaChoice:
        """Grid search of alpha for one layer on its sampled calibration rows."""
        return self.analyzer([name]).find_optimal_alpha([name], grid, metric)[name]

    # -- quantization -----------------------------------------------------------------

    def quantize_linear_layer(
        self,
        name: str,
        weights: np.ndarray,
        calibration_data: Optional[ArrayOrBatches] = None,
        alpha: Union[float, str, None] = None,
    ) -> QuantizedLinear:
        """Smooth and quantize W [K, N] of layer ``name``.

        ``calibration_data`` (X [..., K] or batches of it) is calibrated first when given;
        otherwise the layer must have been calibrated. With an activation percentile and
        ``calibration_data`` given (as an array or re-iterable list), the clip range is
        the exact percentile of X / s from a second pass; otherwise it is estimated on the
        reservoir sample.
        """
        w = self._check_weight(name, weights)
        if calibration_data is not None:
            if not isinstance(calibration_data, (np.ndarray, list, tuple)):
                calibration_data = list(calibration_data)
            self.calibrate(name, calibration_data, self.weights.get(name) or [w])
        st = self._stats(name)
        if w.shape[0] != st.channels:
            raise CalibrationError(
                f"layer {name!r}: weight is [{w.shape[0]}, {w.shape[1]}], activations have "
                f"{st.channels} channels: expected weight [{st.channels}, N]"
            )
        group = self.weights.get(name) or [w]
        if not any(g is w or (g.shape == w.shape and np.array_equal(g, w)) for g in group):
            group = group + [w]
        c = self.config
        a = self._resolve_alpha(name, alpha, group)
        s = self.smoothing_vector(name, a, group) if a is not None else np.ones(st.channels, np.float32)
        qw = quantize_weight(w * s[:, None], c.per_channel, c.weight_qmax)
        act_scale: Optional[float] = None
        act_zp: Optional[int] = None
        if c.quantize_activations:
            qp = self._activation_qparams(st, s, calibration_data)
            act_scale, act_zp = qp.scale, qp.zero_point
        return QuantizedLinear(name, qw.values, qw.scale, s, act_scale, act_zp, a)

    def _activation_qparams(self, st: TensorStats, s: np.ndarray, data) -> ActivationQParams:
        c = self.config
        p = c.activation_percentile
        if p is None or p >= 100.0:
            lo, hi = float(np.min(st.channel_min / s)), float(np.max(st.channel_max / s))
        elif data is not None:
            smoothed = TensorStats(st.name + "/smoothed", st.channels)
            seen = 0
            for batch in _as_batches(data):
                x = np.asarray(batch, np.float32)
                if c.num_calibration_samples is not None and x.ndim > 1:
                    x = x[: max(0, c.num_calibration_samples - seen)]
                    seen += x.shape[0]
                if x.size:
                    smoothed.update(x / s)
            lo, hi = smoothed.range(p)
        else:
            rows = st.samples / s
            tail = (100.0 - p) / 200.0
            lo, hi = (float(v) for v in np.quantile(rows.ravel(), [tail, 1.0 - tail]))
        return activation_qparams(lo, hi, c.activation_symmetric)
