"""Tokenizers of the zoo's models.

The SmolLM2 expectations below were produced by llama.cpp itself (llama-cpp-python 0.3.36,
``Llama(gguf, vocab_only=True).tokenize(text.encode(), add_bos=False, special=...)``) on the
same GGUF file, so they check our tokenizer against an independent implementation.
"""
from __future__ import annotations

import pytest

from onnxq.errors import ModelError
from onnxq.zoo import load_tokenizer
from onnxq.zoo.gguf_reader import GGUFCheckpoint
from onnxq.zoo.tokenizer import gguf_bpe_tokenizer
from zoo_tiny_gguf import write_tiny_llama

LLAMA_CPP_IDS = {
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "In 2024, 12345 people paid $3.50 each.\n\nNew line\twith tab  and  spaces ":
        [788, 216, 34, 32, 34, 36, 28, 216, 33, 34, 35, 36, 37, 701, 5940, 1885, 35, 30, 37, 32, 971, 30,
         198, 198, 5529, 1761, 197, 3659, 10147, 216, 284, 216, 5600, 216],
    "Ünïcödé café 日本語 🤖 Ελληνικά":
        [142, 246, 94, 25972, 83, 7466, 84, 2756, 37366, 17097, 241, 115, 40993, 179, 120, 248, 15107, 114,
         240, 5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112],
    "<|im_start|>user\nhi<|im_end|>": [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 6004, 44, 108, 306, 79, 486, 108, 46],
}


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer("all-minilm-l6-v2")


@pytest.mark.parametrize("text", list(LLAMA_CPP_IDS))
def test_smollm2_matches_llama_cpp(smol, text):
    ids = smol.encode(text)
    assert ids == LLAMA_CPP_IDS[text]
    assert smol.decode(ids) == text


def test_smollm2_special_tokens(smol):
    text = "<|im_start|>user\nhi<|im_end|>"
    assert smol.encode(text, parse_special=True) == [1, 4093, 198, 6004, 2]  # llama.cpp with special=True
    assert smol.decode([1, 4093, 198, 6004, 2]) == "user\nhi"
    assert smol.decode([1, 4093, 198, 6004, 2], skip_special_tokens=False) == text
    assert (smol.bos_id, smol.eos_id, smol.vocab_size) == (1, 2, 49152)
    assert load_tokenizer("smollm2-135m-kv") is smol
    # the backend keeps llama.cpp's default for code that calls it directly
    assert smol.backend.encode(text).ids == LLAMA_CPP_IDS[text]


def test_smollm2_batch_pads_left(smol):
    batch = smol.batch(["Hi", "The capital of France is"])
    assert batch["input_ids"].shape == (2, 5) and set(batch) == {"input_ids", "attention_mask"}
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert batch["input_ids"][0, -1] == smol.encode("Hi")[0]


def test_decode_rejects_out_of_range_ids(smol):
    with pytest.raises(ModelError, match="outside"):
        smol.decode([5, 49152])


def test_minilm(minilm):
    assert minilm.encode("Hello world") == [101, 7592, 2088, 102]
    assert minilm.encode("Hello world", add_special_tokens=False) == [7592, 2088]
    assert minilm.encode("a [SEP] b") == [101, 1037, 102, 1038, 102]  # as HF parses it
    assert minilm.encode("a [SEP] b", parse_special=False)[2:5] == [1031, 19802, 1033]
    assert minilm.decode([101, 7592, 2088, 102]) == "hello world"
    long = minilm.encode("word " * 400)
    assert len(long) == 256 and long[0] == 101 and long[-1] == 102  # sentence-transformers' max_seq_length
    batch = minilm.batch(["Hi", "Hello there"])
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["input_ids"][0, -1] == 0 and batch["token_type_ids"].sum() == 0


def test_unknown_names_and_bad_input(minilm):
    with pytest.raises(ModelError, match="no tokenizer|unknown model"):
        load_tokenizer("gpt-5")
    with pytest.raises(ModelError, match="non-empty"):
        minilm.batch([])
    with pytest.raises(ModelError, match="padding_side"):
        minilm.batch(["x"], padding_side="middle")
    with pytest.raises(TypeError):
        minilm.encode(b"bytes")


def test_tokenizer_from_a_model_path_uses_its_metadata(tmp_path):
    from onnxq.zoo.smollm2 import build_smollm2

    path = build_smollm2(write_tiny_llama(tmp_path / "t.gguf"), tmp_path / "m.onnx", family="all-minilm-l6-v2",
                         progress=False)
    assert load_tokenizer(path).family == "all-minilm-l6-v2"
    no_family = build_smollm2(write_tiny_llama(tmp_path / "t.gguf"), tmp_path / "x.onnx", family="nope",
                              progress=False)
    with pytest.raises(ModelError, match="no tokenizer"):
        load_tokenizer(no_family)


def test_tiny_gguf_byte_level_bpe(tmp_path):
    tok = gguf_bpe_tokenizer(GGUFCheckpoint(write_tiny_llama(tmp_path / "t.gguf")), "tiny")
    ids = tok.encode("hello world 42")
    assert tok.decode(ids) == "hello world 42"
    hell = tok.backend.token_to_id("hell")
    assert ids[0] == hell  # merges h+e, l+l, he+ll applied
    assert len([i for i in ids if tok.backend.id_to_token(i) in ("4", "2")]) == 2  # digits split alone


@pytest.mark.parametrize("kwargs, message", [
    ({"tokenizer_model": "llama"}, "only byte-level BPE"),
    ({"pre": "deepseek-coder"}, "not supported"),
])
def test_unsupported_gguf_tokenizers(tmp_path, kwargs, message):
    with pytest.raises(ModelError, match=message):
        gguf_bpe_tokenizer(GGUFCheckpoint(write_tiny_llama(tmp_path / "t.gguf", **kwargs)), "tiny")
