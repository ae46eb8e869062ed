"""Smoothing factors, simulated W8A8 error, and the per-layer alpha search.

Convention (the paper's): for Y = X W with X [tokens, K], W [K, N],
``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``, ``X' = X diag(s)^-1``, ``W' = diag(s) W``.
Dividing X by s shrinks the outlier channels of X and moves their magnitude into the
rows of W, which per-output-channel weight scales absorb well.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import CalibrationError
from .config import SmoothQuantConfig
from .quant import activation_qparams, fake_quantize_activation, quantize_weight

__all__ = [
    "smoothing_scales",
    "weight_row_absmax",
    "relative_mse",
    "Metric",
    "AlphaChoice",
    "LayerError",
    "MigrationAnalyzer",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


def relative_mse(reference: np.ndarray, approx: np.ndarray) -> float:
    """||ref - approx||² / ||ref||² (scale-free, 0 is exact)."""
    ref = np.asarray(reference, dtype=np.float32).ravel()
    diff = ref - np.asarray(approx, dtype=np.float32).ravel()
    num = float(np.dot(diff.astype(np.float64), diff))
    denom = float(np.dot(ref.astype(np.float64), ref))
    return num / denom if denom > 0 else num


def weight_row_absmax(weights: Sequence[np.ndarray]) -> np.ndarray:
    """max|W_j| over row j of every weight [K, N_i] sharing the input (-> [K])."""
    if not weights:
        raise ValueError("need at least one weight")
    k = weights[0].shape[0]
    out = np.zeros(k, np.float32)
    for w in weights:
        if w.ndim != 2 or w.shape[0] != k:
            raise ValueError(f"weights sharing an input must all be [K={k}, N], got {list(w.shape)}")
        np.maximum(out, np.abs(w).max(axis=1), out=out)
    return out


def smoothing_scales(
    act_absmax: np.ndarray,
    weight_absmax: np.ndarray,
    alpha: float,
    *,
    strength: float = 1.0,
    min_scale: float = 1e-4,
    max_scale: float = 1e4,
    tiny: float = 1e-6,
) -> np.ndarray:
    """Smoothing factors s [K] (X' = X / s, W' = s[:, None] * W).

    Channels whose activation or weight maximum is below ``tiny`` (never active, or no
    weight) get s = 1: dividing by a near-zero power would blow the other side up.
    s is clamped to [min_scale, max_scale], then raised to ``strength``.
    """
    a = np.asarray(act_absmax, dtype=np.float64)
    w = np.asarray(weight_absmax, dtype=np.float64)
    if a.shape != w.shape or a.ndim != 1:
        raise ValueError(f"activation and weight maxima must both be [K], got {a.shape} and {w.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    live = (a > tiny) & (w > tiny)
    s = np.ones_like(a)
    s[live] = np.power(a[live], alpha) / np.power(w[live], 1.0 - alpha)
    s = np.clip(s, min_scale, max_scale)
    if strength != 1.0:
        s = np.power(s, strength)
    return s.astype(np.float32)


@dataclass
class AlphaChoice:
    """Result of the alpha search for one group (all sites sharing one input)."""

    group: str
    alpha: Optional[float]  # None: leaving the group unsmoothed was best
    error: float
    errors: Dict[float, float]
    unsmoothed_error: float


@dataclass
class LayerError:
    """Simulated W8A8 output error of one site with and without smoothing."""

    site: str
    group: str
    alpha: Optional[float]
    error_plain: float
    error_smoothed: float

    @property
    def improvement(self) -> float:
        return self.error_plain / self.error_smoothed if self.error_smoothed > 0 else float("inf")


@dataclass
class _Group:
    name: str
    act_min: np.ndarray
    act_max: np.ndarray
    weights: Dict[str, np.ndarray]
    eval_rows: np.ndarray
    range_rows: Optional[np.ndarray]
    w_absmax: np.ndarray = field(init=False)
    reference: Dict[str, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.w_absmax = weight_row_absmax(list(self.weights.values()))

    def reference_output(self, site: str) -> np.ndarray:
        """X W in float on the evaluation rows (computed once per site)."""
        if site not in self.reference:
            self.reference[site] = self.eval_rows @ self.weights[site]
        return self.reference[site]


class MigrationAnalyzer:
    """Simulates W8A8 on calibration rows to choose alpha per group and to report what
    each layer costs with and without smoothing.

    A *group* is the set of linear sites that consume one activation tensor (they share
    one s). Each group needs the per-channel activation extrema (from calibration), the
    float weights [K, N] of its sites and a sample of activation rows to measure the
    output error on (held-out rows when calibration kept some).
    """

    def __init__(self, config: Optional[SmoothQuantConfig] = None, metric: Metric = relative_mse) -> None:
        self.config = config or SmoothQuantConfig()
        self.metric = metric
        self.groups: Dict[str, _Group] = {}

    def add_group(
        self,
        name: str,
        act_min: np.ndarray,
        act_max: np.ndarray,
        weights: Mapping[str, np.ndarray],
        eval_rows: np.ndarray,
        range_rows: Optional[np.ndarray] = None,
    ) -> None:
        """Register a group. ``range_rows`` estimate the percentile range of X/s when the
        config clips at a percentile (default: ``eval_rows``)."""
        eval_rows = np.asarray(eval_rows, dtype=np.float32)
        if eval_rows.ndim != 2 or eval_rows.shape[0] == 0:
            raise CalibrationError(
                f"group {name!r}: need a non-empty [rows, K] sample of activations, got shape {list(eval_rows.shape)}"
            )
        k = eval_rows.shape[1]
        for site, w in weights.items():
            if w.shape[0] != k:
                raise CalibrationError(f"site {site!r}: weight has K={w.shape[0]}, activations have {k} channels")
        self.groups[name] = _Group(
            name,
            np.asarray(act_min, np.float32),
            np.asarray(act_max, np.float32),
            {k_: np.asarray(w, np.float32) for k_, w in weights.items()},
            eval_rows,
            None if range_rows is None else np.asarray(range_rows, np.float32),
        )

    def add_stats(self, name: str, stats, weights: Mapping[str, np.ndarray]) -> None:
        """Register a group from a :class:`onnxq.calibrate.TensorStats` (with samples)."""
        rows = stats.rows_for_evaluation()
        if rows is None or rows.shape[0] == 0:
            raise CalibrationError(
                f"tensor {stats.name!r} has no sampled rows: calibrate with sample_rows > 0 for the alpha search"
            )
        self.add_group(name, stats.channel_min, stats.channel_max, weights, rows, stats.samples)

    # -- the numbers ------------------------------------------------------------------

    def scales(self, name: str, alpha: Optional[float]) -> np.ndarray:
        """s for ``group`` at ``alpha`` (ones for None)."""
        g = self.groups[name]
        if alpha is None:
            return np.ones_like(g.w_absmax)
        c = self.config
        act_absmax = np.maximum(np.abs(g.act_min), np.abs(g.act_max))
        return smoothing_scales(
            act_absmax, g.w_absmax, alpha, strength=c.migration_strength,
            min_scale=c.min_scale, max_scale=c.max_scale, tiny=c.tiny,
        )

    def _act_range(self, g: _Group, s: np.ndarray) -> Tuple[float, float]:
        p = self.config.activation_percentile
        if p is None or p >= 100.0:
            return float(np.min(g.act_min / s)), float(np.max(g.act_max / s))
        rows = g.range_rows if g.range_rows is not None and g.range_rows.shape[0] else g.eval_rows
        vals = (rows / s).ravel()
        tail = (100.0 - p) / 200.0
        lo, hi = np.quantile(vals, [tail, 1.0 - tail])
        return float(lo), float(hi)

    def site_errors(self, name: str, alpha: Optional[float], metric: Optional[Metric] = None) -> Dict[str, float]:
        """Simulated W8A8 error of each site of the group: metric(X W, Q(X/s) Q(s W))."""
        g = self.groups[name]
        metric = metric or self.metric
        c = self.config
        s = self.scales(name, alpha)
        x = g.eval_rows
        xs = x / s
        if c.quantize_activations:
            lo, hi = self._act_range(g, s)
            xq = fake_quantize_activation(xs, activation_qparams(lo, hi, c.activation_symmetric))
        else:
            xq = xs
        out = {}
        for site, w in g.weights.items():
            wq = quantize_weight(w * s[:, None], c.per_channel, c.weight_qmax).dequantize()
            out[site] = metric(g.reference_output(site), xq @ wq)
        return out

    def group_error(self, name: str, alpha: Optional[float], metric: Optional[Metric] = None) -> float:
        """Mean of the site errors of the group."""
        errs = self.site_errors(name, alpha, metric)
        return float(np.mean(list(errs.values())))

    def find_optimal_alpha(
        self,
        groups: Optional[Sequence[str]] = None,
        grid: Optional[Sequence[float]] = None,
        metric: Optional[Metric] = None,
        include_unsmoothed: bool = False,
        min_gain: float = 0.0,
    ) -> Dict[str, AlphaChoice]:
        """Per group, the alpha of ``grid`` with the smallest output error (``metric``,
        default relative MSE) on the group's evaluation rows. With ``include_unsmoothed``
        no smoothing is a candidate too (chosen alpha None), and wins unless the best
        alpha lowers the error by at least the fraction ``min_gain``."""
        grid = tuple(grid) if grid is not None else self.config.alpha_grid
        out: Dict[str, AlphaChoice] = {}
        for name in groups if groups is not None else list(self.groups):
            errors = {float(a): self.group_error(name, float(a), metric) for a in grid}
            plain = self.group_error(name, None, metric)
            best = min(errors, key=lambda a: (errors[a], abs(a - 0.5)))
            if include_unsmoothed and errors[best] >= plain * (1.0 - min_gain):
                out[name] = AlphaChoice(name, None, plain, errors, plain)
            else:
                out[name] = AlphaChoice(name, best, errors[best], errors, plain)
        return out

    def error_analysis(
        self, alpha: "float | Mapping[str, Optional[float]] | None" = None, metric: Optional[Metric] = None
    ) -> List[LayerError]:
        """Each site's simulated W8A8 error without smoothing and with smoothing at
        ``alpha`` (one value, a per-group mapping, or None for the config's alpha)."""
        rows: List[LayerError] = []
        for name in self.groups:
            a = alpha.get(name, self.config.alpha) if isinstance(alpha, Mapping) else (
                self.config.alpha if alpha is None else alpha)
            if a == "auto":
                a = self.find_optimal_alpha([name], metric=metric, include_unsmoothed=True)[name].alpha
            plain = self.site_errors(name, None, metric)
            smooth = self.site_errors(name, a, metric) if a is not None else plain
            for site in plain:
                rows.append(LayerError(site, name, a, plain[site], smooth[site]))
        return rows
