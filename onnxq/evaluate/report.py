"""The result of one evaluation: a dataclass with ``to_dict`` (JSON) and ``format_table``."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

TASK_TITLES = {
    "lm": "language model",
    "encoder": "encoder",
    "outputs": "outputs",
}


#: per task: the metric that ranks candidates, and whether larger is better
RANK_METRICS = {"lm": ("kl_divergence", False), "encoder": ("cosine_mean", True), "outputs": ("relative_error", False)}


@dataclass
class ModelResult:
    """One model's numbers: task metrics and the wall time of its timed runs.

    ``metrics["nonfinite"]`` maps each compared output to its NaN and Inf counts (and, for
    candidates, ``introduced``: those where the reference is finite).
    """

    path: str
    seconds: float
    runs: int
    metrics: dict[str, Any] = field(default_factory=dict)
    time_ratio: Optional[float] = None  # seconds / reference seconds (candidates only)
    rank: Optional[int] = None  # 1 = best candidate (candidates only)

    @property
    def nonfinite_values(self) -> int:
        """NaN + Inf elements over every compared output."""
        return sum(c.get("nan", 0) + c.get("inf", 0) for c in self.metrics.get("nonfinite", {}).values())

    @property
    def nonfinite_introduced(self) -> int:
        """Non-finite elements where the reference's value is finite."""
        return sum(c.get("introduced", 0) for c in self.metrics.get("nonfinite", {}).values())

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "seconds": self.seconds, "runs": self.runs, **self.metrics}
        out["nonfinite_values"] = self.nonfinite_values
        if self.time_ratio is not None:
            out["time_ratio"] = self.time_ratio
        if self.rank is not None:
            out["rank"] = self.rank
            out["nonfinite_introduced"] = self.nonfinite_introduced
        return out


@dataclass
class EvalReport:
    """Reference vs candidates on the same inputs (see onnxq.evaluate for the protocol)."""

    task: str
    reference: ModelResult
    candidates: list[ModelResult]
    data: dict[str, Any]
    settings: dict[str, Any]

    def __post_init__(self) -> None:
        metric, larger_is_better = RANK_METRICS.get(self.task, RANK_METRICS["outputs"])

        def key(item: tuple[int, ModelResult]) -> tuple:
            index, result = item
            value = float(result.metrics.get(metric, math.nan))
            broken = result.nonfinite_introduced > 0 or not math.isfinite(value)
            return (broken, 0.0 if broken else (-value if larger_is_better else value), index)

        for rank, (_, result) in enumerate(sorted(enumerate(self.candidates), key=key), start=1):
            result.rank = rank

    @property
    def nonfinite_candidates(self) -> list[ModelResult]:
        """Candidates whose outputs hold NaN/Inf where the reference's are finite."""
        return [c for c in self.candidates if c.nonfinite_introduced > 0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (non-finite floats become strings "inf"/"nan")."""
        return _json_safe(
            {
                "task": self.task,
                "data": self.data,
                "settings": self.settings,
                "reference": self.reference.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates],
            }
        )

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def format_table(self) -> str:
        """A readable report: a header naming the data, one row per model."""
        lines = [self._header()]
        columns, rows = self._rows()
        lines.extend(_table(columns, rows))
        lines.extend(self._footer())
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.format_table()

    # -- layout -------------------------------------------------------------------

    def _header(self) -> str:
        d = self.data
        title = f"onnxq eval ({TASK_TITLES.get(self.task, self.task)})"
        threads = self.settings.get("threads") or "default"
        if self.task == "lm":
            return (
                f"{title}: corpus {d['corpus']} (sha256 {d['corpus_sha256'][:16]}), {d['tokens']} tokens "
                f"in {d['windows']} windows of ctx {d['ctx']}, {d['predicted_tokens']} predicted; "
                f"tokenizer {self.settings.get('tokenizer')}; threads {threads}"
            )
        if self.task == "encoder":
            return (
                f"{title}: sentences {d['sentences']} (sha256 {d['sentences_sha256'][:16]}), "
                f"{d['sentence_count']} sentences, {d['tokens']} tokens, batch {d['batch_size']}, "
                f"{d['pooling']} of {d['output']!r}; threads {threads}"
            )
        shapes = ", ".join(f"{n} {s}" for n, s in d.get("input_shapes", {}).items())
        return (
            f"{title}: inputs {d['inputs']} ({shapes}), {d['input_sets']} set(s) x {d['repeat']} timed repeat(s); "
            f"threads {threads}"
        )

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        ref = self.reference
        models = [("ref", ref)] + [(f"#{i + 1}", c) for i, c in enumerate(self.candidates)]
        columns = _COLUMNS[self.task if self.task in _COLUMNS else "outputs"]
        rows = []
        for tag, m in models:
            cells = [tag, _name(m.path)]
            for _, cell, candidates_only in columns:
                cells.append("" if candidates_only and m is ref else cell(m, ref))
            rank = "" if m.rank is None else str(m.rank)
            rows.append(cells + [str(m.nonfinite_values), rank, _seconds(m.seconds), _ratio(m, ref)])
        return ["", "model"] + [c[0] for c in columns] + ["NaN/Inf", "rank", "seconds", "time/ref"], rows

    def _footer(self) -> list[str]:
        lines = []
        if self.task == "outputs":
            for i, c in enumerate(self.candidates):
                parts = ", ".join(
                    f"{n} {v:.3e} (max abs {c.metrics['max_abs_errors'][n]:.3e})" for n, v in c.metrics["relative_errors"].items()
                )
                lines.append(f"#{i + 1} relative error per output: {parts}")
        if self.task == "encoder":
            for i, c in enumerate(self.candidates):
                text = c.metrics["cosine_min_sentence"]
                text = text if len(text) <= 60 else text[:57] + "..."
                lines.append(f"#{i + 1} lowest cosine {c.metrics['cosine_min']:.6f} on sentence "
                             f"{c.metrics['cosine_min_index'] + 1}: {text!r}")
        lines.extend(self._nonfinite_lines())
        paths = [f"ref = {self.reference.path}"] + [f"#{i + 1} = {c.path}" for i, c in enumerate(self.candidates)]
        lines.append("; ".join(paths))
        return lines

    def _nonfinite_lines(self) -> list[str]:
        lines = []
        tagged = [("ref", self.reference)] + [(f"#{i + 1}", c) for i, c in enumerate(self.candidates)]
        for tag, m in tagged:
            parts = [
                f"{n} {c.get('nan', 0)} NaN, {c.get('inf', 0)} Inf"
                + (f" ({c['introduced']} where the reference is finite)" if "introduced" in c else "")
                for n, c in m.metrics.get("nonfinite", {}).items()
                if c.get("nan", 0) + c.get("inf", 0)
            ]
            if parts:
                verdict = ": ranked last" if m.nonfinite_introduced else ""
                lines.append(f"{tag} non-finite outputs: " + "; ".join(parts) + verdict)
        return lines


def _metric(key: str, spec: str, scale: float = 1.0, unit: str = ""):
    return lambda m, ref: f"{scale * m.metrics[key]:{spec}}{unit}"


#: per task: (column, cell(model, reference) -> text, shown for candidates only)
_COLUMNS = {
    "lm": [
        ("perplexity", _metric("perplexity", ".4f"), False),
        ("Δ ppl", lambda m, ref: f"{m.metrics['perplexity'] - ref.metrics['perplexity']:+.4f}", True),
        ("KL(ref‖cand)", _metric("kl_divergence", ".3e"), True),
        ("KL max", _metric("kl_max", ".3e"), True),
        ("top-1 agree", _metric("top1_agreement", ".2f", 100.0, " %"), True),
        ("next-token acc", _metric("next_token_accuracy", ".2f", 100.0, " %"), False),
    ],
    "encoder": [
        ("cosine mean", _metric("cosine_mean", ".6f"), True),
        ("cosine min", _metric("cosine_min", ".6f"), True),
        ("rel. error", _metric("relative_error", ".3e"), True),
    ],
    "outputs": [("max rel. error", _metric("relative_error", ".3e"), True)],
}


def _name(path: str) -> str:
    return os.path.basename(path)


def _ratio(m: ModelResult, ref: ModelResult) -> str:
    if m is ref:
        return "1.00"
    return "n/a" if m.time_ratio is None else f"{m.time_ratio:.2f}"


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def fmt(cells: list[str]) -> str:
        # text columns left-aligned, numbers right-aligned
        return "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _seconds(value: float) -> str:
    return f"{value:.4g}"
