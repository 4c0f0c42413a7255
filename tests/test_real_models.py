"""Real application architectures: MobileNetV2 (depthwise, residual adds) and ResNet50."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from conftest import randomize, run, weights_copy, weights_equal

from paoding_widgets.engine.graph import ModelGraph
from paoding_widgets.engine.pruner import Pruner

APPS = {
    # logits (no softmax) so that output comparisons are not squashed to ~1/1000
    "mobilenet_v2": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3),
                                                           classifier_activation=None),
    "resnet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3),
                                                    classifier_activation=None),
}


@pytest.fixture(scope="module", params=sorted(APPS))
def app(request):
    keras.utils.set_random_seed(0)
    # He-scaled random weights and BatchNorm statistics: Keras' default init makes MobileNetV2's
    # logits vanish (~1e-11), which would make output comparisons vacuous
    model = randomize(APPS[request.param](), seed=0, bias_scale=0.1)
    before = weights_copy(model)
    pruner = Pruner(model, input_range=(0, 1), strategy="impact")
    pre_params = pruner.store.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random deep nets overflow their bounds to inf
        patches = pruner.iterate()
    return request.param, model, before, pruner, pre_params, patches


def test_graph_of_application(app):
    name, model, _, pruner, _, _ = app
    graph = pruner.graph
    assert isinstance(graph, ModelGraph)
    assert len(graph.prunable_groups) > 10
    (out,) = graph.output_ids
    out_groups = [g for g in graph.groups if out in g.tensors]
    assert len(out_groups) == 1
    assert not out_groups[0].prunable and "output" in out_groups[0].reason
    assert graph.unsupported() == []
    # residual joins: some group is shared by several producer convolutions
    assert any(len({s.layer for s in g.producers}) > 1 for g in graph.prunable_groups)
    if name == "mobilenet_v2":
        # depthwise kernels follow the expansion convs' filters
        assert any(graph.node(s.layer).type == "DepthwiseConv2D" for g in graph.groups for s in g.passthrough)


def test_one_iteration_prunes_and_surgery_is_exact(app):
    name, model, before, pruner, pre, patches = app
    assert len(patches) == len(pruner.graph.prunable_groups)
    assert not pruner.store.equal(pre)
    assert pruner.share_pruned() > 0
    small = pruner.pruned_model()
    edited = pruner.edited_model()
    assert small.count_params() < model.count_params()
    for g in pruner.graph.prunable_groups:
        alive = int(pruner.store.alive[g.id].sum())
        # one step of the default 5%: round(0.05 * size) units, at least one
        step_units = max(1, int(np.floor(0.05 * g.size + 0.5)))
        assert g.size - alive == min(step_units, int(np.floor(0.5 * g.size + 0.5)))
        for layer in {s.layer for s in g.producers}:
            cfg = small.get_layer(layer).get_config()
            assert cfg.get("units", cfg.get("filters")) == alive
    x = np.random.default_rng(1).random((2, *model.input_shape[1:]), dtype=np.float32)
    a = run(edited, x)
    b = run(small, x)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(a).max())))
    assert not np.allclose(run(model, x), a, rtol=1e-6, atol=1e-7)  # it did prune
    assert weights_equal(model, before)
