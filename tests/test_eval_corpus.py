"""The shipped evaluation data: pinned hashes, provenance, and loading rules."""
import hashlib

import pytest

from onnxq import corpora as corpus_mod
from onnxq.corpora import Corpus, DataError, SentenceSet, default_corpus, default_sentences


def test_shipped_files_match_their_pinned_hashes():
    for path, sha in ((corpus_mod.DEFAULT_CORPUS_FILE, corpus_mod.DEFAULT_CORPUS_SHA256),
                      (corpus_mod.DEFAULT_SENTENCES_FILE, corpus_mod.DEFAULT_SENTENCES_SHA256)):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha  # = sha256sum of the file
    text = default_corpus().text
    assert len(text) == 54860 and text.startswith("Objects, values and types\n")
    assert "Execution model" in text and "Exceptions\n**********" in text
    sentences = default_sentences().sentences
    assert len(sentences) == 64 and len(set(sentences)) == 64


def test_a_modified_default_file_is_refused(tmp_path, monkeypatch):
    changed = tmp_path / "corpus.txt"
    changed.write_text(corpus_mod.DEFAULT_CORPUS_FILE.read_text(encoding="utf-8") + "x", encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "DEFAULT_CORPUS_FILE", changed)
    with pytest.raises(DataError, match="was modified"):
        default_corpus()


def test_loading_rules(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\r\n")
    assert Corpus.from_file(crlf).text == "one\ntwo\n"  # hashed as evaluated: LF line ends
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        Corpus.from_file(latin)
    with pytest.raises(DataError, match="is a directory"):
        Corpus.from_file(tmp_path)
    assert SentenceSet.from_list([" a ", "", "b"]).sentences == ("a", "b")
    assert SentenceSet.from_list(["a", "b"]).sha256 == hashlib.sha256(b"a\nb\n").hexdigest()
