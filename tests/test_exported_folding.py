"""Folding 1/s into the norms the exporters write (tests/data/exported): every norm that
feeds only linear layers folds, the folded model computes what the float model computes
(all outputs, KV cache included), the Skip norms' residual sums stay as they were, and
where a fold is illegal (post-norm BERT: the norm also feeds the residual) the reason
says so."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graph_fixtures import FIXTURES, LLMS, feeds, path, rel_err, run
from onnxq.folding import Fold, NoFold, SiteWeights, find_fold
from onnxq.fused_ops import unfuse_weights
from onnxq.modelio import ensure_node_names
from onnxq.norms import NormMatch, find_norms
from onnxq.sites import ModelGraph, find_sites, input_groups

#: fixture -> fold kind of each group that folds into a norm
NORM_FOLDS = {
    "optimum-smollm2": ["norm:decomposed RMSNorm"] * 5,
    "dynamo-smollm2": ["norm:decomposed RMSNorm"] * 5,
    "genai-smollm2": ["norm:SimplifiedLayerNormalization"] + ["norm:SkipSimplifiedLayerNormalization"] * 4,
    "optimum-minilm": [], "dynamo-minilm": [], "ortopt-minilm": [],
}
#: norms each export has (every one of them feeds linear layers, the last LLM norm the head)
#: (ortopt's EmbedLayerNormalization opens up into a LayerNormalization)
NORM_COUNT = {"optimum-smollm2": 5, "dynamo-smollm2": 5, "genai-smollm2": 5,
              "optimum-minilm": 5, "dynamo-minilm": 5, "ortopt-minilm": 5}


def _load(name: str) -> onnx.ModelProto:
    """The fixture as onnxq.quantize sees it: fused ops opened up (ortopt's Attention)."""
    model = onnx.load(path(name))  # small: external data in memory
    ensure_node_names(model)
    unfuse_weights(model)
    return model


def _residual_outputs(model: onnx.ModelProto) -> list:
    """Expose outputs 1-3 of every Skip norm (the residual sum the next block reads)."""
    names = []
    for node in model.graph.node:
        if node.op_type.startswith("Skip"):
            for out in list(node.output)[1:]:
                if out and out not in {o.name for o in model.graph.output}:
                    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
                    names.append(out)
    return names


@pytest.mark.parametrize("name", FIXTURES)
def test_every_exported_norm_is_recognised(name):
    model = _load(name)
    norms = find_norms(ModelGraph(model), model.graph.node)
    assert len(norms) == NORM_COUNT[name], [n.kind for n in norms]


@pytest.mark.parametrize("name", FIXTURES)
def test_folding_into_exported_norms_keeps_every_output(name):
    model = _load(name)
    residual = _residual_outputs(model)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    analysis = find_sites(model)
    graph = ModelGraph(model)
    weights = SiteWeights(model, graph, None)
    ctx = weights.context(analysis.linear)
    rng = np.random.default_rng(1)
    kinds, reasons = [], []
    for x, sites in input_groups(analysis.linear).items():
        found = find_fold(ctx, x, sites[0].K, [s.name for s in sites])
        if isinstance(found, NoFold):
            reasons.append(found.reason)
            continue
        assert isinstance(found, Fold)
        s = np.exp(rng.uniform(np.log(0.25), np.log(4.0), sites[0].K)).astype(np.float32)
        found.apply(ctx, s)
        for site in sites:
            weights.scale_rows(site, s)
        kinds.append(found.kind)
    weights.write_back(ctx)
    assert [k for k in kinds if k.startswith("norm:")] == NORM_FOLDS[name]
    if name in LLMS:
        assert sum(k.startswith("linear-output") for k in kinds) == 2  # down: into up_proj's columns
    else:  # post-norm: each norm also feeds the next residual Add / Skip norm
        assert sum("also feeds" in r for r in reasons) == 4 and not kinds

    x = feeds(name, batch=2, seq=6)
    want = run(reference, x)
    got = run(model, x)
    assert set(got) == set(want)
    worst = max(rel_err(got[k], want[k]) for k in want)
    assert worst < 2e-5, {k: rel_err(got[k], want[k]) for k in want}
    for out in residual:  # a Skip norm's residual sum never depends on gamma
        assert rel_err(got[out], want[out]) < 1e-6
    # the folds really changed the model
    assert {t.name for t in model.graph.initializer} != {t.name for t in reference.graph.initializer} or not kinds
