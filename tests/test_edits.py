"""Edits on the weight store: exact merges of duplicates, removal, validation, patches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import L, box_inputs, build_cnn_bn_flatten, build_mlp, randomize, run

from paoding_widgets.engine import edits
from paoding_widgets.engine.pruner import Proposal, Pruner
from paoding_widgets.engine.units import Candidates


def _cand(keep, drop, scale=None, shift=None):
    keep, drop = np.asarray(keep, np.int64), np.asarray(drop, np.int64)
    scale = np.ones(len(drop), np.float32) if scale is None else np.asarray(scale, np.float32)
    shift = np.zeros(len(drop), np.float32) if shift is None else np.asarray(shift, np.float32)
    return Candidates(keep=keep, drop=drop, scale=scale, shift=shift)


def _duplicate_unit(layer, src: int, dst: int) -> None:
    """Make unit ``dst`` of a Dense/Conv layer an exact copy of unit ``src``."""
    ws = layer.get_weights()
    for w in ws:
        w[..., dst] = w[..., src]
    layer.set_weights(ws)


def _proposal(pruner, layer_name, cand, action="merge"):
    g = pruner.graph.group(layer_name)
    return Proposal(g.id, g.name, action, cand, "manual")


def _assert_same_outputs(a, b, x, atol=1e-5):
    np.testing.assert_allclose(run(a, x), run(b, x), rtol=1e-5, atol=atol)


def test_merging_exact_duplicate_keeps_outputs():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3)
    first = model.layers[0]
    _duplicate_unit(first, 3, 5)
    x = box_inputs(model, 256, seed=1)
    # the test's premise: the two units really are duplicates in the model
    hidden = np.asarray(keras.ops.relu(x @ first.kernel.numpy() + first.bias.numpy()))
    assert np.array_equal(hidden[:, 3], hidden[:, 5]) and np.any(hidden[:, 3] > 0)
    before = run(model, x)
    pruner = Pruner(model, input_range=(0, 1))
    pruner.apply(_proposal(pruner, first.name, _cand([3], [5])))
    edited = pruner.edited_model()
    np.testing.assert_allclose(run(edited, x), before, rtol=1e-5, atol=1e-5)
    g = pruner.graph.group(first.name)
    assert not pruner.store.alive[g.id][5] and pruner.store.alive[g.id].sum() == 19
    # the merge did change the weights: unit 5's outgoing row is gone, unit 3's grew
    nxt = model.layers[2]  # Dense after Dropout
    k_old, k_new = nxt.kernel.numpy(), pruner.store[(nxt.name, "kernel")]
    assert np.all(k_new[5] == 0)
    np.testing.assert_allclose(k_new[3], k_old[3] + k_old[5], rtol=1e-6, atol=1e-7)
    # ...while a plain removal of the same unit would change the outputs
    other = Pruner(model, input_range=(0, 1))
    other.apply(_proposal(other, first.name, _cand([-1], [5]), "remove"))
    assert not np.allclose(run(other.edited_model(), x), before, atol=1e-3)


def test_merging_through_edits_module_directly():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=3)
    second = model.layers[2]
    _duplicate_unit(second, 0, 11)
    x = box_inputs(model, 128, seed=2)
    before = run(model, x)
    pruner = Pruner(model, input_range=(0, 1))
    g = pruner.graph.group(second.name)
    patch = edits.apply_edit(pruner.graph, pruner.store, g, _cand([0], [11]), pruner.view(g))
    assert patch.arrays
    np.testing.assert_allclose(run(pruner.edited_model(), x), before, rtol=1e-5, atol=1e-5)


def test_merging_duplicate_through_batchnorm():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((8,)),
        L.Dense(12, name="d1"), L.BatchNormalization(name="bn1"), L.Activation("relu", name="act1"),
        L.Dense(10, activation="relu", name="d2"),
        L.Dense(3, name="out"),
    ])
    randomize(model, 4)
    _duplicate_unit(model.get_layer("d1"), 3, 5)
    _duplicate_unit(model.get_layer("bn1"), 3, 5)  # gamma, beta, mean, variance all follow
    x = box_inputs(model, 256, seed=5)
    before = run(model, x)
    pruner = Pruner(model, input_range=(0, 1))
    g = pruner.graph.group("d1")
    assert g.merge_chain == ["bn1", "act1"]
    pruner.apply(_proposal(pruner, "d1", _cand([3], [5])))
    np.testing.assert_allclose(run(pruner.edited_model(), x), before, rtol=1e-5, atol=1e-5)
    # physically deleting the unit (and its BatchNorm entries) keeps the outputs too
    np.testing.assert_allclose(run(pruner.pruned_model(), x), before, rtol=1e-5, atol=1e-5)


def test_merge_with_affine_map_after_activation_batchnorm():
    """Units equal before a post-activation BN differ by an affine map: scale and shift make it exact."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([
        keras.Input((8,)),
        L.Dense(12, activation="relu", name="d1"), L.BatchNormalization(name="bn1"),
        L.Dense(10, activation="relu", name="d2"),
        L.Dense(3, name="out"),
    ])
    randomize(model, 6)
    _duplicate_unit(model.get_layer("d1"), 2, 7)  # BN stays different for units 2 and 7
    bn = model.get_layer("bn1")
    gamma, beta, mean, var = (w.numpy() for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    q = gamma / np.sqrt(var + bn.epsilon)
    q0 = beta - mean * q
    # x7 = q7 r + q0_7 and x2 = q2 r + q0_2 with r = relu(z) shared  =>  x7 = s x2 + c
    s = q[7] / q[2]
    c = q0[7] - s * q0[2]
    x = box_inputs(model, 256, seed=7)
    before = run(model, x)
    pruner = Pruner(model, input_range=(0, 1))
    pruner.apply(_proposal(pruner, "d1", _cand([2], [7], [s], [c])))
    np.testing.assert_allclose(run(pruner.edited_model(), x), before, rtol=1e-5, atol=1e-5)
    # without the shift the result is off
    other = Pruner(model, input_range=(0, 1))
    other.apply(_proposal(other, "d1", _cand([2], [7], [s], [0.0])))
    assert not np.allclose(run(other.edited_model(), x), before, atol=1e-4)


@pytest.mark.parametrize("padding", ["valid", "same", "zero_padding_layer"])
def test_affine_merge_of_filters_read_by_conv(padding):
    """Filters equal up to an affine map (a BN after ReLU) merge exactly, whatever the reader's padding.

    With ``padding="same"`` the reader also sees zero padding, where the removed filter contributes 0,
    not the folded constant: folding ``shift * sum(taps)`` into the bias would be wrong at the borders,
    so the edit must either be exact or be refused.
    """
    keras.utils.set_random_seed(14)
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(5, 3, activation="relu", name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    if padding == "zero_padding_layer":  # the same borders, spelled as a layer before a "valid" conv
        x = L.ZeroPadding2D(1, name="zpad")(x)
    x = L.Conv2D(4, 3, padding="same" if padding == "same" else "valid", name="c2")(x)
    x = L.Flatten()(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="out")(x)), 14)
    _duplicate_unit(model.get_layer("c1"), 1, 4)
    bn = model.get_layer("bn")
    beta = bn.beta.numpy()
    beta[4] = beta[1] + 1.0  # a clear constant offset between the two channels
    bn.beta.assign(beta)
    q = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    q0 = bn.beta.numpy() - bn.moving_mean.numpy() * q
    s = q[4] / q[1]
    c = q0[4] - s * q0[1]
    assert abs(c) > 0.5
    x = box_inputs(model, 64, seed=14)
    before = run(model, x)
    pruner = Pruner(model, input_range=(0, 1))
    snapshot = pruner.store.copy()
    try:
        pruner.apply(_proposal(pruner, "c1", _cand([1], [4], [s], [c])))
    except ValueError as exc:
        # refusing the inexact fold is fine too, but only where it would be inexact, and cleanly
        assert padding != "valid" and "c1" in str(exc)
        assert pruner.store.equal(snapshot)
        return
    np.testing.assert_allclose(run(pruner.edited_model(), x), before, rtol=1e-5, atol=1e-4)


def test_merging_duplicate_filters_before_flatten():
    model = build_cnn_bn_flatten(seed=8)
    _duplicate_unit(model.get_layer("c2"), 1, 4)
    x = box_inputs(model, 64, seed=8)
    before = run(model, x)
    pruner = Pruner(model, input_range=(0, 1))
    pruner.apply(_proposal(pruner, "c2", _cand([1], [4])))
    np.testing.assert_allclose(run(pruner.edited_model(), x), before, rtol=1e-5, atol=1e-5)
    # every flattened position of filter 4 lost its row in the Dense kernel
    k = pruner.store[("fc", "kernel")]
    assert np.all(k[4::6] == 0) and np.any(k[1::6] != 0)


def test_removal_zeroes_consumer_rows_and_producer_column():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=9)
    first, nxt = model.layers[0], model.layers[2]
    x = box_inputs(model, 64, seed=9)
    pruner = Pruner(model, input_range=(0, 1))
    patch = pruner.apply(_proposal(pruner, first.name, _cand([-1, -1], [4, 9]), "remove"))
    st = pruner.store
    assert np.all(st[(nxt.name, "kernel")][[4, 9]] == 0)
    assert np.all(st[(first.name, "kernel")][:, [4, 9]] == 0)
    assert np.all(st[(first.name, "bias")][[4, 9]] == 0)
    # nothing else moved
    k_old = nxt.kernel.numpy()
    others = np.setdiff1d(np.arange(20), [4, 9])
    np.testing.assert_array_equal(st[(nxt.name, "kernel")][others], k_old[others])
    np.testing.assert_array_equal(st[(nxt.name, "bias")], nxt.bias.numpy())
    assert st.alive[pruner.graph.group(first.name).id].tolist() == [i not in (4, 9) for i in range(20)]
    assert patch.alive
    # the edited model equals the original with those rows zeroed by hand
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    k = nxt.kernel.numpy().copy()
    k[[4, 9]] = 0
    ref.get_layer(nxt.name).kernel.assign(k)
    np.testing.assert_allclose(run(pruner.edited_model(), x), run(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["dead", "all", "duplicate", "keep_is_dropped", "out_of_range",
                                  "keep_out_of_range", "non_finite_scale"])
def test_invalid_edits_raise_and_leave_store_unchanged(case):
    model = build_mlp(n_in=6, hidden=(8, 6), n_out=2, seed=10, names=["hid_one", "hid_two", "head"])
    pruner = Pruner(model, input_range=(0, 1))
    g = pruner.graph.group("hid_one")
    pruner.apply(_proposal(pruner, "hid_one", _cand([-1], [2]), "remove"))  # unit 2 is now dead
    cands = {
        "dead": _cand([-1], [2]),
        "all": _cand([-1] * 7, [0, 1, 3, 4, 5, 6, 7]),
        "duplicate": _cand([-1, -1], [3, 3]),
        "keep_is_dropped": _cand([4, -1], [3, 4]),
        "out_of_range": _cand([-1], [8]),
        "keep_out_of_range": _cand([8], [3]),
        "non_finite_scale": _cand([0], [3], [np.nan]),
    }
    snapshot = pruner.store.copy()
    with pytest.raises(ValueError, match="hid_one"):
        edits.apply_edit(pruner.graph, pruner.store, g, cands[case], pruner.view(g))
    assert pruner.store.equal(snapshot)
    with pytest.raises(ValueError, match="hid_one"):
        pruner.apply(_proposal(pruner, "hid_one", cands[case]))
    assert pruner.store.equal(snapshot)


def test_merge_into_dead_unit_is_refused():
    model = build_mlp(n_in=6, hidden=(8, 6), n_out=2, seed=11, names=["hid_one", "hid_two", "head"])
    pruner = Pruner(model, input_range=(0, 1))
    pruner.apply(_proposal(pruner, "hid_one", _cand([-1], [2]), "remove"))
    snapshot = pruner.store.copy()
    with pytest.raises(ValueError, match="hid_one"):
        pruner.apply(_proposal(pruner, "hid_one", _cand([2], [5])))
    assert pruner.store.equal(snapshot)


def test_patch_revert_and_reapply_are_exact():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=12)
    pruner = Pruner(model, input_range=(0, 1), strategy="impact", step=0.25, target=0.5)
    original = pruner.store.copy()
    first = pruner.iterate()
    mid = pruner.store.copy()
    assert not mid.equal(original)
    second = pruner.iterate()
    assert first and second
    done = pruner.store.copy()
    for p in reversed(second):
        pruner.store.revert(p)
    assert pruner.store.equal(mid)
    for p in reversed(first):
        pruner.store.revert(p)
    assert pruner.store.equal(original)
    for p in first + second:
        pruner.store.apply(p)
    assert pruner.store.equal(done)


def test_single_patch_with_overlapping_writes_reverts_exactly():
    """A merge chain a<-b, a<-c in one edit writes unit a's row twice; revert must unwind it."""
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=13)
    pruner = Pruner(model, input_range=(0, 1))
    before = pruner.store.copy()
    patch = pruner.apply(_proposal(pruner, model.layers[0].name, _cand([1, 1, 6], [2, 3, 7], [0.5, 2.0, 1.0],
                                                                         [0.1, -0.2, 0.0])))
    after = pruner.store.copy()
    assert not after.equal(before)
    pruner.store.revert(patch)
    assert pruner.store.equal(before)
    pruner.store.apply(patch)
    assert pruner.store.equal(after)


def test_undo_redo_cycles_stay_exact():
    """Undo and redo many times over: every state is restored bit for bit each time."""
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=15)
    pruner = Pruner(model, input_range=(0, 1), strategy="certified", step=0.25, target=0.5)
    states = [pruner.store.copy()]
    history = []
    for _ in range(2):
        history.append(pruner.iterate())
        states.append(pruner.store.copy())
    assert not states[0].equal(states[1]) and not states[1].equal(states[2])
    for _cycle in range(3):
        for i in range(len(history), 0, -1):
            for p in reversed(history[i - 1]):
                pruner.store.revert(p)
            assert pruner.store.equal(states[i - 1])
        for i, patches in enumerate(history, start=1):
            for p in patches:
                pruner.store.apply(p)
            assert pruner.store.equal(states[i])
    x = box_inputs(model, 16, seed=15)
    np.testing.assert_allclose(run(pruner.pruned_model(), x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-4)


def test_overflowing_bounds_leave_the_running_impact_unbounded_not_nan() -> None:
    """With weights so large that the interval bounds overflow float32, impact stays [-inf, inf], never NaN."""
    model = randomize(build_mlp(hidden=(20, 16, 12), randomize_weights=False), scale=1e12)
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy="impact", step=0.1, target=0.3)
    with np.errstate(all="ignore"):
        for _ in range(2):
            pruner.iterate()
    impacts = [a for k, a in pruner.store.arrays.items() if k[0] == "__impact__"]
    assert impacts and not any(np.isnan(a).any() for a in impacts)
    assert any(np.isinf(a).any() for a in impacts), "the bounds were expected to overflow here"
