"""The fast paths give the same bounds, scores and proposals as the reference paths.

* value bounds in NumPy (im2col convolutions, pooling, padding...) against the
  plain Keras-ops propagator (``Propagator(..., fast=False)``): within float32
  tolerance, and sound (they contain sampled outputs);
* incremental value bounds after an edit: equal to a fresh pass, and the
  tensors before the edited layer are not recomputed;
* pairing in float32 on the transposed layout against a float64 reference;
* proposals of whole runs equal with both propagators;
* saliency pairs on the living units' block equal the full matrix's; a small convolution's fused im2col and
  max pooling by strided slices equal the separate calls and the windows reduction.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import run_to_target

from paoding_widgets.engine import Pruner
from paoding_widgets.engine.bounds import Propagator
from paoding_widgets.engine.graph import ModelGraph
from paoding_widgets.engine.kernels import ConvSpec, PreparedConv, PreparedDepthwise
from paoding_widgets.engine.scores import bias_term, disjoint_pairs, pairwise_distances, saliency_matrix
from paoding_widgets.engine.weights import Patch, WeightStore

L = keras.layers


def _seq(shape, *layers):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(shape), *layers])


def _residual():
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((12, 12, 3))
    x = L.ZeroPadding2D(((1, 2), (2, 1)))(x)
    x = L.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.Conv2D(8, 1, padding="same", activation="relu")(x)
    y = L.Conv2D(8, 3, padding="same")(y)
    x = L.Add()([x, y])
    x = L.Activation("relu")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(5, activation="softmax")(x)
    return keras.Model(inp, out)


def _randomize_bn(model):
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            f = np.float32
            layer.set_weights([rng.normal(1, 0.3, g.shape).astype(f), rng.normal(0, .2, b.shape).astype(f),
                               rng.normal(0, .2, m.shape).astype(f), rng.uniform(.5, 2, v.shape).astype(f)])
    return model


MODELS = {
    "cnn": lambda: _seq((14, 14, 1), L.Conv2D(6, 3, activation="relu"), L.MaxPooling2D(),
                        L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
                        L.Dense(16, activation="relu"), L.Dense(4, activation="softmax")),
    "strided_dilated": lambda: _seq((15, 13, 2), L.Conv2D(5, 3, strides=2, padding="same", activation="tanh"),
                                    L.Conv2D(6, (3, 2), dilation_rate=2, padding="same", activation="relu"),
                                    L.AveragePooling2D(3, strides=2, padding="same"), L.Conv2D(4, 2, strides=(2, 1)),
                                    L.Flatten(), L.Dense(3)),
    "avgpool_valid_upsample_crop": lambda: _seq((10, 10, 3), L.Conv2D(4, 3, activation="relu"), L.AveragePooling2D(2),
                                                L.UpSampling2D((2, 3)), L.Cropping2D(((1, 0), (2, 1))),
                                                L.Dropout(0.5), L.Conv2D(3, 1), L.GlobalMaxPooling2D(keepdims=True),
                                                L.Flatten(), L.Dense(2)),
    "depthwise_separable": lambda: _seq((11, 11, 4), L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu"),
                                        L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"),
                                        L.SeparableConv2D(5, 3, padding="same", activation="relu"),
                                        L.SeparableConv2D(4, 2, depth_multiplier=2, strides=2),
                                        L.Conv2D(6, 3, groups=2, padding="same"),
                                        L.Conv2D(6, 3, groups=6, padding="same", activation="relu"),
                                        L.GlobalAveragePooling2D(), L.Dense(3)),
    "conv1d_causal": lambda: _seq((16, 3), L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu"),
                                  L.ZeroPadding1D((2, 1)), L.Conv1D(5, 3, strides=2, activation="relu"),
                                  L.MaxPooling1D(2, padding="same"), L.UpSampling1D(2), L.Cropping1D((1, 2)),
                                  L.SeparableConv1D(3, 2), L.GlobalAveragePooling1D(), L.Dense(2)),
    "conv3d": lambda: _seq((6, 6, 6, 2), L.Conv3D(3, 2, activation="relu"), L.MaxPooling3D(2, padding="same"),
                           L.ZeroPadding3D(1), L.Conv3D(2, 2, strides=2), L.Flatten(), L.Dense(2)),
    "residual": lambda: _randomize_bn(_residual()),
}


def _bounds(model, fast, input_range=(0.0, 1.0)):
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    return graph, store, Propagator(graph, store, fast=fast).values(input_range)


def _close(a, b):
    scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * scale)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_value_bounds_match_keras_ops(name):
    model = MODELS[name]()
    graph, _, fast = _bounds(model, True)
    _, _, ref = _bounds(model, False)
    # the NumPy kernels cover at least what Keras ops did (causal padding: only they do)
    assert set(ref.out) <= set(fast.out) and set(ref.pre) <= set(fast.pre)
    assert set(fast.missing) <= set(ref.missing)
    for tid in ref.out:
        for a, b in zip(fast.out[tid], ref.out[tid]):
            assert a.shape == b.shape, graph.shapes[tid]
            _close(a, b)
    # sound: outputs of sampled inputs (corners included) lie within the bounds
    rng = np.random.default_rng(0)
    x = rng.random((64, *model.inputs[0].shape[1:]), dtype=np.float32)
    x[:8] = np.round(x[:8])
    y = np.asarray(model(x, training=False))
    lo, hi = fast.out[graph.output_ids[0]]
    tol = 1e-5 * max(1.0, float(np.abs(y).max()))
    assert np.all(y >= lo - tol) and np.all(y <= hi + tol)


def test_prepared_conv_skips_dead_channels_exactly():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    k[:, :, [1, 4], :] = 0
    k[..., [0, 3]] = 0
    spec = ConvSpec((3, 3), (1, 1), (1, 1), "same")
    full = PreparedConv.build(k, ConvSpec((3, 3), (1, 1), (1, 1), "same"))
    assert full.in_idx is not None and list(full.in_idx) == [0, 2, 3, 5]
    assert full.out_idx is not None and list(full.out_idx) == [1, 2, 4]
    x = rng.random((2, 7, 7, 6), dtype=np.float32)
    y = full(x)
    ref = np.asarray(keras.ops.conv(x, k, padding="same"))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert np.all(y[..., [0, 3]] == 0)
    np.testing.assert_allclose(full(x, absolute=True), np.asarray(keras.ops.conv(x, np.abs(k), padding="same")),
                               rtol=1e-5, atol=1e-5)
    dw = PreparedDepthwise.build(k[:, :, :, :1], spec)
    np.testing.assert_allclose(dw(x), np.asarray(keras.ops.depthwise_conv(x, k[:, :, :, :1], padding="same")),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "residual", "depthwise_separable"])
def test_incremental_value_bounds_equal_a_fresh_pass(name):
    model = MODELS[name]()
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    prop = Propagator(graph, store)
    first = prop.values((0.0, 1.0))
    # edit the last weighted layer's kernel: everything before it keeps its (same) arrays
    node = [n for n in graph.nodes if (n.name, "kernel") in store.arrays][-1]
    patch = Patch()
    store.write((node.name, "kernel"), 0, np.array([0]), 0.5, patch)
    again = prop.values((0.0, 1.0))
    fresh = Propagator(graph, store).values((0.0, 1.0))
    order = [n.name for n in graph.nodes]
    for n in graph.nodes:
        for tid in n.outputs[:1]:
            if tid not in fresh.out:
                continue
            for a, b in zip(again.out[tid], fresh.out[tid]):
                np.testing.assert_array_equal(a, b)
            if order.index(n.name) < order.index(node.name):
                assert again.out[tid][0] is first.out[tid][0]
    store.revert(patch)
    back = prop.values((0.0, 1.0))
    for tid in first.out:
        np.testing.assert_array_equal(back.out[tid][1], first.out[tid][1])
    # a new input range recomputes everything
    other = prop.values((-1.0, 1.0))
    ref = Propagator(graph, store, fast=False).values((-1.0, 1.0))
    for tid in ref.out:
        _close(other.out[tid][1], ref.out[tid][1])


# ------------------------------------------------------------------ pairing
def _loop_pairs(cost, m, exclude=()):
    """The reference: greedy over all finite (keep, drop) entries in float64, ties by (rank within column, column)."""
    c = np.array(cost, np.float64)
    np.fill_diagonal(c, np.inf)
    c[list(exclude), :] = np.inf
    c[:, list(exclude)] = np.inf
    order = np.argsort(c, axis=0, kind="stable")
    vals = np.take_along_axis(c, order, 0)
    used, keep, drop = set(), [], []
    for flat in np.argsort(vals.ravel(), kind="stable"):
        r, j = divmod(int(flat), c.shape[0])
        i = int(order[r, j])
        if not np.isfinite(vals[r, j]) or i in used or j in used:
            continue
        used |= {i, j}
        keep.append(i)
        drop.append(j)
        if len(keep) == m:
            break
    return keep, drop


@pytest.mark.parametrize("seed", range(6))
def test_float32_pairing_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    n, d = 40, 17
    u = rng.normal(size=(d, n)).astype(np.float32)
    u[:, 5] = u[:, 9]  # exact duplicates and ties
    b = rng.normal(size=n).astype(np.float32)
    b[3] = -b[7]
    v = rng.random(n).astype(np.float32)
    s = saliency_matrix(u, b, v)
    u64 = u.astype(np.float64)
    d64 = np.sqrt(np.maximum(((u64[:, :, None] - u64[:, None, :]) ** 2).sum(0), 0))
    b64 = b.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        num, den = np.abs(b64[:, None] - b64[None, :]), np.abs(b64[:, None] + b64[None, :])
        bt = np.where(num == 0, 0.0, num / den)
    ref = (d64 + bt) * v[None, :]
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(s))
    np.testing.assert_allclose(s[fin], ref[fin], rtol=1e-4, atol=1e-3 * float(np.abs(u).max()))
    np.testing.assert_allclose(bias_term(b)[np.isfinite(bt)], bt[np.isfinite(bt)], rtol=1e-6)
    np.testing.assert_allclose(pairwise_distances(u), d64, rtol=1e-4, atol=1e-3 * np.linalg.norm(u, axis=0).max())
    exclude = np.array([2, 11])
    for m in (1, 5, 19):
        keep, drop = disjoint_pairs(s, m, exclude=exclude)
        rk, rd = _loop_pairs(s, m, exclude)
        assert list(keep) == rk and list(drop) == rd


def test_pairing_accepts_either_memory_layout():
    rng = np.random.default_rng(3)
    c = rng.random((30, 30)).astype(np.float32)
    a = disjoint_pairs(c, 9)
    b = disjoint_pairs(np.asfortranarray(c), 9)
    e = disjoint_pairs(c.astype(np.float64), 9)
    for x, y in ((a, b), (a, e)):
        assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])


# ------------------------------------------------------------------ whole runs
def _run(model, strategy, fast, iterations=4):
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy=strategy, step=0.1, target=0.5, seed=0)
    if not fast:
        pruner.propagator = Propagator(pruner.graph, pruner.store, fast=False)
    out = []
    for _ in range(iterations):
        props = pruner.propose()
        out.append({g: (p.keep.tolist(), p.drop.tolist()) for g, p in props.items()})
        for p in props.values():
            pruner.apply(p)
    return out, pruner


@pytest.mark.parametrize("strategy", ["impact", "certified", "stochastic"])
@pytest.mark.parametrize("name", ["cnn", "residual"])
def test_proposals_equal_with_reference_propagator(name, strategy):
    model = MODELS[name]()
    fast, p1 = _run(model, strategy, True)
    ref, p2 = _run(model, strategy, False)
    assert fast == ref
    for k in p1.store.arrays:
        np.testing.assert_allclose(p1.store.arrays[k], p2.store.arrays[k], rtol=1e-4, atol=1e-5)


def test_run_helper_still_reaches_target():
    model = MODELS["cnn"]()
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy="impact", step=0.1, target=0.5, seed=0)
    run_to_target(pruner)
    assert pruner.share_pruned() == pytest.approx(0.5, abs=0.05)


def _old_disjoint_pairs(cost, m, exclude=None, stable=False):
    """The float64, column-strided implementation this one replaced (kept verbatim as the reference).

    ``stable``: the t cheapest of each column by a stable sort instead of ``argpartition`` (whose
    choice among equal costs is arbitrary): the tie rule of the new implementation.
    """
    n = cost.shape[0]
    cost = np.array(cost, np.float64, copy=True)
    np.fill_diagonal(cost, np.inf)
    if exclude is not None and len(exclude):
        cost[exclude, :] = np.inf
        cost[:, exclude] = np.inf
    t = min(n, 8)
    while True:
        if stable:
            rows = np.argsort(cost, axis=0, kind="stable")[:t]
        else:
            rows = np.argpartition(cost, t - 1, axis=0)[:t] if t < n else np.broadcast_to(np.arange(n)[:, None],
                                                                                         (n, n))
        vals = np.take_along_axis(cost, rows, 0).ravel()
        order = np.argsort(vals, kind="stable")
        order = order[np.isfinite(vals[order])]
        keep_idx = rows.ravel()[order]
        drop_idx = order % n
        used = np.zeros(n, bool)
        keep_l, drop_l = [], []
        for i, j in zip(keep_idx.tolist(), drop_idx.tolist()):
            if used[i] or used[j]:
                continue
            used[i] = used[j] = True
            keep_l.append(i)
            drop_l.append(j)
            if len(keep_l) == m:
                break
        if len(keep_l) >= m or t == n or m <= 0:
            return np.asarray(keep_l[:max(m, 0)], np.int64), np.asarray(drop_l[:max(m, 0)], np.int64)
        t = min(n, t * 4)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_pairs_equal_the_float64_implementation(seed, ties):
    """Without equal costs: the same pairs as before.  With many: equal costs go to the lower unit index
    (before, ``argpartition`` chose among them arbitrarily)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    u = rng.normal(size=(9, n)).astype(np.float32)
    if ties:
        u[:, : n // 3] = np.round(u[:, : n // 3])  # many exact ties
    v = rng.random(n).astype(np.float32) + np.float32(0.1)
    if ties:
        v[rng.random(n) < 0.1] = 0.0
    s = saliency_matrix(u, rng.normal(size=n).astype(np.float32), v)
    dead = np.flatnonzero(rng.random(n) < 0.2)
    for m in (1, n // 4, n // 2, n):
        a = disjoint_pairs(s, m, exclude=dead)
        b = _old_disjoint_pairs(np.ascontiguousarray(s), m, exclude=dead, stable=ties)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("name", ["cnn", "residual", "strided_dilated"])
def test_pruned_size_and_edited_model_match_the_physical_model(name):
    from paoding_widgets.engine.evaluate import predict, size_report
    from paoding_widgets.engine.surgery import EditedModel, pruned_size

    model = MODELS[name]()
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy="certified", step=0.2, target=0.5, seed=0)
    edited = EditedModel(pruner.graph)
    x = np.random.default_rng(0).random((7, *model.inputs[0].shape[1:]), dtype=np.float32)
    for _ in range(2):
        for p in pruner.propose().values():
            pruner.apply(p)
        physical = pruner.pruned_model()
        assert pruned_size(pruner.graph, pruner.store) == size_report(physical)
        np.testing.assert_allclose(predict(edited.sync(pruner.store), x, 3), predict(physical, x), rtol=1e-4,
                                   atol=1e-5)
    assert size_report(physical).flops < size_report(model).flops


def test_auto_batch_size_bounds_memory():
    from paoding_widgets.engine.evaluate import auto_batch_size

    big = _seq((224, 224, 3), L.Conv2D(64, 3, padding="same"), L.GlobalAveragePooling2D(), L.Dense(2))
    assert auto_batch_size(big) == 16 * 2**20 // (4 * 224 * 224 * 64)
    assert auto_batch_size(MODELS["cnn"]()) == 1024


def test_pairing_with_few_finite_costs_keeps_the_matrix_intact():
    """Rows with fewer finite costs than the selection width: the search must restore every cost it
    set aside, or the wider second search would see infinities where costs were."""
    cost = np.full((9, 9), np.inf)
    cost[0, 1] = 0.0
    cost[2, 3] = 1.0
    cost[4, 1] = 2.0
    cost[5, 6] = 3.0
    keep, drop = disjoint_pairs(cost, 4)
    assert list(zip(keep.tolist(), drop.tolist())) == [(0, 1), (2, 3), (5, 6)]


def test_touch_invalidates_cached_bounds():
    model = MODELS["cnn"]()
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {g.id: g.size for g in graph.groups})
    prop = Propagator(graph, store)
    before = prop.values((0.0, 1.0))
    node = [n for n in graph.nodes if (n.name, "kernel") in store.arrays][0]
    store.arrays[(node.name, "kernel")] *= 2.0  # in place, outside write(): invisible until touched
    store.touch((node.name, "kernel"))
    after = prop.values((0.0, 1.0))
    ref = Propagator(graph, store, fast=False).values((0.0, 1.0))
    out = node.outputs[0]
    assert not np.array_equal(after.out[out][1], before.out[out][1])
    for tid in ref.out:
        _close(after.out[tid][1], ref.out[tid][1])


def test_compiled_forward_follows_weight_versions_without_retracing():
    """The compiled forward pass equals Keras' predict, reads the current weights after an in-place
    edit (the session's kept model), and is traced once across versions and batch sizes."""
    from paoding_widgets.engine.evaluate import compiled_forward, predict
    from paoding_widgets.engine.surgery import EditedModel

    model = MODELS["residual"]()
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy="certified", step=0.2, target=0.5, seed=0)
    edited = EditedModel(pruner.graph)
    x = np.random.default_rng(1).random((11, *model.inputs[0].shape[1:]), dtype=np.float32)
    fn = compiled_forward(edited.sync(pruner.store))
    assert fn is not None
    for _ in range(2):
        for p in pruner.propose().values():
            pruner.apply(p)
        m = edited.sync(pruner.store)
        np.testing.assert_allclose(predict(m, x, 4), m.predict(x, batch_size=4, verbose=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predict(m, x), predict(pruner.pruned_model(), x), rtol=1e-4, atol=1e-5)
    assert compiled_forward(m) is fn
    assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"depthwise_separable"}))  # that one has no prunable layer
def test_surgery_creating_variables_from_the_pruned_arrays_equals_set_weights(name):
    """Surgery hands the pruned arrays to the variables as initial values; the model equals the old
    way (configured initializers, then ``set_weights``): same weights, same configs, same outputs."""
    from paoding_widgets.engine import surgery

    model = MODELS[name]()
    pruner = Pruner(model, input_range=(0.0, 1.0), strategy="certified", step=0.2, target=0.5, seed=0)
    for p in pruner.propose().values():
        pruner.apply(p)
    fast = pruner.pruned_model()
    old = surgery.clone(pruner.graph.model, surgery.new_configs(pruner.graph, pruner.store))
    deletions = surgery.dead_positions(pruner.graph, pruner.store)
    for layer in old.layers:
        arrays = []
        for var in surgery.layer_variable_names(layer):
            arr = pruner.store[(layer.name, var)]
            for axis, pos in sorted(deletions.get((layer.name, var), {}).items()):
                arr = np.delete(arr, pos, axis=axis)
            arrays.append(arr)
        layer.set_weights(arrays)
    assert [layer.get_config() for layer in fast.layers] == [layer.get_config() for layer in old.layers]
    assert len(fast.weights) == len(old.weights)
    for a, b in zip(fast.weights, old.weights):
        assert a.path == b.path and a.trainable == b.trainable
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    x = np.random.default_rng(2).random((3, *model.inputs[0].shape[1:]), dtype=np.float32)
    np.testing.assert_array_equal(fast.predict(x, verbose=0), old.predict(x, verbose=0))


@pytest.mark.parametrize("use_bias", [True, False])
def test_surgery_feeds_are_used_on_ordinary_layers(use_bias):
    """The fast surgery path is taken (not silently the fallback) on Dense, Conv, BatchNorm and
    depthwise layers, and the result equals the edited model."""
    from paoding_widgets.engine import surgery

    models = [MODELS["residual"](), _seq((9, 9, 2), L.Conv2D(6, 3, activation="relu"),
                                         L.DepthwiseConv2D(3, use_bias=use_bias), L.ReLU(),
                                         L.Conv2D(5, 1, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(3))]
    kinds = set()
    for model in models:
        pruner = Pruner(model, input_range=(0.0, 1.0), strategy="certified", step=0.2, target=0.5, seed=0)
        for p in pruner.propose().values():
            pruner.apply(p)
        used = []
        orig = surgery._restore_initializers

        def spy(new, feeds, originals, used=used, orig=orig):
            orig(new, feeds, originals)
            used.extend(feeds)
        surgery._restore_initializers = spy
        try:
            small = pruner.pruned_model()
        finally:
            surgery._restore_initializers = orig
        assert set(used) == {layer.name for layer in model.layers if layer.weights}
        kinds |= {type(layer).__name__ for layer in model.layers if layer.name in used}
        x = np.random.default_rng(3).random((4, *model.inputs[0].shape[1:]), dtype=np.float32)
        np.testing.assert_allclose(small.predict(x, verbose=0), pruner.edited_model().predict(x, verbose=0),
                                   rtol=1e-4, atol=1e-5)
    assert {"Conv2D", "BatchNormalization", "Dense", "DepthwiseConv2D"} <= kinds


def test_blas_limit_caps_inside_and_restores_after():
    """The engine's BLAS cap holds inside the block, nests, and gives the library its count back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from paoding_widgets.engine.threads import blas_limit

    def counts():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = counts()
    if not before:
        pytest.skip("no BLAS library found by threadpoolctl")
    with blas_limit(1):
        assert counts() == [1] * len(before)
        with blas_limit(1):
            assert counts() == [1] * len(before)
        assert counts() == [1] * len(before)
    assert counts() == before


def _blocks():
    """Three residual blocks and a Dense head: cuts at every block output."""
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((10, 10, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    for b in range(3):
        y = L.Conv2D(8, 3, padding="same", name=f"b{b}a")(h)
        y = L.BatchNormalization(name=f"b{b}bn")(y)
        y = L.ReLU()(y)
        y = L.Conv2D(8, 3, padding="same", name=f"b{b}b")(y)
        h = L.ReLU(name=f"b{b}out")(L.Add()([h, y]))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dense(16, activation="relu", name="d1")(h)
    return _randomize_bn(keras.Model(inp, L.Dense(5, name="out")(h)))


def test_probe_pass_restarts_at_the_first_edited_layer_and_equals_a_full_pass():
    """After a click the probes' pass restarts at the last cut before the edit; outputs equal a full pass."""
    from paoding_widgets.engine.evaluate import predict
    from paoding_widgets.engine.surgery import EditedModel
    from paoding_widgets.session import PruningSession

    s = PruningSession(_blocks(), input_range=(0.0, 1.0), strategy="impact", n_probes=24)
    s.metrics()
    edited = s._edited_model
    assert isinstance(edited, EditedModel) and edited.last_restart == "input"
    replay = edited._replay
    cut_names = [replay.order[c][0].name for c in replay.cuts]
    assert {"b2out", "gap", "d1"} <= set(cut_names)  # where a restart saves half
    assert {"c1", "b0out", "b1out", "b2out", "d1"} <= {replay.order[c][0].name for c in replay.all_cuts}
    assert "d1" in s.propose()
    s.accept("d1")  # late: only the Dense head changed
    m = s.metrics()
    assert edited.last_restart == "gap"
    fresh = EditedModel(s._pruner.graph)
    want = predict(fresh.sync(s._pruner.store), s._probes)
    np.testing.assert_allclose(edited.probe_outputs(s._probes), want, rtol=1e-5, atol=1e-5)
    assert edited.last_restart == "d1"  # nothing changed since: only the last layer runs again
    classes = (want.argmax(-1) == s._original_probe_classes()).mean()
    assert m.agreement == pytest.approx(float(classes))
    s.accept(next(n for n in s.propose() if n.startswith("c1")))  # c1's group: every block's output
    s.metrics()
    assert edited.last_restart == "input"  # the first layer changed: a full pass
    want = predict(EditedModel(s._pruner.graph).sync(s._pruner.store), s._probes)
    np.testing.assert_allclose(edited.probe_outputs(s._probes), want, rtol=1e-5, atol=1e-5)


def test_probe_cache_stays_within_its_budget():
    from paoding_widgets.engine.surgery import EditedModel
    from paoding_widgets.session import PruningSession

    s = PruningSession(_blocks(), input_range=(0.0, 1.0), strategy="impact", n_probes=24)
    edited = EditedModel(s._pruner.graph, cache_budget=24 * 10 * 10 * 8 * 4 * 2)  # two block outputs
    edited.sync(s._pruner.store)
    edited.probe_outputs(s._probes)
    cached = edited._replay.cache
    assert sum(a.nbytes for a in cached.values()) <= edited.cache_budget
    assert [edited._replay.order[c][0].name for c in sorted(cached)][-1] == "d1"  # the latest cuts first


def test_clone_of_a_compiled_model_does_not_compile_or_touch_it():
    from paoding_widgets.engine.surgery import clone

    model = _seq((6,), L.Dense(4, activation="relu"), L.Dense(2))
    model.compile("adam", "mse")
    opt = model.optimizer
    new = clone(model)
    assert not new.compiled and new.optimizer is None
    assert model.compiled and model.optimizer is opt


def test_probe_replay_is_refused_where_a_mask_would_be_lost():
    """A cached activation is a plain array: a masked sequence falls back to the full pass, same outputs."""
    from paoding_widgets.engine.evaluate import predict
    from paoding_widgets.engine.graph import ModelGraph
    from paoding_widgets.engine.surgery import EditedModel

    keras.utils.set_random_seed(0)
    x = inp = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 8, mask_zero=True)(x)
    x = L.LSTM(5)(x)
    model = keras.Model(inp, L.Dense(3)(L.Dense(7, activation="relu")(x)))
    edited = EditedModel(ModelGraph(model))
    store = WeightStore.from_model(model, {})
    probes = np.random.default_rng(0).integers(0, 20, (9, 6)).astype(np.int32)
    probes[:, 4:] = 0  # padded steps: the mask matters
    edited.sync(store)
    out = edited.probe_outputs(probes)
    assert edited._replay is False and edited.last_restart == "full"
    np.testing.assert_allclose(out, predict(model, probes), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ round 4: living-unit blocks, fused small kernels
@pytest.mark.parametrize("strategy", ["baseline", "impact"])
@pytest.mark.parametrize("seed", range(3))
def test_saliency_pairs_on_the_living_block_equal_the_full_matrix(strategy, seed):
    """Pairs chosen on the living units' block are those of the full matrix with the dead excluded."""
    from paoding_widgets.engine import strategies as S

    keras.utils.set_random_seed(seed)
    model = _seq((20,), L.Dense(40, activation="relu"), L.Dense(24, activation="relu"), L.Dense(3))
    p = Pruner(model, strategy=strategy, step=0.1, target=0.6, seed=seed)
    checked = 0
    for _ in range(6):
        for g in p.graph.prunable_groups:
            view = p.view(g)
            for m in (1, 3, int(view.alive.sum()) // 2):
                old = S._pairs(view, saliency_matrix(view.u, view.b, view.v_norm), m)
                new = S._saliency_pairs(view, m, True)
                assert np.array_equal(old.keep, new.keep) and np.array_equal(old.drop, new.drop)
                np.testing.assert_allclose(new.cost, old.cost, rtol=1e-6)
                checked += view.alive.mean() <= S.BLOCK_SHARE
        p.iterate()
    assert checked > 0  # the block path ran


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((1, 9, 9, 3), (3, 3), (2, 2), "valid"), ((2, 8, 8, 4), (2, 2), (1, 1), "same"),
    ((1, 6, 5, 7, 2), (1, 1, 1), (2, 1, 2), "same"), ((3, 10, 2), (3,), (1,), "valid")])
def test_small_conv_fused_im2col_equals_separate_calls(shape, kernel, strides, padding):
    rng = np.random.default_rng(0)
    k = rng.normal(size=(*kernel, shape[-1], 5)).astype(np.float32)
    k[..., 1] = 0  # a dead filter
    prep = PreparedConv.build(k, ConvSpec(kernel, strides, (1,) * len(kernel), padding))
    c, r = rng.normal(size=shape).astype(np.float32), rng.uniform(0, 1, size=shape).astype(np.float32)
    yc, yr = prep.both(c, r)
    assert np.array_equal(yc, prep(c)) and np.array_equal(yr, prep(r, absolute=True))


@pytest.mark.parametrize("dims,pool,strides,padding", [
    (2, (2, 2), None, "valid"), (2, (3, 3), (2, 2), "same"), (2, (2, 3), (1, 2), "valid"),
    (1, (3,), (2,), "same"), (3, (2, 2, 2), None, "valid")])
def test_max_pooling_by_slices_equals_keras(dims, pool, strides, padding):
    """Same maxima as Keras on finite inputs, and as the reduction over windows (the old path) with NaN / -inf."""
    from paoding_widgets.engine.kernels import passthrough_forward

    layer = {1: L.MaxPooling1D, 2: L.MaxPooling2D, 3: L.MaxPooling3D}[dims](pool, strides=strides, padding=padding)
    rng = np.random.default_rng(dims)
    x = rng.normal(size=(2, *([7] * dims), 3)).astype(np.float32)
    got = passthrough_forward(layer, layer.get_config(), x)
    assert got is not None and np.array_equal(got, np.asarray(layer(x)))
    x[0, 0, ..., 0] = np.nan
    x[1, ..., 1] = -np.inf
    spec = ConvSpec(pool, strides or pool, (1,) * dims, padding)
    xp, outs = spec.pad(x, -np.inf)
    want = spec.windows(xp, outs).max(axis=tuple(range(-dims, 0)))
    assert np.array_equal(passthrough_forward(layer, layer.get_config(), x), want, equal_nan=True)
