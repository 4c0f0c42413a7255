"""Physical surgery: the pruned model is smaller and computes what the edited weights compute."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import (
    L,
    box_inputs,
    build_cnn_bn_flatten,
    build_concat,
    build_conv1d,
    build_conv_concat,
    build_gap,
    build_joins,
    build_mlp,
    build_residual,
    build_separable,
    build_squeeze_excite,
    randomize,
    run,
    run_to_target,
    weights_copy,
    weights_equal,
)

from paoding_widgets.engine.pruner import Pruner

BUILDERS = {
    "mlp": lambda: build_mlp(n_in=8, hidden=(20, 16), n_out=3, bn=True),
    "cnn_bn_flatten": build_cnn_bn_flatten,
    "residual_add": build_residual,
    "concatenate": build_concat,
    "global_average_pooling": build_gap,
    "squeeze_excite_reshape": build_squeeze_excite,
    "depthwise_separable_padding": build_separable,
    "conv_concat_and_flatten_concat": build_conv_concat,
    "subtract_multiply_maximum": build_joins,
    "conv1d_reshape": build_conv1d,
}


def _size_attr(layer):
    cfg = layer.get_config()
    return cfg.get("units", cfg.get("filters"))


@pytest.fixture(scope="module", params=sorted(BUILDERS), ids=sorted(BUILDERS))
def pruned(request):
    model = BUILDERS[request.param]()
    before = weights_copy(model)
    pruner = Pruner(model, input_range=(0, 1), strategy="impact", step=0.25, target=0.5, seed=0)
    iterations = run_to_target(pruner)
    return request.param, model, before, pruner, iterations, pruner.pruned_model(), pruner.edited_model()


def test_every_prunable_group_reaches_the_target(pruned):
    _, _, _, pruner, iterations, _, _ = pruned
    # steps of round(0.25 * size) units until round(0.5 * size): the slowest group sets the count
    expected = max(int(np.ceil(np.floor(0.5 * g.size + 0.5) / max(1, np.floor(0.25 * g.size + 0.5))))
                   for g in pruner.graph.prunable_groups)
    assert iterations == expected
    for g in pruner.graph.prunable_groups:
        alive = int(pruner.store.alive[g.id].sum())
        assert g.size - alive == pruner.target_units(g) == int(np.floor(0.5 * g.size + 0.5))
    for g in pruner.graph.groups:
        if not g.prunable:
            assert pruner.store.alive[g.id].all()


def test_pruned_model_is_smaller_with_alive_sizes(pruned):
    name, model, _, pruner, _, small, _ = pruned
    assert small.count_params() < model.count_params()
    checked = 0
    for g in pruner.graph.groups:
        alive = int(pruner.store.alive[g.id].sum())
        for layer_name in {s.layer for s in g.producers}:
            assert _size_attr(small.get_layer(layer_name)) == alive, (name, layer_name)
            assert _size_attr(model.get_layer(layer_name)) == g.size
            checked += 1
    assert checked >= 2
    # the expected parameter count, computed from the alive sizes
    assert small.count_params() == sum(int(np.prod(w.shape)) for w in small.weights)
    assert len(small.layers) == len(model.layers)


def test_pruned_model_matches_edited_model(pruned):
    name, model, _, _, _, small, edited = pruned
    x = box_inputs(model, 64, seed=3)
    a, b = run(edited, x), run(small, x)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4, err_msg=name)
    # and the edit did change something (the test would otherwise be vacuous)
    assert not np.allclose(run(model, x), a, atol=1e-6)


def test_original_model_untouched(pruned):
    _, model, before, _, _, _, _ = pruned
    assert weights_equal(model, before)


def test_squeeze_excite_reshape_target_follows_gate():
    model = build_squeeze_excite()
    pruner = Pruner(model, input_range=(0, 1), strategy="magnitude", step=0.25, target=0.5)
    run_to_target(pruner)
    small = pruner.pruned_model()
    c1 = pruner.graph.group("c1")
    # the gate is multiplied channel-wise with c1: they share one group
    assert "se_gate" in c1.name
    alive = int(pruner.store.alive[c1.id].sum())
    assert alive == 4
    assert tuple(small.get_layer("se_reshape").get_config()["target_shape"]) == (1, 1, alive)
    x = box_inputs(model, 16, seed=4)
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-4)


def test_surgery_without_edits_reproduces_the_model():
    model = build_residual(seed=5)
    pruner = Pruner(model, input_range=(0, 1))
    small = pruner.pruned_model()
    assert small.count_params() == model.count_params()
    x = box_inputs(model, 16, seed=5)
    np.testing.assert_allclose(run(small, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_nested_submodel_is_kept_whole_and_the_rest_is_pruned():
    """A nested Sequential is opaque (left intact); the groups around it must still be pruned and rebuilt."""
    keras.utils.set_random_seed(6)
    inner = keras.Sequential([keras.Input((10,)), L.Dense(6, activation="relu"), L.Dense(6)], name="inner")
    inp = keras.Input((8,))
    x = L.Dense(12, activation="relu", name="pre")(inp)
    x = L.Dense(10, name="mid")(x)
    x = inner(x)
    x = L.Dense(7, activation="relu", name="post")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="logits")(x)), 6)
    before = weights_copy(model)
    pruner = Pruner(model, input_range=(0, 1), strategy="magnitude", step=0.5, target=0.5)
    assert [n.name for n in pruner.graph.unsupported()] == ["inner"]
    assert not pruner.graph.group("mid").prunable
    assert [g.name for g in pruner.graph.prunable_groups] == ["pre", "post"]
    run_to_target(pruner)
    x = box_inputs(model, 16, seed=6)
    edited = pruner.edited_model()
    small = pruner.pruned_model()
    assert small.get_layer("pre").units == 6 and small.get_layer("post").units == 3  # 12 - 6, 7 - 4
    assert small.get_layer("inner").count_params() == inner.count_params()
    np.testing.assert_allclose(run(small, x), run(edited, x), rtol=1e-4, atol=1e-4)
    assert weights_equal(model, before)


def test_multi_input_multi_output_model():
    keras.utils.set_random_seed(7)
    i1, i2 = keras.Input((6,), name="i1"), keras.Input((4,), name="i2")
    a = L.Dense(10, activation="relu", name="a")(i1)
    b = L.Dense(8, activation="relu", name="b")(i2)
    h = L.Dense(9, activation="relu", name="h")(L.Concatenate(name="cat")([a, b]))
    o1 = L.Dense(3, name="o1")(h)
    o2 = L.Dense(1, activation="sigmoid", name="o2")(L.Dense(5, activation="relu", name="h2")(h))
    model = randomize(keras.Model([i1, i2], [o1, o2]), 7)
    pruner = Pruner(model, input_range=(0, 1), strategy="impact", step=0.25, target=0.5)
    assert {g.name for g in pruner.graph.prunable_groups} == {"a", "b", "h", "h2"}
    assert not pruner.graph.group("o1").prunable and not pruner.graph.group("o2").prunable
    run_to_target(pruner)
    rng = np.random.default_rng(7)
    xs = [rng.random((16, 6), dtype=np.float32), rng.random((16, 4), dtype=np.float32)]
    small, edited = pruner.pruned_model(), pruner.edited_model()
    assert small.count_params() < model.count_params()
    for got, want in zip(small(xs, training=False), edited(xs, training=False)):
        got, want = keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_compiled_source_gives_a_pruned_model_without_training_state(tmp_path):
    """clone_model recompiles; the export must not carry a fresh optimizer's state (3x the weights)."""
    from paoding_widgets.engine.export import save_keras

    model = build_mlp(n_in=64, hidden=(96, 64))
    model.compile("adam", "mse")
    p = Pruner(model, input_range=(0.0, 1.0), strategy="baseline", step=0.1, target=0.3)
    run_to_target(p)
    small = p.pruned_model()
    assert not small.compiled and small.optimizer is None
    assert model.compiled and model.optimizer is not None, "the user's model keeps its compilation"
    path = save_keras(small, str(tmp_path / "small.keras"))
    weight_bytes = sum(w.size * w.itemsize for w in small.get_weights())
    assert path.stat().st_size < 1.5 * weight_bytes + 64 * 1024  # weights + config, no optimizer slots
    again = keras.models.load_model(path)
    x = box_inputs(model, 16)
    np.testing.assert_allclose(run(again, x), run(small, x), rtol=1e-6, atol=1e-6)
