"""PruningSession: the public API contract (layers, proposals, statuses, runs,
settings, validation, undo/redo, events, metrics, export, background runs)."""

from __future__ import annotations

import math
import threading

import keras
import numpy as np
import pytest
from conftest import L, box_inputs, build_gap, build_mlp, weights_copy, weights_equal

from paoding_widgets.engine.evaluate import accuracy, agreement
from paoding_widgets.session import PruningSession, RunResult, SessionError

HIDDEN = {"dense": 12, "dense_1": 10}
PRUNABLE = ("dense", "dense_1")
OUTPUT = "dense_2"


# ---------------------------------------------------------------------- builders / helpers
def small_mlp(seed: int = 3):
    """Input(8) -> Dense(12 relu) -> Dropout -> Dense(10 relu) -> Dense(3).

    Seed 3 predicts two classes on [0, 1]^8, so agreement and accuracy move as units go.
    """
    return build_mlp(8, (12, 10), 3, seed=seed, names=("dense", "dense_1", "dense_2"))


@pytest.fixture(scope="module")
def model():
    return small_mlp()


@pytest.fixture(scope="module")
def eval_data(model):
    x = box_inputs(model, 200, seed=1)
    return x, keras.ops.convert_to_numpy(model(x, training=False)).argmax(1)


def make(model, **kw) -> PruningSession:
    opts = dict(input_range=(0, 1), strategy="impact", step=0.1, target=0.5, seed=0)
    opts.update(kw)
    return PruningSession(model, **opts)


def statuses(s: PruningSession) -> dict[str, str]:
    return {li.name: li.status for li in s.layers}


def alive(s: PruningSession) -> dict[str, int]:
    return {li.name: li.units_alive for li in s.layers}


def snapshot(s: PruningSession):
    return (s.pruner.store.copy(), statuses(s), sorted(s.proposals), len(s.history.entries), s.history.position,
            s.settings, s.share_pruned())


def assert_unchanged(s: PruningSession, snap) -> None:
    store, st, props, n, pos, settings, share = snap
    assert s.pruner.store.equal(store)
    assert statuses(s) == st
    assert sorted(s.proposals) == props
    assert len(s.history.entries) == n
    assert s.history.position == pos
    assert s.settings == settings
    assert s.share_pruned() == share


def target_alive(size: int, target: float) -> int:
    """Units left at the target: round half up of target * size, at least one left."""
    return size - min(size - 1, int(math.floor(target * size + 0.5)))


# ---------------------------------------------------------------------- layers
def test_layers_describe_every_group(model):
    s = make(model)
    layers = s.layers
    assert [li.name for li in layers] == ["dense", "dense_1", "dense_2"]
    assert [li.kind for li in layers] == ["dense"] * 3
    assert [li.status for li in layers] == ["ready", "ready", "not prunable"]
    assert [li.units_total for li in layers] == [12, 10, 3]
    assert [li.units_alive for li in layers] == [12, 10, 3]
    # kernel column + bias + the reader's kernel row per unit
    assert layers[0].params == 12 * (8 + 1 + 10)
    assert layers[1].params == 10 * (12 + 1 + 3)
    assert layers[0].reason == layers[1].reason == ""
    assert "output" in layers[2].reason
    assert layers[0].layers == ("dense", "dense_1")
    assert all(li.proposal is None for li in layers)
    assert s.layer("dense_1") == layers[1]
    assert s.status(OUTPUT) == "not prunable"


def test_layers_of_a_cnn_are_conv_groups():
    m = build_gap()
    s = PruningSession(m, (0, 1), step=0.25, target=0.5)
    kinds = {li.name: (li.kind, li.status) for li in s.layers}
    assert kinds["c1"] == ("conv", "ready") and kinds["c2"] == ("conv", "ready")
    assert kinds["logits"][1] == "not prunable"
    before = s.pruner.store.copy()
    p0 = s.metrics().size.params
    r = s.run()
    assert r.reason == "target"
    # compensated (the default) shares the units among the layers: the total is the target's
    assert alive(s)["c1"] + alive(s)["c2"] == target_alive(8, 0.5) + target_alive(10, 0.5)
    assert s.metrics().size.params < p0
    assert s.pruned_model().count_params() == s.metrics().size.params
    s.undo()
    assert s.pruner.store.equal(before)


# ---------------------------------------------------------------------- proposals and statuses
def test_propose_gives_a_pending_proposal_per_unlocked_layer(model):
    s = make(model)
    before = s.pruner.store.copy()
    props = s.propose()
    assert set(props) == set(PRUNABLE)
    assert statuses(s) == {"dense": "pending", "dense_1": "pending", OUTPUT: "not prunable"}
    for name, p in props.items():
        assert len(p.drop) == 1  # step 0.1 of 12 and 10 units rounds to one unit
        info = s.layer(name)
        assert info.proposal is not None and info.proposal["drop"] == p.drop.tolist()
    assert s.pruner.store.equal(before), "a proposal must not change the weights"
    assert [h.kind for h in s.history_items] == ["propose"]


def test_accept_applies_only_that_layer(model):
    s = make(model)
    props = s.propose()
    unit = int(props["dense"].drop[0])
    s.accept("dense")
    assert statuses(s)["dense"] == "accepted" and statuses(s)["dense_1"] == "pending"
    assert alive(s) == {"dense": 11, "dense_1": 10, OUTPUT: 3}
    assert not s.pruner.store.alive[s.graph.group("dense").id][unit]
    assert s.pruner.store[("dense", "kernel")][:, unit].tolist() == [0.0] * 8
    assert s.pruner.store[("dense", "bias")][unit] == 0.0
    assert s.pruner.store[("dense_1", "kernel")][unit].tolist() == [0.0] * 10
    assert "dense" not in s.proposals and "dense_1" in s.proposals
    with pytest.raises(SessionError, match="dense.*no pending proposal"):
        s.accept("dense")


def test_skip_declines_without_locking(model):
    s = make(model)
    s.propose()
    before = s.pruner.store.copy()
    s.skip("dense")
    assert statuses(s)["dense"] == "skipped" and statuses(s)["dense_1"] == "pending"
    assert s.pruner.store.equal(before)
    assert "dense" not in s.proposals
    with pytest.raises(SessionError):
        s.accept("dense")
    props = s.propose()
    assert "dense" in props and statuses(s)["dense"] == "pending"
    s.accept("dense")
    assert alive(s)["dense"] == 11


def test_locked_layer_gets_no_proposal_and_cannot_be_accepted(model):
    s = make(model)
    s.propose()
    s.lock("dense")  # locking drops its open proposal
    assert statuses(s)["dense"] == "locked" and "dense" not in s.proposals
    props = s.propose()
    assert set(props) == {"dense_1"}
    assert statuses(s)["dense"] == "locked"
    snap = snapshot(s)
    with pytest.raises(SessionError, match="dense"):
        s.accept("dense")
    with pytest.raises(SessionError, match="already locked"):
        s.lock("dense")
    assert_unchanged(s, snap)
    s.accept_all()
    s.step()
    s.run(target=0.9)
    assert alive(s)["dense"] == 12 and alive(s)["dense_1"] == target_alive(10, 0.9)
    assert statuses(s)["dense"] == "locked"
    s.unlock("dense")
    assert statuses(s)["dense"] == "ready"
    with pytest.raises(SessionError, match="not locked"):
        s.unlock("dense")
    assert "dense" in s.propose()


def test_accept_all_and_step(model):
    s = make(model)
    with pytest.raises(SessionError, match="no pending"):
        s.accept_all()
    s.propose()
    s.accept_all()
    assert alive(s) == {"dense": 11, "dense_1": 9, OUTPUT: 3}
    assert statuses(s) == {"dense": "accepted", "dense_1": "accepted", OUTPUT: "not prunable"}
    assert s.proposals == {}
    done = s.step()
    assert set(done) == set(PRUNABLE)
    assert alive(s) == {"dense": 10, "dense_1": 8, OUTPUT: 3}
    assert [h.kind for h in s.history_items] == ["propose", "accept_all", "step"]


def test_step_refuses_when_everything_is_at_target(model):
    s = make(model)
    s.run()
    assert set(statuses(s).values()) == {"done", "not prunable"}
    snap = snapshot(s)
    with pytest.raises(SessionError, match="nothing left"):
        s.step()
    assert_unchanged(s, snap)


def test_step_drops_stale_proposals(model):
    s = make(model)
    s.propose()
    s.step()
    assert s.proposals == {}, "proposals made before step() describe weights that no longer exist"
    snap = snapshot(s)
    with pytest.raises(SessionError):
        s.accept("dense")
    assert_unchanged(s, snap)


# ---------------------------------------------------------------------- runs
@pytest.mark.parametrize("target", [0.3, 0.5, 0.75, 0.99])
def test_run_stops_at_target_with_exact_counts(model, target):
    s = make(model)
    r = s.run(target=target)
    assert isinstance(r, RunResult) and r.reason == "target"
    for name, size in HIDDEN.items():
        assert s.layer(name).units_alive == target_alive(size, target)
        assert s.layer(name).units_alive >= 1
    assert alive(s)[OUTPUT] == 3
    assert r.share_pruned == pytest.approx(s.share_pruned())
    expected = sum(size - target_alive(size, target) for size in HIDDEN.values()) / sum(HIDDEN.values())
    assert s.share_pruned() == pytest.approx(expected)
    assert [h.kind for h in s.history_items] == ["run"]
    again = s.run(target=target)
    assert again.iterations == 0 and again.reason == "target"


def test_run_default_target_and_locked_layer(model):
    s = make(model, target=0.5)
    s.lock("dense_1")
    r = s.run()
    assert r.reason == "target"
    assert alive(s) == {"dense": 6, "dense_1": 10, OUTPUT: 3}


@pytest.mark.parametrize("min_fidelity", [1.0, 0.95])
def test_run_min_fidelity_undoes_the_breaking_iteration(model, min_fidelity):
    s = make(model, target=0.9)
    r = s.run(target=0.9, min_fidelity=min_fidelity)
    assert r.reason == "min_fidelity"
    assert agreement(model, s.pruner.edited_model(), s._probes) >= min_fidelity
    assert s.metrics().agreement >= min_fidelity
    if min_fidelity == 0.95:
        assert r.iterations >= 1
    # the next iteration is the one the run undid: it breaks the condition
    s.step()
    assert agreement(model, s.pruner.edited_model(), s._probes) < min_fidelity


def test_run_min_accuracy_undoes_the_breaking_iteration(model, eval_data):
    s = make(model, target=0.9, eval_data=eval_data)
    r = s.run(target=0.9, min_accuracy=0.9)
    assert r.reason == "min_accuracy" and r.iterations >= 1
    assert accuracy(s.pruner.edited_model(), *eval_data) >= 0.9
    assert s.metrics().accuracy >= 0.9
    s.step()
    assert accuracy(s.pruner.edited_model(), *eval_data) < 0.9


def test_run_min_accuracy_needs_eval_data(model):
    s = make(model)
    snap = snapshot(s)
    with pytest.raises(SessionError, match="eval_data"):
        s.run(min_accuracy=0.5)
    with pytest.raises(SessionError, match="min_fidelity"):
        s.run(min_fidelity=1.5)
    assert_unchanged(s, snap)


def _run_min_fidelity(s):
    return s.run(target=0.9, min_fidelity=1.0)  # breaks at the first iteration on this model


def _run_cancelled(s):
    cancel = threading.Event()
    cancel.set()
    return s.run(target=0.9, cancel=cancel)


def _run_at_target(s):
    return s.run(target=0.3)


@pytest.mark.parametrize("run", [_run_min_fidelity, _run_cancelled, _run_at_target])
def test_run_leaves_no_pending_status_without_proposal(model, run):
    s = make(model, target=0.9)
    if run is _run_at_target:
        s.run(target=0.3)
    s.propose()
    assert set(s.proposals) == set(PRUNABLE)
    r = run(s)
    assert r.iterations == 0
    assert s.proposals == {}
    pending = [name for name, st in statuses(s).items() if st == "pending"]
    assert pending == [], f"layers {pending} are 'pending' but have no proposal"


# ---------------------------------------------------------------------- settings
def test_configure_is_an_undoable_entry(model):
    s = make(model)
    s.propose()
    s.configure(strategy="magnitude", step=0.2, target=0.6)
    assert s.settings == {"strategy": "magnitude", "step": 0.2, "target": 0.6, "options": {}}
    assert s.pruner.strategy.name == "magnitude" and s.pruner.step == 0.2 and s.pruner.target == 0.6
    assert s.proposals == {} and statuses(s)["dense"] == "ready"
    assert s.history_items[-1].kind == "settings"
    props = s.propose()
    assert len(props["dense"].drop) == 2 and props["dense"].strategy == "magnitude"
    s.undo()
    s.undo()
    assert s.settings["strategy"] == "impact" and s.settings["step"] == 0.1 and s.settings["target"] == 0.5
    assert s.pruner.strategy.name == "impact" and s.pruner.step == 0.1 and s.pruner.target == 0.5
    assert set(s.proposals) == set(PRUNABLE)  # the proposals before the change are back
    n = len(s.history.entries)
    s.configure(step=0.1)  # no change: no entry
    assert len(s.history.entries) == n
    s.redo()
    assert s.settings["strategy"] == "magnitude" and s.pruner.target == 0.6


@pytest.mark.parametrize("kwargs, match", [
    ({"target": 0}, "target"), ({"target": 1}, "target"), ({"target": 1.5}, "target"), ({"target": "x"}, "target"),
    ({"step": 0}, "step"), ({"step": -0.1}, "step"), ({"strategy": "nope"}, "nope"),
    ({"strategy": "impact", "bogus": 1}, "bogus"),
])
def test_configure_rejects_bad_values(model, kwargs, match):
    s = make(model)
    s.propose()
    snap = snapshot(s)
    with pytest.raises(SessionError, match=match):
        s.configure(**kwargs)
    assert_unchanged(s, snap)
    assert s.pruner.strategy.name == "impact" and s.pruner.step == 0.1 and s.pruner.target == 0.5


# ---------------------------------------------------------------------- validation
def _busy_session(model) -> PruningSession:
    s = make(model)
    s.propose()
    s.accept("dense")
    s.propose()
    s.skip("dense_1")
    return s


BAD_ACTIONS = [
    (lambda s: s.accept("nope"), "nope"),
    (lambda s: s.lock("nope"), "nope"),
    (lambda s: s.layer("nope"), "nope"),
    (lambda s: s.accept(3), "string"),
    (lambda s: s.accept(OUTPUT), "not prunable"),
    (lambda s: s.skip(OUTPUT), "not prunable"),
    (lambda s: s.lock(OUTPUT), "not prunable"),
    (lambda s: s.unlock(OUTPUT), "not prunable"),
    (lambda s: s.accept("dense_1"), "no pending proposal"),
    (lambda s: s.skip("dense_1"), "no pending proposal"),
    (lambda s: s.unlock("dense"), "not locked"),
    (lambda s: s.run(target=0), "target"),
    (lambda s: s.run(target=1), "target"),
    (lambda s: s.run(target=1.5), "target"),
    (lambda s: s.run(target="x"), "target"),
    (lambda s: s.configure(target=0), "target"),
    (lambda s: s.configure(target=1), "target"),
    (lambda s: s.configure(target=1.5), "target"),
    (lambda s: s.configure(target="x"), "target"),
    (lambda s: s.goto(-1), "history position"),
    (lambda s: s.goto(99), "history position"),
    (lambda s: s.goto(1.5), "history position"),
    (lambda s: s.redo(), "nothing to redo"),
]


@pytest.mark.parametrize("action, match", BAD_ACTIONS)
def test_bad_input_raises_and_changes_nothing(model, action, match):
    s = _busy_session(model)
    assert "dense" in s.proposals and statuses(s)["dense_1"] == "skipped"
    events = []
    s.subscribe(events.append)
    snap = snapshot(s)
    with pytest.raises(SessionError, match=match):
        action(s)
    assert_unchanged(s, snap)
    assert [e for e in events if e.kind == "state"] == []


def test_undo_with_nothing_to_undo(model):
    s = make(model)
    with pytest.raises(SessionError, match="nothing to undo"):
        s.undo()


@pytest.mark.parametrize("kwargs, match", [
    ({"target": 0}, "target"), ({"target": 1}, "target"), ({"target": 1.5}, "target"), ({"target": "x"}, "target"),
    ({"step": 0}, "step"), ({"strategy": "nope"}, "nope"), ({"input_range": (1, 0)}, "input_range"),
    ({"input_range": 3}, "input_range"),
])
def test_constructor_rejects_bad_settings(model, kwargs, match):
    w = weights_copy(model)
    with pytest.raises(SessionError, match=match):
        make(model, **kwargs)
    assert weights_equal(model, w)


def test_constructor_rejects_bad_strategy_option(model):
    with pytest.raises(SessionError, match="bogus"):
        make(model, bogus=1)


def test_constructor_rejects_bad_eval_data(model, eval_data):
    x, y = eval_data
    with pytest.raises(SessionError, match="shape"):
        make(model, eval_data=(x[:, :7], y))
    with pytest.raises(SessionError, match="shape"):
        make(model, eval_data=(x.reshape(-1, 2, 4), y))
    with pytest.raises(SessionError, match="labels"):
        make(model, eval_data=(x, y[:-3]))
    with pytest.raises(SessionError, match="pair"):
        make(model, eval_data=x)
    s = make(model, eval_data=(x.astype(np.float64), y))
    assert s.eval_data[0].dtype == np.float32 and np.array_equal(s.eval_data[1], y)


def test_model_without_prunable_layer():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), L.Dense(3)])
    with pytest.raises(SessionError, match="no prunable layer"):
        PruningSession(m)


# ---------------------------------------------------------------------- undo / redo / goto
def test_undo_redo_goto_restore_weights_bit_for_bit(model):
    w = weights_copy(model)
    s = make(model)
    states = [(s.pruner.store.copy(), statuses(s), sorted(s.proposals))]

    def record():
        states.append((s.pruner.store.copy(), statuses(s), sorted(s.proposals)))

    for act in (s.propose, lambda: s.accept("dense"), lambda: s.lock("dense_1"), s.step,
                lambda: s.unlock("dense_1"), lambda: s.configure(step=0.2), lambda: s.run(target=0.4),
                s.propose, lambda: s.skip("dense")):
        act()
        record()
    n = len(states) - 1
    assert s.history.position == n == len(s.history.entries)

    def check(k):
        store, st, props = states[k]
        assert s.history.position == k
        assert s.pruner.store.equal(store), f"weights differ at position {k}"
        assert statuses(s) == st and sorted(s.proposals) == props

    for k in range(n, 0, -1):
        s.undo()
        check(k - 1)
    assert s.pruner.store.equal(states[0][0])
    for k in range(1, n + 1):
        s.redo()
        check(k)
    for k in (0, 5, 2, n, 1, 0, n):
        s.goto(k)
        check(k)
    s.goto(0)
    # the original model's own weights equal the store's, and were never touched
    assert weights_equal(model, w)
    for layer in model.layers:
        for name, arr in zip([v.path.rsplit("/", 1)[-1] for v in layer.weights], layer.get_weights()):
            assert np.array_equal(s.pruner.store[(layer.name, name)], arr)
    assert s.history_items[0].applied is False


def test_new_change_after_undo_drops_redo_branch(model):
    s = make(model)
    s.propose()
    s.accept("dense")
    s.accept("dense_1")
    s.undo()
    s.undo()
    assert s.history.can_redo
    s.skip("dense")
    assert [h.kind for h in s.history_items] == ["propose", "skip"]
    assert not s.history.can_redo
    with pytest.raises(SessionError, match="nothing to redo"):
        s.redo()
    assert alive(s)["dense"] == 12 and alive(s)["dense_1"] == 10


# ---------------------------------------------------------------------- events
def test_events_state_proposal_progress(model):
    s = make(model)
    events = []
    s.subscribe(events.append)
    s.propose()
    assert [e.kind for e in events] == ["state", "proposal"]
    assert set(events[1].data["proposals"]) == set(PRUNABLE)
    assert events[0].data["position"] == 1
    events.clear()
    s.accept("dense")
    assert [e.kind for e in events] == ["state"] and events[0].data["position"] == 2
    events.clear()
    r = s.run(target=0.5)
    progress = [e for e in events if e.kind == "progress"]
    assert [e.data["iteration"] for e in progress] == list(range(1, r.iterations + 1))
    assert progress[-1].data["share_pruned"] == pytest.approx(s.share_pruned())
    assert events[-1].kind == "state" and events[-1].data["position"] == 3
    events.clear()
    s.undo()
    assert [e.kind for e in events] == ["state"] and events[0].data["position"] == 2


def test_failing_listener_does_not_break_the_session(model, caplog):
    s = make(model)

    def broken(event):
        raise RuntimeError("view crashed")

    seen = []
    s.subscribe(broken)
    s.subscribe(seen.append)
    s.propose()
    s.accept_all()
    assert alive(s)["dense"] == 11
    assert [e.kind for e in seen] == ["state", "proposal", "state"]
    assert "listener failed" in caplog.text


def test_unsubscribe_and_kind_filter(model):
    s = make(model)
    all_events, only_progress = [], []
    stop = s.subscribe(all_events.append)
    s.subscribe(only_progress.append, kinds=("progress",))
    s.propose()
    stop()
    s.accept_all()
    assert [e.kind for e in all_events] == ["state", "proposal"]
    assert only_progress == []
    s.run(target=0.3)
    assert only_progress and {e.kind for e in only_progress} == {"progress"}
    with pytest.raises(ValueError, match="unknown event kinds"):
        s.subscribe(print, kinds=("nope",))


# ---------------------------------------------------------------------- metrics
def test_metrics_size_and_fidelity(model):
    s = make(model)
    m0 = s.metrics()
    assert m0.size.params == model.count_params() == 8 * 12 + 12 + 12 * 10 + 10 + 10 * 3 + 3
    assert m0.agreement == 1.0
    assert m0.accuracy is None and m0.robust == {}
    assert math.isfinite(m0.output_bound_width) and m0.output_bound_width > 0
    s.run(target=0.5)
    m1 = s.metrics()
    assert m1.size.params == 8 * 6 + 6 + 6 * 5 + 5 + 5 * 3 + 3
    assert m1.size.bytes == 4 * m1.size.params < m0.size.bytes
    assert m1.size.flops < m0.size.flops
    assert 0.0 <= m1.agreement <= 1.0
    assert math.isfinite(m1.output_bound_width)
    s.undo()
    assert s.metrics().size.params == m0.size.params


def test_metrics_with_eval_data(model, eval_data):
    s = make(model, eval_data=eval_data, epsilons=(0.01, 0.1))
    m0 = s.metrics()
    assert m0.accuracy == 1.0  # labels are the model's own predictions
    assert set(m0.robust) == {0.01, 0.1}
    assert all(0 <= v <= len(eval_data[0]) for v in m0.robust.values())
    assert m0.robust_preserved == {0.01: 1.0, 0.1: 1.0}
    s.run(target=0.7)
    m1 = s.metrics()
    assert m1.accuracy == pytest.approx(accuracy(s.pruned_model(), *eval_data))
    assert m1.accuracy < 1.0
    assert set(m1.robust_preserved) == {0.01, 0.1}


# ---------------------------------------------------------------------- export
def test_export_refuses_existing_file_and_source(model, tmp_path):
    src = tmp_path / "source.keras"
    model.save(src)
    src_bytes = src.read_bytes()
    s = make(model, source_path=str(src))
    s.run(target=0.5)
    out = tmp_path / "pruned.keras"
    assert s.export(str(out)) == str(out)
    loaded = keras.models.load_model(out, compile=False)
    assert loaded.count_params() == s.metrics().size.params
    x = box_inputs(model, 64, seed=5)
    got, want = keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(s.pruner.edited_model()(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    first = out.read_bytes()
    s.undo()
    with pytest.raises(FileExistsError, match="overwrite"):
        s.export(str(out))
    assert out.read_bytes() == first
    s.export(str(out), overwrite=True)
    assert keras.models.load_model(out, compile=False).count_params() == model.count_params()
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="input model"):
            s.export(str(src), overwrite=overwrite)
    assert src.read_bytes() == src_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.keras", "source.keras"]


# ---------------------------------------------------------------------- background runs
class _Gate:
    """A progress callback that blocks the run after each iteration until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, info) -> None:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "test never released the run"


def test_background_run_cancel(model):
    s = make(model, target=0.5)
    s.propose()
    before = s.pruner.store.copy()
    before_status = statuses(s)
    gate = _Gate()
    handle = s.start_run(target=0.9, progress=gate)
    try:
        assert gate.entered.wait(30)
        assert s.running and not handle.done
        # readers work during the run; a second action does not
        assert alive(s)["dense"] == 11
        snap_store = s.pruner.store.copy()
        with pytest.raises(SessionError):  # the run dropped the proposals
            s.accept("dense")
        for action in (s.propose, lambda: s.lock("dense"), s.undo, s.redo,
                       lambda: s.goto(0), lambda: s.configure(step=0.3), lambda: s.run(target=0.9), s.step,
                       lambda: s.start_run(target=0.9)):
            with pytest.raises(SessionError, match="in progress"):
                action()
        assert s.pruner.store.equal(snap_store)
        handle.cancel()
    finally:
        gate.release.set()
    result = handle.wait(30)
    assert handle.done and not s.running
    assert result.reason == "cancelled" and result.iterations == gate.calls == 1
    assert [h.kind for h in s.history_items] == ["propose", "run"]
    assert "cancelled" in s.history_items[-1].label
    assert alive(s)["dense"] == 11 and alive(s)["dense_1"] == 9
    s.undo()
    assert s.pruner.store.equal(before)
    assert statuses(s) == before_status and set(s.proposals) == set(PRUNABLE)
    s.accept("dense")  # the session works after the run
    assert alive(s)["dense"] == 11
    r = s.start_run(target=0.5).wait(30)
    assert r.reason == "target" and alive(s)["dense"] == 6


def test_background_run_bad_arguments_raise_before_starting(model):
    s = make(model)
    with pytest.raises(SessionError, match="target"):
        s.start_run(target=1.5)
    assert not s.running and s.history.entries == []
    s.propose()  # the session is usable: nothing was reserved


def test_save_during_background_run_is_refused_or_consistent(model, tmp_path):
    s = make(model)
    original = s.pruner.store.copy()
    gate = _Gate()
    handle = s.start_run(target=0.9, progress=gate)
    path = tmp_path / "mid.pws"
    try:
        assert gate.entered.wait(30)
        try:
            s.save(str(path))
        except SessionError:
            saved = False
        else:
            saved = True
        handle.cancel()
    finally:
        gate.release.set()
    handle.wait(30)
    if saved:
        loaded = PruningSession.load(str(path))
        loaded.goto(0)
        assert loaded.pruner.store.equal(original), "the saved file lost the original weights"


def test_start_run_is_running_when_it_returns(model):
    s = make(model)
    gate = _Gate()
    # Holding the session lock stands for a worker thread the OS has not scheduled yet.
    with s._lock:
        handle = s.start_run(target=0.9, progress=gate)
        running = s.running
    handle.cancel()
    gate.release.set()
    handle.wait(30)
    assert running, "start_run() returned while the session still accepts other actions"


def test_alive_names_the_surviving_units_and_follows_undo(model) -> None:
    s = make(model)
    first = next(g.name for g in s.graph.prunable_groups)
    assert s.alive(first).all() and s.alive(first).dtype == bool
    s.propose()
    gone = s.proposals[first].drop
    s.accept(first)
    alive = s.alive(first)
    assert not alive[gone].any() and alive.sum() == s.layer(first).units_alive
    alive[:] = False  # a copy: the session is not changed through it
    assert s.alive(first).sum() == s.layer(first).units_alive
    s.undo()
    assert s.alive(first).all()
    with pytest.raises(SessionError, match="no layer 'nope'"):
        s.alive("nope")
