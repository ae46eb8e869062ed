"""Recipes: parsing, validation, layer selectors, planning, presets."""
import json

import pytest

from graph_factory import tiny_bert_layer, tiny_decoder
from onnxq.sites import find_sites
from onnxq.errors import RecipeError
from onnxq.presets import PRESETS, preset_names
from onnxq.recipe import (
    get_preset,
    DEFAULT_MODE,
    GGML,
    KEEP,
    LayerSelector,
    load_recipe,
    parse_layers,
    plan,
    recipe_from_dict,
    single_type_recipe,
    use_more_bits,
)


def _layers(spec, n):
    return sorted(parse_layers(spec, "test").layers(n))


def test_layer_selectors_slices_fractions_and_words():
    assert _layers("0:4", 30) == [0, 1, 2, 3]
    assert _layers("-4:", 30) == [26, 27, 28, 29]
    assert _layers("::10", 30) == [0, 10, 20]
    assert _layers(7, 30) == [7]
    assert _layers(-1, 30) == [29]
    assert _layers("5", 30) == [5]
    # fractions floor like llama.cpp's integer n/8 and 7*n/8
    assert _layers("0:1/8", 30) == [0, 1, 2]
    assert _layers("7/8:", 30) == [26, 27, 28, 29]
    assert _layers("first 1/8", 30) == [0, 1, 2]
    assert _layers("last 1/8", 30) == [26, 27, 28, 29]
    assert _layers("first 2", 30) == [0, 1]
    assert _layers("last 3", 30) == [27, 28, 29]
    assert _layers("1/4:3/4", 8) == [2, 3, 4, 5]
    assert _layers(["0:2", "-1:"], 10) == [0, 1, 9]


@pytest.mark.parametrize("n", [1, 2, 7, 8, 12, 22, 30, 32, 40, 80])
def test_use_more_bits_selector_is_llama_cpp_rule(n):
    expected = [i for i in range(n) if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2]
    assert _layers("use_more_bits", n) == expected
    assert [i for i in range(n) if use_more_bits(i, n)] == expected
    if n == 30:  # SmolLM2: 3 + 4 + 7 layers
        assert expected == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0:4:0", "step"),
        ("a:b", "bad layer bound"),
        ("3/0:", "divides by zero"),
        ("0:5/4", "between -1 and 1"),
        ("1/2", "single fraction"),
        ("middle 1/8", "bad layer bound"),
        ([], "empty layer list"),
        (True, "bad layer selector"),
        ("1:2:3:4", "start:stop"),
    ],
)
def test_bad_layer_ranges(spec, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"default": "q4_0", "rules": [{"layers": spec, "method": "q6_k"}]})


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"default": "q3_k"}, "unknown method 'q3_k'"),
        ({"default": "q4_0", "rules": [{"role": "attention", "method": "q6_k"}]}, "unknown role 'attention'"),
        ({"default": "q4_0", "rules": [{"method": "int4"}]}, "rule 1: unknown method"),
        ({"default": "q4_0", "rules": [{"role": "q"}]}, "missing 'method'"),
        ({"default": "q4_0", "rules": [{"role": "q", "method": "q6_k", "bits": 3}]}, "unknown key 'bits'"),
        ({"default": "q4_0", "rules": [{"regex": "(", "method": "q6_k"}]}, "bad regex"),
        ({"default": "q4_0", "rules": [{"method": "q4_0", "tail_type": "q8_0"}]}, "K-quants"),
        ({"default": "q4_0", "rules": [{"method": "q6_k", "tail_type": "q6_k"}]}, "32-element"),
        ({"default": "q4_0", "rules": [{"method": "keep", "mode": "exact"}]}, "mode applies to GGML"),
        ({"default": "q4_0", "rules": [{"method": "q4_0", "mode": "turbo"}]}, "mode 'turbo'"),
        ({"default": "q4_0", "rules": [{"method": "smoothquant", "alpha": 2}]}, "alpha must be in"),
        ({"default": "q4_0", "rules": "q6_k"}, "'rules' must be a list"),
        ({"default": "q4_0", "extra": 1}, "unknown key 'extra'"),
        ({}, "needs a 'default'"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_invalid_recipes_raise_clear_errors(spec, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(spec)


def test_plan_by_pattern_role_and_layer_range_last_rule_wins():
    analysis = find_sites(tiny_decoder(layers=8))
    recipe = recipe_from_dict(
        {
            "default": "q4_0",
            "rules": [
                {"role": ["v", "down"], "layers": "use_more_bits", "method": "q6_k"},
                {"match": "*mlp.gate_proj*", "method": "q8_0", "mode": "exact"},
                {"regex": r"layers\.7/", "method": "keep"},
                {"role": "embedding", "method": "q5_0"},
                {"role": "head", "method": "q5_1"},
            ],
        }
    )
    result = plan(analysis, recipe)
    assert result.warnings == []
    by = {d.site: d for d in result.decisions}
    more = {i for i in range(8) if use_more_bits(i, 8)}
    for site in analysis.linear:
        d = by[site.name]
        if site.layer == 7:
            assert d.method.kind == KEEP and d.source == "rule 3"
        elif site.role == "gate":
            assert (d.method.qtype, d.method.mode, d.source) == ("Q8_0", "exact", "rule 2")
        elif site.role in ("v", "down") and site.layer in more:
            assert d.method.qtype == "Q6_K" and d.method.mode == DEFAULT_MODE
        elif site.role == "head":
            assert d.method.qtype == "Q5_1"
        else:
            assert (d.method.qtype, d.source) == ("Q4_0", "default")
    (emb,) = analysis.embeddings
    assert by[emb.name].method.qtype == "Q5_0" and by[emb.name].kind == "embedding"


def test_rule_that_matches_nothing_warns():
    analysis = find_sites(tiny_decoder(layers=2))
    recipe = recipe_from_dict({"default": "q4_0", "rules": [{"match": "*nonexistent*", "method": "q6_k"}]})
    result = plan(analysis, recipe)
    assert len(result.warnings) == 1 and "rule 1" in result.warnings[0] and "matches no layer" in result.warnings[0]
    # presets are generic (a fused qkv rule on a model without one): no warning
    assert plan(analysis, get_preset("q4_k_m")).warnings == []


def test_k_quant_tail_resolution():
    # hidden 32 -> K=32 (not a multiple of 256): K-quants get their default 32-element tail
    analysis = find_sites(tiny_decoder(layers=1))
    result = plan(analysis, recipe_from_dict({"default": "q6_k", "rules": [
        {"role": "q", "method": "q4_k", "tail_type": "q8_0"},
        {"role": "k", "method": "q5_k", "tail_type": "none"},
        {"role": "v", "method": "q5_k"},
    ]}))
    tails = {analysis.site(d.site).role if d.kind == "linear" else "emb": d.method.tail_type for d in result.decisions}
    assert tails["o"] == "Q8_0" and tails["q"] == "Q8_0" and tails["k"] is None and tails["v"] == "Q5_1"
    assert tails["emb"] == "Q8_0"


def test_smoothquant_on_embedding_is_kept_with_a_note():
    analysis = find_sites(tiny_decoder(layers=1))
    result = plan(analysis, recipe_from_dict({"default": "smoothquant"}))
    emb = [d for d in result.decisions if d.kind == "embedding"][0]
    assert emb.method.kind == KEEP and "embedding" in emb.note
    head = analysis.site("/lm_head/MatMul")
    assert result.get(head.name).method.kind == KEEP and "another node" in result.get(head.name).note  # tied
    assert all(d.method.kind == "smoothquant" for d in result.decisions if d.kind == "linear" and d.site != head.name)


def test_recipe_files_json_and_yaml_and_presets(tmp_path):
    spec = {"name": "mine", "default": {"method": "q5_k", "tail_type": "q8_0"}, "mode": "exact",
            "rules": [{"role": "head", "method": "q8_0"}]}
    jpath = tmp_path / "r.json"
    jpath.write_text(json.dumps(spec))
    ypath = tmp_path / "r.yaml"
    ypath.write_text("name: mine\nmode: exact\ndefault: {method: q5_k, tail_type: q8_0}\nrules:\n  - role: head\n    method: q8_0\n")
    a, b = load_recipe(str(jpath)), load_recipe(ypath)
    assert a.to_dict() == b.to_dict()
    assert a.name == "mine" and a.mode == "exact" and a.default.tail_type == "Q8_0"
    # the canonical form round-trips
    assert recipe_from_dict(a.to_dict()).to_dict() == a.to_dict()
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: [unclosed\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.json"))
    with pytest.raises(RecipeError, match="not a file and not a preset"):
        load_recipe("q9_9")
    for name in preset_names():
        assert load_recipe(name).name == name
    assert load_recipe("Q4_K_M").name == "q4_k_m" and load_recipe("llama_mixed").name == "llama-mixed"


def test_single_type_recipe_and_mode_override():
    r = single_type_recipe("Q6_K", "exact")
    assert r.default.kind == GGML and r.default.qtype == "Q6_K" and r.mode == "exact"
    with pytest.raises(RecipeError):
        single_type_recipe("keep")
    assert get_preset("q5_k_m").with_mode("exact").mode == "exact"


def test_q4_k_m_preset_on_bert_and_decoder():
    dec = find_sites(tiny_decoder(layers=16))
    p = plan(dec, get_preset("q4_k_m"))
    six = sorted((dec.site(d.site).role, dec.site(d.site).layer) for d in p.decisions
                 if d.kind == "linear" and d.method.qtype == "Q6_K")
    more = [i for i in range(16) if use_more_bits(i, 16)]
    assert six == sorted([("down", i) for i in more] + [("v", i) for i in more] + [("head", None)])
    assert [d.method.qtype for d in p.decisions if d.kind == "embedding"] == ["Q6_K"]
    bert = find_sites(tiny_bert_layer())
    p = plan(bert, get_preset("q5_k_m"))
    assert {bert.site(d.site).role: d.method.qtype for d in p.decisions}["v"] == "Q6_K"  # layer 0 of 1
    assert set(PRESETS) >= {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m",
                            "llama-mixed"}


@pytest.mark.parametrize("name", ["mixed_recipe.yaml", "smoothquant_keep_one.yaml"])
def test_example_recipes_load_and_plan_without_warnings(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / name
    analysis = find_sites(tiny_decoder(layers=8))
    result = plan(analysis, load_recipe(str(path)))
    assert result.warnings == []
    by = {d.site: d for d in result.decisions}
    if name == "smoothquant_keep_one.yaml":
        kept = {s.name for s in analysis.linear if by[s.name].method.kind == KEEP}
        down0 = [s.name for s in analysis.linear if s.role == "down" and s.layer == 0]
        heads = [s.name for s in analysis.linear if s.role == "head"]
        assert kept == set(down0) | set(heads) and len(down0) == 1
        assert all(by[s.name].method.kind == "smoothquant" for s in analysis.linear if s.name not in kept)
