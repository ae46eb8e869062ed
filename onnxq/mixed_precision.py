"""``MixedPrecisionQuantizer``: a strategy per layer pattern, in the names of the guide onnxq
implements; a thin face over recipes (:mod:`onnxq.recipe`) and budgets (:mod:`onnxq.budget`).

>>> from onnxq.mixed_precision import MixedPrecisionQuantizer
>>> q = MixedPrecisionQuantizer({"*down_proj*": "q6_k", "*": "q4_k"})     # later patterns lose
>>> q = MixedPrecisionQuantizer.llama_7b_strategy()                     # the llama-mixed preset
>>> q = MixedPrecisionQuantizer.for_budget(bpw=5.5)                      # measured, per layer
>>> report = q.quantize("model.onnx", "model.mix.onnx")                  # an onnxq QuantizeReport
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from .errors import RecipeError
from .recipe import Recipe, get_preset, recipe_from_dict

__all__ = ["MixedPrecisionQuantizer"]

PathLike = Union[str, os.PathLike]


class MixedPrecisionQuantizer:
    """Quantize a model with a method per layer.

    ``strategy``: ``{glob on node or weight name: method}`` where a method is ``keep``,
    ``smoothquant`` or a GGML type (``q4_k``), optionally ``{"method": ..., "mode": ...}``;
    the first pattern that matches a layer wins (``"*"`` last is the default), or a
    :class:`~onnxq.recipe.Recipe`. ``**options`` go to :func:`onnxq.quantize`
    (``calibration_data`` for smoothquant layers, ``mode``, ``threads``, ...)."""

    def __init__(self, strategy: Union[Mapping[str, Any], Recipe], **options: Any) -> None:
        self.recipe = strategy if isinstance(strategy, Recipe) else _strategy_recipe(strategy)
        self.budget: Optional[dict] = None
        self.options = options

    @classmethod
    def llama_7b_strategy(cls, **options: Any) -> "MixedPrecisionQuantizer":
        """The ``llama-mixed`` preset: embeddings and head float, the first quarter of the
        blocks SmoothQuant W8A8 (needs ``calibration_data``), the middle half Q6_K, the
        last quarter Q5_0."""
        return cls(get_preset("llama-mixed"), **options)

    @classmethod
    def for_budget(cls, bpw: Optional[float] = None, size: Any = None, **options: Any) -> "MixedPrecisionQuantizer":
        """A type per layer within ``bpw`` bits per weight or a file ``size`` (``"90MB"``),
        from costs measured on ``calibration_data`` (:func:`onnxq.budget.quantize_to_budget`)."""
        if (bpw is None) == (size is None):
            raise RecipeError("for_budget needs exactly one of bpw= or size=")
        made = cls.__new__(cls)
        made.recipe, made.options = None, options
        made.budget = {"target_bpw": bpw, "target_size": size}
        return made

    def quantize(self, input: PathLike, output: PathLike, **options: Any):
        """Quantize ``input`` into ``output``; returns the :class:`~onnxq.report.QuantizeReport`."""
        merged = {**self.options, **options}
        if self.budget is not None:
            from .budget import quantize_to_budget

            return quantize_to_budget(input, output, **self.budget, **merged)
        from .pipeline import quantize

        return quantize(input, output, recipe=self.recipe, **merged)

    def __repr__(self) -> str:
        if self.budget is not None:
            target = self.budget["target_bpw"] or self.budget["target_size"]
            return f"MixedPrecisionQuantizer.for_budget({target!r})"
        return f"MixedPrecisionQuantizer({self.recipe.name!r}, {len(self.recipe.rules)} rules)"


def _strategy_recipe(strategy: Mapping[str, Any]) -> Recipe:
    """Patterns in priority order -> a recipe (whose last matching rule wins: reversed)."""
    if not isinstance(strategy, Mapping) or not strategy:
        raise RecipeError("a strategy is a non-empty mapping {layer pattern: method}")
    rules = []
    for pattern, method in reversed(list(strategy.items())):
        spec = dict(method) if isinstance(method, Mapping) else {"method": method}
        rules.append({"match": pattern, **spec})
    return recipe_from_dict({"name": "mixed-precision", "default": "keep", "rules": rules})
