"""Attention heads, recurrent units, embeddings, EinsumDense, transposed convolutions; more applications."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from conftest import L, randomize, run, run_to_target

from paoding_widgets.engine.graph import ModelGraph
from paoding_widgets.engine.pruner import Pruner
from paoding_widgets.engine.units import Candidates


def _remove(pruner: Pruner, group: str, units: list[int]):
    g = pruner.graph.group(group)
    n = len(units)
    cand = Candidates(np.full(n, -1, np.int64), np.asarray(units, np.int64), np.zeros(n, np.float32),
                      np.zeros(n, np.float32))
    from paoding_widgets.engine.edits import apply_edit

    return apply_edit(pruner.graph, pruner.store, g, cand)


def _seq_inputs(model, n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *model.inputs[0].shape[1:])).astype(np.float32)


def _prune_twice(pruner):
    """Two iterations of the pruner's proposals, applied; returns (weights before, patches)."""
    original = pruner.store.copy()
    patches = []
    for _ in range(2):
        patches += [pruner.apply(p) for p in pruner.propose().values()]
    return original, patches


def _assert_physical_equals_edited_and_undo_exact(pruner, x, original, patches):
    np.testing.assert_allclose(run(pruner.pruned_model(), x), run(pruner.edited_model(), x), rtol=1e-5, atol=1e-5)
    for p in reversed(patches):
        pruner.store.revert(p)
    assert pruner.store.equal(original)


# ------------------------------------------------------------------ recurrent
def _rnn_model(kind: str, return_sequences: bool, seed: int = 0, **kw):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 5))
    layer = getattr(L, kind)(7, return_sequences=return_sequences, name="rnn", **kw)
    x = layer(inp)
    if return_sequences:
        x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(6, activation="relu", name="h")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="out")(x)), seed)


@pytest.mark.parametrize("kind", ["SimpleRNN", "GRU", "LSTM"])
@pytest.mark.parametrize("seq", [False, True])
def test_a_silent_recurrent_unit_is_removed_without_changing_outputs(kind, seq):
    model = _rnn_model(kind, seq)
    rnn = model.get_layer("rnn")
    k, rk, b = (np.array(w) for w in rnn.get_weights())
    u, gates = 7, k.shape[1] // 7
    cols = [3 + j * u for j in range(gates)]
    rk[3, :] = 0.0  # unit 3 feeds nothing back...
    rnn.set_weights([k, rk, b])
    h = model.get_layer("h")
    hk, hb = h.get_weights()
    hk[3, :] = 0.0  # ...and nothing forward
    h.set_weights([hk, hb])
    x = _seq_inputs(model)
    before = run(model, x)
    pruner = Pruner(model, strategy="magnitude")
    group = pruner.graph.group("rnn")
    assert group.prunable and group.size == u
    assert any(s.var == "kernel" and s.index[3].tolist() == cols for s in group.producers)
    _remove(pruner, "rnn", [3])
    small = pruner.pruned_model()
    assert small.get_layer("rnn").units == u - 1
    np.testing.assert_allclose(run(small, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_recurrent_pruning_is_exact_after_surgery_and_undo_is_bit_exact(kind):
    model = _rnn_model(kind, True, seed=3, **({"reset_after": False} if kind == "GRU" else {}))
    pruner = Pruner(model, strategy="impact", step=0.25, target=0.5)
    original, patches = _prune_twice(pruner)
    assert not pruner.store.alive[pruner.graph.group("rnn").id].all()
    x = _seq_inputs(model)
    _assert_physical_equals_edited_and_undo_exact(pruner, x, original, patches)


def test_lstm_states_are_outputs_of_the_same_units():
    keras.utils.set_random_seed(1)
    inp = keras.Input((5, 4))
    seq, h, c = L.LSTM(6, return_sequences=True, return_state=True, name="rnn")(inp)
    x = L.Concatenate()([L.GlobalAveragePooling1D()(seq), h, c])
    model = randomize(keras.Model(inp, L.Dense(2, name="out")(L.Dense(5, activation="relu", name="d")(x))))
    pruner = Pruner(model, strategy="magnitude", step=0.34, target=0.34)
    run_to_target(pruner)
    x = _seq_inputs(model)
    assert pruner.pruned_model().get_layer("rnn").units == 4
    np.testing.assert_allclose(run(pruner.pruned_model(), x), run(pruner.edited_model(), x), rtol=1e-5, atol=1e-5)


def _sampled(model, layer, n=256, seed=0):
    """The layer's outputs on random inputs of the box (and its corners' mix: pixels at 0 or 1)."""
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    x = _seq_inputs(model, n, seed)
    x[: n // 2] = np.round(x[: n // 2])  # half of them at corners of the box, where bounds are tightest
    return run(sub, x)


RECURRENT_CASES = [("SimpleRNN", True, {}), ("SimpleRNN", False, {"activation": "relu"}),
                   ("GRU", True, {}), ("GRU", False, {"reset_after": False}), ("GRU", True, {"use_bias": False}),
                   ("LSTM", True, {}), ("LSTM", False, {"go_backwards": True}),
                   ("LSTM", True, {"go_backwards": True})]


@pytest.mark.parametrize("kind,seq,kw", RECURRENT_CASES)
def test_unrolled_recurrent_bounds_hold_on_samples_of_the_box(kind, seq, kw):
    model = _rnn_model(kind, seq, seed=1, **kw)
    pruner = Pruner(model)
    node = pruner.graph.node("rnn")
    lo, hi = pruner.bounds().out[node.outputs[0]]
    y = _sampled(model, "rnn")
    assert lo.shape[1:] == y.shape[1:]
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()
    assert np.isfinite(lo).all() and np.isfinite(hi).all()  # a ReLU recurrence too: unrolled, it is bounded


def test_unrolled_bounds_are_tighter_than_the_range_where_weights_are_small():
    model = _rnn_model("LSTM", True, seed=2)
    rnn = model.get_layer("rnn")
    rnn.set_weights([w * 0.2 for w in rnn.get_weights()])
    lo, hi = Pruner(model).bounds().out[ModelGraph(model).node("rnn").outputs[0]]
    assert float((hi - lo).mean()) < 0.5  # the range [-1, 1] alone is 2 wide
    y = _sampled(model, "rnn")
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()


@pytest.mark.parametrize("mode", ["concat", "sum", "ave", "mul"])
def test_bidirectional_bounds_hold_on_samples(mode):
    keras.utils.set_random_seed(5)
    inp = keras.Input((5, 4))
    x = L.Bidirectional(L.GRU(6, return_sequences=True), merge_mode=mode, name="bi")(inp)
    model = randomize(keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(x))), 5)
    lo, hi = Pruner(model).bounds().out[ModelGraph(model).node("bi").outputs[0]]
    y = _sampled(model, "bi")
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()


@pytest.mark.parametrize("mode", ["concat", "sum", "mul"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bidirectional_directions_prune_exactly(kind, mode):
    keras.utils.set_random_seed(2)
    inp = keras.Input((5, 4))
    x = L.Dense(6, name="pre")(inp)
    x = L.Bidirectional(getattr(L, kind)(6, return_sequences=True), merge_mode=mode, name="bi")(x)
    x = L.GlobalAveragePooling1D()(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="out")(L.Dense(4, activation="relu", name="d")(x))), 2)
    pruner = Pruner(model, strategy="magnitude", step=0.34, target=0.34)
    groups = [g for g in pruner.graph.groups if "bi" in g.layers and any(s.layer == "bi" for s in g.producers)]
    assert len(groups) == (2 if mode == "concat" else 1) and all(g.prunable for g in groups)
    assert [g.name for g in groups] == (["bi", "bi/backward"] if mode == "concat" else ["bi"])  # names of their own
    assert pruner.graph.group("pre").prunable and pruner.graph.group("pre").merge_chain is None
    run_to_target(pruner)
    small = pruner.pruned_model()
    bi = small.get_layer("bi")
    assert bi.forward_layer.units == 4 and bi.backward_layer.units == 4
    x = _seq_inputs(model)
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-5, atol=1e-5)


def test_bidirectional_whose_input_shrinks_alone_is_rebuilt_for_it():
    keras.utils.set_random_seed(3)
    inp = keras.Input((5, 4))
    x = L.Dense(6, name="pre")(inp)
    x = L.Bidirectional(L.LSTM(3), name="bi")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="out")(x)), 3)
    pruner = Pruner(model, strategy="magnitude", step=0.5, target=0.5)
    bi = [g for g in pruner.graph.groups if any(s.layer == "bi" for s in g.producers)]
    for p in pruner.propose(groups=[pruner.graph.group("pre")]).values():  # only the Dense before it
        pruner.apply(p)
    small = pruner.pruned_model()
    assert small.get_layer("bi").forward_layer.units == 3 and all(pruner.store.alive[g.id].all() for g in bi)
    x = _seq_inputs(model)
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-5, atol=1e-5)


def test_conv3d_and_conv1d_prune_exactly():
    keras.utils.set_random_seed(8)
    vol = keras.Input((5, 5, 5, 2))
    v = L.Conv3D(6, 2, activation="relu", name="c3")(vol)
    v = L.Conv3D(4, 2, activation="relu", name="c3b")(v)
    model = randomize(keras.Model(vol, L.Dense(2, name="out")(L.Flatten()(v))), 8)
    pruner = Pruner(model, strategy="certified", step=0.5, target=0.5)
    run_to_target(pruner)
    x = _seq_inputs(model, 6)
    small = pruner.pruned_model()
    assert small.get_layer("c3").filters == 3 and small.get_layer("c3b").filters == 2
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ attention
def _attention_model(seed: int = 0, heads: int = 4):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 12))
    x = L.Dense(12, name="pre")(inp)
    a = L.MultiHeadAttention(num_heads=heads, key_dim=5, name="mha")(x, x)
    x = L.GlobalAveragePooling1D()(a)
    x = L.Dense(8, activation="relu", name="ffn")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="out")(x)), seed)


def test_a_zero_head_is_removed_without_changing_outputs():
    model = _attention_model()
    mha = model.get_layer("mha")
    ws = [np.array(w) for w in mha.get_weights()]
    # [query k, b, key k, b, value k (12, H, 5), value b (H, 5), output k (H, 5, 12), b]: head 2's values are 0,
    # so whatever it attends to it adds nothing
    ws[4][:, 2, :] = 0.0
    ws[5][2, :] = 0.0
    mha.set_weights(ws)
    x = _seq_inputs(model)
    before = run(model, x)
    pruner = Pruner(model, strategy="magnitude")
    heads = pruner.graph.group("mha")
    assert heads.prunable and heads.size == 4 and heads.kind == "conv"
    _remove(pruner, "mha", [2])
    small = pruner.pruned_model()
    assert small.get_layer("mha").num_heads == 3
    np.testing.assert_allclose(run(small, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["impact", "certified", "magnitude"])
def test_attention_model_prunes_heads_and_inputs_exactly(strategy):
    model = _attention_model(seed=5)
    pruner = Pruner(model, strategy=strategy, step=0.25, target=0.5)
    original, patches = _prune_twice(pruner)
    small = pruner.pruned_model()
    assert small.get_layer("mha").num_heads == 2
    x = _seq_inputs(model)
    _assert_physical_equals_edited_and_undo_exact(pruner, x, original, patches)


def test_attention_bounds_contain_sampled_outputs():
    model = _attention_model(seed=7)
    pruner = Pruner(model)
    lo, hi = pruner.bounds().out[pruner.graph.node("mha").outputs[0]]
    y = run(keras.Model(model.inputs, model.get_layer("mha").output), _seq_inputs(model, 64, seed=1))
    assert (y >= lo - 1e-4).all() and (y <= hi + 1e-4).all()


# ------------------------------------------------------------------ embedding, EinsumDense, transposed conv
def test_embedding_and_einsum_dense_prune_exactly():
    keras.utils.set_random_seed(4)
    tokens = keras.Input((7,), dtype="int32")
    e = L.Embedding(40, 10, name="emb")(tokens)
    e = L.EinsumDense("abc,cd->abd", output_shape=(7, 9), bias_axes="d", activation="relu", name="ein")(e)
    model = randomize(keras.Model(tokens, L.Dense(3, name="out")(L.Flatten()(e))))
    graph = ModelGraph(model)
    assert graph.group("emb").prunable and graph.group("ein").merge_chain is not None  # a Dense on the last axis
    odd_in = keras.Input((7, 5))
    odd = L.EinsumDense("abc,cd->abd", output_shape=(7, 4), bias_axes="b", name="odd")(odd_in)
    odd_graph = ModelGraph(keras.Model(odd_in, L.Dense(2)(L.Flatten()(odd))))
    assert not odd_graph.node("odd").supported and "not a Dense" in odd_graph.node("odd").reason
    pruner = Pruner(model, strategy="certified", step=0.25, target=0.5)
    x = np.random.default_rng(0).integers(0, 40, (16, 7))
    before_table = pruner.store[("emb", "embeddings")].copy()
    lo, hi = pruner.bounds().out[graph.node("emb").outputs[0]]
    assert np.allclose(lo[0, 0], before_table.min(0)) and np.allclose(hi[0, 0], before_table.max(0))
    run_to_target(pruner)
    small = pruner.pruned_model()
    assert small.get_layer("emb").output_dim == 5 and tuple(small.get_layer("ein").kernel.shape) == (5, 4)  # 5 of 9 go
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-5, atol=1e-5)


def test_transposed_convolution_filters_prune_exactly_with_sound_bounds():
    keras.utils.set_random_seed(6)
    img = keras.Input((6, 6, 3))
    c = L.Conv2DTranspose(8, 3, strides=2, activation="relu", name="ct")(img)
    c = L.Conv2D(5, 3, activation="relu", name="c2")(c)
    model = randomize(keras.Model(img, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(c))))
    pruner = Pruner(model, strategy="impact", step=0.25, target=0.5)
    lo, hi = pruner.bounds().out[pruner.graph.node("ct").outputs[0]]
    x = _seq_inputs(model, 32)
    y = keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("ct").output)(x))
    assert (y >= lo - 1e-4).all() and (y <= hi + 1e-4).all()
    run_to_target(pruner)
    small = pruner.pruned_model()
    assert small.get_layer("ct").filters == 4
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ real architectures with random weights
APPS = {"EfficientNetV2B0": (64, 64, 3), "DenseNet121": (64, 64, 3), "Xception": (71, 71, 3),
        "NASNetMobile": (64, 64, 3)}


@pytest.mark.parametrize("name", sorted(APPS))
def test_application_opens_prunes_one_iteration_and_shrinks_exactly(name):
    model = getattr(keras.applications, name)(weights=None, input_shape=APPS[name], classes=10)
    pruner = Pruner(model, input_range=(0.0, 255.0), strategy="magnitude", step=0.1, target=0.1)
    assert len(pruner.graph.prunable_groups) >= 20
    for g in pruner.graph.groups:  # the rest is reported, with a reason
        assert g.prunable or g.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for p in pruner.propose().values():
            pruner.apply(p)
    small = pruner.pruned_model()
    assert small.count_params() < model.count_params()
    x = np.random.default_rng(0).uniform(0, 255, (2, *APPS[name])).astype(np.float32)
    ref = run(pruner.edited_model(), x)
    np.testing.assert_allclose(run(small, x), ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


# ------------------------------------------------------------------ GroupNormalization
def _group_norm_model(seed: int = 0, join: bool = False):
    keras.utils.set_random_seed(seed)
    img = keras.Input((6, 6, 3))
    c = L.Conv2D(12, 3, name="conv")(img)
    g = L.GroupNormalization(groups=4, name="gn")(c)
    g = L.Activation("relu")(g)
    if join:  # a residual join with a conv whose channels are grouped by the GroupNormalization
        g = L.Add(name="add")([g, L.Conv2D(12, 1, name="side")(c)])
    g = L.Conv2D(5, 3, activation="relu", name="c2")(g)
    return randomize(keras.Model(img, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(g))), seed)


def test_group_norm_groups_are_units_and_a_zero_group_is_removed_exactly():
    model = _group_norm_model()
    gn = model.get_layer("gn")
    gamma, beta = (np.array(w) for w in gn.get_weights())
    gamma[3:6] = 0.0  # group 1 (channels 3..5) outputs relu(0) = 0 whatever its input
    beta[3:6] = 0.0
    gn.set_weights([gamma, beta])
    x = _seq_inputs(model)
    before = run(model, x)
    pruner = Pruner(model, strategy="magnitude")
    group = pruner.graph.group("conv")
    assert group.prunable and group.size == 4 and group.width == 3
    assert any(s.var == "kernel" and s.layer == "conv" and s.index[1].tolist() == [3, 4, 5] for s in group.producers)
    assert any(s.layer == "gn" and s.var == "gamma" and s.index[1].tolist() == [3, 4, 5] for s in group.passthrough)
    _remove(pruner, "conv", [1])
    small = pruner.pruned_model()
    assert small.get_layer("gn").groups == 3 and small.get_layer("conv").filters == 9
    assert tuple(small.get_layer("c2").kernel.shape) == (3, 3, 9, 5)
    np.testing.assert_allclose(run(small, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("join", [False, True])
@pytest.mark.parametrize("strategy", ["compensated", "certified", "magnitude"])
def test_group_norm_pruning_is_exact_after_surgery_and_undo_is_bit_exact(strategy, join):
    model = _group_norm_model(seed=3, join=join)
    opts = {"spread": 0.0} if strategy == "compensated" else {}  # this layer's own share (no units moved)
    pruner = Pruner(model, strategy=strategy, step=0.25, target=0.5, **opts)
    group = pruner.graph.group("conv")
    assert group.prunable and group.size == 4 and "gn" in group.layers and ("side" in group.layers) == join
    original, patches = _prune_twice(pruner)
    assert int(pruner.store.alive[group.id].sum()) == 2
    small = pruner.pruned_model()
    assert small.get_layer("gn").groups == 2 and small.get_layer("conv").filters == 6
    x = _seq_inputs(model)
    _assert_physical_equals_edited_and_undo_exact(pruner, x, original, patches)


def test_group_norm_bounds_hold_and_uneven_groups_are_reported():
    model = _group_norm_model(seed=4)
    pruner = Pruner(model)
    lo, hi = pruner.bounds().out[pruner.graph.node("gn").outputs[0]]
    y = run(keras.Model(model.inputs, model.get_layer("gn").output), _seq_inputs(model, 64, seed=2))
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()
    img = keras.Input((4, 4, 6))
    c = L.Conv2D(6, 1, name="a")(img)
    cat = L.Concatenate()([c, L.Conv2D(6, 1, name="b")(img)])
    odd = keras.Model(img, L.Dense(2)(L.GroupNormalization(groups=4, name="gn")(cat)))
    graph = ModelGraph(odd)
    assert not graph.node("gn").supported and "several sources" in graph.node("gn").reason
    assert not graph.group("a").prunable


# ------------------------------------------------------------------ key_dim / value_dim units
def test_attention_key_and_value_dims_are_groups_of_their_own():
    model = _attention_model()
    graph = ModelGraph(model)
    key, value = graph.group("mha/key_dim"), graph.group("mha/value_dim")
    assert key.prunable and value.prunable and key.size == value.size == 5
    assert graph.group("mha").size == 4 and graph.group("mha").name == "mha"
    # unit j: column j of the query kernel in every head, read by the key kernel's column j
    assert {(s.var, s.axis) for s in key.producers} == {("0:kernel", 2), ("1:bias", 1)}
    assert {(s.var, s.axis) for s in key.consumers} == {("2:kernel", 2), ("3:bias", 1)}
    assert {(s.var, s.axis) for s in value.consumers} == {("6:kernel", 1)}


@pytest.mark.parametrize("dim", ["key_dim", "value_dim"])
def test_a_zero_key_or_value_dim_unit_is_removed_without_changing_outputs(dim):
    model = _attention_model(seed=2)
    mha = model.get_layer("mha")
    ws = [np.array(w) for w in mha.get_weights()]
    if dim == "key_dim":  # unit 1 adds q_1 k_1 = 0 to every score: its key columns are zero
        ws[2][:, :, 1] = 0.0
        ws[3][:, 1] = 0.0
    else:  # unit 1's values are zero in every head
        ws[4][:, :, 1] = 0.0
        ws[5][:, 1] = 0.0
    mha.set_weights(ws)
    x = _seq_inputs(model)
    before = run(model, x)
    pruner = Pruner(model, strategy="magnitude")
    _remove(pruner, f"mha/{dim}", [1])
    np.testing.assert_allclose(run(pruner.edited_model(), x), before, rtol=1e-5, atol=1e-5)
    small = pruner.pruned_model()
    cfg = small.get_layer("mha").get_config()
    assert cfg[dim] == 4 and cfg["num_heads"] == 4
    # key_dim shrinks Keras' score scale 1/sqrt(key_dim); the query is rescaled so the scores stay
    np.testing.assert_allclose(run(small, x), before, rtol=1e-5, atol=1e-5)


def test_without_rescaling_the_query_a_smaller_key_dim_changes_the_outputs():
    """The rescaling is needed: the same surgery without it does not reproduce the edited model."""
    from paoding_widgets.engine.rules.attention import AttentionRule

    model = _attention_model(seed=4)
    pruner = Pruner(model, strategy="magnitude")
    _remove(pruner, "mha/key_dim", [0, 3])
    x = _seq_inputs(model)
    edited = run(pruner.edited_model(), x)
    np.testing.assert_allclose(run(pruner.pruned_model(), x), edited, rtol=1e-5, atol=1e-5)
    node = pruner.graph.node("mha")
    rule = node.rule
    try:
        node.rule = AttentionRule()
        node.rule.physical_arrays = lambda graph, store, node, arrays: arrays  # type: ignore[method-assign]
        plain = run(pruner.pruned_model(), x)
    finally:
        node.rule = rule
    assert not np.allclose(plain, edited, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("strategy", ["compensated", "certified", "magnitude", "random"])
def test_heads_key_and_value_dims_prune_together_exactly(strategy):
    model = _attention_model(seed=5)
    pruner = Pruner(model, strategy=strategy, step=0.25, target=0.5)
    original, patches = _prune_twice(pruner)
    cfg = pruner.pruned_model().get_layer("mha").get_config()
    assert (cfg["num_heads"], cfg["key_dim"], cfg["value_dim"]) == (2, 3, 3)  # two steps of one unit each
    x = _seq_inputs(model)
    _assert_physical_equals_edited_and_undo_exact(pruner, x, original, patches)


@pytest.mark.parametrize("wrap", ["LSTM-backwards", "Bidirectional-GRU"])
def test_recurrent_bounds_follow_the_time_order_of_a_box_that_changes_over_time(wrap):
    """Steps 0-2 are pinned to 0.5, steps 3-5 range over [0, 1]: a reversal mix-up would fail on samples."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((6, 5))
    if wrap == "LSTM-backwards":
        layer = L.LSTM(7, return_sequences=True, go_backwards=True, name="rnn")
    else:
        layer = L.Bidirectional(L.GRU(7, return_sequences=True), name="rnn")
    x = layer(inp)
    model = randomize(keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(x))), 6)
    rnn = model.get_layer("rnn")
    rnn.set_weights([w * 0.3 for w in rnn.get_weights()])  # tight enough that the order shows
    lo_in = np.concatenate([np.full((3, 5), 0.5), np.zeros((3, 5))]).astype(np.float32)
    hi_in = np.concatenate([np.full((3, 5), 0.5), np.ones((3, 5))]).astype(np.float32)
    pruner = Pruner(model, input_range=(lo_in, hi_in))
    lo, hi = pruner.bounds().out[pruner.graph.node("rnn").outputs[0]]
    rng = np.random.default_rng(0)
    xs = np.broadcast_to(lo_in, (256, 6, 5)) + rng.uniform(0, 1, (256, 6, 5)) * (hi_in - lo_in)
    xs[:128] = np.round(xs[:128] * 2) / 2  # corners and centres of the box
    y = run(keras.Model(model.inputs, rnn.output), xs.astype(np.float32))
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()
    flipped = (lo[:, ::-1], hi[:, ::-1])  # the same bounds in the wrong time order do not hold
    assert not ((y >= flipped[0] - 1e-5).all() and (y <= flipped[1] + 1e-5).all())


def test_attention_with_value_dim_other_than_key_dim_gets_sensitivity_and_proposals():
    """Units read inside their own layer have no tensor of their own: no merge bounds, no crash."""
    from paoding_widgets import PruningSession
    from paoding_widgets.session import sensitivity
    from paoding_widgets.session.readonly import SessionView

    x = keras.Input((6, 8))
    a = L.MultiHeadAttention(num_heads=3, key_dim=4, value_dim=5, name="mha")(x, x)
    y = L.Dense(3, name="out")(L.GlobalAveragePooling1D()(L.Dense(12, activation="relu", name="ffn")(a)))
    s = PruningSession(keras.Model(x, y), n_probes=32, step=0.25)
    curves = sensitivity.compute(SessionView(s), agreement=True).curves
    assert {"mha", "mha/key_dim", "mha/value_dim", "ffn"} <= set(curves)
    assert max(b for b in curves["ffn"].bound if b is not None) > 0
    s.propose()
    assert "mha/value_dim" in s.proposals and s.status("mha/value_dim") == "pending"
