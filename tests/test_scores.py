"""Vectorised scores against direct loops; soundness of value and change bounds."""

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
    build_joins,
    build_mlp,
    build_residual,
    build_squeeze_excite,
    randomize,
    run_to_target,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from paoding_widgets.engine import edits
from paoding_widgets.engine.bounds import Propagator
from paoding_widgets.engine.graph import ModelGraph
from paoding_widgets.engine.pruner import Pruner
from paoding_widgets.engine.scores import (
    bias_term,
    disjoint_pairs,
    interval_entropy,
    pairwise_distances,
    saliency_matrix,
    scaled_match,
)
from paoding_widgets.engine.units import Candidates
from paoding_widgets.engine.weights import WeightStore

# ------------------------------------------------------------------ reference loops


def loop_distances(u):
    n = u.shape[1]
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = np.sqrt(np.sum((u[:, i].astype(np.float64) - u[:, j]) ** 2))
    return d


def loop_bias_term(b):
    n = len(b)
    t = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            num, den = abs(float(b[i]) - float(b[j])), abs(float(b[i]) + float(b[j]))
            t[i, j] = 0.0 if num == 0 else (np.inf if den == 0 else num / den)
    return t


def loop_entropy(lo, hi, threshold):
    out = np.zeros(lo.shape[0])
    for r in range(lo.shape[0]):
        n = lo.shape[1]
        total = 0.0
        for k in range(n):
            similar = 0
            for m in range(n):
                union = max(hi[r, k], hi[r, m]) - min(lo[r, k], lo[r, m])
                dist = abs(lo[r, k] - lo[r, m]) + abs(hi[r, k] - hi[r, m])
                sim = 1.0 if union <= 0 else 1.0 - 0.5 * dist / union
                similar += sim >= threshold
            p = similar / n
            total -= p * np.log(p)
        out[r] = total
    return out


# ------------------------------------------------------------------ vectorised == loops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_distances_match_loop(seed):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((7, 9)).astype(np.float32)
    u[:, 4] = u[:, 1]  # an exact duplicate pair
    u[:, 6] = u[:, 2] + 1e-2  # a near duplicate
    d = pairwise_distances(u)
    ref = loop_distances(u)
    assert d.shape == (9, 9)
    # Gram-matrix distances in float32 lose ~sqrt(eps) * ||u|| near zero
    atol = float(1e-3 * np.linalg.norm(u, axis=0).max())  # pytest 9: approx takes plain floats
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(d, d.T, atol=atol)
    assert d[1, 4] == pytest.approx(0.0, abs=float(atol))
    assert d[2, 6] == pytest.approx(ref[2, 6], rel=0.2)


def test_bias_term_matches_loop_including_edge_cases():
    rng = np.random.default_rng(3)
    b = rng.standard_normal(8).astype(np.float32)
    b[5] = -b[2]  # sum vanishes -> inf
    b[6] = b[1]  # equal -> 0
    b[7] = 0.0
    t = bias_term(b)
    ref = loop_bias_term(b)
    assert np.isinf(t[2, 5]) and np.isinf(t[5, 2])
    assert t[1, 6] == 0.0 and np.all(np.diag(t) == 0)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(t), finite)
    np.testing.assert_allclose(t[finite], ref[finite], rtol=1e-5)


@pytest.mark.parametrize("bias_aware", [True, False])
def test_saliency_matrix_matches_loop(bias_aware):
    rng = np.random.default_rng(4)
    u = rng.standard_normal((6, 7)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    v_norm = rng.uniform(0.1, 2.0, 7).astype(np.float32)
    s = saliency_matrix(u, b, v_norm, bias_aware=bias_aware)
    ref = np.zeros((7, 7))
    for i in range(7):  # kept unit
        for j in range(7):  # removed unit
            dist = np.linalg.norm(u[:, i].astype(np.float64) - u[:, j])
            term = loop_bias_term(b)[i, j] if bias_aware else 0.0
            ref[i, j] = (dist + term) * v_norm[j]
    atol = float(1e-3 * np.linalg.norm(u, axis=0).max())  # pytest 9: approx takes plain floats * v_norm.max()
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("weighted", [False, True])
def test_scaled_match_matches_loop(weighted):
    rng = np.random.default_rng(5)
    u = rng.standard_normal((6, 8)).astype(np.float32)
    u[:, 3] = 2.5 * u[:, 0]  # an exact positive multiple
    u[:, 7] = -u[:, 1]  # a negative multiple: no positive scale fits better than none
    w = rng.uniform(0.5, 1.5, 6).astype(np.float32) if weighted else None
    s, res = scaled_match(u, w)
    uw = u.astype(np.float64) * (w[:, None] if weighted else 1.0)
    for a in range(8):
        for b in range(8):
            best = uw[:, a] @ uw[:, b] / (uw[:, a] @ uw[:, a])
            if best > 0:
                assert s[a, b] == pytest.approx(best, rel=1e-4)
                direct = np.linalg.norm(uw[:, b] - best * uw[:, a])
                assert res[a, b] == pytest.approx(direct, rel=1e-3, abs=float(1e-3 * np.linalg.norm(uw[:, b])))
            else:
                assert np.isnan(s[a, b]) and np.isinf(res[a, b])
    assert s[0, 3] == pytest.approx(2.5, rel=1e-5)
    # float32 Gram residuals lose ~sqrt(eps) * ||u_b|| near zero
    assert res[0, 3] == pytest.approx(0.0, abs=float(1e-3 * np.linalg.norm(uw[:, 3])))
    assert np.isnan(s[1, 7]) and np.isinf(res[1, 7])


@pytest.mark.parametrize("threshold", [0.9, 0.5])
def test_interval_entropy_matches_loop(threshold):
    rng = np.random.default_rng(6)
    lo = rng.standard_normal((5, 6))
    hi = lo + rng.uniform(0, 2, (5, 6))
    lo[1] = lo[1, 0]  # a row of identical intervals: entropy 0
    hi[1] = hi[1, 0]
    lo[2, :3] = hi[2, :3] = 0.0  # degenerate (zero-width) intervals
    e = interval_entropy(lo, hi, threshold)
    np.testing.assert_allclose(e, loop_entropy(lo, hi, threshold), rtol=1e-6, atol=1e-9)
    assert e[1] == pytest.approx(0.0, abs=1e-12)


def test_interval_entropy_is_highest_for_dissimilar_intervals():
    lo = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 10.0, 20.0, 30.0]])
    hi = lo + 1.0
    e = interval_entropy(lo, hi)
    assert e[0] == pytest.approx(0.0) and e[1] == pytest.approx(np.log(4))


# ------------------------------------------------------------------ disjoint pairs


def _check_pairs(cost, m, exclude, keep, drop):
    assert len(keep) == len(drop)
    used = np.concatenate([keep, drop])
    assert len(np.unique(used)) == len(used)  # disjoint
    assert np.all(keep != drop)
    if exclude is not None:
        assert not np.isin(used, exclude).any()
    costs = cost[keep, drop]
    assert np.all(np.isfinite(costs))
    assert np.all(np.diff(costs) >= 0)
    assert len(keep) <= m


@settings(max_examples=40, deadline=None)
@given(
    cost=arrays(np.float64, st.tuples(st.integers(2, 12)).map(lambda t: (t[0], t[0])),
                elements=st.one_of(st.floats(0, 100), st.just(np.inf))),
    m=st.integers(1, 8),
    data=st.data(),
)
def test_disjoint_pairs_properties(cost, m, data):
    n = cost.shape[0]
    exclude = np.asarray(data.draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True)), np.int64)
    keep, drop = disjoint_pairs(cost, m, exclude=exclude)
    _check_pairs(cost, m, exclude, keep, drop)
    # greedy: the first pair is the cheapest allowed off-diagonal entry
    allowed = np.array(cost, copy=True)
    np.fill_diagonal(allowed, np.inf)
    allowed[exclude, :] = np.inf
    allowed[:, exclude] = np.inf
    if np.isfinite(allowed).any():
        assert len(keep) >= 1
        assert cost[keep[0], drop[0]] == allowed.min()
    else:
        assert len(keep) == 0
    # maximality: no allowed pair of unused units is left when fewer than m were found
    if len(keep) < m:
        used = np.concatenate([keep, drop])
        free = np.setdiff1d(np.arange(n), used)
        assert not np.isfinite(allowed[np.ix_(free, free)]).any()


def test_disjoint_pairs_full_dense_matrix():
    rng = np.random.default_rng(7)
    cost = rng.uniform(0, 1, (40, 40))
    keep, drop = disjoint_pairs(cost, 20, exclude=np.array([0, 1, 2]))
    _check_pairs(cost, 20, np.array([0, 1, 2]), keep, drop)
    assert len(keep) == 18  # 37 usable units -> at most 18 disjoint pairs
    keep, drop = disjoint_pairs(cost, 5)
    assert len(keep) == 5


# ------------------------------------------------------------------ value bounds soundness


def _probe_model(graph):
    """A model returning every tensor the graph bounds (by tensor id)."""
    tids, tensors = [], []
    for node in graph.nodes:
        if node.type == "InputLayer":
            continue
        out = node.layer.output
        assert id(out) == node.outputs[0]
        tids.append(node.outputs[0])
        tensors.append(out)
    return tids, keras.Model(graph.model.inputs[0], tensors)


def _inputs_with_corners(model, n, lo, hi, seed):
    x = box_inputs(model, n, lo, hi, seed)
    shape = x.shape[1:]
    rng = np.random.default_rng(seed + 100)
    corners = np.where(rng.random((20, *shape)) < 0.5, lo, hi).astype(np.float32)
    return np.concatenate([x, corners, np.full((1, *shape), lo, np.float32), np.full((1, *shape), hi, np.float32)])


def _softmax_mlp():
    return build_mlp(n_in=6, hidden=(12, 10), n_out=4, activation="tanh", out_activation="softmax", seed=21)


def _residual_with_sigmoid():
    keras.utils.set_random_seed(22)
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, padding="same", activation="sigmoid", name="c")(inp)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Add()([x, y])
    x = L.AveragePooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(5, activation="elu")(x)
    return randomize(keras.Model(inp, L.Dense(2)(x)), 22)


VALUE_MODELS = {
    "mlp": lambda: build_mlp(n_in=8, hidden=(20, 16), n_out=3, bn=True),
    "mlp_softmax_tanh": _softmax_mlp,
    "cnn": build_cnn_bn_flatten,
    "residual": build_residual,
    "residual_sigmoid_depthwise": _residual_with_sigmoid,
    "conv_concat": build_conv_concat,
    "joins": build_joins,
    "conv1d": build_conv1d,
    "squeeze_excite": build_squeeze_excite,
}


@pytest.mark.parametrize("input_range", [(0.0, 1.0), (-5.0, 5.0)], ids=["unit", "wide"])
@pytest.mark.parametrize("name", sorted(VALUE_MODELS))
def test_value_bounds_contain_actual_values(name, input_range):
    model = VALUE_MODELS[name]()
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    bounds = Propagator(graph, store).values(input_range)
    assert not bounds.missing, bounds.missing
    tids, probe = _probe_model(graph)
    x = _inputs_with_corners(model, 200, *input_range, seed=8)
    values = probe(x, training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    for tid, val in zip(tids, values):
        lo, hi = bounds.of(tid)
        val = np.asarray(val)
        assert lo.shape[1:] == val.shape[1:]
        tol = 1e-4 * (1 + np.abs(val))
        assert np.all(val >= lo - tol), graph.producer_of(tid).name
        assert np.all(val <= hi + tol), graph.producer_of(tid).name
    (out,) = graph.output_ids
    lo, hi = bounds.of(out)
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)


def test_value_bounds_are_not_trivially_wide():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3)
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    b = Propagator(graph, store).values((0.0, 1.0))
    narrow = b.of(graph.output_ids[0])
    wide = Propagator(graph, store).values((-5.0, 5.0)).of(graph.output_ids[0])
    assert np.all(narrow[0] >= wide[0]) and np.all(narrow[1] <= wide[1])
    assert np.all(narrow[1] - narrow[0] < wide[1] - wide[0])
    # a degenerate box gives (nearly) exact values
    x = np.full((1, 8), 0.3, np.float32)
    point = Propagator(graph, store).values((0.3, 0.3)).of(graph.output_ids[0])
    np.testing.assert_allclose(point[0], keras.ops.convert_to_numpy(model(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(point[1], keras.ops.convert_to_numpy(model(x)), rtol=1e-4, atol=1e-4)


def test_value_bounds_per_feature_input_range():
    model = build_mlp(n_in=6, seed=23)
    lo = np.linspace(-1, 0, 6).astype(np.float32)
    hi = lo + np.linspace(0.5, 2, 6).astype(np.float32)
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    b = Propagator(graph, store).values((lo, hi))
    out_lo, out_hi = b.of(graph.output_ids[0])
    rng = np.random.default_rng(23)
    x = lo + rng.random((500, 6), dtype=np.float32) * (hi - lo)
    x = np.concatenate([x, lo[None], hi[None]])
    y = keras.ops.convert_to_numpy(model(x))
    assert np.all(y >= out_lo - 1e-4) and np.all(y <= out_hi + 1e-4)
    # the per-feature box is inside (-1, 2): its bounds are at least as tight as that box's
    wide = Propagator(graph, store).values((-1.0, 2.0)).of(graph.output_ids[0])
    assert np.all(out_lo >= wide[0] - 1e-5) and np.all(out_hi <= wide[1] + 1e-5)


def test_input_range_validation():
    model = build_mlp()
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    for bad in [(1.0, 0.0), (0.0, np.inf), 5, (0, 1, 2)]:
        with pytest.raises(ValueError, match="input_range"):
            Propagator(graph, store).values(bad)


# ------------------------------------------------------------------ change bounds soundness


def _logits(model, x):
    """Model outputs before a final softmax (the change bounds are at the logits)."""
    last = model.layers[-1]
    if last.get_config().get("activation") == "softmax":
        inner = keras.Model(model.inputs[0], last.input)
        z = keras.ops.convert_to_numpy(inner(x, training=False))
        return z @ last.kernel.numpy() + last.bias.numpy()
    return keras.ops.convert_to_numpy(model(x, training=False))


def _check_delta_soundness(model, layer, cand_all, input_range=(0.0, 1.0), tight=True, n=200):
    pruner = Pruner(model, input_range=input_range)
    group = pruner.graph.group(layer)
    view = pruner.view(group)
    err = view.merge_error(cand_all, tight=tight)
    assert err is not None
    inj = view.injections(cand_all, err)
    res = pruner.propagator.deltas(view.bounds, inj, len(cand_all))
    assert res is not None
    lo, hi = res
    assert lo.shape == hi.shape == (len(cand_all), int(np.prod(model.outputs[0].shape[1:])))
    assert np.all(lo <= hi)
    x = _inputs_with_corners(model, n, *input_range, seed=9)
    base = _logits(model, x)
    clone = keras.models.clone_model(model)
    for i in range(len(cand_all)):
        store = pruner.store.copy()
        edits.apply_edit(pruner.graph, store, group, cand_all.take(np.array([i])))
        store.load_into(clone)
        change = (_logits(clone, x) - base).reshape(len(x), -1)
        tol = 1e-4 * (1 + np.abs(base).reshape(len(x), -1))
        assert np.all(change >= lo[i] - tol), (i, (change - lo[i]).min())
        assert np.all(change <= hi[i] + tol), (i, (hi[i] - change).min())
    return lo, hi


def _cands(keep, drop, scale=None, shift=None):
    keep, drop = np.asarray(keep, np.int64), np.asarray(drop, np.int64)
    return Candidates(keep, drop, np.ones(len(drop), np.float32) if scale is None else np.asarray(scale, np.float32),
                      np.zeros(len(drop), np.float32) if shift is None else np.asarray(shift, np.float32))


@pytest.mark.parametrize("tight", [False, True])
def test_merge_change_bounds_contain_actual_change_mlp(tight):
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=30)
    layer = model.layers[0].name
    cand = _cands([0, 1, 2, 8, 9, -1], [5, 6, 7, 3, 4, 11], [1, 1, 0.5, 2.0, 1, 0], [0, 0, 0.1, 0, -0.2, 0])
    _check_delta_soundness(model, layer, cand, tight=tight)


@pytest.mark.parametrize("tight", [False, True])
def test_merge_change_bounds_soft_activations_and_wide_box(tight):
    model = _softmax_mlp()
    cand = _cands([0, 1, 3, -1], [4, 5, 2, 9], [1, 0.7, 1.3, 0], [0, 0.05, 0, 0])
    _check_delta_soundness(model, model.layers[2].name, cand, input_range=(-5.0, 5.0), tight=tight)


def test_merge_change_bounds_with_batchnorm():
    model = build_mlp(n_in=8, hidden=(14, 10), n_out=3, bn=True, seed=31)
    cand = _cands([0, 2, 4, -1], [1, 3, 5, 9])
    _check_delta_soundness(model, model.layers[0].name, cand)


def test_change_bounds_for_filters_cnn():
    model = build_cnn_bn_flatten(seed=32)
    _check_delta_soundness(model, "c1", _cands([-1, -1, 0], [2, 5, 7]), n=100)
    _check_delta_soundness(model, "c2", _cands([0, -1, 1], [3, 4, 5]), n=100)


def test_change_bounds_for_residual_stem():
    model = build_residual(seed=33)
    _check_delta_soundness(model, "stem", _cands([-1, 0], [3, 6]), n=100)


def test_change_bounds_are_zero_for_exact_duplicate():
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=34)
    layer = model.layers[0]
    ws = layer.get_weights()
    for w in ws:
        w[..., 5] = w[..., 3]
    layer.set_weights(ws)
    lo, hi = _check_delta_soundness(model, layer.name, _cands([3, 0], [5, 1]), tight=True)
    np.testing.assert_allclose(lo[0], 0, atol=1e-5)
    np.testing.assert_allclose(hi[0], 0, atol=1e-5)
    assert np.any(hi[1] - lo[1] > 1e-3)


def test_removal_change_bounds_contain_actual_change():
    """Removing a ReLU unit x in [0, X] changes the reader's pre-activation by -v * x, never +v * x."""
    model = build_mlp(n_in=4, hidden=(6,), n_out=2, dropout=False, seed=35)
    _check_delta_soundness(model, model.layers[0].name, _cands([-1] * 6, np.arange(6)), tight=False)


@pytest.mark.parametrize("builder, layer, keep, drop", [
    (build_conv1d, "c1", [-1, 0], [1, 2]),
    (build_conv1d, "c2", [-1, -1], [1, 2]),
    (build_concat, "branch_b", [-1, -1], [1, 2]),
    (build_conv_concat, "a", [-1, -1], [0, 2]),
    (build_joins, "a", [-1, -1], [1, 4]),
], ids=["conv1d_pool", "conv1d_reshape", "concat_branch", "conv_concat_two_readers", "joined_group"])
def test_change_bounds_other_layouts(builder, layer, keep, drop):
    _check_delta_soundness(builder(), layer, _cands(keep, drop), n=100)


def test_change_bounds_fall_back_without_perturbation_rule():
    """Multiply has no perturbation rule: deltas says so and impact falls back to reader-side widths."""
    model = build_squeeze_excite()
    pruner = Pruner(model, input_range=(0.0, 1.0))
    view = pruner.view(pruner.graph.group("se_fc"))
    cand = _cands([-1, -1], [1, 2])
    err = view.merge_error(cand, tight=False)
    inj = view.injections(cand, err)
    assert pruner.propagator.deltas(view.bounds, inj, 2) is None
    score, width, inj2 = view.impact(cand, tight=False)
    assert inj2 is not None
    np.testing.assert_array_equal(score, width)
    expected = sum((hi - lo).reshape(2, -1).sum(1) for lo, hi in inj.values())
    np.testing.assert_allclose(width, expected, rtol=1e-6)
    assert np.all(np.isfinite(width)) and np.all(width > 0)


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rms"])
def test_layer_normalization_bounds_hold_for_any_input_and_keep_later_layers_prunable(rms: bool) -> None:
    """LayerNorm has a fixed output range (beta -+ |gamma| sqrt(n)); the bounds and impact go through it.

    Keras' rms_scaling divides by the std without centring, which has no such range: no bounds then.
    """
    keras.utils.set_random_seed(3)
    L = keras.layers
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="d0"),
                              L.LayerNormalization(rms_scaling=rms, name="ln"),
                              L.Dense(12, activation="relu", name="d1"), L.Dense(3, name="d2")])
    ln = model.get_layer("ln")
    ln.set_weights([np.random.default_rng(0).normal(size=w.shape).astype(np.float32) for w in ln.get_weights()])
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    b = Propagator(graph, store).values((0.0, 1.0))
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy="impact", step=0.25, target=0.5)
    if rms:
        assert "ln" in b.missing and "rms_scaling" in b.missing["ln"]
        assert np.isnan(pruner.output_bound_width())
        return
    lo, hi = b.out[graph.node("ln").outputs[0]]
    x = np.random.default_rng(1).uniform(-50, 50, (4000, 8)).astype(np.float32)  # far outside the box too
    y = keras.ops.convert_to_numpy(keras.Model(model.inputs, ln.output)(x))
    assert (y >= lo - 1e-4).all() and (y <= hi + 1e-4).all()
    assert np.isfinite(pruner.output_bound_width())
    run_to_target(pruner)
    assert {s["name"]: s["pruned"] for s in pruner.summary()}["d1"] == 6
