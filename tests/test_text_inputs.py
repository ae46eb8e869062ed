"""Calibration from a text file and the tokenizer.json beside the model (onnxq.text_inputs,
quantize --calib-text / --imatrix-text / --tokenizer)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from exported_fixtures import VOCAB, model, tokenizer
from onnxq.cli import main
from onnxq.errors import DataError, OnnxqError
from onnxq.text_inputs import (DEFAULT_WINDOW, DEFAULT_WINDOWS, load_tokenizer, resolve_text_tokenizer,
                               text_batches, token_windows)
from onnxq.zoo.calibration import python_reference_text


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(python_reference_text()[:40000], encoding="utf-8")
    return path


def test_windows_are_spread_over_the_whole_text():
    ids = list(range(1000))
    windows = token_windows(ids, 100, 4)
    assert [w[0] for w in windows] == [0, 300, 600, 900] and all(len(w) == 100 for w in windows)
    assert token_windows(ids, 100, 50) == [ids[i:i + 100] for i in range(0, 1000, 100)]  # only 10 fit
    assert token_windows(ids[:30], 100, 4) == [ids[:30]]  # shorter than one window
    with pytest.raises(DataError, match="at least 2 tokens"):
        token_windows(ids, 1, 4)


def test_bert_windows_get_the_tokenizers_special_tokens(text_file):
    tok = load_tokenizer(tokenizer("optimum-minilm"))
    batches = text_batches(text_file, tok, window=48, windows=5)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert len(batches) == 5
    for batch in batches:
        ids = batch["input_ids"]
        assert ids.shape == (1, 48) and ids.dtype == np.int64
        assert ids[0, 0] == cls and ids[0, -1] == sep and ids.max() < VOCAB
        assert cls not in ids[0, 1:-1] and sep not in ids[0, 1:-1]
    # the content is the text's own tokens, in order
    plain = tok.encode(text_file.read_text(encoding="utf-8"), add_special_tokens=False).ids
    assert list(batches[0]["input_ids"][0, 1:-1]) == plain[:46]


def test_llm_windows_are_plain_token_runs(text_file):
    batches = text_batches(text_file, str(tokenizer("optimum-smollm2")), window=64, windows=3)
    plain = load_tokenizer(tokenizer("optimum-smollm2")).encode(text_file.read_text(encoding="utf-8"),
                                                                add_special_tokens=False).ids
    assert [b["input_ids"].shape for b in batches] == [(1, 64)] * 3
    assert list(batches[0]["input_ids"][0]) == plain[:64] and list(batches[-1]["input_ids"][0]) == plain[-64:]


def test_bad_text_and_tokenizer_are_named(tmp_path, text_file):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        text_batches(tmp_path / "nope.txt", str(tokenizer("optimum-minilm")))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="gives 0 token"):
        text_batches(empty, str(tokenizer("optimum-minilm")))
    with pytest.raises(OnnxqError, match="not a tokenizers JSON"):
        load_tokenizer(text_file)
    lonely = tmp_path / "model.onnx"
    shutil.copy(model("optimum-minilm"), lonely)
    with pytest.raises(OnnxqError, match=r"no tokenizer.json beside .*model.onnx; pass --tokenizer"):
        resolve_text_tokenizer(None, lonely)
    found = resolve_text_tokenizer(None, model("optimum-minilm"))
    assert found.get_vocab_size() == VOCAB


def test_defaults_are_the_measured_calibration_set():
    assert (DEFAULT_WINDOW, DEFAULT_WINDOWS) == (256, 32)


def test_cli_calibrates_smoothquant_and_imatrix_from_text(tmp_path, text_file, capsys):
    """Text only, default flags otherwise: SmoothQuant on optimum's KV-cache export (the
    tokenizer.json beside the model), and GGML with an importance matrix from text."""
    src = model("optimum-smollm2")
    out = tmp_path / "sq.onnx"
    assert main(["quantize", str(src), "-o", str(out), "--method", "smoothquant", "--calib-text", str(text_file),
                 "--calib-windows", "8", "--report", str(tmp_path / "sq.json"), "-q"]) == 0
    report = json.loads((tmp_path / "sq.json").read_text())
    assert sum(1 for layer in report["layers"] if layer["method"] == "smoothquant") == 14
    assert "SmoothQuant (qdq): 14 of 14 sites quantized" in capsys.readouterr().out
    q4 = tmp_path / "q4.onnx"
    assert main(["quantize", str(src), "-o", str(q4), "--type", "q4_k", "--imatrix-text", str(text_file),
                 "--tokenizer", str(tokenizer("dynamo-smollm2")), "--calib-window", "64", "--calib-windows", "4",
                 "--report", str(tmp_path / "q4.json"), "-q"]) == 0
    assert "imatrix over 9 inputs" in capsys.readouterr().out  # 4 per layer + the head


@pytest.mark.parametrize("flags,message", [
    (["--method", "smoothquant"], "--calib DATA.npz or --calib-text FILE.txt"),
    (["--method", "smoothquant", "--calib", "x.npz", "--calib-text", "x.txt"], "give --calib or --calib-text, not both"),
    (["--type", "q4_k", "--tokenizer", "t.json"], "--tokenizer applies to --calib-text / --imatrix-text"),
    (["--type", "q4_k", "--imatrix-text", "x.txt", "--calib-window", "1"], "--calib-window must be >= 2"),
    (["--method", "smoothquant", "--imatrix-text", "x.txt"], "not --type/--recipe/--imatrix-data/--imatrix-text"),
])
def test_cli_text_flag_errors(tmp_path, capsys, flags, message):
    assert main(["quantize", str(model("optimum-minilm")), "-o", str(tmp_path / "o.onnx"), *flags]) == 1
    assert message in capsys.readouterr().err


def test_keep_rules_still_warn_on_the_builtin_smoothquant_recipe(tmp_path, text_file, capsys):
    assert main(["quantize", str(model("optimum-minilm")), "-o", str(tmp_path / "o.onnx"), "--method", "smoothquant",
                 "--calib-text", str(text_file), "--calib-windows", "4", "--alpha", "0.5", "--keep", "nomatch*",
                 "-q"]) == 0
    err = capsys.readouterr().err
    assert "match=nomatch* -> keep) matches no layer" in err and "role=head" not in err


def test_auto_mode_measures_exports_on_text_in_their_own_tokenizer(tmp_path, capsys):
    """Mode auto (the default) and budgets need calibration inputs; an export with no onnxq
    metadata gets them from the tokenizer.json beside it instead of falling back to exact."""
    from onnxq.zoo.calibration import CALIBRATION_SENTENCES, DEFAULT_LENGTH, DEFAULT_SEQUENCES, default_batches

    batches, source = default_batches(str(model("genai-smollm2")), progress=False)
    assert len(batches) == DEFAULT_SEQUENCES and batches[0]["input_ids"].shape == (1, DEFAULT_LENGTH)
    assert "genai-smollm2/tokenizer.json" in source
    batches, source = default_batches(str(model("ortopt-minilm")), progress=False)
    assert batches[0]["input_ids"].shape[0] == len(CALIBRATION_SENTENCES) and "sentences" in source
    lonely = tmp_path / "model.onnx"
    shutil.copy(model("optimum-minilm"), lonely)
    assert default_batches(str(lonely), progress=False) == (
        None, "the model has no onnxq.model.kind/family metadata and no tokenizer.json beside it")
    assert main(["quantize", str(model("optimum-smollm2")), "-o", str(tmp_path / "q.onnx"), "--type", "q4_k",
                 "--report", str(tmp_path / "q.json"), "-q"]) == 0
    assert "warning" not in capsys.readouterr().err
    modes = {layer["mode"] for layer in json.loads((tmp_path / "q.json").read_text())["layers"] if layer["kind"] == "linear"}
    assert modes <= {"fast", "exact"} and modes
