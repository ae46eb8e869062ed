"""The models of tests/data/exported (made by the real exporters, see its README): paths and
what the tests know about each."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "data" / "exported"
LLMS = ("optimum-smollm2", "dynamo-smollm2", "genai-smollm2")
ENCODERS = ("optimum-minilm", "dynamo-minilm", "ortopt-minilm")
EXPORTS = LLMS + ENCODERS
#: the fixtures' vocabulary (their tokenizer.json and embedding tables)
VOCAB = 1024


def model(name: str) -> Path:
    return ROOT / name / "model.onnx"


def tokenizer(name: str) -> Path:
    return ROOT / name / "tokenizer.json"
