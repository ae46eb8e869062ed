"""Write a tiny random LLaMA GGUF (as llama.cpp's converter lays it out) for fast zoo tests.

q/k rows are stored permuted the way convert_hf_to_gguf.py does, so a builder that forgets to
undo the permutation (or applies rotary in the wrong convention) disagrees with the reference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def hf_to_gguf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's conversion of HF q/k rows: per head, (half, i) -> (i, half)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def byte_level_tokens() -> list[str]:
    """GPT-2's 256 byte-to-unicode characters, the base vocabulary of a byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def write_tiny_llama(
    path: Path,
    *,
    n_layers: int = 2,
    hidden: int = 64,
    ffn: int = 96,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    tied: bool = True,
    seed: int = 0,
    architecture: str = "llama",
    tokenizer_model: str = "gpt2",
    pre: str = "smollm",
    drop_key: Optional[str] = None,
) -> Path:
    """A GGUF with random weights; the embedding is Q8_0 like SmolLM2's (when hidden allows), the rest F32."""
    import gguf

    rng = np.random.default_rng(seed)
    head_dim = hidden // n_heads
    base = byte_level_tokens()
    merges = ["h e", "l l", "he ll", "Ġ w"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + base + ["he", "ll", "hell", "Ġw"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), architecture)
    keys = {
        "block_count": lambda: w.add_block_count(n_layers),
        "context_length": lambda: w.add_context_length(256),
        "embedding_length": lambda: w.add_embedding_length(hidden),
        "feed_forward_length": lambda: w.add_feed_forward_length(ffn),
        "head_count": lambda: w.add_head_count(n_heads),
        "head_count_kv": lambda: w.add_head_count_kv(n_kv_heads),
        "freq_base": lambda: w.add_rope_freq_base(10000.0),
        "rms_eps": lambda: w.add_layer_norm_rms_eps(1e-5),
        "vocab_size": lambda: w.add_vocab_size(vocab),
        "rope_dim": lambda: w.add_rope_dimension_count(head_dim),
    }
    for key, add in keys.items():
        if key != drop_key:
            add()
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def normal(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    emb = normal(vocab, hidden, scale=1.0)
    if hidden % 32 == 0:  # Q8_0 blocks are 32 wide
        w.add_tensor("token_embd.weight", gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor("token_embd.weight", emb)
    for i in range(n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", (1.0 + normal(hidden, scale=0.1)))
        w.add_tensor(p + "attn_q.weight", hf_to_gguf_rows(normal(hidden, hidden), n_heads))
        w.add_tensor(p + "attn_k.weight", hf_to_gguf_rows(normal(n_kv_heads * head_dim, hidden), n_kv_heads))
        w.add_tensor(p + "attn_v.weight", normal(n_kv_heads * head_dim, hidden))
        w.add_tensor(p + "attn_output.weight", normal(hidden, hidden))
        w.add_tensor(p + "ffn_norm.weight", (1.0 + normal(hidden, scale=0.1)))
        w.add_tensor(p + "ffn_gate.weight", normal(ffn, hidden))
        w.add_tensor(p + "ffn_up.weight", normal(ffn, hidden))
        w.add_tensor(p + "ffn_down.weight", normal(hidden, ffn))
    w.add_tensor("output_norm.weight", (1.0 + normal(hidden, scale=0.1)))
    if not tied:
        w.add_tensor("output.weight", normal(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
