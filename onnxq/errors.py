"""Exceptions onnxq raises for bad input: each message names the file, node or tensor,
and what was expected against what was found."""
from __future__ import annotations


class OnnxqError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ModelError(OnnxqError, ValueError):
    """The model file or graph is not what the operation needs."""


class CalibrationError(OnnxqError, ValueError):
    """Calibration data is missing, empty, or does not match the model's inputs."""


class RecipeError(OnnxqError, ValueError):
    """A recipe or preset is invalid (unknown method or type, bad pattern, bad range)."""


class OutputPathError(OnnxqError, OSError):
    """The output path cannot be written, or would overwrite the input."""


class DataError(OnnxqError, ValueError):
    """Evaluation data (corpus, sentence file, input .npz) is missing, unreadable, empty or
    does not fit the model."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) reached the CLI: unwinds like Ctrl-C, so every atomic writer
    removes its temporary files; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class ExternalDataMissing(ModelError):
    """An initializer's external data file does not exist (``file``: its full path)."""

    def __init__(self, message: str, file: str):
        super().__init__(message)
        self.file = file
