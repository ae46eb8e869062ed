"""NaN and Inf are results, not zeros: eval counts them per output and per model, ranks a
candidate that produces them (where the reference is finite) last, exits with status 3,
and prints no numpy warning."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxq
from eval_toys import encoder_tokenizer, rounded_8bit, save, toy_encoder, toy_lm, word_tokenizer
from onnxq.cli import main
from onnxq.commands.eval import EXIT_NONFINITE
from onnxq.evaluate import default_corpus, default_sentences, evaluate
from onnxq.evaluate import metrics
from onnxq.modelio import load_model

Q8_0_BLOCK = 34  # fp16 scale d, then 32 int8


def _nan_scales(src, dst, weight_suffix: str):
    """A GGML Q8_0 model whose blocks of one weight have the fp16 scale NaN (what an
    overflowing scale looks like): every output of that layer becomes NaN."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name.startswith(weight_suffix) and init.data_type == onnx.TensorProto.UINT8:
            blocks = numpy_helper.to_array(init).copy().reshape(-1, Q8_0_BLOCK)
            blocks[:, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
            init.CopyFrom(numpy_helper.from_array(blocks.reshape(numpy_helper.to_array(init).shape), init.name))
            break
    else:
        raise AssertionError(f"no packed weight {weight_suffix!r} in {src}")
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    tok = word_tokenizer([default_corpus().text])
    ref = toy_lm()
    files = {"ref": save(ref, root / "ref.onnx"), "rounded": save(rounded_8bit(ref), root / "rounded.onnx"),
             "tokenizer": tok, "root": root, "tokenizer_path": root / "tokenizer.json"}
    tok.save(str(files["tokenizer_path"]))
    q8 = root / "q8.onnx"
    onnxq.quantize(files["ref"], q8, type="q8_0", mode="exact", progress=False)
    packed = [n.input[1] for n in load_model(q8).graph.node if n.op_type == "GgmlMatMul"]
    files["q8"] = q8
    files["nan"] = _nan_scales(q8, root / "q8-nan.onnx", packed[-1])  # the output projection
    no_kind = toy_lm(kind=None, family=None)
    files["plain"] = save(no_kind, root / "plain.onnx")
    onnxq.quantize(files["plain"], root / "plain-q8.onnx", type="q8_0", mode="exact", progress=False)
    files["plain_nan"] = _nan_scales(root / "plain-q8.onnx", root / "plain-nan.onnx", packed[-1])
    return files


def _cli(capsys, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_nan_candidate_ranked_last_with_exit_3_outputs_task(lm_files, capsys, tmp_path):
    """The issue's case: an all-NaN candidate used to report error 0 and rank first."""
    f = lm_files
    json_out = tmp_path / "r.json"
    code, out, err, caught = _cli(capsys, "eval", f["plain"], f["plain_nan"], f["plain"], "--task", "outputs",
                                  "--dim", "batch=2", "--dim", "seq=8", "--quiet", "--json-out", json_out)
    assert code == EXIT_NONFINITE == 3
    assert caught == [] and "Warning" not in err
    assert err.strip() == f"onnxq eval: {f['plain_nan']}: 4800 NaN/Inf value(s) where the reference is finite"
    report = json.loads(json_out.read_text())
    nan_cand, same = report["candidates"]
    assert nan_cand["relative_error"] == "nan" and nan_cand["relative_errors"]["logits"] == "nan"
    assert nan_cand["nonfinite"] == {"logits": {"nan": 2 * 8 * 300, "inf": 0, "introduced": 2 * 8 * 300}}
    assert nan_cand["nonfinite_values"] == 4800 and nan_cand["nonfinite_introduced"] == 4800
    assert (nan_cand["rank"], same["rank"]) == (2, 1)
    assert same["relative_error"] == 0.0 and same["nonfinite_introduced"] == 0
    assert report["reference"]["nonfinite"] == {"logits": {"nan": 0, "inf": 0}}
    rows = {line.split()[0]: line for line in out.splitlines()[3:6]}  # after the header, columns, rule
    assert rows["#1"].split()[2:5] == ["nan", "4800", "2"]  # max rel. error, NaN/Inf, rank
    assert rows["#2"].split()[2:5] == ["0.000e+00", "0", "1"]
    assert "#1 non-finite outputs: logits 4800 NaN, 0 Inf (4800 where the reference is finite): ranked last" in out


def test_finite_candidates_exit_0_and_rank_by_quality(lm_files, capsys):
    f = lm_files
    code, out, err, caught = _cli(capsys, "eval", f["ref"], f["rounded"], f["q8"], f["ref"], "--quiet",
                                  "--max-tokens", "600", "--ctx", "128", "--json", "--tokenizer", f["tokenizer_path"])
    assert code == 0 and caught == [], err
    cands = json.loads(out)["candidates"]
    kl = [c["kl_divergence"] for c in cands]
    assert kl[2] == 0.0 and 0 < min(kl[0], kl[1])
    order = sorted(range(3), key=lambda i: kl[i])
    assert [cands[i]["rank"] for i in order] == [1, 2, 3]
    assert all(c["nonfinite_values"] == 0 for c in cands)


def test_lm_task_counts_nan_logits_and_keeps_nan_metrics(lm_files, capsys):
    f = lm_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy RuntimeWarning fails the test
        report = evaluate(f["ref"], [f["nan"], f["q8"]], tokenizer=f["tokenizer"], ctx=64, max_tokens=200,
                          progress=False)
    nan_cand, q8 = report.candidates
    windows = report.data["windows"]
    assert nan_cand.metrics["nonfinite"] == {"logits": {"nan": report.data["tokens"] * 300, "inf": 0,
                                                        "introduced": report.data["tokens"] * 300}}
    assert windows >= 3
    assert math.isnan(nan_cand.metrics["perplexity"]) and math.isnan(nan_cand.metrics["kl_divergence"])
    assert math.isnan(nan_cand.metrics["kl_max"])  # max() used to drop it
    assert (nan_cand.rank, q8.rank) == (2, 1)
    assert report.nonfinite_candidates == [nan_cand]
    assert math.isfinite(q8.metrics["kl_max"]) and q8.metrics["nonfinite"]["logits"]["introduced"] == 0


def test_encoder_task_and_a_reference_that_is_itself_non_finite(tmp_path):
    sentences = default_sentences().sentences[:12]
    tok = encoder_tokenizer(sentences)
    ref = toy_encoder()
    broken = onnx.ModelProto()
    broken.CopyFrom(ref)
    weight = next(i for i in broken.graph.initializer if len(i.dims) == 2 and i.dims[0] > 100)  # embedding table
    table = numpy_helper.to_array(weight).copy()
    table[::7, 0] = np.nan  # one feature of every 7th token is NaN (it spreads through the MatMul)
    weight.CopyFrom(numpy_helper.from_array(table, weight.name))
    paths = [save(ref, tmp_path / "ref.onnx"), save(broken, tmp_path / "nan.onnx"), save(rounded_8bit(ref), tmp_path / "r.onnx")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluate(paths[0], paths[1:], tokenizer=tok, sentences=sentences, progress=False)
        # the broken model as the reference: its own non-finite values are reported, not blamed on candidates
        self_report = evaluate(paths[1], [paths[1]], tokenizer=tok, sentences=sentences, progress=False)
    inf_cand, rounded = report.candidates
    counts = inf_cand.metrics["nonfinite"]["last_hidden_state"]
    assert counts["introduced"] == counts["nan"] + counts["inf"] > 0
    assert not math.isfinite(inf_cand.metrics["cosine_mean"])
    assert (inf_cand.rank, rounded.rank) == (2, 1) and report.nonfinite_candidates == [inf_cand]
    ref_counts = self_report.reference.metrics["nonfinite"]["last_hidden_state"]
    assert ref_counts["nan"] + ref_counts["inf"] == counts["nan"] + counts["inf"]
    assert self_report.candidates[0].metrics["nonfinite"]["last_hidden_state"]["introduced"] == 0
    assert self_report.nonfinite_candidates == []
    assert "ref non-finite outputs: last_hidden_state" in self_report.format_table()


def test_metric_helpers_keep_non_finite_values():
    assert math.isnan(metrics.worst(0.0, float("nan"))) and math.isnan(metrics.worst(float("nan"), 1.0))
    assert metrics.worst(0.5, 2.0) == 2.0
    assert math.isnan(metrics.relative_error_from_sums(float("nan"), 1.0))
    assert math.isnan(metrics.relative_error_from_sums(1.0, float("nan")))
    assert metrics.relative_error_from_sums(float("inf"), 4.0) == float("inf")
    assert math.isnan(metrics.relative_error_from_sums(float("inf"), float("inf")))
    assert metrics.relative_error_from_sums(1.0, 4.0) == 0.5
    ref = np.array([1.0, np.nan, 2.0, np.inf], np.float32)
    cand = np.array([np.nan, np.nan, -np.inf, 1.0], np.float32)
    assert metrics.count_nonfinite(ref) == {"nan": 1, "inf": 1}
    assert metrics.nonfinite_counts(ref, cand) == {"nan": 2, "inf": 1, "introduced": 2}
    assert metrics.nonfinite_counts(ref, np.arange(4)) == {"nan": 0, "inf": 0, "introduced": 0}
