"""``onnxq codecs``: the GGML block types with block size, bytes per block, bits per weight
and default tail type; with ``--k K`` also the row layout of rows of K weights."""
from __future__ import annotations

import argparse
from typing import List, Optional

from ..errors import OnnxqError
from ..formats import GGMLQuantType, row_layout


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--k",
        type=int,
        default=None,
        metavar="K",
        help="also show bytes per row and effective bits per weight for rows of K weights "
        "(K-quants with their default tail)",
    )


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    K: Optional[int] = args.k
    if K is not None and K < 1:
        raise OnnxqError(f"--k must be at least 1, got {K}")
    header = ["type", "ggml id", "block", "bytes/block", "bits/weight", "default tail", "use"]
    if K is not None:
        header += [f"bytes/row (K={K})", "bits/weight (row)"]
    rows = [header]
    for t in GGMLQuantType:
        tail = t.default_tail.name if t.default_tail is not None else "-"
        row = [t.name, str(t.ggml_id), str(t.block_size), str(t.type_size), f"{t.bits_per_weight:g}", tail,
               "weights" if t.is_weight_type else "activations"]
        if K is not None:
            layout = row_layout(t, K, "auto")
            row += [str(layout.row_bytes), f"{layout.bits_per_weight:.4f}"]
        rows.append(row)
    print(_table(rows))
    print(
        "\nK-quant rows whose length is not a multiple of 256 end in blocks of the tail type; "
        "the last block of a row is zero-padded."
    )
    return 0
