"""How sizes, counts and rows are written in every table and JSON report onnxq prints."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

__all__ = ["format_bytes", "format_count", "bits_per_weight", "record"]

_STEPS = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def _scaled(n: float, unit: str, sep: str) -> str:
    for div, prefix in _STEPS:
        if n >= div:
            return f"{n / div:.2f}{sep}{prefix}{unit}"
    return f"{int(n)}{sep}{unit}".rstrip()


def format_bytes(n: int) -> str:
    """``1.23 MB`` (``kB`` below a megabyte, ``B`` below a kilobyte)."""
    return _scaled(n, "B", " ")


def format_count(n: int) -> str:
    """``1.23M`` parameter counts."""
    return _scaled(n, "", "")


def bits_per_weight(nbytes: int, params: int) -> Optional[float]:
    """Stored bits per weight; None when nothing is stored or there are no weights."""
    return 8.0 * nbytes / params if nbytes and params else None


def record(obj: Any, keys: Sequence[Union[str, Tuple[str, str]]]) -> Dict[str, Any]:
    """A JSON row of ``obj``'s attributes: a key is an attribute name, or (key, attribute)."""
    out: Dict[str, Any] = {}
    for key in keys:
        name, attr = (key, key) if isinstance(key, str) else key
        out[name] = getattr(obj, attr)
    return out
