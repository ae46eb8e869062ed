"""``onnxq eval`` through the CLI frame: reports, JSON, and one-line errors with exit code 1."""
import json

import numpy as np
import pytest

from eval_toys import encoder_tokenizer, rounded_8bit, save, toy_encoder, toy_lm, unigram_log_probs, word_tokenizer
from onnxq.cli import main
from onnxq.evaluate import default_corpus, default_sentences


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = word_tokenizer([default_corpus().text])
    tok.save(str(root / "lm-tokenizer.json"))
    lm = toy_lm(bias=unigram_log_probs(tok, default_corpus().text))
    enc = toy_encoder()
    encoder_tokenizer(default_sentences().sentences).save(str(root / "enc-tokenizer.json"))
    (root / "not-onnx.onnx").write_text("this is not a model\n")
    return {
        "lm": save(lm, root / "lm.onnx"),
        "lm8": save(rounded_8bit(lm), root / "lm8.onnx"),
        "enc": save(enc, root / "enc.onnx"),
        "enc8": save(rounded_8bit(enc), root / "enc8.onnx"),
        "lm_tok": root / "lm-tokenizer.json",
        "enc_tok": root / "enc-tokenizer.json",
        "root": root,
    }


def _run(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_lm_table_and_json(cli_files, capsys, tmp_path):
    f = cli_files
    code, out, err = _run(capsys, f["lm"], f["lm"], f["lm8"], "--tokenizer", f["lm_tok"], "--ctx", 128,
                          "--max-tokens", 512, "--quiet")
    assert code == 0 and err == ""
    assert "corpus python-reference-prose (sha256 65bb546f1b59934b), 512 tokens in 4 windows of ctx 128" in out
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["model", "perplexity", "Δ"]
    assert [line.split()[0] for line in lines[3:6]] == ["ref", "#1", "#2"]

    json_file = tmp_path / "r.json"
    code, out, err = _run(capsys, f["lm"], f["lm8"], "--tokenizer", f["lm_tok"], "--ctx", 128, "--max-tokens", 512,
                          "--json", "--json-out", json_file, "--quiet", "--threads", 1)
    assert code == 0
    report = json.loads(out)
    assert report == json.loads(json_file.read_text())
    assert report["task"] == "lm" and report["settings"]["threads"] == 1
    cand = report["candidates"][0]
    assert 0 < cand["kl_divergence"] < 1e-3 and 0.9 < cand["top1_agreement"] <= 1
    assert report["data"]["predicted_tokens"] == 508


def test_encoder_and_outputs_tasks(cli_files, capsys, tmp_path):
    f = cli_files
    code, out, _ = _run(capsys, f["enc"], f["enc8"], "--tokenizer", f["enc_tok"], "--json", "--quiet",
                        "--batch-size", 8)
    assert code == 0
    report = json.loads(out)
    assert report["task"] == "encoder" and report["data"]["batches"] == 8
    assert 0.999 < report["candidates"][0]["cosine_mean"] < 1

    code, out, _ = _run(capsys, f["lm"], f["lm8"], "--task", "outputs", "--dim", "batch=1", "--dim", "seq=8",
                        "--vocab-size", 50, "--repeat", 1, "--quiet", "--json")
    report = json.loads(out)
    assert code == 0 and report["task"] == "outputs" and report["settings"]["task_source"] == "given"
    assert report["data"]["values"]["input_ids"] == "uniform in [0, 50) (--vocab-size)"
    assert report["candidates"][0]["relative_errors"]["logits"] > 0

    npz = tmp_path / "in.npz"
    np.savez(npz, input_ids=np.arange(12, dtype=np.int64).reshape(1, 12))
    code, out, _ = _run(capsys, f["lm"], f["lm8"], "--task", "outputs", "--inputs", npz, "--quiet")
    assert code == 0 and "relative error per output: logits" in out


def _assert_one_line_error(code, out, err, *fragments):
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxq eval: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_errors_are_one_line_with_exit_code_1(cli_files, capsys, tmp_path):
    f = cli_files
    missing = tmp_path / "missing.onnx"
    _assert_one_line_error(*_run(capsys, missing, f["lm"], "--quiet"), str(missing), "no such file")
    _assert_one_line_error(*_run(capsys, f["lm"], f["root"] / "not-onnx.onnx", "--quiet"), "not-onnx.onnx",
                           "not an ONNX model")
    _assert_one_line_error(*_run(capsys, f["lm"], f["enc"], "--quiet"), "models do not match",
                           "candidate lacks output(s) logits", "family 'toy-lm' but candidate is 'toy-encoder'")
    _assert_one_line_error(*_run(capsys, f["lm"], f["enc"], "--task", "outputs", "--quiet"), "models do not match",
                           "extra input(s) attention_mask, token_type_ids", "lacks output(s) logits")
    _assert_one_line_error(*_run(capsys, f["lm"], f["lm8"], "--quiet"), "no known tokenizer", "--tokenizer")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _assert_one_line_error(*_run(capsys, f["lm"], f["lm8"], "--tokenizer", f["lm_tok"], "--corpus", empty, "--quiet"),
                           "empty.txt", "empty")
    _assert_one_line_error(*_run(capsys, f["lm"], f["lm8"], "--task", "outputs", "--quiet"), "--dim batch=N")
    _assert_one_line_error(*_run(capsys, f["lm"], f["lm8"], "--task", "outputs", "--dim", "seq", "--quiet"), "bad --dim")
    _assert_one_line_error(*_run(capsys, f["lm"], f["lm8"], "--tokenizer", tmp_path / "nope.json", "--quiet"),
                           "nope.json", "no such file")


def test_argument_errors_exit_2(cli_files, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(cli_files["lm"])])  # no candidate
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(cli_files["lm"]), str(cli_files["lm"]), "--ctx", "0"])
    assert exc.value.code == 2
    capsys.readouterr()
