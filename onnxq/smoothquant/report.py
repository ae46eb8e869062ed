"""What the SmoothQuant pass did: a row per site and the pass's report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .migration import AlphaChoice

__all__ = ["SiteReport", "SmoothQuantReport"]


@dataclass
class SiteReport:
    """What happened to one linear site."""

    name: str
    input: str
    role: str
    layer: Optional[int]
    quantized: bool
    alpha: Optional[float]
    fold: str
    activation_scale: Optional[float] = None
    activation_zero_point: Optional[int] = None
    error_plain: Optional[float] = None
    error_smoothed: Optional[float] = None
    note: str = ""
    #: bytes of its int8 weight, scales and zero points (0 when left in float)
    nbytes: int = 0


@dataclass
class SmoothQuantReport:
    """Result of a SmoothQuant pass: per-site rows, the alpha search and notes."""

    format: str
    sites: List[SiteReport] = field(default_factory=list)
    alpha_search: Dict[str, AlphaChoice] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    output_path: Optional[str] = None
    #: (X, s) of every group whose 1/s was folded into X's producer: X now carries X / s
    folded: List[Tuple[str, np.ndarray]] = field(default_factory=list)

    @property
    def quantized(self) -> List[SiteReport]:
        return [s for s in self.sites if s.quantized]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "output_path": self.output_path,
            "sites": [asdict(s) for s in self.sites],
            "alpha_search": {
                k: {"alpha": v.alpha, "error": v.error, "unsmoothed_error": v.unsmoothed_error,
                    "errors": {str(a): e for a, e in v.errors.items()}}
                for k, v in self.alpha_search.items()
            },
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        """A table: one row per site with alpha, fold and simulated W8A8 errors."""
        head = f"{'site':60s} {'role':5s} {'q':1s} {'alpha':>5s} {'err plain':>10s} {'err smooth':>10s}  fold"
        lines = [f"SmoothQuant ({self.format}): {len(self.quantized)} of {len(self.sites)} sites quantized", head]
        for s in self.sites:
            a = "-" if s.alpha is None else f"{s.alpha:.2f}"
            ep = "-" if s.error_plain is None else f"{s.error_plain:.2e}"
            es = "-" if s.error_smoothed is None else f"{s.error_smoothed:.2e}"
            lines.append(f"{s.name[-60:]:60s} {s.role[:5]:5s} {'y' if s.quantized else 'n'} {a:>5s} {ep:>10s} {es:>10s}  {s.fold}"
                         + (f"  ({s.note})" if s.note else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)
