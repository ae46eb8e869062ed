"""A model-level loss of the float model with some weights replaced, on calibration batches.

:class:`LossProbe` opens the float model once with the chosen weights turned into graph
inputs, runs it with the float weights to get the reference outputs, and then measures,
for any replacement of some of those weights (e.g. one layer quantized and dequantized),
the increase of a model-level loss over the same batches:

* language models (an output named ``logits``): the mean over positions of
  KL(P_float || P_candidate) of the next-token distributions (float64);
* encoders (an ``attention_mask`` input): the mean over sentences of 1 - cosine of the
  mean-pooled first output;
* anything else: ||candidate - float||^2 / ||float||^2 over every output.

:func:`loss_of_model` measures the same loss for another model file (a quantized one, run
with onnxq's op library) on the same batches.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import onnx

from ..errors import ModelError
from . import metrics

__all__ = ["LossProbe", "loss_kind"]


def loss_kind(output_names: Sequence[str], input_names: Sequence[str]) -> str:
    """``kl`` (LM logits), ``cosine`` (encoder) or ``relative-error``."""
    if "logits" in output_names:
        return "kl"
    if "attention_mask" in input_names:
        return "cosine"
    return "relative-error"


class _Reference:
    """The float model's outputs on each batch, in the form the loss compares."""

    def __init__(self, kind: str, batches: Sequence[Mapping[str, np.ndarray]], outputs: List[List[np.ndarray]],
                 names: Sequence[str]) -> None:
        self.kind, self.batches, self.names = kind, batches, list(names)
        self.values = [self._prepare(b, o) for b, o in zip(batches, outputs)]

    def _prepare(self, batch, outs):
        if self.kind == "kl":
            logits = outs[self.names.index("logits")]
            return metrics.log_softmax(logits.reshape(-1, logits.shape[-1])).astype(np.float32)
        if self.kind == "cosine":
            return self._pooled(batch, outs)
        return outs

    def _pooled(self, batch, outs) -> np.ndarray:
        hidden = outs[0]
        return metrics.mean_pool(hidden, batch["attention_mask"]) if hidden.ndim == 3 else hidden.astype(np.float64)

    def loss(self, index: int, outs: List[np.ndarray]) -> float:
        ref = self.values[index]
        if self.kind == "kl":
            logits = outs[self.names.index("logits")]
            cand = metrics.log_softmax(logits.reshape(-1, logits.shape[-1]))
            return float(np.mean(np.sum(np.exp(ref) * (ref - cand), axis=-1)))
        if self.kind == "cosine":
            return float(np.mean(1.0 - metrics.cosine_similarity(ref, self._pooled(self.batches[index], outs))))
        num = sum(float(np.sum(np.square(c.astype(np.float64) - r))) for c, r in zip(outs, ref))
        den = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in ref)
        return num / den if den > 0 else num

    def mean_loss(self, run) -> float:
        return float(np.mean([self.loss(i, run(b)) for i, b in enumerate(self.batches)]))


def _inline(model: onnx.ModelProto, tensor: onnx.TensorProto, base_dir: Optional[str]) -> onnx.TensorProto:
    """``tensor`` with its data in the proto (read from its external file if it has one)."""
    from ..modelio import get_initializer_array, is_external

    if not is_external(tensor):
        return tensor
    return onnx.numpy_helper.from_array(get_initializer_array(model, tensor, base_dir), tensor.name)


class LossProbe:
    """The float ``model`` with ``weights`` (initializer names) as graph inputs, on ``batches``."""

    def __init__(self, model: onnx.ModelProto, weights: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]],
                 base_dir: Optional[str], threads: int = 0) -> None:
        import onnxruntime as ort

        from ..sites import ModelGraph

        graph = ModelGraph(model)
        self.float: Dict[str, np.ndarray] = {}
        for name in weights:
            value = graph.constant_value(name, base_dir)
            if value is None:
                raise ModelError(f"weight {name!r} is not a constant of the model")
            self.float[name] = np.ascontiguousarray(value, dtype=np.float32)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        # the session is made from bytes, where external data cannot be resolved: the
        # initializers that stay (norms, biases: the probed weights are inputs) come inline
        kept = [_inline(probe, t, base_dir) for t in probe.graph.initializer if t.name not in self.float]
        del probe.graph.initializer[:]
        probe.graph.initializer.extend(kept)
        for name, value in self.float.items():
            probe.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, value.shape))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs() if i.name not in self.float]
        self.kind = loss_kind(self.names, inputs)
        self.batches = [dict(b) for b in batches]
        if not self.batches:
            raise ModelError("the loss probe needs at least one calibration batch")
        self.reference = _Reference(self.kind, self.batches, [self._run(b, {}) for b in self.batches], self.names)
        self.runs = 0

    def _run(self, batch: Mapping[str, np.ndarray], overrides: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        feeds: Dict[str, Any] = dict(batch)
        for name, value in self.float.items():
            feeds[name] = overrides.get(name, value)
        return self.session.run(self.names, feeds)

    def loss(self, overrides: Mapping[str, np.ndarray]) -> float:
        """The loss with the weights in ``overrides`` replaced (same shapes, float32)."""
        for name, value in overrides.items():
            if name not in self.float or value.shape != self.float[name].shape:
                raise ModelError(f"override of {name!r}: not a probed weight of shape {self.float.get(name, np.empty(0)).shape}")
        self.runs += 1
        return self.reference.mean_loss(lambda b: self._run(b, overrides))

    def loss_of_model(self, path: str, threads: int = 0) -> float:
        """The same loss for another model file with the same interface (e.g. the quantized
        model, run with onnxq's op library)."""
        from ..runtime import InferenceSession
        from .models import session_options

        session = InferenceSession(path, session_options(threads), ["CPUExecutionProvider"])
        return self.reference.mean_loss(lambda b: session.run(self.names, dict(b)))
