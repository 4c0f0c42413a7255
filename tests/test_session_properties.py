"""Property tests of PruningSession under random action sequences.

Any sequence of propose / accept / accept_all / skip / lock / unlock / step /
run / configure / undo / redo is played; actions the session refuses must raise
SessionError and leave everything unchanged.  Checked after every action:

(a) a locked layer keeps every unit: its alive mask, its bias and the weights
    leaving its units (reader kernel rows, on reader columns still alive) are
    what they were when the lock was applied;
(b) goto(0) gives back the original weights bit for bit;
(c) undo / redo / goto(k) give back exactly the state first seen at position k;
(d) saving, loading and playing the remaining actions on the loaded session
    ends with the same weights, statuses and history as never saving.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
from conftest import build_mlp, weights_copy, weights_equal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paoding_widgets.session import PruningSession, SessionError

NAMES = ["dense", "dense_1", "dense_2"]  # prunable: 12, 10 and 8 units
OTHER_NAMES = ["dense_3", "nope"]  # the output layer (not prunable) and an unknown name

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def model():
    """Input(8) -> Dense(12) -> Dropout -> Dense(10) -> Dense(8) -> Dense(3), built once per module."""
    return build_mlp(8, (12, 10, 8), 3, seed=3, names=("dense", "dense_1", "dense_2", "dense_3"))


@functools.cache
def model_weights():
    return weights_copy(model())


def fresh(strategy: str = "impact") -> PruningSession:
    return PruningSession(model(), (0, 1), strategy, step=0.2, target=0.7, seed=0)


# impact merges units; stochastic merges with random choices (the rng must follow undo and
# save/load); random removes units
strategy_st = st.sampled_from(["impact", "stochastic", "random"])


name_st = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(OTHER_NAMES))
action_st = st.one_of(
    st.just(("propose",)),
    st.tuples(st.just("accept"), name_st),
    st.tuples(st.just("skip"), name_st),
    st.tuples(st.just("lock"), name_st),
    st.tuples(st.just("unlock"), name_st),
    st.just(("accept_all",)),
    st.just(("step",)),
    st.tuples(st.just("run"), st.sampled_from([0.3, 0.5, 0.9])),
    st.tuples(st.just("configure"), st.sampled_from([0.1, 0.2, 0.3])),
    st.just(("undo",)),
    st.just(("undo",)),
    st.just(("redo",)),
)
actions_st = st.lists(action_st, max_size=24)


# ---------------------------------------------------------------------- helpers
def statuses(s: PruningSession) -> dict[str, str]:
    return {li.name: li.status for li in s.layers}


def proposals(s: PruningSession) -> dict[str, tuple]:
    return {k: (p.drop.tolist(), p.keep.tolist(), p.candidates.scale.tolist()) for k, p in s.proposals.items()}


def full_state(s: PruningSession) -> tuple:
    return (s.pruner.store.copy(), statuses(s), proposals(s), s.history.position, s.settings,
            s.pruner.rng.bit_generator.state)


def assert_state(s: PruningSession, state: tuple) -> None:
    store, status, props, pos, sett, rng = state
    assert s.pruner.store.equal(store)
    assert s.pruner.rng.bit_generator.state == rng
    assert statuses(s) == status
    assert proposals(s) == props
    assert s.history.position == pos
    assert s.settings == sett


def play(s: PruningSession, action: tuple) -> bool | None:
    """Play one action; True if it changed the session, False if refused (and then nothing changed)."""
    kind, *args = action
    before, n = full_state(s), len(s.history.entries)
    try:
        if kind == "run":
            s.run(target=args[0])
        elif kind == "configure":
            s.configure(step=args[0])
        else:
            getattr(s, kind)(*args)
    except SessionError:
        assert_state(s, before)
        assert len(s.history.entries) == n
        return False
    return True


def lock_snapshot(s: PruningSession, name: str) -> dict:
    g = s.graph.group(name)
    store = s.pruner.store
    return {"alive": store.alive[g.id].copy(),
            "bias": store[(g.name, "bias")].copy(),
            "out": {(c.layer, c.var): store[(c.layer, c.var)].copy() for c in g.consumers}}


def reader_columns(s: PruningSession, layer: str, var: str) -> np.ndarray:
    """Living output columns of a reader's kernel."""
    for g in s.graph.groups:
        for slot in g.producers:
            if (slot.layer, slot.var) == (layer, var):
                return slot.index[s.pruner.store.alive[g.id]].reshape(-1)
    raise AssertionError(f"no group produces {layer}/{var}")


def check_locked(s: PruningSession, name: str, snap: dict) -> None:
    g = s.graph.group(name)
    store = s.pruner.store
    assert np.array_equal(store.alive[g.id], snap["alive"]), f"locked {name} lost units"
    assert s.layer(name).units_alive == int(snap["alive"].sum())
    assert np.array_equal(store[(g.name, "bias")], snap["bias"]), f"locked {name}: bias changed"
    for c in g.consumers:
        assert c.axis == 0
        rows = c.index.reshape(-1)
        cols = reader_columns(s, c.layer, c.var)
        now = store[(c.layer, c.var)][rows][:, cols]
        then = snap["out"][(c.layer, c.var)][rows][:, cols]
        assert np.array_equal(now, then), f"locked {name}: weights leaving its units changed in {c.layer}"


class Tracker:
    """The state first seen at each history position, and the locks in force there."""

    def __init__(self, s: PruningSession) -> None:
        self.s = s
        self.states = [full_state(s)]
        self.locks: list[dict[str, dict]] = [{}]
        self.position, self.length = 0, 0

    def after(self, action: tuple, changed: bool | None) -> None:
        s = self.s
        kind = action[0]
        pos = s.history.position
        if changed and kind in ("undo", "redo"):
            assert_state(s, self.states[pos])
        elif changed and pos == self.position and len(s.history.entries) == self.length:
            assert kind in ("configure", "run", "propose")  # nothing to do: no entry, no change
            assert_state(s, self.states[pos])
        elif changed:
            assert pos == self.position + 1 == len(s.history.entries)
            del self.states[pos:]
            del self.locks[pos:]
            locks = dict(self.locks[pos - 1])
            if kind == "lock":
                locks[action[1]] = lock_snapshot(s, action[1])
            elif kind == "unlock":
                del locks[action[1]]
            self.states.append(full_state(s))
            self.locks.append(locks)
        self.position, self.length = pos, len(s.history.entries)
        status = statuses(s)
        assert all(status[name] == "pending" for name in s.proposals)
        assert all(name in s.proposals for name, v in status.items() if v == "pending")
        locks = self.locks[pos]
        assert set(locks) == {n for n, v in statuses(s).items() if v == "locked"}
        for name, snap in locks.items():
            check_locked(s, name, snap)


# ---------------------------------------------------------------------- properties
@SETTINGS
@given(actions_st, strategy_st)
def test_random_actions_keep_locks_and_history_exact(actions, strategy):
    s = fresh(strategy)
    tracker = Tracker(s)
    for action in actions:
        tracker.after(action, play(s, action))
    n = len(s.history.entries)
    assert n == len(tracker.states) - 1
    # (c) every position reached again by goto, in both directions, is the state first seen there
    for k in [*range(n, -1, -1), *range(n + 1)]:
        s.goto(k)
        assert_state(s, tracker.states[k])
        for name, snap in tracker.locks[k].items():
            check_locked(s, name, snap)
    # (b) undoing everything gives the original weights bit for bit
    s.goto(0)
    assert s.pruner.store.equal(fresh().pruner.store)
    assert set(statuses(s).values()) <= {"ready", "not prunable"}
    assert weights_equal(model(), model_weights())


@SETTINGS
@given(actions_st, strategy_st, st.data())
def test_redo_after_undo_reproduces_the_same_weights(actions, strategy, data):
    s = fresh(strategy)
    tracker = Tracker(s)
    for action in actions:
        tracker.after(action, play(s, action))
    n = len(s.history.entries)
    s.goto(0)
    assert s.pruner.store.equal(tracker.states[0][0])
    for _ in range(3):
        k = data.draw(st.integers(0, n))
        s.goto(k)
        assert_state(s, tracker.states[k])
    s.goto(n)
    assert_state(s, tracker.states[n])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions_st, strategy_st, st.data())
def test_save_load_mid_sequence_changes_nothing(actions, strategy, data):
    split = data.draw(st.integers(0, len(actions)), label="split")
    straight = fresh(strategy)
    for action in actions:
        play(straight, action)

    resumed = fresh(strategy)
    for action in actions[:split]:
        play(resumed, action)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "session.pws"
        resumed.save(str(path))
        resumed = PruningSession.load(str(path))
    for action in actions[split:]:
        play(resumed, action)

    assert resumed.pruner.store.equal(straight.pruner.store)
    assert statuses(resumed) == statuses(straight)
    assert proposals(resumed) == proposals(straight)
    assert resumed.settings == straight.settings
    assert (resumed.history.position, len(resumed.history.entries)) == \
        (straight.history.position, len(straight.history.entries))
    assert resumed.history_items == straight.history_items
    assert resumed.pruner.rng.bit_generator.state == straight.pruner.rng.bit_generator.state
    resumed.goto(0)
    assert resumed.pruner.store.equal(fresh().pruner.store)
