"""Data-free compensation (``compensated`` strategy): the maths on small layers, and real edits.

* an exactly reconstructible unit (a duplicate, a linear combination of others) is removed with
  the outputs unchanged;
* the closed-form BN/ReLU moments match a Monte-Carlo estimate from Gaussian samples;
* after compensated pruning of BN, residual and depthwise models the physical model equals the
  edited one, and undo is bit-exact.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import (
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
)

from paoding_widgets.engine import compensation as C
from paoding_widgets.engine.edits import apply_edit
from paoding_widgets.engine.pruner import Pruner
from paoding_widgets.engine.strategies import Compensated
from paoding_widgets.errors import EditError

L = keras.layers


def _mlp_with(copy_of: dict[int, list[tuple[int, float]]], seed: int = 0):
    """A 20-8-4 MLP with a linear hidden layer whose units ``d`` compute ``sum c * x_k`` of others."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((20,)), L.Dense(8, name="h"), L.Dense(4, name="out")])
    randomize(model, seed)
    k, b = model.get_layer("h").get_weights()
    for d, parts in copy_of.items():
        k[:, d] = sum(c * k[:, j] for j, c in parts)
        b[d] = sum(c * b[j] for j, c in parts)
    model.get_layer("h").set_weights([k, b])
    return model


def _edited(pruner: Pruner):
    return pruner.edited_model()


def test_duplicate_unit_removed_exactly():
    model = build_mlp(n_in=6, hidden=(12,), n_out=3, dropout=False)
    k, b = model.layers[0].get_weights()
    k[:, 5], b[5] = k[:, 2], b[2]  # unit 5 duplicates unit 2
    model.layers[0].set_weights([k, b])
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(ridge=1e-9, everywhere=True, steps=0), step=0.1,
                    target=0.1)
    g = pruner.graph.prunable_groups[0]
    view = pruner.view(g)
    cand = pruner.strategy.propose(view, 1, np.random.default_rng(0))
    assert cand.cost[0] < 1e-6, "the first unit to go costs nothing (the duplicate, or a unit dead on the box)"
    cand.drop = np.array([5])
    cand.mix, cand.refit = pruner.strategy.compensation(view, cand.drop), None  # the reconstruction alone
    np.testing.assert_allclose(cand.mix[0][0, 2], 1.0, atol=1e-4)
    apply_edit(pruner.graph, pruner.store, g, cand)
    x = box_inputs(model, 200)
    np.testing.assert_allclose(run(_edited(pruner), x), run(model, x), rtol=1e-4, atol=1e-4)


def test_linear_combination_removed_exactly():
    """A linear hidden layer: unit 7 = 0.5 x_1 - 2 x_3 + x_4 is rebuilt from the kept units in the reader."""
    model = _mlp_with({7: [(1, 0.5), (3, -2.0), (4, 1.0)]})
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(ridge=1e-9, everywhere=True, steps=0), step=0.1,
                    target=0.1)
    g = pruner.graph.prunable_groups[0]
    view = pruner.view(g)
    drop, cost, _ = C.plan_removal(view, pruner.strategy.moments(view)[0], 1, ridge=1e-9)
    assert drop[0] in (1, 3, 4, 7) and cost[0] < 1e-6, "a unit the others predict exactly goes first, for free"
    _, _, mix = C.plan_removal(view, pruner.strategy.moments(view)[0], 1, ridge=1e-9, drop=np.array([7]))
    np.testing.assert_allclose(mix[0][0, [1, 3, 4]], [0.5, -2.0, 1.0], atol=1e-3)
    assert np.allclose(np.delete(mix[0][0], [1, 3, 4]), 0.0, atol=1e-3)
    cand = pruner.strategy.propose(view, 1, np.random.default_rng(0))
    cand.drop, cand.mix, cand.refit = np.array([7]), mix, None
    apply_edit(pruner.graph, pruner.store, g, cand)
    x = box_inputs(model, 300, -3.0, 3.0)  # far outside the sampled box: the identity is exact anywhere
    np.testing.assert_allclose(run(_edited(pruner), x), run(model, x), rtol=1e-3, atol=1e-3)
    assert not pruner.store.alive[g.id][7]


def test_relu_gaussian_moments_match_monte_carlo():
    rng = np.random.default_rng(0)
    mean = np.array([-1.5, -0.2, 0.0, 0.7, 2.5, 1.0])
    std = np.array([0.5, 1.0, 2.0, 0.3, 1.5, 0.0])
    e1, e2 = C.relu_gaussian_moments(mean, std)
    z = mean + std * rng.standard_normal((400_000, len(mean)))
    r = np.maximum(z, 0.0)
    np.testing.assert_allclose(e1, r.mean(0), atol=6e-3)
    np.testing.assert_allclose(e2, (r**2).mean(0), atol=2e-2)


def test_bn_bias_correction_matches_monte_carlo():
    """Producer -> BN -> ReLU: the closed-form mean of each unit (folded into the reader's bias when the
    unit goes) equals a Monte-Carlo estimate with Gaussian BN outputs N(beta, gamma^2)."""
    model = build_mlp(n_in=5, hidden=(8,), n_out=2, dropout=False, bn=True, activation="linear")
    inp = keras.Input((5,))
    x = L.Dense(8, name="h")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="out")(x)), 1)
    pruner = Pruner(model, (0.0, 1.0), strategy="compensated")
    view = pruner.view(pruner.graph.prunable_groups[0])
    mean, var = C.bn_relu_prior(view)
    gamma, beta, mm, mv = model.get_layer("bn").get_weights()
    eps = model.get_layer("bn").epsilon
    s = gamma * np.sqrt(mv / (mv + eps))  # the BN output's spread when its input has the moving variance
    z = beta + s * np.random.default_rng(0).standard_normal((400_000, 8))
    np.testing.assert_allclose(mean, np.maximum(z, 0).mean(0), atol=1e-2)
    np.testing.assert_allclose(var, np.maximum(z, 0).var(0), atol=2e-2)
    # bias correction only: a removed unit's mean goes into the reader's bias
    strat = Compensated(reconstruct=False, bn_prior=True, steps=0, refit=False)
    g = pruner.graph.prunable_groups[0]
    drop, _, mix = C.plan_removal(view, strat.moments(view)[0], 2, reconstruct=False, bn_prior=True)
    np.testing.assert_allclose(mix[0][:, -1], mean[drop], rtol=1e-4)
    assert np.all(mix[0][:, :-1] == 0)
    b0 = pruner.store[("out", "bias")].copy()
    v = pruner.store[("out", "kernel")][drop].copy()
    cand = strat.propose(view, 2, np.random.default_rng(0))
    apply_edit(pruner.graph, pruner.store, g, cand)
    np.testing.assert_allclose(pruner.store[("out", "bias")], b0 + (mean[cand.drop][:, None] * v).sum(0), rtol=1e-4)


MODELS = {
    "bn_flatten": (build_cnn_bn_flatten, {}),
    "residual": (build_residual, {}),
    "separable": (build_separable, {}),
    "bn_mlp": (lambda seed=0: build_mlp(bn=True, seed=seed), {}),
    "concat": (build_concat, {}),
    "conv_concat": (build_conv_concat, {}),
    "gap": (build_gap, {}),
    "joins": (build_joins, {}),
    "squeeze_excite": (build_squeeze_excite, {}),
    "conv1d": (build_conv1d, {}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_physical_equals_edited_and_undo_is_exact(name):
    build, _ = MODELS[name]
    model = build(seed=3)
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(samples=32, steps=15), step=0.2, target=0.4)
    before = pruner.store.copy()
    patches = []
    while True:
        props = pruner.propose()
        if not props:
            break
        patches += [pruner.apply(p) for p in props.values()]
    assert patches and pruner.share_pruned() > 0.3
    x = box_inputs(model, 16, seed=1)
    np.testing.assert_allclose(run(pruner.pruned_model(), x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-4)
    for p in reversed(patches):
        pruner.store.revert(p)
    assert pruner.store.equal(before)


def test_compensation_folds_into_batchnorm_after_a_bias_free_reader():
    inp = keras.Input((6,))
    x = L.Dense(10, activation="relu", name="h")(inp)
    x = L.Dense(5, use_bias=False, name="r")(x)
    x = L.BatchNormalization(name="bn")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="out")(L.ReLU()(x))), 2)
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(everywhere=True, steps=0), step=0.2, target=0.2)
    g = pruner.graph.group("h")
    mm = pruner.store[("bn", "moving_mean")].copy()
    cand = pruner.strategy.propose(pruner.view(g), 2, np.random.default_rng(0))
    assert np.any(cand.mix[0][:, -1] != 0)
    apply_edit(pruner.graph, pruner.store, g, cand)
    assert not np.array_equal(pruner.store[("bn", "moving_mean")], mm)
    x = box_inputs(model, 8)
    np.testing.assert_allclose(run(pruner.pruned_model(), x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-5)


def test_bad_coefficients_are_refused():
    model = build_mlp(n_in=6, hidden=(8,), n_out=3, dropout=False)
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(everywhere=True, steps=0))
    g = pruner.graph.prunable_groups[0]
    cand = pruner.strategy.propose(pruner.view(g), 2, np.random.default_rng(0))
    bad = cand.take(np.arange(len(cand)))
    bad.mix = [m.copy() for m in cand.mix]
    bad.mix[0][0, cand.drop[1]] = 1.0  # folds into a unit removed in the same edit
    with pytest.raises(EditError, match="removed"):
        apply_edit(pruner.graph, pruner.store, g, bad)
    bad.mix = [np.full_like(cand.mix[0], np.nan)]
    with pytest.raises(EditError, match="finite"):
        apply_edit(pruner.graph, pruner.store, g, bad)


@pytest.mark.parametrize("refit", [False, True])
def test_proposal_restored_without_coefficients_is_recomputed(refit):
    """A session file keeps keep/drop/scale/shift only: applying such a proposal recomputes the same fold
    (the refit from the weights at the time it is applied, so in the same state it is the same)."""
    model = build_cnn_bn_flatten(seed=1)
    a = Pruner(model, (0.0, 1.0), strategy=Compensated(samples=32, steps=15, refit=refit), step=0.25, target=0.25)
    b = Pruner(model, (0.0, 1.0), strategy=Compensated(samples=32, steps=15, refit=refit), step=0.25, target=0.25)
    pa, pb = a.propose(), b.propose()
    assert pa.keys() == pb.keys() and pa
    gids = list(pa) if not refit else list(pa)[:1]
    for gid in gids:
        assert (pa[gid].candidates.refit is not None) == refit
        pb[gid].candidates.mix = pb[gid].candidates.refit = None
        a.apply(pa[gid])
        b.apply(pb[gid])
    assert a.store.equal(b.store)


def test_compensated_is_the_engine_default():
    assert Pruner(build_mlp(), (0.0, 1.0)).strategy.name == "compensated"


def test_session_with_compensation_saves_resumes_and_undoes(tmp_path):
    from paoding_widgets import PruningSession

    model = build_residual(seed=2)
    s = PruningSession(model, (0.0, 1.0), strategy="compensated", step=0.25, target=0.5, samples=32, steps=15)
    before = s._pruner.store.copy()
    s.run(target=0.25)
    props = s.propose()
    assert props
    path = s.save(str(tmp_path / "run.paoding"))
    s.accept_all()
    t = PruningSession.load(path)
    t.accept_all()  # the open proposal comes back without its coefficients: they are recomputed
    assert s._pruner.store.equal(t._pruner.store)
    s.goto(0)
    assert s._pruner.store.equal(before)


# ------------------------------------------------------------------------------ error-correcting refit
def _linear_net(seed: int = 0):
    """6 -> 10 -> 10 -> 3, linear hidden layers: every activation is a rank-6 linear function of the input."""
    inp = keras.Input((6,))
    x = L.Dense(10, name="h1")(inp)
    x = L.Dense(10, name="h2")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="out")(x)), seed)


def test_refit_removes_a_reconstructible_unit_exactly():
    model = _mlp_with({7: [(1, 0.5), (3, -2.0), (4, 1.0)]})
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(ridge=1e-9, everywhere=True, steps=0), step=0.1,
                    target=0.1)
    g = pruner.graph.prunable_groups[0]
    cand = pruner.strategy.propose(pruner.view(g), 1, np.random.default_rng(0))
    assert cand.refit is not None and cand.cost[0] < 1e-6
    apply_edit(pruner.graph, pruner.store, g, cand)
    x = box_inputs(model, 300, -3.0, 3.0)  # far outside the sampled box: the identity is exact anywhere
    np.testing.assert_allclose(run(_edited(pruner), x), run(model, x), rtol=1e-3, atol=1e-3)


def test_refit_corrects_the_drift_left_upstream():
    """h1 loses a unit with no compensation at all, so h2 drifts; h2's reader (the output layer), refit on
    the pruned model's h2, gives back the original outputs exactly (a linear net: h2_original is a linear
    function of the drifted h2), where the plain reconstruction cannot."""
    model = _linear_net()
    outs = {}
    for refit in (False, True):
        pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(ridge=1e-9, everywhere=True, steps=0, refit=refit),
                        step=0.1, target=0.1)
        g1, g2 = pruner.graph.group("h1"), pruner.graph.group("h2")
        cand = pruner.strategy.propose(pruner.view(g1), 1, np.random.default_rng(0))
        cand.mix, cand.refit = [np.zeros_like(m) for m in cand.mix], None  # remove, fold nothing
        apply_edit(pruner.graph, pruner.store, g1, cand)
        x = box_inputs(model, 200, -2.0, 2.0)
        drift = np.abs(run(_edited(pruner), x) - run(model, x)).max()
        assert drift > 1e-2
        cand = pruner.strategy.propose(pruner.view(g2), 1, np.random.default_rng(0))
        apply_edit(pruner.graph, pruner.store, g2, cand)
        outs[refit] = np.abs(run(_edited(pruner), x) - run(model, x)).max()
        np.testing.assert_allclose(run(pruner.pruned_model(), x), run(_edited(pruner), x), rtol=1e-4, atol=1e-4)
    assert outs[True] < 1e-3 < outs[False]


def test_refit_keeps_an_unpruned_reader_unchanged():
    """Nothing to correct (the original model) and a ridge towards the current rows: the kept rows stay."""
    model = _mlp_with({7: [(1, 0.5), (3, -2.0), (4, 1.0)]})
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(everywhere=True, steps=0), step=0.1, target=0.1)
    g = pruner.graph.prunable_groups[0]
    view = pruner.view(g)
    joint = pruner.strategy.joint(view)
    targets = C.reader_targets(view, pruner.strategy._original[1])
    _, _, refit = C.plan_refit(view, joint, targets, 0, drop=np.zeros(0, np.int64))
    np.testing.assert_allclose(refit[0][0], 0.0, atol=1e-5)
    np.testing.assert_allclose(refit[0][1], 0.0, atol=1e-5)


def test_bad_refit_is_refused():
    model = build_mlp(n_in=6, hidden=(8,), n_out=3, dropout=False)
    pruner = Pruner(model, (0.0, 1.0), strategy=Compensated(everywhere=True, steps=0))
    g = pruner.graph.prunable_groups[0]
    cand = pruner.strategy.propose(pruner.view(g), 2, np.random.default_rng(0))
    rows, bias = cand.refit[0]
    cand.refit = [(rows[:-1], bias)]
    with pytest.raises(EditError, match="shapes"):
        apply_edit(pruner.graph, pruner.store, g, cand)
    cand.refit = [(np.full_like(rows, np.nan), bias)]
    with pytest.raises(EditError, match="finite"):
        apply_edit(pruner.graph, pruner.store, g, cand)


def test_synthesis_matches_batchnorm_statistics_and_inverts_models_without_bn():
    from paoding_widgets.engine.bounds import parse_input_range
    from paoding_widgets.engine.graph import ModelGraph
    from paoding_widgets.engine.weights import WeightStore

    model = build_cnn_bn_flatten(seed=1)
    graph = ModelGraph(model)
    store = WeightStore.from_model(model, {})
    box = parse_input_range((0.0, 1.0), tuple(model.inputs[0].shape[1:]))
    x0 = box_inputs(model, 64)
    x = C.synthesize_inputs(graph, store, box, samples=64, steps=60, tv=0.1, ce=0.5)
    assert x is not None and x.shape == x0.shape and x.min() >= 0.0 and x.max() <= 1.0

    def mismatch(inp):
        bn = next(n for n in graph.nodes if isinstance(n.rule, C.BatchNormRule))
        a = run(keras.Model(model.inputs, bn.layer.input), inp).reshape(-1, bn.layer.input.shape[-1])
        mm, mv = store.get(bn.name, "moving_mean"), store.get(bn.name, "moving_variance")
        return np.mean(((a.mean(0) - mm) ** 2 + (a.std(0) - np.sqrt(mv)) ** 2) / (np.sqrt(mv) + 1e-3) ** 2)

    assert mismatch(x) < 0.5 * mismatch(x0)
    mlp = build_mlp(n_in=6, hidden=(8,), n_out=3, dropout=False)
    g2 = ModelGraph(mlp)
    box2 = parse_input_range((0.0, 1.0), (6,))
    nothing = C.synthesize_inputs(g2, WeightStore.from_model(mlp, {}), box2, samples=30, steps=20)
    assert nothing is None, "no BN and no class pull: nothing to match"
    xi = C.synthesize_inputs(g2, WeightStore.from_model(mlp, {}), box2, samples=30, steps=80, ce=1.0, lr=0.1)
    assert xi is not None
    pred = np.argmax(run(mlp, xi), 1)
    assert np.mean(pred == np.arange(30) % 3) > 0.6, "class-conditional inversion reaches the classes dealt out"


@pytest.mark.parametrize("sequential", [True, False])
def test_batch_is_refit_group_after_group(sequential):
    """With ``sequential`` a batch's second group is refit on the state the first group's proposal leaves:
    the same edit as proposing it after applying the first (without, it is refit on the old state)."""
    model = build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=45, dropout=False, names=["a", "b", "out"])
    opts = dict(everywhere=True, steps=0, spread=0.0, sequential=sequential)
    batch = Pruner(model, (0.0, 1.0), strategy=Compensated(**opts), step=0.2, target=0.2)
    props = batch.propose()
    one = Pruner(model, (0.0, 1.0), strategy=Compensated(**opts), step=0.2, target=0.2)
    ga, gb = one.graph.group("a"), one.graph.group("b")
    one.apply(one.propose([ga])[ga.id])
    alone = one.propose([gb])[gb.id].candidates
    got = props[gb.id].candidates
    same = np.array_equal(got.drop, alone.drop) and all(
        np.allclose(r[0], s[0], atol=1e-5) and np.allclose(r[1], s[1], atol=1e-5)
        for r, s in zip(got.refit, alone.refit))
    assert same == sequential
    for p in props.values():
        batch.apply(p)
    x = box_inputs(model, 64)
    np.testing.assert_allclose(run(batch.pruned_model(), x), run(_edited(batch), x), rtol=1e-4, atol=1e-4)


def test_prior_weights_bracket_the_l2_prior_within_each_class():
    w = C.prior_weights(40, 4, 10.0)
    assert w.shape == (40,) and np.isclose(w.min(), 0.1) and np.isclose(w.max(), 10.0)
    for c in range(4):  # every class gets the whole range, log-evenly
        wc = w[c::4]
        assert np.isclose(wc[0], 0.1) and np.isclose(wc[-1], 10.0) and np.allclose(np.diff(np.log(wc)), np.log(100) / 9)
    assert np.allclose(C.prior_weights(40, 4, 1.0), 1.0), "spread 1: one weight for all"


def test_spread_prior_shrinks_the_samples_it_weighs_more():
    from paoding_widgets.engine.bounds import parse_input_range
    from paoding_widgets.engine.graph import ModelGraph
    from paoding_widgets.engine.weights import WeightStore

    mlp = build_mlp(n_in=12, hidden=(16,), n_out=3, dropout=False, seed=3)
    g, store = ModelGraph(mlp), WeightStore.from_model(mlp, {})
    box = parse_input_range((0.0, 1.0), (12,))
    x = C.synthesize_inputs(g, store, box, samples=60, steps=60, ce=1.0, l2=3.0, prior_spread=30.0, lr=0.1)
    assert x is not None and x.min() >= 0.0 and x.max() <= 1.0
    energy = np.mean(x ** 2, axis=1)
    w = C.prior_weights(60, 3, 30.0)
    assert energy[w > 5].mean() < 0.5 * energy[w < 0.2].mean(), "a heavier L2 weight gives smaller inputs"
    again = C.synthesize_inputs(g, store, box, samples=60, steps=60, ce=1.0, l2=3.0, prior_spread=30.0, lr=0.1)
    assert again is not None and np.array_equal(x, again), "deterministic for a seed"


def test_disagreement_samples_raise_the_pruned_models_disagreement():
    """DFAD-style samples: the pruned model and the original disagree more on them than on their start."""
    model = build_mlp(n_in=10, hidden=(24,), n_out=4, dropout=False, seed=5)
    rival = keras.models.clone_model(model)
    weights = [w.copy() for w in model.get_weights()]
    weights[0][:, ::2] = 0.0  # half the hidden units removed, uncompensated
    rival.set_weights(weights)
    box = (np.zeros(10, np.float32), np.ones(10, np.float32))
    x0 = box_inputs(model, 64)

    def gap(x):
        return np.mean(np.abs(run(model, x) - run(rival, x)))

    xa = C.disagreement_inputs(model, rival, x0, box, steps=30, lr=0.05)
    assert xa is not None and xa.shape == x0.shape and xa.min() >= 0.0 and xa.max() <= 1.0
    assert gap(xa) > 1.5 * gap(x0)
    again = C.disagreement_inputs(model, rival, x0, box, steps=30, lr=0.05)
    assert again is not None and np.array_equal(xa, again)


def test_compensated_adds_disagreement_samples_to_the_refit():
    model = build_mlp(n_in=10, hidden=(24, 16), n_out=4, dropout=False, seed=6)
    strat = Compensated(adversarial=0.5, adv_steps=10, adv_pool=2, samples=32, steps=20)
    pruner = Pruner(model, (0.0, 1.0), strategy=strat, step=0.1, target=0.3)
    while pruner.iterate():
        pass
    assert 1 <= len(strat._adv) <= 2 and all(len(a) == 16 for a in strat._adv), "half the samples, two states kept"
    x = run(model, box_inputs(model, 50))
    edited = run(pruner.edited_model(), box_inputs(model, 50))
    assert np.all(np.isfinite(edited)) and edited.shape == x.shape
