"""The tokenizers onnxq rebuilds from GGUF metadata, checked against llama.cpp's algorithms.

SentencePiece (``tokenizer.ggml.model = llama``) is compared with a direct Python transcription
of llama.cpp's SPM tokenizer (merge the adjacent pair whose joined piece scores highest, leftmost
first; pieces that are not tokens become ``<0xXX>`` byte tokens) on a small scored vocabulary.
"""
from __future__ import annotations

import numpy as np
import pytest

from onnxq.errors import ModelError
from onnxq.zoo.gguf_reader import GGUFCheckpoint
from onnxq.zoo.tokenizer import gguf_tokenizer
from zoo_tiny_gguf import byte_level_tokens

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

SPACE = "\u2581"
# as in SentencePiece vocabularies, every character of a piece is a piece itself
PIECES = [SPACE, "a", "b", "c", "d", "e", "g", "h", "i", "l", "n", "o", "r", "s", "t", "w",
          SPACE + "t", "th", "he", SPACE + "th", SPACE + "the", "in", "ing", SPACE + "w", "or", SPACE + "wor",
          "ld", SPACE + "world", "ll", "ell", "hell", "hello", SPACE + "hello", "es", "st", "est", SPACE + "a"]


def _spm_gguf(path, add_bos=True):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
    types = [2, 3, 3] + [6] * 256 + [1] * len(PIECES)
    rng = np.random.default_rng(0)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + list(-rng.permutation(len(PIECES)).astype(float) - 1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens, scores


def llama_cpp_spm(text, tokens, scores):
    """llama.cpp's llm_tokenizer_spm on one fragment: escape spaces, prefix one, merge best-scoring
    adjacent pairs (ties: leftmost), then byte-fallback for pieces that are not tokens."""
    vocab = {t: i for i, t in enumerate(tokens)}
    symbols = list(SPACE + text.replace(" ", SPACE))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            joined = symbols[i] + symbols[i + 1]
            if joined in vocab and (best is None or scores[vocab[joined]] > best[0]):
                best = (scores[vocab[joined]], i)
        if best is None:
            break
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    ids = []
    for sym in symbols:
        ids.extend([vocab[sym]] if sym in vocab else [vocab[f"<0x{b:02X}>"] for b in sym.encode("utf-8")])
    return ids


def test_sentencepiece_matches_llama_cpp_algorithm(tmp_path):
    tokens, scores = _spm_gguf(tmp_path / "spm.gguf")
    tok = gguf_tokenizer(GGUFCheckpoint(tmp_path / "spm.gguf"), "toy")
    for text in ("hello world", "the world is the test", "thing  wordless", "héllo €uro", "a b c", "rest west",
                 "hellohello", " lead", "bird\nwing"):
        want = llama_cpp_spm(text, tokens, scores)
        assert tok.encode(text, add_special_tokens=False) == want, text
        assert tok.encode(text) == [1] + want  # add_bos_token
        assert tok.decode(want) == text


def test_bpe_pre_tokenizers_of_llama3_and_qwen2(tmp_path):
    base = byte_level_tokens()
    for pre, digits in (("llama-bpe", ["123", "4"]), ("qwen2", ["1", "2", "3", "4"]), ("smollm", ["1", "2", "3", "4"])):
        path = tmp_path / f"{pre}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(base + ["ab"])
        w.add_token_merges(["a b"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tok = gguf_tokenizer(GGUFCheckpoint(path), "toy")
        words = [w for w, _ in tok.backend.pre_tokenizer.pre_tokenize_str("Hello world1234!!\n\n x")]
        assert words[:2] == ["Hello", "Ġworld"] and words[2:2 + len(digits)] == digits, (pre, words)
        assert tok.decode(tok.encode("Hello world1234!!\n\n x")) == "Hello world1234!!\n\n x"


def test_unknown_tokenizer_model_is_refused(tmp_path):
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("bert")
    w.add_token_list(["[PAD]"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="tokenizer.ggml.model is 'bert'"):
        gguf_tokenizer(GGUFCheckpoint(path), "toy")
