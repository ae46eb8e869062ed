"""Independent float64 numpy forward passes of the zoo's two models, written from the math.

Nothing here uses onnxq.zoo: the checkpoints are read with the ``gguf`` and ``safetensors``
packages directly, and the computations follow the papers / HF modelling code:

- SmolLM2 (LLaMA; also Qwen2, from the GGUF's general.architecture): RMSNorm, rotary embeddings
  applied in the GGUF's own layout (adjacent pairs (2i, 2i+1) rotate together, as ggml's "normal"
  rope does; halves for qwen2, whose rows llama.cpp does not permute) so that the builder's
  un-permutation of the q/k rows plus HF's rotate_half is checked against a different
  formulation; q/k/v biases where the file has them; grouped-query causal attention with an
  explicit per-head loop; SwiGLU; tied or untied LM head.
- all-MiniLM-L6-v2 (BERT): embeddings + LayerNorm, per-head softmax attention, erf GELU. Each
  sequence is run on its own without padding, so the ONNX model's padding mask is checked too.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import ContextManager, Sequence

import numpy as np


def single_blas_thread() -> ContextManager:
    """Limit BLAS to one thread where threadpoolctl is installed: the reference's many small
    matmuls run several times slower with two BLAS threads on a busy 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


# -- SmolLM2 ---------------------------------------------------------------------------------
def _gguf_value(reader, key):
    field = reader.fields[key]
    part = field.parts[field.data[0]]
    if field.types[0].name == "STRING":
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


class SmolLM2Reference:
    """LLaMA forward pass over the dequantized GGUF weights, in float64."""

    def __init__(self, gguf_path: Path) -> None:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(str(gguf_path))
        arch = _gguf_value(reader, "general.architecture")
        self.n_layers = _gguf_value(reader, f"{arch}.block_count")
        self.dim = _gguf_value(reader, f"{arch}.embedding_length")
        self.n_heads = _gguf_value(reader, f"{arch}.attention.head_count")
        self.n_kv = _gguf_value(reader, f"{arch}.attention.head_count_kv")
        self.theta = float(_gguf_value(reader, f"{arch}.rope.freq_base"))
        self.eps = float(_gguf_value(reader, f"{arch}.attention.layer_norm_rms_epsilon"))
        # llama.cpp stores llama's q/k rows for adjacent-pair rope; qwen2 rotates halves ("neox")
        self.neox = arch == "qwen2"
        self.head_dim = self.dim // self.n_heads
        self.w = {}
        for t in reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape))
            self.w[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(shape)

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope_pairs(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x [seq, heads, d]: rotate (x[2i], x[2i+1]) by position * theta^(-2i/d)."""
        d = self.head_dim
        angles = positions[:, None] * self.theta ** (-np.arange(0, d, 2) / d)  # [seq, d/2]
        c, s = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * c - odd * s
        out[..., 1::2] = even * s + odd * c
        return out

    def _rope_halves(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x [seq, heads, d]: rotate (x[i], x[i + d/2]) by position * theta^(-2i/d)."""
        d = self.head_dim
        angles = positions[:, None] * self.theta ** (-np.arange(0, d, 2) / d)
        c, s = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        first, second = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([first * c - second * s, first * s + second * c], axis=-1)

    def _linear(self, h: np.ndarray, name: str) -> np.ndarray:
        y = h @ self.w[name + ".weight"].T
        return y + self.w[name + ".bias"] if name + ".bias" in self.w else y

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [seq, vocab] (float64) of one unpadded sequence."""
        w = self.w
        emb = w["token_embd.weight"]
        x = emb[np.asarray(ids)].astype(np.float64)
        seq = len(ids)
        positions = np.arange(seq, dtype=np.float64)
        causal = np.triu(np.ones((seq, seq), dtype=bool), k=1)
        group = self.n_heads // self.n_kv
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = self._linear(h, p + "attn_q").reshape(seq, self.n_heads, self.head_dim)
            k = self._linear(h, p + "attn_k").reshape(seq, self.n_kv, self.head_dim)
            v = self._linear(h, p + "attn_v").reshape(seq, self.n_kv, self.head_dim)
            rope = self._rope_halves if self.neox else self._rope_pairs
            q, k = rope(q, positions), rope(k, positions)
            heads = []
            for hh in range(self.n_heads):
                kv = hh // group
                scores = q[:, hh] @ k[:, kv].T / math.sqrt(self.head_dim)
                scores[causal] = -np.inf
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                heads.append((scores / scores.sum(axis=-1, keepdims=True)) @ v[:, kv])
            x = x + self._linear(np.concatenate(heads, axis=-1), p + "attn_output")
            h = self._rms(x, w[p + "ffn_norm.weight"])
            gate = self._linear(h, p + "ffn_gate")
            up = self._linear(h, p + "ffn_up")
            x = x + self._linear(gate / (1.0 + np.exp(-gate)) * up, p + "ffn_down")
        x = self._rms(x, w["output_norm.weight"])
        head = w.get("output.weight", emb)
        return x @ head.T


# -- all-MiniLM-L6-v2 -------------------------------------------------------------------------
_erf = np.vectorize(math.erf, otypes=[np.float64])


class MiniLMReference:
    """BERT encoder forward pass over the safetensors weights, in float64."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.eps = cfg["layer_norm_eps"]
        self.w = {k: v.astype(np.float64) for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()
                  if v.dtype.kind == "f"}

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def hidden(self, ids: Sequence[int], type_ids: Sequence[int] | None = None) -> np.ndarray:
        """last_hidden_state [seq, hidden] (float64) of one unpadded sequence."""
        w = self.w
        ids = np.asarray(ids)
        types = np.zeros_like(ids) if type_ids is None else np.asarray(type_ids)
        seq = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:seq]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[-1] // self.n_heads
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            q = self._dense(x, p + "attention.self.query")
            k = self._dense(x, p + "attention.self.key")
            v = self._dense(x, p + "attention.self.value")
            heads = []
            for h in range(self.n_heads):
                cols = slice(h * d, (h + 1) * d)
                scores = q[:, cols] @ k[:, cols].T / math.sqrt(d)
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                heads.append(scores / scores.sum(axis=-1, keepdims=True) @ v[:, cols])
            x = self._ln(x + self._dense(np.concatenate(heads, axis=-1), p + "attention.output.dense"),
                         p + "attention.output.LayerNorm")
            inner = self._dense(x, p + "intermediate.dense")
            inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
            x = self._ln(x + self._dense(inner, p + "output.dense"), p + "output.LayerNorm")
        return x
