"""The LLaMA-family decoder graph (LLaMA, SmolLM2, Mistral, Qwen2), built from a GGUF checkpoint.

The graph is shaped like an optimum / torch.onnx export of ``LlamaForCausalLM``:

- linear layers are ``MatMul(x, W)`` with W a float32 initializer [in, out] named as in HF
  (``model.layers.3.self_attn.q_proj.weight``), node ``/model/layers.3/self_attn/q_proj/MatMul``,
  followed by ``Add(bias)`` where the checkpoint has one (Qwen2's q/k/v);
- RMSNorm is decomposed: Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div(x, .) -> Mul(., weight),
  the last Mul by the ``...layernorm.weight`` initializer (SmoothQuant folds into it); this is the
  form onnxruntime fuses into SimplifiedLayerNormalization (a Reciprocal -> Mul form is not fused);
- rotary embeddings in HF's ``rotate_half`` convention. llama.cpp's converter permutes the q/k
  rows of ``llama``-architecture checkpoints for ggml's "normal" rope (adjacent pairs (2i, 2i+1)
  rotate together); the float graph undoes that permutation, while a graph that keeps the rows
  as stored (``keep_rows``) rotates adjacent pairs instead. Architectures llama.cpp does not
  permute (Qwen2: "neox" rope) use ``rotate_half`` on the rows as stored either way;
- grouped-query attention without copying K/V: queries are viewed as [b, kv_heads, rep, s, d]
  and keys/values as [b, kv_heads, 1, t, d], so the two activation MatMuls broadcast;
- a tied LM head is ``MatMul(h, Transpose(model.embed_tokens.weight))`` so the table is stored
  once and shared by the Gather and the head.

:class:`LlamaGraph` emits float32 weights dequantized from the checkpoint; subclasses override
:meth:`~LlamaGraph.linear`, :meth:`~LlamaGraph.embedding` and :meth:`~LlamaGraph.lm_head` to
store weights another way (``onnxq.gguf`` keeps the GGUF's blocks).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import TensorProto
from tqdm.auto import tqdm

from ..errors import ModelError
from .graph_builder import GraphBuilder
from .gguf_reader import GGUFCheckpoint, LlamaConfig, unpermute_rotary_rows

_NEG = float(np.finfo(np.float32).min)  # the additive mask value HF uses for float32

KIND_FULL = "causal-lm"
KIND_KV = "causal-lm-kv"


def config_metadata(cfg: LlamaConfig) -> dict[str, str]:
    """The hyper-parameters every built decoder records in its metadata_props."""
    return {
        "onnxq.model.num_layers": str(cfg.n_layers),
        "onnxq.model.num_heads": str(cfg.n_heads),
        "onnxq.model.num_kv_heads": str(cfg.n_kv_heads),
        "onnxq.model.head_dim": str(cfg.head_dim),
        "onnxq.model.vocab_size": str(cfg.vocab_size),
        "onnxq.model.context_length": str(cfg.context_length),
    }


class LlamaGraph:
    """Emits the decoder into a GraphBuilder, one weight at a time from the checkpoint.

    ``keep_rows``: keep permuted q/k rows as the checkpoint stores them and rotate adjacent
    pairs (ggml's convention) instead of un-permuting them for ``rotate_half``.
    """

    keep_rows = False
    progress_label = "decoder layers"

    def __init__(self, b: GraphBuilder, ckpt: GGUFCheckpoint, cfg: LlamaConfig, kv_cache: bool) -> None:
        self.b, self.ckpt, self.cfg, self.kv = b, ckpt, cfg, kv_cache
        self.rope_pairs = cfg.qk_rows_permuted and self.keep_rows
        self.unpermute = cfg.qk_rows_permuted and not self.keep_rows

    # -- weights (overridden to store them another way) --------------------------------
    def linear(self, x: str, scope: str, name: str, gguf_name: str, unpermute_heads: Optional[int] = None) -> str:
        """``x @ W.T (+ bias)`` for GGUF weight ``gguf_name`` [out, in] (and ``<...>.bias`` if present)."""
        w = self.ckpt.tensor(gguf_name)
        if w.ndim != 2:
            raise ModelError(f"{self.ckpt.path}: tensor {gguf_name!r} has shape {w.shape}, expected a 2-D weight")
        if unpermute_heads is not None and self.unpermute:
            w = unpermute_rotary_rows(w, unpermute_heads)
        self.b.weight(name, np.ascontiguousarray(w.T))  # [out, in] -> [in, out]
        y = self.b.op("MatMul", [x, name], scope)
        bias = self.bias(gguf_name, w.shape[0], unpermute_heads)
        if bias is not None:
            y = self.b.op("Add", [y, self.b.weight(name[: -len("weight")] + "bias", bias)], scope)
        return y

    def bias(self, gguf_weight: str, n_out: int, unpermute_heads: Optional[int]) -> Optional[np.ndarray]:
        """The float32 bias [n_out] stored beside ``gguf_weight`` (``blk.0.attn_q.bias``), or None."""
        gguf_name = gguf_weight[: -len("weight")] + "bias"
        if not self.ckpt.has_tensor(gguf_name):
            return None
        bias = self.ckpt.tensor(gguf_name, (n_out,))
        if unpermute_heads is not None and self.unpermute:
            bias = unpermute_rotary_rows(bias[:, None], unpermute_heads)[:, 0]
        return np.ascontiguousarray(bias, dtype=np.float32)

    def embedding(self, input_ids: str) -> tuple[str, str]:
        """(hidden states [b, s, hidden], the table's name for a tied head)."""
        cfg = self.cfg
        table = self.ckpt.tensor("token_embd.weight", (cfg.vocab_size, cfg.hidden_size))
        embed = self.b.weight("model.embed_tokens.weight", table)
        del table
        return self.b.op("Gather", [embed, input_ids], "/model/embed_tokens", axis=0), embed

    def lm_head(self, h: str, embed: str) -> None:
        """``logits`` = h @ head.T, the head being ``output.weight`` or the tied embedding table."""
        b, cfg = self.b, self.cfg
        if cfg.tied_embeddings:
            head = b.op("Transpose", [embed], "/lm_head", perm=[1, 0])
        else:
            w = self.ckpt.tensor("output.weight", (cfg.vocab_size, cfg.hidden_size))
            head = b.weight("lm_head.weight", np.ascontiguousarray(w.T))
            del w
        b.op("MatMul", [h, head], "/lm_head", outputs=["logits"])

    # -- building blocks -------------------------------------------------------------
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
        """Rotary embedding of x [b, heads, s, d] with the tables of :meth:`rotary_tables`."""
        b, half = self.b, self.cfg.head_dim // 2
        if self.rope_pairs:
            # (x0, x1) of each pair -> (x0 cos - x1 sin, x0 sin + x1 cos); tables are [b, 1, s, d/2, 1]
            pairs = b.op("Reshape", [x, b.const([0, 0, 0, half, 2])], scope)
            x0, x1 = b.op("Split", [pairs, b.const([1, 1])], scope, n_outputs=2, axis=-1)
            r0 = b.op("Sub", [b.op("Mul", [x0, cos], scope), b.op("Mul", [x1, sin], scope)], scope)
            r1 = b.op("Add", [b.op("Mul", [x0, sin], scope), b.op("Mul", [x1, cos], scope)], scope)
            rotated = b.op("Concat", [r0, r1], scope, axis=-1)
            return b.op("Reshape", [rotated, b.const([0, 0, 0, self.cfg.head_dim])], scope)
        # x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1) over the head dim
        x1, x2 = b.op("Split", [x, b.const([half, half])], scope, n_outputs=2, axis=-1)
        rotated = b.op("Concat", [b.op("Neg", [x2], scope), x1], scope, axis=-1)
        return b.op("Add", [b.op("Mul", [x, cos], scope), b.op("Mul", [rotated, sin], scope)], scope)

    def inv_freq(self) -> np.ndarray:
        """theta^(-2i/d), divided by the linear rope-scaling factor and ``rope_freqs.weight``."""
        cfg = self.cfg
        exponents = np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim
        inv = 1.0 / cfg.rope_theta ** exponents
        if cfg.rope_scale != 1.0:
            inv = inv / cfg.rope_scale
        if self.ckpt.has_tensor("rope_freqs.weight"):  # llama 3.1-style per-frequency factors
            inv = inv / self.ckpt.tensor("rope_freqs.weight", (cfg.head_dim // 2,)).astype(np.float64)
        return inv.astype(np.float32)

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
        """cos and sin for the positions of this call: [batch, 1, seq, head_dim] for
        ``rotate_half``, [batch, 1, seq, head_dim / 2, 1] for pairs."""
        b, scope = self.b, "/model/rotary_emb"
        if self.kv:
            positions = io["position_ids"]
        else:
            steps = b.op("Range", [b.const(0), self.seq_len(io["input_ids"], scope), b.const(1)], scope)
            positions = b.op("Unsqueeze", [steps, b.const([0])], scope)
        inv_freq = b.weight("model.rotary_emb.inv_freq", self.inv_freq())
        pos = b.op("Unsqueeze", [b.op("Cast", [positions], scope, to=TensorProto.FLOAT), b.const([-1])], scope)
        freqs = b.op("Mul", [pos, inv_freq], scope)
        if self.rope_pairs:
            emb, axes = freqs, [1, -1]
        else:
            emb, axes = b.op("Concat", [freqs, freqs], scope, axis=-1), [1]
        cos = b.op("Unsqueeze", [b.op("Cos", [emb], scope), b.const(axes)], scope)
        sin = b.op("Unsqueeze", [b.op("Sin", [emb], scope), b.const(axes)], scope)
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
        h, embed = self.embedding(io["input_ids"])
        cos, sin = self.rotary_tables(io)
        mask = self.attention_mask(io)
        for i in tqdm(range(cfg.n_layers), desc=self.progress_label, unit="layer", disable=not progress, leave=False):
            scope, prefix = f"/model/layers.{i}", f"model.layers.{i}"
            x = self.rms_norm(h, f"{scope}/input_layernorm", f"{prefix}.input_layernorm.weight", f"blk.{i}.attn_norm.weight")
            h = b.op("Add", [h, self.attention(x, i, cos, sin, mask)], scope)
            x = self.rms_norm(h, f"{scope}/post_attention_layernorm", f"{prefix}.post_attention_layernorm.weight",
                              f"blk.{i}.ffn_norm.weight")
            h = b.op("Add", [h, self.mlp(x, i)], scope)
        h = self.rms_norm(h, "/model/norm", "model.norm.weight", "output_norm.weight")
        self.lm_head(h, embed)
