"""Build SmolLM2-135M-Instruct (a LLaMA decoder) as a float32 ONNX model from its GGUF file.

Every hyper-parameter comes from the GGUF metadata and every weight is dequantized to float32.
The graph is shaped like an optimum / torch.onnx export of ``LlamaForCausalLM``:

- linear layers are ``MatMul(x, W)`` with W a float32 initializer [in, out] named as in HF
  (``model.layers.3.self_attn.q_proj.weight``), node ``/model/layers.3/self_attn/q_proj/MatMul``;
- RMSNorm is decomposed: Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div(x, .) -> Mul(., weight),
  the last Mul by the ``...layernorm.weight`` initializer (SmoothQuant folds into it); this is the
  form onnxruntime fuses into SimplifiedLayerNormalization (a Reciprocal -> Mul form is not fused);
- rotary embeddings in HF's ``rotate_half`` convention: llama.cpp's q/k row permutation is undone;
- grouped-query attention without copying K/V: queries are viewed as [b, kv_heads, rep, s, d]
  and keys/values as [b, kv_heads, 1, t, d], so the two activation MatMuls broadcast;
- the LM head is tied to the embedding: ``MatMul(h, Transpose(model.embed_tokens.weight))`` so the
  table is stored once and shared by the Gather and the head.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
from onnx import TensorProto
from tqdm.auto import tqdm

from ..errors import ModelError
from .checkpoints import file_sha256
from .graph_builder import GraphBuilder
from .gguf_reader import GGUFCheckpoint, LlamaConfig, open_gguf, read_llama_config, unpermute_rotary_rows

# Bump when the graph or its bytes change on purpose; the cache key also hashes this source.
BUILDER_VERSION = "1"

_NEG = float(np.finfo(np.float32).min)  # the additive mask value HF uses for float32

KIND_FULL = "causal-lm"
KIND_KV = "causal-lm-kv"


class _LlamaGraph:
    """Emits the decoder into a GraphBuilder, one weight at a time from the checkpoint."""

    def __init__(self, b: GraphBuilder, ckpt: GGUFCheckpoint, cfg: LlamaConfig, kv_cache: bool) -> None:
        self.b, self.ckpt, self.cfg, self.kv = b, ckpt, cfg, kv_cache

    # -- building blocks -------------------------------------------------------------
    def linear(self, x: str, scope: str, name: str, gguf_name: str, unpermute_heads: Optional[int] = None) -> str:
        w = self.ckpt.tensor(gguf_name)
        if w.ndim != 2:
            raise ModelError(f"{self.ckpt.path}: tensor {gguf_name!r} has shape {w.shape}, expected a 2-D weight")
        if unpermute_heads is not None:
            w = unpermute_rotary_rows(w, unpermute_heads)
        self.b.weight(name, np.ascontiguousarray(w.T))  # [out, in] -> [in, out]
        return self.b.op("MatMul", [x, name], scope)

    def rms_norm(self, x: str, scope: str, name: str, gguf_name: str) -> str:
        b, cfg = self.b, self.cfg
        w = self.ckpt.tensor(gguf_name, (cfg.hidden_size,))
        b.weight(name, w)
        sq = b.op("Pow", [x, b.const(2.0, np.float32)], scope)
        var = b.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
        var = b.op("Add", [var, b.const(cfg.rms_norm_eps, np.float32)], scope)
        xn = b.op("Div", [x, b.op("Sqrt", [var], scope)], scope)
        return b.op("Mul", [xn, name], scope)

    def rope(self, x: str, cos: str, sin: str, scope: str) -> str:
        """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1) over the head dim."""
        b, half = self.b, self.cfg.head_dim // 2
        x1, x2 = b.op("Split", [x, b.const([half, half])], scope, n_outputs=2, axis=-1)
        rotated = b.op("Concat", [b.op("Neg", [x2], scope), x1], scope, axis=-1)
        return b.op("Add", [b.op("Mul", [x, cos], scope), b.op("Mul", [rotated, sin], scope)], scope)

    # -- graph pieces ----------------------------------------------------------------
    def inputs(self) -> dict[str, str]:
        b, cfg = self.b, self.cfg
        io = {"input_ids": b.add_input("input_ids", np.int64, ["batch_size", "sequence_length"])}
        if self.kv:
            io["attention_mask"] = b.add_input("attention_mask", np.int64, ["batch_size", "total_sequence_length"])
            io["position_ids"] = b.add_input("position_ids", np.int64, ["batch_size", "sequence_length"])
            for i in range(cfg.n_layers):
                for kind in ("key", "value"):
                    b.add_input(f"past_key_values.{i}.{kind}", np.float32,
                                ["batch_size", cfg.n_kv_heads, "past_sequence_length", cfg.head_dim])
        return io

    def outputs(self) -> None:
        b, cfg = self.b, self.cfg
        b.add_output("logits", np.float32, ["batch_size", "sequence_length", cfg.vocab_size])
        if self.kv:
            for i in range(cfg.n_layers):
                for kind in ("key", "value"):
                    b.add_output(f"present.{i}.{kind}", np.float32,
                                 ["batch_size", cfg.n_kv_heads, "total_sequence_length", cfg.head_dim])

    def seq_len(self, tensor: str, scope: str) -> str:
        b = self.b
        return b.op("Gather", [b.op("Shape", [tensor], scope), b.const(1)], scope, axis=0)

    def rotary_tables(self, io: dict[str, str]) -> tuple[str, str]:
        """cos and sin [batch, 1, seq, head_dim] for the positions of this call."""
        b, cfg, scope = self.b, self.cfg, "/model/rotary_emb"
        if self.kv:
            positions = io["position_ids"]
        else:
            steps = b.op("Range", [b.const(0), self.seq_len(io["input_ids"], scope), b.const(1)], scope)
            positions = b.op("Unsqueeze", [steps, b.const([0])], scope)
        exponents = np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim
        inv_freq = b.weight("model.rotary_emb.inv_freq", (1.0 / cfg.rope_theta ** exponents).astype(np.float32))
        pos = b.op("Unsqueeze", [b.op("Cast", [positions], scope, to=TensorProto.FLOAT), b.const([-1])], scope)
        freqs = b.op("Mul", [pos, inv_freq], scope)
        emb = b.op("Concat", [freqs, freqs], scope, axis=-1)
        cos = b.op("Unsqueeze", [b.op("Cos", [emb], scope), b.const([1])], scope)
        sin = b.op("Unsqueeze", [b.op("Sin", [emb], scope), b.const([1])], scope)
        return cos, sin

    def attention_mask(self, io: dict[str, str]) -> str:
        """Additive mask: 0 where a query may attend a key, float32 min elsewhere.

        Shape [s, t] (causal only) or [batch, 1, 1, s, t] (causal and padding), broadcasting
        over the [batch, kv_heads, rep, s, t] scores.
        """
        b, scope = self.b, "/model/causal_mask"
        if self.kv:
            total = self.seq_len(io["attention_mask"], scope)
            past = b.op("Sub", [total, self.seq_len(io["input_ids"], scope)], scope)
        else:
            total = self.seq_len(io["input_ids"], scope)
            past = b.const(0)
        key_pos = b.op("Unsqueeze", [b.op("Range", [b.const(0), total, b.const(1)], scope), b.const([0])], scope)
        query_pos = b.op("Unsqueeze", [b.op("Range", [past, total, b.const(1)], scope), b.const([1])], scope)
        allowed = b.op("LessOrEqual", [key_pos, query_pos], scope)
        if self.kv:
            keep = b.op("Cast", [io["attention_mask"]], scope, to=TensorProto.BOOL)
            keep = b.op("Unsqueeze", [keep, b.const([1, 2, 3])], scope)
            allowed = b.op("And", [allowed, keep], scope)
        return b.op("Where", [allowed, b.const(0.0, np.float32), b.const(_NEG, np.float32)], scope)

    def attention(self, x: str, i: int, cos: str, sin: str, mask: str) -> str:
        b, cfg = self.b, self.cfg
        scope, prefix, blk = f"/model/layers.{i}/self_attn", f"model.layers.{i}.self_attn", f"blk.{i}"
        q = self.linear(x, f"{scope}/q_proj", f"{prefix}.q_proj.weight", f"{blk}.attn_q.weight", cfg.n_heads)
        k = self.linear(x, f"{scope}/k_proj", f"{prefix}.k_proj.weight", f"{blk}.attn_k.weight", cfg.n_kv_heads)
        v = self.linear(x, f"{scope}/v_proj", f"{prefix}.v_proj.weight", f"{blk}.attn_v.weight")

        def heads(t: str, n: int) -> str:  # [b, s, n*d] -> [b, n, s, d]
            t = b.op("Reshape", [t, b.const([0, 0, n, cfg.head_dim])], scope)
            return b.op("Transpose", [t], scope, perm=[0, 2, 1, 3])

        q = self.rope(heads(q, cfg.n_heads), cos, sin, scope)
        k = self.rope(heads(k, cfg.n_kv_heads), cos, sin, scope)
        v = heads(v, cfg.n_kv_heads)
        if self.kv:
            k = b.op("Concat", [f"past_key_values.{i}.key", k], scope, outputs=[f"present.{i}.key"], axis=2)
            v = b.op("Concat", [f"past_key_values.{i}.value", v], scope, outputs=[f"present.{i}.value"], axis=2)
        # query head h uses kv head h // rep (HF's repeat_kv), so view q as [b, kv, rep, s, d]
        q = b.op("Reshape", [q, b.const([0, cfg.n_kv_heads, cfg.n_rep, -1, cfg.head_dim])], scope)
        k = b.op("Unsqueeze", [k, b.const([2])], scope)
        v = b.op("Unsqueeze", [v, b.const([2])], scope)
        scores = b.op("MatMul", [q, b.op("Transpose", [k], scope, perm=[0, 1, 2, 4, 3])], scope)
        scores = b.op("Mul", [scores, b.const(cfg.head_dim ** -0.5, np.float32)], scope)
        probs = b.op("Softmax", [b.op("Add", [scores, mask], scope)], scope, axis=-1)
        ctx = b.op("MatMul", [probs, v], scope)  # [b, kv, rep, s, d]
        ctx = b.op("Transpose", [ctx], scope, perm=[0, 3, 1, 2, 4])
        ctx = b.op("Reshape", [ctx, b.const([0, 0, cfg.hidden_size])], scope)
        return self.linear(ctx, f"{scope}/o_proj", f"{prefix}.o_proj.weight", f"{blk}.attn_output.weight")

    def mlp(self, x: str, i: int) -> str:
        b = self.b
        scope, prefix, blk = f"/model/layers.{i}/mlp", f"model.layers.{i}.mlp", f"blk.{i}"
        gate = self.linear(x, f"{scope}/gate_proj", f"{prefix}.gate_proj.weight", f"{blk}.ffn_gate.weight")
        up = self.linear(x, f"{scope}/up_proj", f"{prefix}.up_proj.weight", f"{blk}.ffn_up.weight")
        act = b.op("Mul", [gate, b.op("Sigmoid", [gate], f"{scope}/act_fn")], f"{scope}/act_fn")  # SiLU
        h = b.op("Mul", [act, up], scope)
        return self.linear(h, f"{scope}/down_proj", f"{prefix}.down_proj.weight", f"{blk}.ffn_down.weight")

    def build(self, progress: bool) -> None:
        b, cfg = self.b, self.cfg
        io = self.inputs()
        self.outputs()
        table = self.ckpt.tensor("token_embd.weight", (cfg.vocab_size, cfg.hidden_size))
        embed = b.weight("model.embed_tokens.weight", table)
        del table
        h = b.op("Gather", [embed, io["input_ids"]], "/model/embed_tokens", axis=0)
        cos, sin = self.rotary_tables(io)
        mask = self.attention_mask(io)
        for i in tqdm(range(cfg.n_layers), desc="smollm2 layers", unit="layer", disable=not progress, leave=False):
            scope, prefix = f"/model/layers.{i}", f"model.layers.{i}"
            x = self.rms_norm(h, f"{scope}/input_layernorm", f"{prefix}.input_layernorm.weight", f"blk.{i}.attn_norm.weight")
            h = b.op("Add", [h, self.attention(x, i, cos, sin, mask)], scope)
            x = self.rms_norm(h, f"{scope}/post_attention_layernorm", f"{prefix}.post_attention_layernorm.weight",
                              f"blk.{i}.ffn_norm.weight")
            h = b.op("Add", [h, self.mlp(x, i)], scope)
        h = self.rms_norm(h, "/model/norm", "model.norm.weight", "output_norm.weight")
        if cfg.tied_embeddings:
            head = b.op("Transpose", [embed], "/lm_head", perm=[1, 0])
        else:
            w = self.ckpt.tensor("output.weight", (cfg.vocab_size, cfg.hidden_size))
            head = b.weight("lm_head.weight", np.ascontiguousarray(w.T))
            del w
        b.op("MatMul", [h, head], "/lm_head", outputs=["logits"])


def build_smollm2(
    gguf_path: os.PathLike,
    output_path: os.PathLike,
    *,
    kv_cache: bool = False,
    family: str = "smollm2-135m",
    builder_version: str = BUILDER_VERSION,
    progress: bool = True,
) -> Path:
    """Build the float32 ONNX decoder from ``gguf_path`` into ``output_path`` (written atomically).

    ``kv_cache=True`` gives the generation variant: inputs ``input_ids``, ``attention_mask``
    [batch, past+seq], ``position_ids``, ``past_key_values.{i}.key/value`` [batch, kv_heads,
    past, head_dim]; outputs ``logits`` and ``present.{i}.key/value``.
    """
    ckpt = open_gguf(gguf_path)
    cfg = read_llama_config(ckpt)
    b = GraphBuilder("smollm2_kv" if kv_cache else "smollm2")
    _LlamaGraph(b, ckpt, cfg, kv_cache).build(progress)
    metadata = {
        "onnxq.model.family": family,
        "onnxq.model.kind": KIND_KV if kv_cache else KIND_FULL,
        "onnxq.model.source": Path(gguf_path).name,
        "onnxq.model.source_sha256": file_sha256(gguf_path),
        "onnxq.model.builder_version": builder_version,
        "onnxq.model.num_layers": str(cfg.n_layers),
        "onnxq.model.num_heads": str(cfg.n_heads),
        "onnxq.model.num_kv_heads": str(cfg.n_kv_heads),
        "onnxq.model.head_dim": str(cfg.head_dim),
        "onnxq.model.vocab_size": str(cfg.vocab_size),
        "onnxq.model.context_length": str(cfg.context_length),
    }
    doc = f"{family} ({'with KV cache' if kv_cache else 'full sequence'}), float32, built by onnxq.zoo from {Path(gguf_path).name}"
    return b.save(output_path, metadata, doc)
