"""Activation-aware weight scaling (AWQ-style, weight-only) before GGML packing.

For a group of linear sites that read one activation X (q/k/v after one norm, gate/up
after one norm), Y = X W = (X / s) (diag(s) W) for any per-input-channel s > 0. GGML
blocks run along the input axis, so multiplying the rows of W that meet large
activations by s_j > 1 gives them a finer share of each block's grid; 1/s is folded into
X's producer (:mod:`onnxq.folding`: a norm's gamma/beta, a Mul by a constant,
a linear site's output columns) at no run-time cost.

s follows AWQ: ``s_j = mean|X_j|^a``, normalised so that ``sqrt(max s * min s) = 1``, with
the exponent ``a`` chosen per group from a small grid (``a = 0`` is "no scaling") to
minimise the group's output error on sampled calibration rows, the mean over its
quantized sites of::

    ||X W - (X / s) Q(diag(s) W)||^2 / ||X W||^2

where Q is the real GGML quantize -> dequantize round trip of each site's planned type
(rows = output features, i.e. W.T), weighted by the importance matrix of X / s when one
is given (the imatrix of X / s is mean(x^2) / s^2).

Sites of the group that stay float still get diag(s) W when 1/s is folded, so the
function is unchanged. When nothing can be folded (e.g. a post-norm BERT block, whose
norm output also feeds the residual Add) the group is left alone and reported, unless
``explicit_mul=True``: then a ``Mul(X, 1/s)`` is inserted in front of the quantized sites
only (one elementwise op per group) and must lower the error by ``explicit_mul_min_gain``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import CalibrationError, RecipeError
from ..folding import Fold, FoldContext, LinearOutputMulRule, SiteWeights, insert_explicit_mul, match_fold
from ..graph_edit import prune_initializers, topological_sort
from ..plan import GGML, Plan
from ..sites import Analysis, LinearSite, ModelGraph, input_groups

__all__ = [
    "AWQConfig",
    "AWQGroup",
    "AWQReport",
    "awq_scales",
    "GroupErrorModel",
    "apply_awq",
    "awq_tensors",
]

#: exponents tried per group (0 = no scaling)
DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class AWQConfig:
    """Options of the AWQ step (recipe key ``awq``, ``quantize(awq=...)``)."""

    #: exponents a of ``s = mean|X|^a`` to try; 0 (no scaling) is always a candidate
    grid: Tuple[float, ...] = DEFAULT_GRID
    #: calibration rows per group input on which the output error is measured
    sample_rows: int = 512
    #: insert Mul(X, 1/s) where no producer can absorb 1/s (an extra op per group)
    explicit_mul: bool = False
    #: an explicit Mul must lower the group's error by at least this fraction
    explicit_mul_min_gain: float = 0.05
    #: with explicit Muls, one s (and one Mul) per quantized site instead of one per group:
    #: a Mul is needed anyway, and q, k and v want different scales
    per_site: bool = True
    #: AutoAWQ's "duo" scales: s = mean|X|^a / mean|W_j|^(1-a) (mean over the group's
    #: weights' row j) instead of mean|X|^a
    duo: bool = True
    #: channels whose mean |x| is below this fraction of the largest are treated as this
    #: fraction (bounds s of nearly dead channels)
    floor: float = 1e-4
    batch_size: int = 8

    @classmethod
    def from_options(cls, options: Any) -> "AWQConfig":
        """From True / a dict of fields / an AWQConfig."""
        if isinstance(options, AWQConfig):
            return options
        if options is True or options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise RecipeError(f"awq options must be true or a mapping of AWQ settings, got {options!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = [k for k in options if k not in known]
        if unknown:
            raise RecipeError(f"unknown awq option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        values = dict(options)
        if "grid" in values:
            try:
                grid = tuple(float(a) for a in values["grid"])
            except (TypeError, ValueError):
                raise RecipeError(f"awq grid must be a list of numbers in [0, 1], got {values['grid']!r}") from None
            if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
                raise RecipeError(f"awq grid must be a non-empty list of numbers in [0, 1], got {values['grid']!r}")
            values["grid"] = grid
        for key in ("sample_rows", "batch_size"):
            if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1):
                raise RecipeError(f"awq {key} must be a positive integer, got {values[key]!r}")
        for key in ("explicit_mul", "duo", "per_site"):
            if key in values and not isinstance(values[key], bool):
                raise RecipeError(f"awq {key} must be true or false, got {values[key]!r}")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return {"grid": list(self.grid), "sample_rows": self.sample_rows, "explicit_mul": self.explicit_mul,
                "explicit_mul_min_gain": self.explicit_mul_min_gain, "per_site": self.per_site, "duo": self.duo,
                "floor": self.floor,
                "batch_size": self.batch_size}


@dataclass
class AWQGroup:
    """What AWQ did to one group of sites sharing an input."""

    input: str
    sites: List[str]  # the GGML-quantized sites of the group
    types: List[str]
    float_sites: List[str] = field(default_factory=list)  # sharing X, not GGML: smoothed in float
    exponent: Optional[float] = None  # None: not scaled
    fold: str = "none"  # fold kind, "explicit-mul" or "none"
    error_before: Optional[float] = None
    error_after: Optional[float] = None
    errors: Dict[float, float] = field(default_factory=dict)
    note: str = ""

    @property
    def scaled(self) -> bool:
        return self.exponent is not None


@dataclass
class AWQReport:
    """Per-group exponents and simulated output errors (relative MSE, the GGML round trip)."""

    config: AWQConfig
    groups: List[AWQGroup] = field(default_factory=list)

    @property
    def scaled(self) -> List[AWQGroup]:
        return [g for g in self.groups if g.scaled]

    def metadata(self) -> str:
        """The ``onnxq.awq`` metadata value: settings and the exponent of each scaled group."""
        return json.dumps({
            "grid": list(self.config.grid),
            "explicit_mul": self.config.explicit_mul,
            "groups": len(self.groups),
            "scaled": {self._key(g): {"exponent": g.exponent, "fold": g.fold} for g in self.scaled},
        }, sort_keys=True, separators=(",", ":"))

    def _key(self, group: AWQGroup) -> str:
        # per-site groups share their input: name them by input and site
        shared = sum(g.input == group.input for g in self.groups) > 1
        return f"{group.input} -> {group.sites[0]}" if shared else group.input

    def summary(self) -> str:
        """One line for the closing table."""
        skipped = [g for g in self.groups if not g.scaled]
        before = [g.error_before for g in self.groups if g.error_before is not None]
        after = [g.error_after for g in self.groups if g.error_after is not None]
        err = ""
        if before and after:
            err = f"; mean group error {np.mean(before):.3e} -> {np.mean(after):.3e}"
        return f"awq: {len(self.scaled)} of {len(self.groups)} groups scaled, {len(skipped)} left as is{err}"

    def to_text(self) -> str:
        """A table: one row per group with the exponent, fold and errors before/after."""
        lines = [self.summary(),
                 f"{'group input':52s} {'sites':>5s} {'a':>4s} {'err before':>10s} {'err after':>10s}  fold / note"]
        for g in self.groups:
            a = "-" if g.exponent is None else f"{g.exponent:.2f}"
            eb = "-" if g.error_before is None else f"{g.error_before:.3e}"
            ea = "-" if g.error_after is None else f"{g.error_after:.3e}"
            tail = g.fold + (f" ({g.note})" if g.note else "")
            lines.append(f"{g.input[-52:]:52s} {len(g.sites):>5d} {a:>4s} {eb:>10s} {ea:>10s}  {tail}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        out = {"config": self.config.to_dict(), "groups": []}
        for g in self.groups:
            d = asdict(g)
            d["errors"] = {str(k): v for k, v in g.errors.items()}
            out["groups"].append(d)
        return out


# ----------------------------------------------------------------------------- the numbers


def awq_scales(mean_abs: np.ndarray, exponent: float, floor: float = 1e-4,
               weight_mean_abs: Optional[np.ndarray] = None) -> np.ndarray:
    """AWQ's s [K]: ``max(mean|X_j|, floor * max) ** exponent`` (divided by
    ``mean|W_j| ** (1 - exponent)`` when ``weight_mean_abs`` is given), then divided by
    ``sqrt(max s * min s)`` so that the scales straddle 1 (exponent 0 gives ones)."""
    m = np.asarray(mean_abs, dtype=np.float64)
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"mean |x| must be a non-empty vector, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("mean |x| must be finite and non-negative")
    if exponent == 0.0 or not np.any(m > 0):
        return np.ones(m.shape, np.float32)
    m = np.maximum(m, floor * m.max())
    s = np.power(m, exponent)
    if weight_mean_abs is not None:
        w = np.asarray(weight_mean_abs, dtype=np.float64)
        w = np.maximum(w, floor * max(float(w.max()), 1e-30))
        s = s / np.power(w, 1.0 - exponent)
    s = s / np.sqrt(s.max() * s.min())
    return s.astype(np.float32)


class GroupErrorModel:
    """Output error of a group of sites sharing X under GGML weight quantization with
    input scaling s: the mean over sites of ``||X W - (X/s) Q(diag(s) W)||^2 / ||X W||^2``
    (per-site relative errors, so that small-weight sites such as q/k count as much as v).

    ``sites``: ``{name: (W [K, N] float32, qtype, tail type or None)}``; ``rows``: sampled
    activations [R, K]; ``imatrix``: mean x^2 per channel of X (or None). ``fast=True``
    measures fast mode instead of exact: the rows are first rounded to 8-bit blocks as the
    op does (:mod:`onnxq.ggml.fastmode`)."""

    def __init__(self, sites: Mapping[str, Tuple[np.ndarray, str, Optional[str]]], rows: np.ndarray,
                 imatrix: Optional[np.ndarray] = None, threads: Optional[int] = None) -> None:
        from .codec import GGMLQuantizer

        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.rows.ndim != 2 or self.rows.shape[0] == 0:
            raise CalibrationError(f"need a non-empty [rows, K] sample of activations, got shape {list(self.rows.shape)}")
        k = self.rows.shape[1]
        self.sites = {}
        self.reference = {}
        for name, (w, qtype, tail) in sites.items():
            w = np.asarray(w, dtype=np.float32)
            if w.ndim != 2 or w.shape[0] != k:
                raise CalibrationError(f"site {name!r}: weight {list(w.shape)} does not match {k} activation channels")
            # one thread by default: per-site matrices are small and OpenMP start-up and
            # contention on a busy machine cost more than the round trip itself
            self.sites[name] = (w, GGMLQuantizer(qtype, tail_type=tail, num_threads=threads or 1))
            self.reference[name] = self.rows @ w
        self.imatrix = None if imatrix is None else np.asarray(imatrix, dtype=np.float64)
        self._energy = {n: float(np.sum(np.square(r, dtype=np.float64))) for n, r in self.reference.items()}

    def error(self, s: Optional[np.ndarray] = None, fast: bool = False) -> float:
        """Mean relative output error of the group's sites with scales ``s`` (None: none)."""
        mode = "fast" if fast else "exact"
        return float(np.mean([e[mode] for e in self.site_errors(s, (mode,)).values()]))

    def site_errors(self, s: Optional[np.ndarray] = None,
                    modes: Tuple[str, ...] = ("exact",)) -> Dict[str, Dict[str, float]]:
        """``{site: {mode: relative output error}}`` with scales ``s``; each weight is
        quantized once for all ``modes`` (``exact``: float activations, ``fast``: rounded
        to 8-bit blocks as the op does)."""
        from .fastmode import round_activations

        errs: Dict[str, Dict[str, float]] = {}
        xs = self.rows if s is None else self.rows / s
        imx = None
        if self.imatrix is not None:
            imx = self.imatrix if s is None else self.imatrix / np.square(s.astype(np.float64))
            imx = imx.astype(np.float32)
        for name, (w, quantizer) in self.sites.items():
            ws = w if s is None else w * s[:, None]
            wq = quantizer.quantize(ws.T, imatrix=imx).dequantize(quantizer.num_threads).T
            errs[name] = {}
            for mode in modes:
                x = round_activations(xs, quantizer.qtype, quantizer.tail_type) if mode == "fast" else xs
                diff = (self.reference[name] - x @ wq).ravel()
                num = float(np.dot(diff, diff))
                errs[name][mode] = num / self._energy[name] if self._energy[name] > 0 else num
        return errs


# ----------------------------------------------------------------------------- the model step


def _targets(analysis: Analysis, plan: Plan) -> Dict[str, Tuple[str, Optional[str]]]:
    """GGML-planned linear sites -> (qtype, tail type)."""
    sites = {s.name for s in analysis.linear}
    return {d.site: (d.method.qtype, d.method.tail_type) for d in plan.decisions
            if d.method.kind == GGML and d.site in sites}


def awq_tensors(analysis: Analysis, plan: Plan) -> List[str]:
    """Group inputs AWQ needs statistics of: inputs of GGML-planned linear sites."""
    targets = _targets(analysis, plan)
    return list(dict.fromkeys(s.input for s in analysis.linear if s.name in targets))


def apply_awq(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: Plan,
    stats: Mapping[str, Any],
    config: Optional[AWQConfig] = None,
    *,
    imatrix: Optional[Mapping[str, np.ndarray]] = None,
    base_dir: Optional[str] = None,
    threads: Optional[int] = None,
    progress: bool = True,
) -> Tuple[AWQReport, List[Tuple[str, str, np.ndarray]]]:
    """Scale the GGML-planned sites of ``model`` in place (float weights and folds only;
    packing is the GGML pass's job).

    ``stats``: :class:`onnxq.calibrate.TensorStats` of :func:`awq_tensors` with sampled
    rows. ``imatrix``: mean x² per group input (weights the search like the packing).
    Returns the report and ``[(old input, new input, s)]`` for every scaled group, so the
    caller can carry an importance matrix over (the imatrix of X / s is imatrix / s²)."""
    from tqdm.auto import tqdm

    config = config or AWQConfig()
    report = AWQReport(config)
    targets = _targets(analysis, plan)
    graph = ModelGraph(model)
    weights = SiteWeights(model, graph, base_dir)
    ctx = weights.context(analysis.linear)
    planned = _awq_groups(report, analysis, graph, ctx, targets, config)
    scaled: List[Tuple[str, str, np.ndarray]] = []
    for group, gsites, fold in tqdm(planned, desc="awq", unit="group", disable=not progress, leave=False):
        done = _scale_group(group, gsites, fold, stats, targets, weights, ctx, graph, config, imatrix)
        if done is not None:
            scaled.append(done)
    weights.write_back(ctx)
    if any(g.fold == "explicit-mul" for g in report.groups):
        topological_sort(model)
    prune_initializers(model)
    return report, scaled


def _awq_groups(report: AWQReport, analysis: Analysis, graph: ModelGraph, ctx: FoldContext,
                targets: Mapping[str, Tuple[str, Optional[str]]],
                config: AWQConfig) -> List[Tuple[AWQGroup, List[LinearSite], Optional[Fold]]]:
    """The groups to search, each with its fold (None: an explicit Mul); groups that can be
    neither folded nor given a Mul are recorded in ``report`` with the reason."""
    planned: List[Tuple[AWQGroup, List[LinearSite], Optional[Fold]]] = []
    for x, gsites in input_groups(analysis.linear).items():
        quantized = [s for s in gsites if s.name in targets]
        if not quantized:
            continue
        group = AWQGroup(x, [s.name for s in quantized], [targets[s.name][0] for s in quantized],
                         [s.name for s in gsites if s.name not in targets])
        report.groups.append(group)
        bad = [s for s in gsites if s.weight_shared or graph.constant_dtype(s.weight) != TensorProto.FLOAT]
        if bad:
            group.note = f"{bad[0].name}: weight is shared or not float32"
            continue
        fold = match_fold(ctx, x, gsites[0].K, [s.name for s in gsites])
        if fold is None and not config.explicit_mul:
            outside = [c.op_type for c in graph.consumers(x) if c.name not in {s.name for s in gsites}]
            why = f"X also feeds {', '.join(sorted(set(outside)))}" if outside else "no foldable producer"
            group.note = f"not foldable ({why})"
            continue
        if fold is None and config.per_site and len(quantized) > 1:
            report.groups.remove(group)
            for site in quantized:
                one = AWQGroup(x, [site.name], [targets[site.name][0]])
                report.groups.append(one)
                planned.append((one, [site], None))
            continue
        planned.append((group, gsites, fold))
    # a fold into a linear site's output columns changes that site's weight, which its own
    # group needs: those groups go first (as in the SmoothQuant pass)
    planned.sort(key=lambda p: 0 if p[2] is not None and isinstance(p[2].rule, LinearOutputMulRule) else 1)
    return planned


def _scale_group(group: AWQGroup, gsites: List[LinearSite], fold: Optional[Fold], stats: Mapping[str, Any],
                 targets: Mapping[str, Tuple[str, Optional[str]]], weights: SiteWeights, ctx: FoldContext,
                 graph: ModelGraph, config: AWQConfig,
                 imatrix: Optional[Mapping[str, np.ndarray]]) -> Optional[Tuple[str, str, np.ndarray]]:
    """Search the exponent of one group and apply the best scaling; returns
    (input, new input, s) when the group was scaled."""
    x = group.input
    st = stats.get(x)
    if st is None:
        raise CalibrationError(f"no calibration statistics for tensor {x!r} (input of {group.sites[0]})")
    rows = st.samples
    if rows is None or rows.shape[0] == 0:
        raise CalibrationError(f"tensor {x!r} has no sampled rows: calibrate with sample_rows > 0 for AWQ")
    mean_abs = st.mean_abs()
    quantized = [s for s in gsites if s.name in targets]
    w_mean = None
    if config.duo:
        w_mean = np.concatenate([np.abs(weights.weight(s)) for s in quantized], axis=1).mean(axis=1)
    model_err = GroupErrorModel({s.name: (weights.weight(s), *targets[s.name]) for s in quantized}, rows,
                                None if imatrix is None else imatrix.get(x), 1)
    plain = model_err.error(None)
    errors = {0.0: plain}
    for a in config.grid:
        if float(a) != 0.0:
            errors[float(a)] = model_err.error(awq_scales(mean_abs, float(a), config.floor, w_mean))
    best = min(errors, key=lambda a: (errors[a], a))
    group.errors, group.error_before = errors, plain
    needed = config.explicit_mul_min_gain if fold is None else 0.0
    if best == 0.0 or errors[best] >= plain * (1.0 - needed):
        group.error_after = plain
        group.note = "no exponent lowers the error" + (" enough for an explicit Mul" if fold is None else "")
        return None
    s = awq_scales(mean_abs, best, config.floor, w_mean)
    group.exponent, group.error_after = best, errors[best]
    if fold is not None:
        fold.apply(ctx, s)
        group.fold = fold.kind
        for site in gsites:  # float sites too: they read X / s now
            weights.scale_rows(site, s)
        return x, x, s
    new_x = insert_explicit_mul(ctx, x, s, [graph.node(name) for name in group.sites], f"{group.sites[0]}/awq")
    group.fold = "explicit-mul"
    for site in quantized:
        weights.scale_rows(site, s)
    return x, new_x, s


def calibrate_for_awq(model: onnx.ModelProto, tensors: Sequence[str], data: Any, config: AWQConfig, *,
                      base_dir: Optional[str], max_batches: Optional[int] = None,
                      progress: bool = True) -> Dict[str, Any]:
    """Statistics (mean |x| and sampled rows) of ``tensors`` over the calibration data."""
    from ..calibrate import CalibrationCache, calibrate

    cache = data if isinstance(data, CalibrationCache) else CalibrationCache(
        data, model, batch_size=config.batch_size, max_batches=max_batches)
    return calibrate(model, list(tensors), cache, bins=16, sample_rows=config.sample_rows,
                     base_dir=base_dir, progress=progress)
