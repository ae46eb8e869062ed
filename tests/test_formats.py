"""onnxq.formats is the one Python table of the GGML types: it must say what the C side
(cython_kernels/ggml_blocks.h, shared by the codecs and the op library) says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnxq import _codecs
from onnxq.formats import (
    BLOCK_TRAITS,
    K_QUANTS,
    TAIL_TYPES,
    WEIGHT_TYPES,
    GGMLQuantType,
    default_tail_type,
    row_layout,
)

HEADER = Path(__file__).resolve().parents[1] / "cython_kernels" / "ggml_blocks.h"


def _c_table():
    """name -> (ggml id, block size, bytes, is weight type) from the header's own text."""
    text = HEADER.read_text()
    macros = {m: int(v) for m, v in re.findall(r"#define (QK\w*) (\d+)", text)}
    ids = {m: int(v) for m, v in re.findall(r"ONNXQ_TYPE_(\w+) = (-?\d+)", text)}
    sizes = {m: int(v) for m, v in re.findall(r"_Static_assert\(sizeof\(block_(\w+)\) == (\d+)", text)}
    rows = re.findall(r'\{ONNXQ_TYPE_(\w+), "(\w+)", (QK\w*), \(int\)sizeof\(block_(\w+)\), ([01])\}', text)
    assert len(rows) >= 9, "the type table of ggml_blocks.h was not found"
    return {name: (ids[enum], macros[qk], sizes[block], flag == "1") for enum, name, qk, block, flag in rows}


def test_python_table_matches_ggml_blocks_h():
    c = _c_table()
    for t in GGMLQuantType:
        assert t.name in c, f"{t.name} is not in ggml_blocks.h"
        assert (t.ggml_id, t.block_size, t.type_size, t.is_weight_type) == c[t.name], t.name
    # every weight type the C side has, the Python side has too
    assert sorted(n for n, row in c.items() if row[3]) == sorted(WEIGHT_TYPES)
    assert BLOCK_TRAITS == {n: (c[n][1], c[n][2]) for n in WEIGHT_TYPES}
    assert set(TAIL_TYPES) == {n for n in WEIGHT_TYPES if c[n][1] == 32}
    assert set(K_QUANTS) == {n for n in WEIGHT_TYPES if c[n][1] == 256}


@pytest.mark.parametrize("qtype", WEIGHT_TYPES)
def test_row_layout_matches_the_c_rule(qtype):
    tails = [None] + (list(TAIL_TYPES) if qtype in K_QUANTS else [])
    for tail in tails:
        for K in (1, 31, 32, 33, 255, 256, 257, 576, 1000, 4096, 11008):
            py = row_layout(qtype, K, tail)
            t = GGMLQuantType.parse(tail).ggml_id if tail else -1
            c = _codecs.row_layout(GGMLQuantType.parse(qtype).ggml_id, t, K)
            got = (py.n_main, py.main_elems, py.n_tail, py.main_bytes, py.row_bytes)
            assert got == (c["n_main"], c["main_elems"], c["n_tail"], c["main_bytes"], c["row_bytes"]), (qtype, tail, K)


def test_default_tails_are_llamacpps_fallbacks():
    assert {k: default_tail_type(k) for k in K_QUANTS} == {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
    assert default_tail_type("Q4_0") is None


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="K must be in"):
        row_layout("Q4_0", 0)
    with pytest.raises(ValueError, match="only valid after a K-quant"):
        row_layout("Q4_0", 64, "Q8_0")
    with pytest.raises(ValueError, match="32-element"):
        row_layout("Q4_K", 300, "Q6_K")
    with pytest.raises(ValueError, match="unknown GGML quant type"):
        row_layout("Q3_K", 64)
