"""ModelGraph: unit groups, couplings and prunability from layer types and connectivity."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import L, build_concat, build_mlp, build_residual

from paoding_widgets.engine.graph import ModelGraph


def _by_name(graph, name):
    matches = [g for g in graph.groups if g.name == name]
    assert len(matches) == 1, f"expected one group named {name!r}, got {[g.name for g in graph.groups]}"
    return matches[0]


def _group_of_layer(graph, layer):
    matches = [g for g in graph.groups if any(s.layer == layer for s in g.producers)]
    assert len(matches) == 1
    return matches[0]


def test_sequential_mlp_groups():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, dropout=True, randomize_weights=False)
    graph = ModelGraph(model)
    dense = [layer for layer in model.layers if isinstance(layer, L.Dense)]
    assert len(dense) == 3
    assert len(graph.groups) == 3
    g1, g2, out = (_group_of_layer(graph, d.name) for d in dense)
    assert (g1.size, g2.size, out.size) == (20, 16, 3)
    assert g1.prunable and g2.prunable
    assert [g.id for g in graph.prunable_groups] == sorted([g1.id, g2.id])
    assert not out.prunable
    assert "output" in out.reason.lower()
    assert g1.kind == g2.kind == "dense"
    # the first group's channels are read by the second Dense's kernel rows (through Dropout)
    assert {(s.layer, s.var, s.axis) for s in g1.consumers} == {(dense[1].name, "kernel", 0)}
    assert {(s.layer, s.var) for s in g1.producers} == {(dense[0].name, "kernel"), (dense[0].name, "bias")}
    assert g1.merge_chain is not None and any("dropout" in n for n in g1.merge_chain)
    assert graph.unsupported() == []


def test_functional_cnn_with_residual_and_gap():
    model = build_residual()
    graph = ModelGraph(model)
    names = [g.name for g in graph.groups]
    joined = [g for g in graph.groups if "res_a" in g.name and "res_b" in g.name]
    assert len(joined) == 1, names
    res = joined[0]
    # one group for both convs feeding Add: neither conv has a group of its own
    assert not any(g.name in ("res_a", "res_b") for g in graph.groups)
    assert res.size == 8 and res.kind == "conv" and res.prunable
    producer_layers = {s.layer for s in res.producers}
    assert producer_layers == {"res_a", "res_b"}
    assert {s.layer for s in res.consumers} == {"post"}
    stem = _by_name(graph, "stem")
    assert stem.prunable and stem.kind == "conv"
    # BatchNormalization's vectors follow the stem's filters
    assert {s.var for s in stem.passthrough if s.layer == "stem_bn"} == {
        "gamma", "beta", "moving_mean", "moving_variance"}
    # the stem is read by both convs of the block
    assert {s.layer for s in stem.consumers} == {"res_a", "res_b"}
    post = _by_name(graph, "post")
    assert post.prunable
    # GAP keeps one position per channel: a single row per filter in the Dense kernel
    (slot,) = post.consumers
    assert slot.layer == "fc" and slot.index.shape == (6, 1)
    assert _by_name(graph, "fc").prunable
    assert not _by_name(graph, "logits").prunable
    assert len(graph.groups) == 5


def test_flatten_maps_each_filter_to_its_positions():
    inp = keras.Input((4, 4, 2))
    x = L.Conv2D(5, 3, name="conv")(inp)  # -> (2, 2, 5)
    x = L.Flatten()(x)
    x = L.Dense(7, name="fc")(x)
    out = L.Dense(2, name="out")(x)
    graph = ModelGraph(keras.Model(inp, out))
    conv = _by_name(graph, "conv")
    (slot,) = conv.consumers
    assert slot.layer == "fc" and slot.axis == 0
    assert slot.index.shape == (5, 4)
    # channels-last flattening: position p * 5 + c belongs to filter c
    np.testing.assert_array_equal(slot.index, np.arange(4)[None, :] * 5 + np.arange(5)[:, None])
    assert sorted(slot.index.ravel().tolist()) == list(range(20))


def test_concatenate_of_dense_branches():
    model = build_concat()
    graph = ModelGraph(model)
    a, b = _by_name(graph, "branch_a"), _by_name(graph, "branch_b")
    assert a.prunable and b.prunable and a.id != b.id
    (sa,), (sb,) = a.consumers, b.consumers
    assert sa.layer == sb.layer == "fc"
    # the consumer kernel rows are split by the concatenation order
    np.testing.assert_array_equal(sa.index.ravel(), np.arange(10))
    np.testing.assert_array_equal(sb.index.ravel(), 10 + np.arange(6))
    assert _by_name(graph, "fc").prunable
    assert not _by_name(graph, "logits").prunable


def test_renamed_layers_detected_by_type():
    inp = keras.Input((6,), name="in")
    x = L.Dense(9, activation="relu", name="foo")(inp)
    x = L.Dropout(0.1, name="conv_not_really")(x)
    x = L.Dense(7, activation="relu", name="bar")(x)
    out = L.Dense(2, name="baz")(x)
    graph = ModelGraph(keras.Model(inp, out))
    assert [g.name for g in graph.prunable_groups] == ["foo", "bar"]
    assert _by_name(graph, "foo").kind == "dense"
    assert not _by_name(graph, "baz").prunable
    # a conv named like a dense layer is still a conv group
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="dense_fake")(inp)
    x = L.Flatten(name="x1")(x)
    x = L.Dense(5, name="conv_fake")(x)
    out = L.Dense(2, name="y")(x)
    graph = ModelGraph(keras.Model(inp, out))
    assert _by_name(graph, "dense_fake").kind == "conv"
    assert _by_name(graph, "conv_fake").kind == "dense"
    assert _by_name(graph, "dense_fake").prunable and _by_name(graph, "conv_fake").prunable


def test_lstm_units_are_a_group_and_its_readers_input_is_removal_only():
    inp = keras.Input((5, 4))
    x = L.Dense(6, activation="relu", name="pre")(inp)
    x = L.LSTM(7, name="rnn")(x)
    x = L.Dense(8, activation="relu", name="post")(x)
    out = L.Dense(2, name="head")(x)
    graph = ModelGraph(keras.Model(inp, out))
    assert graph.unsupported() == []
    rnn, pre = _by_name(graph, "rnn"), _by_name(graph, "pre")
    assert rnn.prunable and rnn.kind == "conv" and rnn.size == 7  # hidden units, removed
    assert pre.prunable and pre.merge_chain is None and "recurrent" in pre.merge_note  # the LSTM cannot absorb merges
    assert _by_name(graph, "post").prunable


def test_a_convlstm_is_unsupported_and_poisons_its_input_group():
    inp = keras.Input((3, 6, 6, 2))
    x = L.Dense(4, activation="relu", name="pre")(inp)
    x = L.ConvLSTM2D(3, 3, name="rnn")(x)
    x = L.Flatten()(x)
    out = L.Dense(2, name="head")(L.Dense(5, activation="relu", name="post")(x))
    graph = ModelGraph(keras.Model(inp, out))
    unsupported = graph.unsupported()
    assert [n.name for n in unsupported] == ["rnn"]
    assert "recurrent" in unsupported[0].reason.lower()
    pre = _by_name(graph, "pre")
    assert not pre.prunable and "rnn" in pre.reason
    assert _by_name(graph, "post").prunable
    assert "rnn" in graph.report()


def test_lambda_is_unsupported_and_only_its_input_group_is_blocked():
    inp = keras.Input((6,))
    a = L.Dense(8, activation="relu", name="to_lambda")(inp)
    a = L.Lambda(lambda t: t * 2.0, name="twice")(a)
    b = L.Dense(5, activation="relu", name="free")(inp)
    x = L.Concatenate(name="cat")([a, b])
    x = L.Dense(4, activation="relu", name="fc")(x)
    out = L.Dense(2, name="head")(x)
    graph = ModelGraph(keras.Model(inp, out))
    assert [n.name for n in graph.unsupported()] == ["twice"]
    assert "lambda" in graph.unsupported()[0].reason.lower()
    blocked = _by_name(graph, "to_lambda")
    assert not blocked.prunable and "twice" in blocked.reason
    assert _by_name(graph, "free").prunable
    assert _by_name(graph, "fc").prunable


def test_softmax_in_the_middle_blocks_its_input_group():
    inp = keras.Input((6,))
    x = L.Dense(8, name="before_softmax")(inp)
    x = L.Activation("softmax", name="mid_softmax")(x)
    x = L.Dense(7, activation="relu", name="after")(x)
    out = L.Dense(2, name="head")(x)
    graph = ModelGraph(keras.Model(inp, out))
    before = _by_name(graph, "before_softmax")
    assert not before.prunable
    assert "softmax" in before.reason
    assert _by_name(graph, "after").prunable
    # an element-wise Activation does not block
    inp = keras.Input((6,))
    x = L.Dense(8, name="before_tanh")(inp)
    x = L.Activation("tanh")(x)
    out = L.Dense(2)(x)
    assert _by_name(ModelGraph(keras.Model(inp, out)), "before_tanh").prunable


def test_model_without_input_raises_clear_error():
    model = keras.Sequential([L.Dense(4), L.Dense(2)])
    with pytest.raises(ValueError, match=r"(?i)input"):
        ModelGraph(model)


def test_shared_layer_is_not_resized():
    inp1, inp2 = keras.Input((4,)), keras.Input((4,))
    shared = L.Dense(5, name="shared")
    x = L.Concatenate()([shared(inp1), shared(inp2)])
    x = L.Dense(6, activation="relu", name="fc")(x)
    out = L.Dense(2)(x)
    graph = ModelGraph(keras.Model([inp1, inp2], out))
    assert "shared" in [n.name for n in graph.unsupported()]
    assert not any(g.prunable and "shared" in g.name for g in graph.groups)
    assert _by_name(graph, "fc").prunable


def test_group_lookup_by_name_and_id():
    graph = ModelGraph(build_residual())
    g = graph.group("res_a")  # a layer belonging to a joined group
    assert "res_b" in g.name
    assert graph.group(g.id) is g
    assert graph.group(g.name) is g
    with pytest.raises(KeyError):
        graph.group("no_such_layer")
