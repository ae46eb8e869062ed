"""Tokenizers for the zoo's models, built with the ``tokenizers`` package.

- all-MiniLM-L6-v2: its own tokenizer.json (WordPiece, lower-cased), without the fixed padding
  to 128 it ships with; truncation at sentence-transformers' ``max_seq_length`` (256).
- SmolLM2: rebuilt from the GGUF metadata (``tokenizer.ggml.*``) as llama.cpp tokenizes it:
  byte-level BPE over the GGUF's tokens and merges, pre-tokenized by llama.cpp's regexes for
  ``tokenizer.ggml.pre`` (for ``smollm``: each digit alone, then GPT-2's split).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import ModelError

try:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
except ImportError:  # pragma: no cover - only without the models extra
    Tokenizer = None

# GGUF token types (llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer regexes for the ``tokenizer.ggml.pre`` values we support. The last
# expression is GPT-2's, which tokenizers' ByteLevel(use_regex=True) applies itself.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_PRE_SPLITS: dict[str, list[str]] = {
    "gpt-2": [],
    "default": [],
    "smollm": [r"\p{N}"],
    "starcoder": [r"\p{N}"],
    "refact": [r"\p{N}"],
}
# pre-tokenizers whose whole split is one llama.cpp regex (then ByteLevel does not split again)
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_PRE_REGEX: dict[str, str] = {
    "llama-bpe": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _require_tokenizers() -> None:
    if Tokenizer is None:
        raise ModelError("the zoo's tokenizers need the 'tokenizers' package: pip install 'onnxq[models]'")


class ZooTokenizer:
    """Plain text <-> ids for one model family, with batching into model inputs.

    ``encode`` adds the family's special tokens the way its reference pipeline does
    ([CLS] ... [SEP] for BERT; nothing for SmolLM2, whose GGUF says add_bos_token = false).
    """

    def __init__(
        self,
        backend: "Tokenizer",
        family: str,
        *,
        kind: str,
        bos_id: Optional[int] = None,
        eos_id: Optional[int] = None,
        pad_id: int = 0,
        parse_special: bool = False,
    ) -> None:
        self.backend = backend
        self.family = family
        self.kind = kind
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.parse_special = parse_special
        # code that uses ``backend`` directly gets the family's default too
        backend.encode_special_tokens = not parse_special

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: Optional[bool] = None) -> list[int]:
        """Token ids of ``text``.

        ``parse_special`` says whether strings like ``<|im_start|>`` or ``[SEP]`` in the text map
        to their special tokens; by default as the family's reference does (llama.cpp: no, so they
        are plain text; HF / sentence-transformers: yes). Encoders get [CLS]/[SEP] around the
        text when ``add_special_tokens``.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        # a non-default parse_special flips a flag on the shared backend for this call only
        # (so that call is not thread-safe); the default path touches nothing
        if parse_special is None or parse_special == self.parse_special:
            return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        self.backend.encode_special_tokens = not parse_special
        try:
            return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        finally:
            self.backend.encode_special_tokens = not self.parse_special

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; control tokens are dropped unless ``skip_special_tokens=False``."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ModelError(f"token ids {bad[:5]} are outside the {self.family} vocabulary (size {self.vocab_size})")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch(self, texts: Sequence[str], padding_side: Optional[str] = None) -> dict[str, np.ndarray]:
        """Model inputs for ``texts``, padded to the longest: ``input_ids``, ``attention_mask``
        (int64 [batch, seq]) and, for encoders, ``token_type_ids``.

        Padding is on the right for encoders and on the left for causal LMs (so the last
        position of every row is a real token), unless ``padding_side`` says otherwise.
        """
        if isinstance(texts, str) or not texts:
            raise ModelError("batch expects a non-empty list of strings")
        side = padding_side or ("right" if self.kind == "encoder" else "left")
        if side not in ("left", "right"):
            raise ModelError(f"padding_side must be 'left' or 'right', got {side!r}")
        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        if width == 0:
            raise ModelError("every text encodes to zero tokens")
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            cols = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            ids[r, cols] = row
            mask[r, cols] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self.kind == "encoder":
            out["token_type_ids"] = np.zeros_like(ids)
        return out


# -- all-MiniLM-L6-v2 ------------------------------------------------------------------
def minilm_tokenizer(model_dir: os.PathLike, family: str = "all-minilm-l6-v2") -> ZooTokenizer:
    """The WordPiece tokenizer from ``model_dir/tokenizer.json``, truncating like sentence-transformers."""
    _require_tokenizers()
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception on a bad file
        raise ModelError(f"cannot load tokenizer {path}: {exc}") from exc
    backend.no_padding()  # the file pads every text to 128; batch() pads to the longest instead
    backend.no_truncation()
    max_length = 512
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            max_length = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length", max_length))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"cannot read {st_config}: {exc}") from exc
    pad = backend.token_to_id("[PAD]")
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    if pad is None or cls is None or sep is None:
        raise ModelError(f"{path}: [PAD], [CLS] or [SEP] is missing from the vocabulary")
    if max_length > 0:
        # truncate inside tokenizers so that [SEP] stays last, as sentence-transformers does
        backend.enable_truncation(max_length)
    return ZooTokenizer(backend, family, kind="encoder", bos_id=cls, eos_id=sep, pad_id=pad, parse_special=True)


# -- GGUF tokenizers (SmolLM2, imported GGUFs) --------------------------------------------
def gguf_tokenizer(ckpt, family: str) -> ZooTokenizer:
    """The tokenizer of a GGUFCheckpoint as llama.cpp tokenizes: byte-level BPE (``gpt2``) or
    SentencePiece BPE (``llama``), from the file's ``tokenizer.ggml.*`` metadata."""
    model_type = ckpt.require("tokenizer.ggml.model", str)
    if model_type == "gpt2":
        return gguf_bpe_tokenizer(ckpt, family)
    if model_type == "llama":
        return gguf_spm_tokenizer(ckpt, family)
    raise ModelError(f"{ckpt.path}: tokenizer.ggml.model is {model_type!r}; supported: 'gpt2' (byte-level BPE), "
                     "'llama' (SentencePiece)")


def _vocab(ckpt) -> tuple[list, list, dict[str, int]]:
    """(tokens, token types, token -> id), checked."""
    where = ckpt.path
    tokens = ckpt.require("tokenizer.ggml.tokens", list)
    types = ckpt.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ModelError(f"{where}: {len(tokens)} tokens but {len(types)} token types")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ModelError(f"{where}: token {tok!r} appears twice (ids {vocab[tok]} and {i})")
        vocab[tok] = i
    return tokens, types, vocab


def gguf_bpe_tokenizer(ckpt, family: str) -> ZooTokenizer:
    """Byte-level BPE matching llama.cpp's tokenization, from a GGUFCheckpoint's metadata."""
    _require_tokenizers()
    where = ckpt.path
    model_type = ckpt.require("tokenizer.ggml.model", str)
    if model_type != "gpt2":
        raise ModelError(f"{where}: tokenizer.ggml.model is {model_type!r}; only byte-level BPE ('gpt2') is supported")
    pre = ckpt.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_SPLITS and pre not in _PRE_REGEX:
        raise ModelError(f"{where}: pre-tokenizer {pre!r} is not supported (known: {sorted({*_PRE_SPLITS, *_PRE_REGEX})})")
    tokens, types, vocab = _vocab(ckpt)
    merges = ckpt.require("tokenizer.ggml.merges", list)
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ModelError(f"{where}: merge {m!r} is not two tokens separated by one space")
        pairs.append((parts[0], parts[1]))

    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    if pre in _PRE_REGEX:  # the whole split is llama.cpp's regex; ByteLevel only maps bytes
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PRE_REGEX[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in _PRE_SPLITS[pre]]
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    backend.decoder = decoders.ByteLevel()
    return _finish(ckpt, backend, family, tokens, types)


def gguf_spm_tokenizer(ckpt, family: str) -> ZooTokenizer:
    """SentencePiece BPE (``tokenizer.ggml.model = llama``: LLaMA 1/2, Mistral) as llama.cpp runs it.

    llama.cpp merges the adjacent pair whose joined piece has the highest score, repeatedly, and
    spells pieces that are not tokens as ``<0xXX>`` byte tokens. That is BPE with the merges
    ranked by the joined piece's score, byte fallback, spaces written as U+2581 and (with
    ``add_space_prefix``, the default) one in front of the text. Like every BPE model, it
    joins only pairs of tokens, so a character that is not a token is never merged into a
    longer piece (llama.cpp would); SentencePiece vocabularies hold their characters as pieces.
    """
    _require_tokenizers()
    tokens, types, vocab = _vocab(ckpt)
    scores = ckpt.require("tokenizer.ggml.scores", list)
    if len(scores) != len(tokens):
        raise ModelError(f"{ckpt.path}: {len(tokens)} tokens but {len(scores)} scores")
    mergeable = {t: i for i, t in enumerate(tokens) if types[i] in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for piece, i in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], vocab[left], vocab[right], left, right))
    ranked.sort()
    unk = next((tokens[i] for i, t in enumerate(types) if t == _UNKNOWN), None)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(r[3], r[4]) for r in ranked], unk_token=unk,
                                   fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("\u2581")] if ckpt.get("tokenizer.ggml.add_space_prefix", True) else []
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if steps else []))
    return _finish(ckpt, backend, family, tokens, types)


def _finish(ckpt, backend: "Tokenizer", family: str, tokens: list, types: list) -> ZooTokenizer:
    """Special tokens, BOS/EOS/padding ids and BOS prefixing, common to both tokenizer kinds."""
    where = ckpt.path
    # control tokens match only when asked (parse_special); user-defined ones always, as in llama.cpp
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t in (_CONTROL, _UNKNOWN)])
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == _USER_DEFINED]
    if user:
        backend.add_tokens(user)

    def token_id(key: str) -> Optional[int]:
        value = ckpt.get(key)
        if value is not None and not 0 <= value < len(tokens):
            raise ModelError(f"{where}: {key} = {value} is outside the vocabulary")
        return value

    bos, eos = token_id("tokenizer.ggml.bos_token_id"), token_id("tokenizer.ggml.eos_token_id")
    pad = token_id("tokenizer.ggml.padding_token_id")
    tok = ZooTokenizer(backend, family, kind="causal-lm", bos_id=bos, eos_id=eos,
                       pad_id=pad if pad is not None else (eos or 0))
    if ckpt.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok = _PrefixBos(tok)
    return tok


class _PrefixBos(ZooTokenizer):
    """For GGUFs whose ``add_bos_token`` is true: encode() prepends BOS as llama.cpp does."""

    def __init__(self, inner: ZooTokenizer) -> None:
        super().__init__(inner.backend, inner.family, kind=inner.kind, bos_id=inner.bos_id,
                         eos_id=inner.eos_id, pad_id=inner.pad_id)

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: Optional[bool] = None) -> list[int]:
        ids = super().encode(text, add_special_tokens=add_special_tokens, parse_special=parse_special)
        return ([self.bos_id] + ids) if add_special_tokens else ids
