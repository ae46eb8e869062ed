"""The ``auto`` mode: per GGML linear layer, fast or exact from a measured cost.

Fast mode rounds each activation row to 8-bit blocks before integer dot products
(:mod:`onnxq.ggml.fastmode`); on most layers that adds little to the error the weight
quantization already makes, on some (outlier channels that coarsen a whole block, e.g.
SmolLM2's early ``down_proj`` inputs) it multiplies it. For every layer the pass measures,
on sampled calibration rows X, the relative output error of both modes through the real
codec round trip (:class:`~onnxq.ggml.awq.GroupErrorModel`)::

    e_mode = ||X W - X_mode Q(W)||^2 / ||X W||^2

and chooses fast where ``e_fast - e_exact``, what the rounding of the activations adds to
the layer's relative output error, is below a threshold. The added error, not the added
error relative to ``e_exact``: the rounding of X adds about the same error whatever the
weight type (it depends on X and on the activation blocks, 32 elements for every type),
and the model pays for it whatever the type. A ratio to
``e_exact`` sent nearly every layer of an accurate type (Q6_K, Q8_0) to exact and nearly
every layer of Q4_0 to fast; measured on SmolLM2-135M (``benchmarks/auto_threshold.py``,
docs/budget.md), no ratio threshold kept both Q4_0 and the K-quants within 0.3 percentage
points of all-exact perplexity while running a useful share of the MACs fast.

One layer is weighted: the LM head (role ``head``), whose output error is the logits'
error, unattenuated by the blocks after it. Measured on SmolLM2-135M q4_k_m, fast mode on
the head alone (added error 2.2e-4) costs +0.63 percentage points of perplexity and
0.0054 KL, ~25 KL per unit of added error; on every other layer together ~0.10 KL per
unit: the head's added error counts :data:`HEAD_WEIGHT` times.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import RecipeError

__all__ = ["DEFAULT_THRESHOLD", "HEAD_WEIGHT", "SAMPLE_ROWS", "ModeChoice", "measure_mode_errors", "choose_mode",
           "role_weight", "check_threshold", "modes_metadata"]

#: fast where it adds less than this to the layer's relative output error. Measured
#: (benchmarks/auto_threshold.py, tables in docs/budget.md), SmolLM2-135M, 32-element
#: activation blocks for every type, pp of perplexity vs all-exact on the whole corpus
#: (12,635 tokens): q4_k_m 7e-5 +0.13 (51 % of MACs fast), 8.5e-5 +0.04 (63 %), 1e-4 +0.13
#: (73 %); Q4_0 7e-5 +0.12, 8.5e-5 +0.14, 1e-4 +0.30; on 4,096 tokens at 1e-4 Q6_K +0.15,
#: Q8_0 +0.11; MiniLM encoder-q6 cosine -0.0002 at any threshold. 1e-4 is the largest that
#: keeps every case within 0.3 pp (cosine 0.0005), and the one that takes the default
#: q4_k_m's prefill past 1.2x float32 (1.33x; 8.5e-5: 1.19x; benchmarks/e2e_speed.py).
DEFAULT_THRESHOLD = 1e-4
#: the LM head's added error counts this many times (measured ~245x the KL per unit of
#: added error of the other layers: docs/budget.md)
HEAD_WEIGHT = 250.0
#: activation rows per layer the errors are measured on
SAMPLE_ROWS = 256


def check_threshold(value: float) -> float:
    """A threshold >= 0 (RecipeError otherwise)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"auto-mode threshold must be a number >= 0, got {value!r}") from None
    if not np.isfinite(number) or number < 0:
        raise RecipeError(f"auto-mode threshold must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class ModeChoice:
    """The mode of one layer and the measurement behind it."""

    site: str
    mode: str
    exact_error: float
    fast_error: float
    threshold: float
    #: how many times its added error counts (:data:`HEAD_WEIGHT` for the LM head, else 1)
    weight: float = 1.0

    @property
    def added(self) -> float:
        """What fast mode adds to the layer's relative output error."""
        return self.fast_error - self.exact_error

    @property
    def reason(self) -> str:
        rel = "<" if self.mode == "fast" else ">="
        weighted = f", x{self.weight:g} (LM head)" if self.weight != 1.0 else ""
        return (f"auto: 8-bit activations add {self.added:.2e} to the relative output error "
                f"({self.exact_error:.2e} -> {self.fast_error:.2e}){weighted}, {rel} {self.threshold:.2g}")


def measure_mode_errors(weight: np.ndarray, qtype: str, tail: Optional[str], rows: np.ndarray,
                        imatrix: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """(exact, fast) relative output error of one layer ``X @ W`` (W [K, N]) quantized
    to ``qtype`` on activation ``rows`` [R, K]."""
    from .awq import GroupErrorModel

    errors = GroupErrorModel({"w": (weight, qtype, tail)}, rows, imatrix).site_errors(None, ("exact", "fast"))["w"]
    return errors["exact"], errors["fast"]


def choose_mode(site: str, exact_error: float, fast_error: float, threshold: float,
                weight: float = 1.0) -> ModeChoice:
    """Fast when fast mode adds less than ``threshold`` to the relative output error
    (counted ``weight`` times: :data:`HEAD_WEIGHT` for the LM head)."""
    mode = "fast" if weight * (fast_error - exact_error) < threshold else "exact"
    return ModeChoice(site, mode, exact_error, fast_error, threshold, weight)


def role_weight(role: str) -> float:
    """How many times a layer of ``role`` counts its added error."""
    return HEAD_WEIGHT if role == "head" else 1.0


def modes_metadata(choices: Mapping[str, ModeChoice], threshold: float, source: str) -> str:
    """The ``onnxq.modes`` metadata value: the threshold, the data, and per layer the
    chosen mode with both measured errors (``onnxq inspect`` shows them)."""
    layers: Dict[str, Dict[str, object]] = {
        name: {"mode": c.mode, "exact_error": float(f"{c.exact_error:.4g}"), "fast_error": float(f"{c.fast_error:.4g}"),
               **({"weight": c.weight} if c.weight != 1.0 else {})}
        for name, c in choices.items()
    }
    return json.dumps({"threshold": threshold, "data": source, "layers": layers}, sort_keys=True,
                      separators=(",", ":"))


# ----------------------------------------------------------------------------- the pass's part


def _replace_mode(job, site: str, mode: str, reason: str) -> None:
    import dataclasses

    for i, d in enumerate(job.plan.decisions):
        if d.site == site:
            job.plan.decisions[i] = dataclasses.replace(d, method=dataclasses.replace(d.method, mode=mode),
                                                        mode_reason=reason)
            return
    raise KeyError(site)


def _auto_decisions(job):
    from ..plan import AUTO, GGML

    linear = {s.name: s for s in job.analysis.linear}
    return [(d, linear[d.site]) for d in job.plan.by_kind(GGML) if d.method.mode == AUTO and d.site in linear]


def resolve_without_data(job, why: str) -> None:
    """No inputs to measure on: every ``auto`` layer runs exact (the more accurate mode),
    said in a warning and in each layer's reason."""
    decisions = _auto_decisions(job)
    reason = f"auto: exact, no calibration data to measure fast mode on ({why or 'none given'})"
    for d, _ in decisions:
        _replace_mode(job, d.site, "exact", reason)
    job.warnings.append(f"mode auto: {len(decisions)} layers set to exact: no calibration data to measure fast mode "
                        f"on ({why or 'none given'}); give --calib DATA or choose --mode fast/exact")


def resolve_auto_modes(job, stats: Dict, scaled, threshold: float, imatrix: Optional[Mapping[str, np.ndarray]],
                       key: str) -> Dict[str, ModeChoice]:
    """Measure every ``auto`` layer of ``job`` on its sampled input rows and fix its mode.
    ``scaled``: AWQ's ``[(input, new input, s)]`` (its statistics follow the scaling)."""
    from tqdm.auto import tqdm

    from ..errors import CalibrationError
    from ..folding import SiteWeights
    from ..sites import ModelGraph

    stats = dict(stats)
    for x, new_x, s in scaled:
        if x in stats:
            stats[new_x] = stats[x].scaled(s)
    weights = SiteWeights(job.model, ModelGraph(job.model), job.base_dir)
    choices: Dict[str, ModeChoice] = {}
    decisions = _auto_decisions(job)
    for d, site in tqdm(decisions, desc="auto mode", unit="layer", disable=not job.options.progress, leave=False):
        st = stats.get(site.input)
        rows = None if st is None else st.samples
        if rows is None or rows.shape[0] == 0:
            raise CalibrationError(f"auto mode: no sampled activations of {site.input!r} (input of {site.name})")
        exact, fast = measure_mode_errors(weights.weight(site), d.method.qtype, d.method.tail_type, rows,
                                          None if imatrix is None else imatrix.get(site.input))
        choice = choices[site.name] = choose_mode(site.name, exact, fast, threshold, role_weight(site.role))
        _replace_mode(job, site.name, choice.mode, choice.reason)
    job.metadata[key] = modes_metadata(choices, threshold, job.options.auto_data_source)
    job.reports["modes"] = choices
    return choices
