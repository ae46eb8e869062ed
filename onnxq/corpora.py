"""The text onnxq ships (``onnxq/data``): the corpus language models are evaluated on and
the sentence set for encoders. Read by :mod:`onnxq.evaluate` (measuring) and by
:mod:`onnxq.zoo` (which keeps its calibration text disjoint from them).

Both carry a name and the sha256 of the text exactly as evaluated (UTF-8, line ends read as
LF, so for a file with LF line ends it equals ``sha256sum FILE``), so that two reports
can be compared only when they measured the same thing. The defaults ship in ``onnxq/data``
(provenance in ``onnxq/data/README.md``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .errors import DataError

PathLike = Union[str, os.PathLike]

DATA_DIR = Path(__file__).resolve().parent / "data"

#: English prose from the Python Language Reference (CPython 3.11.7 ``pydoc_data.topics``:
#: objects, types, execmodel, exceptions), 54,860 characters.
DEFAULT_CORPUS_FILE = DATA_DIR / "python-reference-prose.txt"
DEFAULT_CORPUS_NAME = "python-reference-prose"
DEFAULT_CORPUS_SHA256 = "65bb546f1b59934b339f2bf367f57a3c63c80b2d91922ec313e5f8a5e0fbaa3f"

#: 64 English sentences written for onnxq (paraphrase pairs and unrelated topics, 2 to 16 words).
DEFAULT_SENTENCES_FILE = DATA_DIR / "sentences.txt"
DEFAULT_SENTENCES_NAME = "onnxq-sentences-64"
DEFAULT_SENTENCES_SHA256 = "617ab609525229d01b7621d066befe6e4684a13bb3d48ff34f7cfd9c6ded35f5"


def sha256_text(text: str) -> str:
    """sha256 (hex) of the UTF-8 bytes of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Corpus:
    """A text to measure perplexity on, with a name and the hash of its exact content."""

    name: str
    text: str

    @classmethod
    def from_file(cls, path: PathLike, name: Optional[str] = None) -> "Corpus":
        """Read a UTF-8 text file; the name defaults to the file name."""
        text = _read_text(path, "corpus")
        if not text.strip():
            raise DataError(f"corpus {os.fspath(path)} is empty (no text to measure perplexity on)")
        return cls(name=name or Path(path).name, text=text)

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)


@dataclass(frozen=True)
class SentenceSet:
    """Sentences to embed, one per entry, with a name and the hash of their content."""

    name: str
    sentences: tuple[str, ...]

    @property
    def sha256(self) -> str:
        # Hash of the sentences joined as the file would hold them, so a set loaded from
        # a file and the same set passed as a list hash alike.
        return sha256_text("".join(s + "\n" for s in self.sentences))

    @classmethod
    def from_list(cls, sentences: Iterable[str], name: str = "sentences") -> "SentenceSet":
        cleaned = tuple(s.strip() for s in sentences if s and s.strip())
        if not cleaned:
            raise DataError(f"sentence set {name!r} is empty (no non-blank sentence)")
        return cls(name=name, sentences=cleaned)

    @classmethod
    def from_file(cls, path: PathLike, name: Optional[str] = None) -> "SentenceSet":
        """One sentence per line; blank lines are skipped."""
        text = _read_text(path, "sentence file")
        sentences = [line.strip() for line in text.splitlines() if line.strip()]
        if not sentences:
            raise DataError(f"sentence file {os.fspath(path)} is empty (expected one sentence per line)")
        return cls(name=name or Path(path).name, sentences=tuple(sentences))


def _read_text(path: PathLike, what: str) -> str:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {os.fspath(path)}: no such file")
    if p.is_dir():
        raise DataError(f"{what} {os.fspath(path)}: is a directory, expected a text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {os.fspath(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{what} {os.fspath(path)}: cannot read ({exc.strerror})") from None


def _verified(loaded, path: Path, expected: str, what: str):
    if loaded.sha256 != expected:
        raise DataError(
            f"{what} {path} has sha256 {loaded.sha256}, expected {expected}: the installed file was modified; "
            "reinstall onnxq"
        )
    return loaded


def default_corpus() -> Corpus:
    """The shipped default corpus (hash verified, so a modified install is caught)."""
    corpus = Corpus.from_file(DEFAULT_CORPUS_FILE, name=DEFAULT_CORPUS_NAME)
    return _verified(corpus, DEFAULT_CORPUS_FILE, DEFAULT_CORPUS_SHA256, "default corpus")


def default_sentences() -> SentenceSet:
    """The shipped default sentence set (hash verified)."""
    sentences = SentenceSet.from_file(DEFAULT_SENTENCES_FILE, name=DEFAULT_SENTENCES_NAME)
    return _verified(sentences, DEFAULT_SENTENCES_FILE, DEFAULT_SENTENCES_SHA256, "default sentence set")


def resolve_corpus(corpus: Union[Corpus, PathLike, None]) -> Corpus:
    """A Corpus from a Corpus, a file path, or None (the default corpus)."""
    if corpus is None:
        return default_corpus()
    if isinstance(corpus, Corpus):
        if not corpus.text.strip():
            raise DataError(f"corpus {corpus.name!r} is empty (no text to measure perplexity on)")
        return corpus
    return Corpus.from_file(corpus)


def resolve_sentences(sentences: Union[SentenceSet, Sequence[str], PathLike, None]) -> SentenceSet:
    """A SentenceSet from a SentenceSet, a list of strings, a file path, or None (default)."""
    if sentences is None:
        return default_sentences()
    if isinstance(sentences, SentenceSet):
        return sentences
    if isinstance(sentences, (str, os.PathLike)):
        return SentenceSet.from_file(sentences)
    return SentenceSet.from_list(sentences)
