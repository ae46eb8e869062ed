"""SmoothQuant on the real models of onnxq.zoo: smoothing alone is exact, W8A8 keeps MiniLM's
embeddings (calibration sentences disjoint from the evaluation sentences)."""
from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest

from onnxq import zoo
from onnxq.calibrate import calibrate
from onnxq.modelio import load_model, model_dir
from onnxq.smoothquant import SmoothQuantConfig, apply_smoothquant, quantize_model, required_tensors
from onnxq.zoo.calibration import CALIBRATION_SENTENCES

pytestmark = pytest.mark.slow

# calibration text: not in onnxq/data/sentences.txt (the evaluation set)
CALIBRATION = CALIBRATION_SENTENCES


def _session(model_or_path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _ensure(name):
    try:
        return str(zoo.ensure(name, progress=False))
    except zoo.CheckpointNotFoundError as exc:  # the checkpoint package is not installed
        pytest.skip(str(exc))


def _minilm_feeds(tok, texts, path):
    names = {i.name for i in _session(path).get_inputs()}
    return {k: v for k, v in tok.batch(texts).items() if k in names}


def test_minilm_smoothing_alone_is_exact():
    path = _ensure("all-minilm-l6-v2")
    tok = zoo.load_tokenizer("all-minilm-l6-v2")
    model = load_model(path)
    data = [_minilm_feeds(tok, CALIBRATION[i:i + 8], path) for i in (0, 8)]
    stats = calibrate(model, required_tensors(model), data, base_dir=model_dir(path), progress=False)
    smoothed = copy.deepcopy(model)
    report = apply_smoothquant(smoothed, None, stats, SmoothQuantConfig(alpha=0.5), "none", base_dir=model_dir(path))
    assert {s.fold for s in report.sites} >= {"explicit-mul"}
    feeds = _minilm_feeds(tok, ["A kitten was napping in the sun by the window.", "Prices rose again."], path)
    ref = _session(path).run(None, feeds)[0]
    out = _session(smoothed).run(None, feeds)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4


def test_smollm2_smoothing_alone_is_exact():
    path = _ensure("smollm2-135m")
    model = load_model(path)
    rng = np.random.default_rng(0)
    calib = [{"input_ids": rng.integers(100, 20000, (1, 24)).astype(np.int64)}]
    stats = calibrate(model, required_tensors(model), calib, base_dir=model_dir(path), progress=False)
    smoothed = copy.deepcopy(model)
    report = apply_smoothquant(smoothed, None, stats, SmoothQuantConfig(alpha=0.5), "none", base_dir=model_dir(path))
    kinds = {s.fold.split(":")[0] for s in report.sites}
    assert {"norm", "linear-output", "explicit-mul"} <= kinds  # RMSNorm (decomposed) weight, up_proj columns, o_proj
    ids = {"input_ids": rng.integers(100, 20000, (1, 16)).astype(np.int64)}
    ref = _session(path).run(None, ids)[0]
    out = _session(smoothed).run(None, ids)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4


def test_minilm_w8a8_static_keeps_embeddings(tmp_path):
    from onnxq.evaluate import evaluate

    path = _ensure("all-minilm-l6-v2")
    tok = zoo.load_tokenizer("all-minilm-l6-v2")
    data = [_minilm_feeds(tok, CALIBRATION[i:i + 4], path) for i in range(0, 16, 4)]
    out = tmp_path / "minilm-w8a8.onnx"
    report = quantize_model(path, str(out), data, format="qdq", alpha="auto", progress=False)
    assert len(report.quantized) == 36
    result = evaluate(path, [out], progress=False).to_dict()["candidates"][0]
    assert result["cosine_mean"] >= 0.99
