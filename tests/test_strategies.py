"""Strategies: exact target accounting, reproducibility, errors, and a real accuracy check."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import L, box_inputs, build_mlp, build_residual, run, run_to_target

from paoding_widgets.datasets import load_digits
from paoding_widgets.engine.evaluate import accuracy
from paoding_widgets.engine.pruner import Pruner, check_fraction
from paoding_widgets.engine.strategies import STRATEGIES, Strategy, make_strategy
from paoding_widgets.errors import ConfigError

NAMES = sorted(STRATEGIES)


def _mlp():
    return build_mlp(n_in=8, hidden=(20, 16), n_out=3, seed=40, names=["h20", "h16", "out"])


@pytest.fixture(scope="module")
def mlp_model():
    return _mlp()


@pytest.fixture(scope="module")
def residual_model():
    return build_residual(seed=41)


def test_registry_is_complete():
    assert {"baseline", "impact", "stochastic", "magnitude", "random", "certified"} <= set(STRATEGIES)
    for name, cls in STRATEGIES.items():
        s = make_strategy(name)
        assert isinstance(s, Strategy) and isinstance(s, cls) and s.name == name
    inst = make_strategy("impact")
    assert make_strategy(inst) is inst


def test_unknown_strategy_lists_the_names():
    with pytest.raises(ValueError) as info:
        make_strategy("nope")
    msg = str(info.value)
    assert "nope" in msg
    for name in STRATEGIES:
        assert name in msg
    with pytest.raises(ValueError):
        Pruner(_mlp(), strategy="nope")


@pytest.mark.parametrize("value", [0, 1, -0.1, "x", "0.3", 1.5, None, True, float("nan"), np.array([0.5])])
def test_check_fraction_rejects(value):
    with pytest.raises(ConfigError, match="step"):
        check_fraction("step", value)


@pytest.mark.parametrize("value", [0.05, 0.5, 0.999, np.float32(0.3)])
def test_check_fraction_accepts(value):
    check_fraction("target", value)


@pytest.mark.parametrize("kw", [{"step": 0}, {"target": 1}, {"target": -0.1}, {"step": "x"}])
def test_pruner_rejects_bad_fractions(mlp_model, kw):
    with pytest.raises(ValueError):
        Pruner(mlp_model, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_strategy_reaches_exact_target_mlp(mlp_model, name):
    opts = {"spread": 0.0} if name == "compensated" else {}  # per-group shares (its allocation: tests below)
    pruner = Pruner(mlp_model, input_range=(0, 1), strategy=name, step=0.1, target=0.5, seed=1, **opts)
    shares = []
    iterations = run_to_target(pruner, callback=lambda i, share: shares.append((i, share)))
    groups = {g.name: g for g in pruner.graph.groups}
    assert pruner.pruned_units(groups["h20"]) == 10
    assert pruner.pruned_units(groups["h16"]) == 8
    assert pruner.store.alive[groups["out"].id].all()
    assert pruner.share_pruned() == pytest.approx(18 / 36)
    # steps of round(0.1 * size) = 2 units: five iterations for the larger group
    assert iterations == 5
    assert [i for i, _ in shares] == [1, 2, 3, 4, 5]
    assert all(a[1] < b[1] for a, b in zip(shares, shares[1:]))
    # nothing more to do once the target is reached
    assert pruner.iterate() == []
    x = box_inputs(mlp_model, 32, seed=2)
    small = pruner.pruned_model()
    assert small.get_layer("h20").units == 10 and small.get_layer("h16").units == 8
    np.testing.assert_allclose(run(small, x), run(pruner.edited_model(), x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_strategy_reaches_exact_target_cnn(residual_model, name):
    opts = {"spread": 0.0} if name == "compensated" else {}
    pruner = Pruner(residual_model, input_range=(0, 1), strategy=name, step=0.25, target=0.5, seed=3, **opts)
    run_to_target(pruner)
    for g in pruner.graph.groups:
        expected = int(np.floor(0.5 * g.size + 0.5)) if g.prunable else 0
        assert pruner.pruned_units(g) == expected, g.name


def test_target_override_and_single_proposal_counts(mlp_model):
    pruner = Pruner(mlp_model, strategy="magnitude", step=0.1, target=0.5)
    props = pruner.propose()
    assert {p.name: len(p.drop) for p in props.values()} == {"h20": 2, "h16": 2}
    assert all(p.action == "remove" for p in props.values())
    run_to_target(pruner, target=0.25)
    groups = {g.name: g for g in pruner.graph.groups}
    assert pruner.pruned_units(groups["h20"]) == 5 and pruner.pruned_units(groups["h16"]) == 4
    # a step bigger than what remains is clipped to the target
    big = Pruner(mlp_model, strategy="magnitude", step=0.9, target=0.3)
    big.iterate()
    assert big.pruned_units(big.graph.group("h20")) == 6
    assert big.iterate() == []


def test_magnitude_removes_the_smallest_units(mlp_model):
    layer = mlp_model.get_layer("h20")
    l1 = np.abs(layer.kernel.numpy()).sum(0)
    pruner = Pruner(mlp_model, strategy="magnitude", step=0.25, target=0.25)
    props = pruner.propose()
    g = pruner.graph.group("h20")
    assert sorted(props[g.id].drop.tolist()) == sorted(np.argsort(l1)[:5].tolist())


def test_merge_strategies_propose_merges_for_dense_and_removals_for_filters(residual_model):
    pruner = Pruner(residual_model, strategy="impact", step=0.25, target=0.5)
    props = pruner.propose()
    kinds = {pruner.graph.groups[gid].kind: p.action for gid, p in props.items()}
    assert kinds["dense"] == "merge" and kinds["conv"] == "remove"
    for p in props.values():
        c = p.candidates
        if p.action == "merge":
            assert np.all(c.keep >= 0) and not np.isin(c.keep, c.drop).any()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_is_reproducible(mlp_model, name):
    a = Pruner(mlp_model, strategy=name, step=0.1, target=0.5, seed=7)
    b = Pruner(mlp_model, strategy=name, step=0.1, target=0.5, seed=7)
    run_to_target(a)
    run_to_target(b)
    assert a.store.equal(b.store)


@pytest.mark.parametrize("name, options", [("random", {}), ("stochastic", {"alpha": 0.0, "beta": 10.0})])
def test_seed_matters_for_stochastic_strategies(mlp_model, name, options):
    """The seed drives the choice (stochastic: scores scaled up so that annealing rejects some pairs)."""
    def pruned(seed):
        p = Pruner(mlp_model, strategy=name, step=0.1, target=0.5, seed=seed, **options)
        run_to_target(p)
        return tuple(tuple(np.flatnonzero(~p.store.alive[g.id]).tolist()) for g in p.graph.prunable_groups)

    runs = {seed: pruned(seed) for seed in range(6)}
    assert pruned(3) == runs[3]
    assert len(set(runs.values())) > 1  # different seeds give different choices (some of them)


def test_stochastic_same_seed_same_units_default_options(mlp_model):
    def pruned(seed):
        p = Pruner(mlp_model, strategy="stochastic", step=0.1, target=0.5, seed=seed)
        run_to_target(p)
        return [np.flatnonzero(~p.store.alive[g.id]).tolist() for g in p.graph.prunable_groups]

    assert pruned(11) == pruned(11)


def test_certified_rescale_option_is_exact_after_surgery():
    model = build_mlp(n_in=8, hidden=(16, 12), n_out=3, bn=True, seed=42)
    pruner = Pruner(model, strategy="certified", step=0.25, target=0.5, rescale=True)
    run_to_target(pruner)
    x = box_inputs(model, 32, seed=4)
    np.testing.assert_allclose(run(pruner.pruned_model(), x), run(pruner.edited_model(), x),
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def digits_mlp():
    (x_tr, y_tr), (x_te, y_te) = load_digits(seed=0)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        L.Dense(32, activation="relu"),
        L.Dense(32, activation="relu"),
        L.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=20, batch_size=64, verbose=0)
    return model, (x_te, y_te)


def _pruned_accuracy(model, data, strategy, target=0.5, seed=0):
    pruner = Pruner(model, input_range=(0, 1), strategy=strategy, step=0.1, target=target, seed=seed)
    run_to_target(pruner)
    return accuracy(pruner.pruned_model(), *data)


def test_impact_keeps_accuracy_on_digits(digits_mlp):
    model, data = digits_mlp
    base = accuracy(model, *data)
    assert base > 0.9  # the premise: a well trained model
    # half of every hidden layer: clearly better than random removal
    impact = _pruned_accuracy(model, data, "impact")
    random_mean = np.mean([_pruned_accuracy(model, data, "random", seed=s) for s in range(3)])
    assert impact >= random_mean + 0.1
    assert impact >= 0.5 * base
    # a quarter of every hidden layer: most of the accuracy stays
    assert _pruned_accuracy(model, data, "impact", target=0.25) >= 0.8 * base


# ------------------------------------------------------------------ non-uniform allocation hook
class _Greedy(Strategy):
    """Allocates every unit it can to the first group (to show the hook's limits)."""

    name = "random"
    allocates = True

    def __init__(self) -> None:
        self.asked: list[tuple[int, dict[int, int]]] = []

    def propose(self, view, k, rng):
        from paoding_widgets.engine.strategies import removal

        return removal(view, rng.random(view.group.size), k)

    def allocate(self, views, total, room, target):
        self.asked.append((total, dict(room)))
        out = dict.fromkeys(views, 0)
        for gid in sorted(views):
            out[gid] = min(room[gid], total - sum(out.values()))
        return out


def test_allocation_reaches_the_global_target_exactly_and_moves_units():
    model = build_mlp(n_in=8, hidden=(20, 16, 12), n_out=3, seed=43, names=["a", "b", "c", "out"])
    strat = _Greedy()
    p = Pruner(model, strategy=strat, step=0.1, target=0.5)
    run_to_target(p)
    groups = p.graph.prunable_groups
    assert sum(p.pruned_units(g) for g in groups) == sum(p.target_units(g) for g in groups)  # exactly the total
    first = groups[0]
    assert p.pruned_units(first) > p.target_units(first)  # units moved to the group it favours
    assert all(p.pruned_units(g) <= g.size - 1 for g in groups)
    assert strat.asked and all(t <= sum(r.values()) for t, r in strat.asked)


def test_allocation_out_of_range_is_refused():
    class Bad(_Greedy):
        def allocate(self, views, total, room, target):
            return dict.fromkeys(views, total)

    p = Pruner(_mlp(), strategy=Bad(), step=0.1, target=0.5)
    with pytest.raises(ValueError, match="allotted"):
        p.propose(allocate=True)


@pytest.mark.parametrize("name", ["baseline", "impact", "stochastic", "magnitude", "random", "certified"])
def test_strategies_other_than_compensated_are_allotted_uniformly(name, mlp_model):
    p = Pruner(mlp_model, strategy=name, step=0.1, target=0.5)
    assert not p.allocates
    gs = p.graph.prunable_groups
    assert p.allot(gs) == {g.id: p.next_k(g) for g in gs}


def test_compensated_allocation_respects_locked_layers_and_the_total():
    from paoding_widgets.session import PruningSession

    # BatchNorm after every hidden layer: the groups are anchored, so compensated allocates
    model = build_mlp(n_in=8, hidden=(20, 16, 12), n_out=3, seed=44, bn=True, names=["a", "b", "c", "out"])
    s = PruningSession(model, strategy="compensated", step=0.1, target=0.5, samples=64, steps=20)
    assert s._pruner.allocates
    s.lock("b")
    res = s.run()
    p = s._pruner
    gs = {g.name: g for g in p.graph.prunable_groups}
    assert p.pruned_units(gs["b"]) == 0  # locked: never touched
    free = [gs["a"], gs["c"]]
    assert res.reason == "target"
    assert sum(p.pruned_units(g) for g in free) == sum(p.target_units(g) for g in free)
    # spread 0: the uniform share per group, as before the hook
    s2 = PruningSession(model, strategy="compensated", step=0.1, target=0.5, spread=0.0, samples=64, steps=20)
    s2.run()
    assert all(s2._pruner.pruned_units(g) == s2._pruner.target_units(g) for g in s2._pruner.graph.prunable_groups)
