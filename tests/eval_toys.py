"""Tiny random-weight models and tokenizers for the evaluation tests (no real checkpoint
needed): a causal toy LM over a 300-word vocabulary, a toy encoder, and the 8-bit
weight-rounding used to build a slightly different candidate."""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

TOY_VOCAB = 300


def _set_metadata(model: onnx.ModelProto, family: Optional[str], kind: Optional[str]) -> None:
    for key, value in (("onnxq.model.family", family), ("onnxq.model.kind", kind)):
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def _finish(graph: onnx.GraphProto, family: Optional[str], kind: Optional[str]) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _set_metadata(model, family, kind)
    onnx.checker.check_model(model)
    return model


def toy_lm(seed: int = 0, vocab: int = TOY_VOCAB, dim: int = 32, hidden: int = 64,
           family: Optional[str] = "toy-lm", kind: Optional[str] = "causal-lm",
           bias: Optional[np.ndarray] = None) -> onnx.ModelProto:
    """input_ids [batch, seq] -> logits [batch, seq, vocab].

    Each position sees its own embedding plus the mean of the embeddings so far (CumSum /
    position), so predictions depend on the whole causal context. ``bias`` (e.g. log
    unigram frequencies) makes it a better-than-uniform predictor of a real text."""
    rng = np.random.default_rng(seed)
    b2 = (0.5 * rng.standard_normal(vocab)) if bias is None else np.asarray(bias)
    init = [
        numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "embed"),
        numpy_helper.from_array((rng.standard_normal((dim, hidden)) / np.sqrt(dim)).astype(np.float32), "w1"),
        numpy_helper.from_array((0.1 * rng.standard_normal(hidden)).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((hidden, vocab)) / np.sqrt(hidden)).astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "seq_axis"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h"]),
        helper.make_node("CumSum", ["h", "seq_axis"], ["csum"]),
        helper.make_node("Mul", ["h", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "one"], ["ones"]),
        helper.make_node("CumSum", ["ones", "seq_axis"], ["count"]),
        helper.make_node("Div", ["csum", "count"], ["cmean"]),
        helper.make_node("Add", ["h", "cmean"], ["x"]),
        helper.make_node("MatMul", ["x", "w1"], ["x1"]),
        helper.make_node("Add", ["x1", "b1"], ["x2"]),
        helper.make_node("Tanh", ["x2"], ["x3"]),
        helper.make_node("MatMul", ["x3", "w2"], ["x4"]),
        helper.make_node("Add", ["x4", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "toy_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        init,
    )
    return _finish(graph, family, kind)


def toy_lm_kv(seed: int = 0, vocab: int = TOY_VOCAB, dim: int = 32, hidden: int = 64,
              bias: Optional[np.ndarray] = None) -> onnx.ModelProto:
    """The same network as :func:`toy_lm` with the interface of a KV-cache export:
    input_ids, attention_mask [batch, past+seq], position_ids, past_key_values.0.key
    [batch, 1, past, dim] -> logits, present.0.key. With an empty past its logits equal
    toy_lm's; mask and positions enter as exact zeros, the past must have length 0."""
    base = toy_lm(seed, vocab, dim, hidden, kind="causal-lm-kv", bias=bias)
    g = base.graph
    g.initializer.extend([
        numpy_helper.from_array(np.array([1], dtype=np.int64), "head_axis"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "feature_axis"),
    ])
    # ORT would fail if the feeds had the wrong rank or dtype; multiplying by zero keeps
    # the logits exactly toy_lm's.
    g.node.extend([
        helper.make_node("Cast", ["position_ids"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pos_f", "zero"], ["pos_zero"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mask_f"], ["mask_sum"], keepdims=0),
        helper.make_node("Mul", ["mask_sum", "zero"], ["mask_zero"]),
        helper.make_node("Unsqueeze", ["h", "head_axis"], ["h_heads"]),
        helper.make_node("Concat", ["past_key_values.0.key", "h_heads"], ["present.0.key"], axis=2),
    ])
    for node in g.node:
        if node.op_type == "Add" and list(node.output) == ["x"]:
            node.output[0] = "x_plain"
    g.node.extend([
        helper.make_node("Unsqueeze", ["pos_zero", "feature_axis"], ["pos_zero3"]),
        helper.make_node("Add", ["x_plain", "pos_zero3"], ["x_pos"]),
        helper.make_node("Add", ["x_pos", "mask_zero"], ["x"]),
    ])
    g.input.extend([
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                      ["batch_size", 1, "past_sequence_length", dim]),
    ])
    g.output.append(helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT,
                                                  ["batch_size", 1, "total_sequence_length", dim]))
    # nodes were appended out of order: sort them topologically
    nodes = list(g.node)
    ready = {i.name for i in g.input} | {i.name for i in g.initializer}
    ordered = []
    while nodes:
        for node in nodes:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
                nodes.remove(node)
                break
        else:
            raise AssertionError("toy_lm_kv: graph has a cycle")
    del g.node[:]
    g.node.extend(ordered)
    onnx.checker.check_model(base)
    return base


def toy_encoder(seed: int = 0, vocab: int = TOY_VOCAB, dim: int = 16, hidden: int = 24,
                family: Optional[str] = "toy-encoder", kind: Optional[str] = "encoder") -> onnx.ModelProto:
    """input_ids, attention_mask, token_type_ids [batch, seq] -> last_hidden_state [batch, seq, hidden]."""
    rng = np.random.default_rng(seed)
    init = [
        numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "embed"),
        numpy_helper.from_array(rng.standard_normal((2, dim)).astype(np.float32), "type_embed"),
        numpy_helper.from_array((rng.standard_normal((dim, hidden)) / np.sqrt(dim)).astype(np.float32), "w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(hidden)).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["e"]),
        helper.make_node("Gather", ["type_embed", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["x1"]),
        helper.make_node("Add", ["x1", "b"], ["x2"]),
        helper.make_node("Tanh", ["x2"], ["x3"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["x3", "mask3"], ["last_hidden_state"]),
    ]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(
        nodes, "toy_encoder", ids,
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])],
        init,
    )
    return _finish(graph, family, kind)


def unigram_log_probs(tokenizer: Tokenizer, text: str, vocab: int = TOY_VOCAB) -> np.ndarray:
    """log of add-one smoothed token frequencies of ``text``."""
    counts = np.bincount(tokenizer.encode(text).ids, minlength=vocab)[:vocab] + 1.0
    return np.log(counts / counts.sum())


def _words(texts: Iterable[str]) -> list[str]:
    counts = collections.Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def word_tokenizer(texts: Iterable[str], vocab: int = TOY_VOCAB, specials: tuple[str, ...] = ("[UNK]",),
                   template: bool = False) -> Tokenizer:
    """A lowercase WordLevel tokenizer over the most frequent words of ``texts``: ``vocab``
    ids in all, ``specials`` first ([UNK] must be among them)."""
    words = [w for w in _words(texts) if w not in specials][: vocab - len(specials)]
    table = {tok: i for i, tok in enumerate(list(specials) + words)}
    tok = Tokenizer(models.WordLevel(table, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", table["[CLS]"]), ("[SEP]", table["[SEP]"])],
        )
    return tok


def encoder_tokenizer(texts: Iterable[str], vocab: int = TOY_VOCAB) -> Tokenizer:
    return word_tokenizer(texts, vocab, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]"), template=True)


def round_to_8bit_levels(weights: np.ndarray) -> np.ndarray:
    """Round every column (last axis) to 255 evenly spaced levels between its min and max."""
    w = np.asarray(weights, dtype=np.float32)
    flat = w.reshape(-1, w.shape[-1])
    lo = flat.min(axis=0)
    hi = flat.max(axis=0)
    step = np.where(hi > lo, (hi - lo) / np.float32(254.0), np.float32(1.0)).astype(np.float32)
    levels = np.rint((flat - lo) / step)  # 0..254
    return (lo + levels * step).astype(weights.dtype).reshape(weights.shape)


def rounded_8bit(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float initializer of >= 2 dims rounded to 8-bit levels
    (the initializers must be loaded, not external)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(init.dims) >= 2:
            rounded = round_to_8bit_levels(numpy_helper.to_array(init))
            # write the bytes in place: rebuilding the TensorProto would copy it twice more
            init.ClearField("float_data")
            init.ClearField("int32_data")
            init.raw_data = rounded.astype(rounded.dtype.newbyteorder("<"), copy=False).tobytes()
    return out


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
