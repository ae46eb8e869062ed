"""SmoothQuant settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from ..errors import RecipeError
from ..plan import parse_alpha

__all__ = ["SmoothQuantConfig", "DEFAULT_ALPHA_GRID", "resolve_alpha", "searches_alpha"]

DEFAULT_ALPHA_GRID: Tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SmoothQuantConfig:
    """How SmoothQuant W8A8 smooths and quantizes.

    alpha: migration strength exponent in s_j = max|X_j|^alpha / max|W_j|^(1-alpha), a
        number in [0, 1], or "auto" (the default): per group of sites sharing an input, the
        value of ``alpha_grid`` (or no smoothing) with the smallest simulated W8A8 output
        error on held-out calibration rows. The measured best (README: SmolLM2-135M +3.9 %
        perplexity with "auto" against +19.1 % at 0.5; all-MiniLM-L6-v2 cosine 0.9938
        against 0.9883), so it is the default; it needs sampled activation rows.
    num_calibration_samples: use at most this many calibration batches (None: all).
    activation_percentile: None clips activations at their calibrated min/max (MinMax);
        e.g. 99.99 clips the 0.01 % tails (percentile from streaming histograms).
    per_channel: int8 weight scales per output channel (else one per weight).
    migration_strength: in [0, 1]; the applied smoothing vector is s**strength
        (0 disables smoothing: plain W8A8).
    quantize_activations: static int8 activations from calibration; False means no
        static activation scale (the model pass then emits dynamic quantization).
    activation_symmetric: symmetric activation range (zero point at the middle) instead
        of the calibrated [min, max].
    weight_type: storage of the (symmetric, [-127, 127]) int8 weight values. "uint8"
        stores q + 128 with zero point 128 so onnxruntime runs its u8u8 kernels, exact on
        every x86 CPU; "int8" stores them as int8 (u8s8 kernels: fastest with VNNI, but on
        AVX2 without VNNI their 16-bit intermediate sums can saturate, see reduce_range).
    reduce_range: 7-bit weights ([-63, 63]) so u8s8 kernels cannot saturate on AVX2.
    min_scale, max_scale: clamp of the smoothing factors s.
    tiny: channels whose activation or weight maximum is below this get s = 1.
    alpha_grid: candidates for the per-layer alpha search.
    explicit_mul_min_gain: in the alpha search, a group whose 1/s cannot be folded (it
        needs a Mul at run time) is smoothed only if that lowers its simulated error by at
        least this fraction; folded groups are smoothed whenever it lowers the error.
    """

    alpha: Union[float, str] = "auto"
    num_calibration_samples: Optional[int] = None
    activation_percentile: Optional[float] = None
    per_channel: bool = True
    migration_strength: float = 1.0
    quantize_activations: bool = True
    activation_symmetric: bool = False
    weight_type: str = "uint8"
    reduce_range: bool = False
    min_scale: float = 1e-4
    max_scale: float = 1e4
    tiny: float = 1e-6
    alpha_grid: Tuple[float, ...] = field(default=DEFAULT_ALPHA_GRID)
    explicit_mul_min_gain: float = 0.25

    def __post_init__(self) -> None:
        self.alpha = parse_alpha(self.alpha, "SmoothQuant alpha")
        if not 0.0 <= float(self.migration_strength) <= 1.0:
            raise RecipeError(f"migration_strength must be in [0, 1], got {self.migration_strength}")
        if self.activation_percentile is not None and not 0.0 < float(self.activation_percentile) <= 100.0:
            raise RecipeError(f"activation_percentile must be in (0, 100], got {self.activation_percentile}")
        if self.num_calibration_samples is not None and int(self.num_calibration_samples) <= 0:
            raise RecipeError(f"num_calibration_samples must be positive, got {self.num_calibration_samples}")
        if self.weight_type not in ("uint8", "int8"):
            raise RecipeError(f"weight_type must be 'uint8' or 'int8', got {self.weight_type!r}")
        if not 0.0 < self.min_scale <= 1.0 <= self.max_scale:
            raise RecipeError(f"need 0 < min_scale <= 1 <= max_scale, got {self.min_scale}, {self.max_scale}")
        grid = tuple(float(a) for a in self.alpha_grid)
        if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
            raise RecipeError(f"alpha_grid must be non-empty values in [0, 1], got {self.alpha_grid}")
        self.alpha_grid = grid

    @property
    def weight_qmax(self) -> int:
        """Largest |q| of a weight value."""
        return 63 if self.reduce_range else 127


def resolve_alpha(spec: Any, keys: Sequence[str], config: SmoothQuantConfig) -> Union[float, str]:
    """The alpha of one group: ``spec`` is None (``config.alpha``), a number, ``"auto"``, or
    ``{group input or site name: alpha}`` looked up by ``keys`` (the group's input, then its
    sites; not found: ``config.alpha``)."""
    if spec is None:
        return config.alpha
    if isinstance(spec, Mapping):
        for key in keys:
            if key in spec:
                return parse_alpha(spec[key], f"alpha of {key!r}")
        return config.alpha
    return parse_alpha(spec)


def searches_alpha(spec: Any, config: SmoothQuantConfig, covers_all: bool = False) -> bool:
    """True when some group's alpha resolves to "auto" (the search needs sampled rows and
    held-out batches): ``spec`` as :func:`resolve_alpha` takes it; ``covers_all``: a mapping
    names every group, so ``config.alpha`` is never its fallback."""
    if spec is None:
        return config.alpha == "auto"
    if isinstance(spec, Mapping):
        return (any(parse_alpha(v) == "auto" for v in spec.values())
                or (not covers_all and config.alpha == "auto"))
    return parse_alpha(spec) == "auto"
