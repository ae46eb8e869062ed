"""The plan: which method each linear layer and embedding gets, and why.

A :class:`Method` is what happens to one site (``keep``, ``smoothquant`` or a GGML type
with its tail and mode), a :class:`Decision` ties it to a site with the rule that chose
it, and a :class:`Plan` holds a decision per site. Recipes (:mod:`onnxq.recipe`) make
plans; the method passes read them. Plain data: nothing here knows how a method works.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import onnx

from .errors import ModelError, RecipeError
from .sites import Analysis, find_sites

__all__ = ["KEEP", "SMOOTHQUANT", "GGML", "KINDS", "MODES", "OP_MODES", "AUTO", "DEFAULT_MODE", "Method",
           "Decision", "Plan", "parse_alpha"]

KEEP = "keep"
SMOOTHQUANT = "smoothquant"
GGML = "ggml"
#: method kinds in the order their passes run (SmoothQuant rewrites in memory first; the
#: GGML pass streams the final model out)
KINDS = (SMOOTHQUANT, GGML, KEEP)

#: the modes the op runs: float activations (exact) or activations rounded to 8-bit blocks
#: with integer dot products (fast)
OP_MODES = ("exact", "fast")
#: per layer at quantize time: fast where the measured cost of rounding that layer's
#: activations stays under a threshold, exact elsewhere (:mod:`onnxq.ggml.modes`)
AUTO = "auto"
MODES = (*OP_MODES, AUTO)
#: auto: as close to all-exact as measured (docs/budget.md) with most layers on the
#: integer kernels that make fast mode 1.2-3x faster than exact
DEFAULT_MODE = AUTO


def parse_alpha(value: Any, where: str = "alpha") -> Union[float, str]:
    """A SmoothQuant migration strength: a number in [0, 1] or ``"auto"`` (per-group search);
    RecipeError naming ``where`` otherwise. The one parser of alpha (CLI, recipes, API)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        raise RecipeError(f"{where} must be a number in [0, 1] or 'auto', got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where} must be a number in [0, 1] or 'auto', got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise RecipeError(f"{where} must be in [0, 1], got {number}")
    return number


@dataclass(frozen=True)
class Method:
    """What happens to one site: ``keep``, ``smoothquant`` or ``ggml`` with a type."""

    kind: str
    qtype: Optional[str] = None  # "Q4_K" for kind == ggml
    #: None: the type's default tail (K-quants); "NONE": pad to 256; else a 32-element type
    tail_type: Optional[str] = None
    mode: Optional[str] = None  # None: the recipe's mode
    alpha: Optional[Union[float, str]] = None  # smoothquant only: a number or "auto"

    @property
    def label(self) -> str:
        """Short name for tables: ``keep``, ``smoothquant``, ``Q4_K``."""
        return self.qtype if self.kind == GGML else self.kind

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"method": self.qtype.lower() if self.kind == GGML else self.kind}
        if self.tail_type is not None:
            out["tail_type"] = self.tail_type.lower()
        if self.mode is not None:
            out["mode"] = self.mode
        if self.alpha is not None:
            out["alpha"] = self.alpha
        return out


@dataclass(frozen=True)
class Decision:
    """The method chosen for one site, resolved (mode and tail filled in), and why."""

    site: str
    kind: str  # "linear" | "embedding"
    method: Method
    source: str  # "default" / "rule 3" / "--type"
    note: Optional[str] = None  # why the recipe's method was changed (e.g. smoothquant on an embedding)
    #: why a GGML linear layer got its mode (the measured cost behind an ``auto`` choice)
    mode_reason: Optional[str] = None

    @property
    def label(self) -> str:
        return self.method.label


@dataclass
class Plan:
    """A decision per site, plus warnings (rules that matched nothing, methods changed).
    ``recipe`` is the :class:`~onnxq.recipe.Recipe` the plan was made from."""

    recipe: Any
    decisions: List[Decision] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def get(self, site: str) -> Decision:
        for d in self.decisions:
            if d.site == site:
                return d
        raise KeyError(site)

    def by_kind(self, kind: str) -> List[Decision]:
        return [d for d in self.decisions if d.method.kind == kind]

    def kinds(self) -> List[str]:
        """The method kinds this plan uses, in the order their passes run."""
        used = {d.method.kind for d in self.decisions}
        return [k for k in KINDS if k in used]

    def carry_over(self, model: onnx.ModelProto, step: str, done: Optional[str] = None) -> "tuple[Analysis, Plan]":
        """After ``step`` changed ``model`` in memory (and rewrote the sites of kind ``done``,
        if any): the new analysis and the remaining decisions, matched to the new sites by
        node name (the other sites keep their names; their float weights may have been
        smoothed or scaled)."""
        analysis = find_sites(model)
        remaining = {d.site: d for d in self.decisions if d.method.kind != done}
        new = Plan(self.recipe, warnings=list(self.warnings))
        found = set()
        for site in [*analysis.linear, *analysis.embeddings]:
            d = remaining.get(site.name)
            if d is not None:
                new.decisions.append(d)
                found.add(site.name)
        missing = [name for name in remaining if name not in found]
        if missing:
            raise ModelError(f"after {step}, layer {missing[0]!r} is no longer a linear site of the model")
        analysis.linear = [s for s in analysis.linear if s.name in found]
        analysis.embeddings = [s for s in analysis.embeddings if s.name in found]
        return analysis, new
