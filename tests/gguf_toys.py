"""Small random GGUF decoders written with the ``gguf`` package, for the importer's tests.

Quantized tensors are packed with onnxq's codec (whose bytes are ggml's: tests/test_codecs_golden.py)
and written as raw tensors of their ggml type, so every type the op library runs can appear,
mixed as llama.cpp's Q4_K_M files mix them. Types the op library lacks are written as raw
bytes of their ggml type with sane fp16 scales (so the ``gguf`` package can dequantize them).
q/k rows of the ``llama`` architecture are permuted as llama.cpp's converter does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from zoo_tiny_gguf import byte_level_tokens, hf_to_gguf_rows

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ALL_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
# types the op library lacks: (elements, bytes) per block and where their fp16 scales sit
_UNSUPPORTED = {"Q2_K": (256, 84, (80, 82)), "IQ4_XS": (256, 136, (0,)), "IQ4_NL": (32, 18, (0,))}

TypeFor = Callable[[str, int], str]  # (tensor name, layer or -1) -> "F32", "F16", "BF16", "Q4_K", ...


def _raw_unsupported(type_name: str, rows: int, K: int, rng: np.random.Generator) -> np.ndarray:
    elems, size, scale_offsets = _UNSUPPORTED[type_name]
    blocks = rng.integers(0, 256, size=(rows, K // elems, size), dtype=np.uint8)
    for off in scale_offsets:  # fp16 0.01: finite, so dequantization gives finite weights
        blocks[..., off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    return blocks.reshape(rows, -1)


def _add(w, name: str, value: np.ndarray, type_name: str, rng: np.random.Generator) -> None:
    import gguf

    from onnxq import GGMLQuantizer

    if type_name == "F32":
        w.add_tensor(name, value.astype(np.float32))
    elif type_name == "F16":
        w.add_tensor(name, value.astype(np.float16))
    elif type_name == "BF16":
        w.add_tensor(name, gguf.quants.quantize(value.astype(np.float32), gguf.GGMLQuantizationType.BF16),
                     raw_dtype=gguf.GGMLQuantizationType.BF16)
    elif type_name in _UNSUPPORTED:
        w.add_tensor(name, _raw_unsupported(type_name, value.shape[0], value.shape[1], rng),
                     raw_dtype=gguf.GGMLQuantizationType[type_name])
    else:  # a block type: ggml's bytes, from onnxq's codec (no tail: K is a whole number of blocks)
        blocks = np.asarray(GGMLQuantizer(type_name, tail_type=None).quantize(value.astype(np.float32)).data)
        w.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType[type_name])


def write_decoder(
    path: Path,
    type_for: TypeFor,
    *,
    architecture: str = "llama",
    n_layers: int = 2,
    hidden: int = 256,
    ffn: int = 512,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    tied: bool = True,
    bias: bool = False,
    seed: int = 0,
    extra_tensors: Optional[Dict[str, np.ndarray]] = None,
    name: str = "Toy Decoder",
) -> Path:
    """A GGUF decoder with random weights; ``type_for`` picks each 2-D tensor's type."""
    import gguf

    rng = np.random.default_rng(seed)
    head_dim = hidden // n_heads
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + byte_level_tokens() + ["he", "ll", "hell", "Ġw"]
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name(name)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_freq_base(10000.0 if architecture == "llama" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["h e", "l l", "he ll", "Ġ w"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def normal(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    _add(w, "token_embd.weight", normal(len(tokens), hidden, scale=1.0), type_for("token_embd", -1), rng)
    shapes = {"attn_q": (hidden, hidden), "attn_k": (n_kv_heads * head_dim, hidden),
              "attn_v": (n_kv_heads * head_dim, hidden), "attn_output": (hidden, hidden),
              "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    permute = {"attn_q": n_heads, "attn_k": n_kv_heads} if architecture == "llama" else {}
    for i in range(n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", 1.0 + normal(hidden, scale=0.1))
        w.add_tensor(p + "ffn_norm.weight", 1.0 + normal(hidden, scale=0.1))
        for lin in LINEARS:
            value = normal(*shapes[lin])
            if lin in permute:
                value = hf_to_gguf_rows(value, permute[lin])
            _add(w, f"{p}{lin}.weight", value, type_for(lin, i), rng)
            if bias and lin in ("attn_q", "attn_k", "attn_v"):
                b = normal(shapes[lin][0], scale=0.5)
                w.add_tensor(f"{p}{lin}.bias", hf_to_gguf_rows(b[:, None], permute[lin])[:, 0] if lin in permute else b)
    w.add_tensor("output_norm.weight", 1.0 + normal(hidden, scale=0.1))
    if not tied:
        _add(w, "output.weight", normal(len(tokens), hidden), type_for("output", -1), rng)
    for tname, value in (extra_tensors or {}).items():
        w.add_tensor(tname, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cycle_types(types=ALL_TYPES) -> TypeFor:
    """Each 2-D tensor gets the next type of ``types``: every type appears in a two-layer file."""
    order = {}

    def pick(name: str, layer: int) -> str:
        key = (name, layer)
        if key not in order:
            order[key] = types[len(order) % len(types)]
        return order[key]

    return pick


def q4_k_m_like(n_layers: int = 2) -> TypeFor:
    """llama.cpp's Q4_K_M mix: Q4_K, attn_v / ffn_down at Q6_K where use_more_bits holds, the table
    Q6_K; a tensor whose rows are not a multiple of 256 falls back to Q5_0 (Q4_K) / Q8_0 (Q6_K)."""

    def more_bits(i: int) -> bool:
        return i < n_layers / 8 or i >= 7 * n_layers / 8 or (i - n_layers // 8) % 3 == 2

    def pick(name: str, layer: int) -> str:
        if name in ("token_embd", "output"):
            return "Q6_K"
        if name in ("attn_v", "ffn_down") and more_bits(layer):
            return "Q8_0" if name == "ffn_down" else "Q6_K"  # ffn_down has K = ffn = 544: fallback
        return "Q5_0" if name == "ffn_down" else "Q4_K"

    return pick
