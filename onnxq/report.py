"""What a quantization run did: a row per site (:class:`LayerResult`, filled by each
method pass) and the run's :class:`QuantizeReport` with its closing table and JSON form."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .plan import KEEP, SMOOTHQUANT
from .recipe import Recipe
from .sites import Skipped
from .units import bits_per_weight, format_bytes, format_count, record

__all__ = ["LayerShape", "LayerResult", "TypeSummary", "QuantizeReport", "summarize_skipped"]


class LayerShape:
    """A layer of ``K`` inputs and ``N`` outputs: its parameter count."""

    K: int
    N: int

    @property
    def params(self) -> int:
        return self.K * self.N


@dataclass
class LayerResult(LayerShape):
    """What happened to one site."""

    name: str
    kind: str  # "linear" | "embedding"
    role: str
    layer: Optional[int]
    method: str  # "Q4_K", "keep", "smoothquant"
    K: int
    N: int
    tail_type: Optional[str] = None
    mode: Optional[str] = None
    #: bytes this site adds to the model (0 when it shares another site's blocks)
    nbytes: int = 0
    #: bytes of its blocks whether or not they are shared
    packed_bytes: int = 0
    shared_with: Optional[str] = None
    source: str = "default"
    note: Optional[str] = None
    #: why the layer runs in its mode (the recipe, or the measured cost behind ``auto``)
    mode_reason: Optional[str] = None
    #: the measured cost of its type (a budget run: increase of the model-level loss)
    cost: Optional[float] = None

    @property
    def bits_per_weight(self) -> Optional[float]:
        """Effective bits per weight of the stored blocks (tails and padding included)."""
        return bits_per_weight(self.packed_bytes, self.params)


@dataclass
class TypeSummary:
    """One line of the closing table: all sites stored with one method (the bits per
    weight are filled in once the sums are complete)."""

    method: str
    layers: int = 0
    params: int = 0
    nbytes: int = 0
    bits_per_weight: Optional[float] = None


@dataclass
class QuantizeReport:
    """What :func:`onnxq.quantize` did: per-site results, skipped nodes, sizes, time."""

    input: str
    output: str
    recipe: Recipe
    layers: List[LayerResult] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    imatrix_tensors: int = 0
    smoothquant: Any = None
    awq: Any = None
    #: graph changes besides quantization (fused ops opened up)
    notes: List[str] = field(default_factory=list)
    #: the auto mode's measurement: {layer: :class:`~onnxq.ggml.modes.ModeChoice`}
    modes: Any = None
    #: a budget run's allocation (:class:`onnxq.budget.BudgetReport`)
    budget: Any = None
    #: ``--portable`` runs: the stock operators written (``matmulnbits`` / ``qdq``) and the
    #: size of the GGML file the portable one was converted from
    portable_ops: Optional[str] = None
    ggml_bytes: int = 0

    # -- summaries
    def by_method(self) -> List[TypeSummary]:
        """Per method (GGML type, keep, smoothquant): layers, params and stored bytes
        (shared blocks counted once); kept layers count their float bytes."""
        rows: "OrderedDict[str, TypeSummary]" = OrderedDict()
        for layer in sorted(self.layers, key=lambda l: _method_order(l.method)):
            row = rows.setdefault(layer.method, TypeSummary(layer.method))
            row.layers += 1
            if layer.shared_with is None:
                row.params += layer.params
                row.nbytes += layer.nbytes if layer.method != KEEP else 0
        for row in rows.values():
            row.bits_per_weight = bits_per_weight(row.nbytes, row.params)
        return list(rows.values())

    @property
    def quantized_params(self) -> int:
        return sum(l.params for l in self.layers if l.method not in (KEEP, SMOOTHQUANT) and l.shared_with is None)

    @property
    def quantized_bytes(self) -> int:
        return sum(l.nbytes for l in self.layers if l.method not in (KEEP, SMOOTHQUANT))

    @property
    def bits_per_weight(self) -> Optional[float]:
        """Effective bits per weight over all GGML-quantized weights (shared ones once)."""
        p = self.quantized_params
        return 8.0 * self.quantized_bytes / p if p else None

    @property
    def size_ratio(self) -> Optional[float]:
        """Input file bytes / output file bytes."""
        return self.input_bytes / self.output_bytes if self.output_bytes else None

    def table(self) -> str:
        """The closing table the CLI prints."""
        lines = [f"{'method':<12}{'layers':>7}{'params':>12}{'bytes':>12}{'bpw':>8}"]
        for row in self.by_method():
            if row.method == KEEP or not row.nbytes:
                lines.append(f"{row.method:<12}{row.layers:>7}{format_count(row.params):>12}{'-':>12}{'-':>8}")
            else:
                bpw = f"{row.bits_per_weight:.3f}" if row.bits_per_weight else "-"
                lines.append(f"{row.method:<12}{row.layers:>7}{format_count(row.params):>12}{format_bytes(row.nbytes):>12}{bpw:>8}")
        bpw = f"{self.bits_per_weight:.3f}" if self.bits_per_weight else "-"
        ggml_layers = sum(r.layers for r in self.by_method() if r.method not in (KEEP, SMOOTHQUANT))
        if ggml_layers:  # a SmoothQuant-only run has no GGML total to show
            lines.append(
                f"{'ggml total':<12}{ggml_layers:>7}"
                f"{format_count(self.quantized_params):>12}{format_bytes(self.quantized_bytes):>12}{bpw:>8}"
            )
        float_bytes = 4 * self.quantized_params
        if self.quantized_bytes:
            lines.append(
                f"quantized weights: {format_bytes(self.quantized_bytes)} vs {format_bytes(float_bytes)} as float32 "
                f"({float_bytes / self.quantized_bytes:.2f}x smaller)"
            )
        ratio = f" ({self.size_ratio:.2f}x smaller)" if self.size_ratio else ""
        lines.append(f"model file: {format_bytes(self.input_bytes)} -> {format_bytes(self.output_bytes)}{ratio}")
        if self.portable_ops:
            lines.append(f"portable ({self.portable_ops}, stock onnxruntime ops): {format_bytes(self.output_bytes)}; "
                         f"the GGML file would be {format_bytes(self.ggml_bytes)} "
                         f"({self.output_bytes / max(1, self.ggml_bytes):.3f}x)")
        if self.modes:
            fast = sum(c.mode == "fast" for c in self.modes.values())
            threshold = next(iter(self.modes.values())).threshold
            lines.append(f"mode auto: {fast} of {len(self.modes)} layers fast (fast mode adds < {threshold:.2g} to "
                         f"their relative output error), {len(self.modes) - fast} exact")
        if self.awq is not None:
            lines.append(self.awq.summary())
        lines.extend(f"note: {n}" for n in self.notes)
        if self.skipped:
            lines.append("skipped: " + summarize_skipped(self.skipped))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "recipe": self.recipe.to_dict(),
            "seconds": round(self.seconds, 3),
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "bits_per_weight": self.bits_per_weight,
            "quantized_params": self.quantized_params,
            "quantized_bytes": self.quantized_bytes,
            "imatrix_tensors": self.imatrix_tensors,
            "by_method": [record(r, ("method", "layers", "params", ("bytes", "nbytes"), "bits_per_weight"))
                          for r in self.by_method()],
            "layers": [record(l, _LAYER_KEYS) for l in self.layers],
            "skipped": [record(s, ("node", "op_type", "reason")) for s in self.skipped],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "smoothquant": self.smoothquant.to_dict() if self.smoothquant is not None else None,
            "awq": self.awq.to_dict() if self.awq is not None else None,
            "budget": self.budget.to_dict() if self.budget is not None else None,
            "portable_ops": self.portable_ops,
            "ggml_bytes": self.ggml_bytes or None,
        }

    def layer_table(self) -> str:
        """One row per layer: method, mode, bytes, bits per weight, measured cost (budget
        runs) and why the mode was chosen."""
        w = min(max([len(l.name) for l in self.layers] + [5]), 56)
        lines = [f"{'layer':<{w}}  {'method':<8}{'mode':<6}{'bytes':>11}{'bpw':>7}{'cost':>10}  mode reason"]
        for l in self.layers:
            name = l.name if len(l.name) <= w else "…" + l.name[-(w - 1):]
            size = "(shared)" if l.shared_with else format_bytes(l.nbytes) if l.nbytes else "-"
            bpw = f"{l.bits_per_weight:.2f}" if l.bits_per_weight else "-"
            cost = f"{l.cost:.2e}" if l.cost is not None else "-"
            lines.append(f"{name:<{w}}  {l.method:<8}{l.mode or '-':<6}{size:>11}{bpw:>7}{cost:>10}  "
                         f"{l.mode_reason or ''}".rstrip())
        return "\n".join(lines)


_LAYER_KEYS = ("name", "kind", "role", "layer", "method", "K", "N", "tail_type", "mode", "mode_reason",
               ("bytes", "nbytes"), "bits_per_weight", "cost", "shared_with", ("rule", "source"), "note")


def _method_order(method: str) -> tuple:
    order = ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", SMOOTHQUANT, KEEP]
    return (order.index(method) if method in order else len(order), method)


def summarize_skipped(skipped: List[Skipped]) -> str:
    """``"60 MatMul: activation x activation; 2 Gather: ..."`` (reasons grouped)."""
    groups: "OrderedDict[tuple, int]" = OrderedDict()
    for s in skipped:
        reason = s.reason
        if reason.startswith("weight ") and "'" in reason:  # drop the tensor name for grouping
            reason = reason.split("'", 2)[-1].strip() or reason
        groups[(s.op_type, reason)] = groups.get((s.op_type, reason), 0) + 1
    return "; ".join(f"{n} {op}: {reason}" for (op, reason), n in groups.items())


