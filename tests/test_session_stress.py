"""PruningSession under concurrency: several threads acting while a run goes, cancel from anywhere,
refusals during a run, all-or-nothing undo/redo/goto, and argument validation at the boundary.

After every stress round: the history is one consistent chain (each entry starts where the
previous one ended), goto(0) gives the original weights bit for bit, and at every history
position the physically pruned model computes what the edited full-size model computes.
"""

from __future__ import annotations

import random
import threading
import time

import keras
import numpy as np
import pytest
from conftest import box_inputs, build_mlp

from paoding_widgets.engine.weights import ArrayPatch
from paoding_widgets.session import PruningSession, SessionError

NAMES = ("dense", "dense_1", "dense_2", "dense_3")  # prunable: 12, 10, 8 units; dense_3 is the output
PRUNABLE = NAMES[:3]
ROUNDS = 6
WORKERS = 4


@pytest.fixture(scope="module")
def model():
    return build_mlp(8, (12, 10, 8), 3, seed=3, names=NAMES)


@pytest.fixture(scope="module")
def probes(model):
    return box_inputs(model, 64, seed=7)


def make(model, seed: int = 0, **kw) -> PruningSession:
    opts = dict(input_range=(0, 1), strategy="impact", step=0.1, target=0.7, seed=seed, n_probes=32)
    opts.update(kw)
    return PruningSession(model, **opts)


def _statuses(s: PruningSession) -> dict[str, str]:
    return {li.name: li.status for li in s.layers}


# ---------------------------------------------------------------------- stress
def _worker(s: PruningSession, seed: int, n: int, refusals: list[str], errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    acts = [
        ("propose", lambda: s.propose()),
        ("step", lambda: s.step()),
        ("accept", lambda: s.accept(rng.choice(PRUNABLE))),
        ("skip", lambda: s.skip(rng.choice(PRUNABLE))),
        ("lock", lambda: s.lock(rng.choice(PRUNABLE))),
        ("unlock", lambda: s.unlock(rng.choice(PRUNABLE))),
        ("accept_all", lambda: s.accept_all()),
        ("undo", lambda: s.undo()),
        ("redo", lambda: s.redo()),
        ("goto", lambda: s.goto(rng.randint(0, len(s.history.entries)))),
        ("configure", lambda: s.configure(step=rng.choice([0.1, 0.2]))),
        ("cancel", lambda: s.cancel()),
    ]
    try:
        for _ in range(n):
            _name, act = rng.choice(acts)
            try:
                act()
            except SessionError as exc:
                refusals.append(str(exc))
            time.sleep(rng.random() * 0.002)
    except BaseException as exc:  # anything but a refusal is a bug: reported to the test thread
        errors.append(exc)


def _runner(s: PruningSession, seed: int, n: int, errors: list[BaseException], outcomes: list[str]) -> None:
    """Starts background runs one after another (refused while one goes), sometimes cancels them."""
    rng = random.Random(seed)
    slow = lambda info: time.sleep(0.003)  # noqa: E731  (keeps the run going while the workers act)
    try:
        for _ in range(n):
            try:
                handle = s.start_run(target=rng.choice([0.3, 0.5, 0.8]), progress=slow)
            except SessionError as exc:
                assert "in progress" in str(exc) or "target" not in str(exc), exc
                time.sleep(0.002)
                continue
            if rng.random() < 0.4:
                time.sleep(rng.random() * 0.01)
                s.cancel()
            result = handle.wait(60)
            assert result is not None
            outcomes.append(result.reason)
            time.sleep(rng.random() * 0.03)  # idle stretches: the workers' actions go through
    except BaseException as exc:
        errors.append(exc)


def _check_history(s: PruningSession, original, probes) -> None:
    h = s.history
    for i in range(1, len(h.entries)):
        a, b = h.entries[i - 1].after, h.entries[i].before
        assert (a.status, sorted(a.proposals), a.iteration, a.rng, a.settings) == \
            (b.status, sorted(b.proposals), b.iteration, b.rng, b.settings), \
            f"entry {i + 1} does not start where entry {i} ended: two actions interleaved"
    for k in range(len(h.entries), -1, -1):
        s.goto(k)
        edited = keras.ops.convert_to_numpy(s.pruner.edited_model()(probes, training=False))
        physical = keras.ops.convert_to_numpy(s.pruned_model()(probes, training=False))
        np.testing.assert_allclose(physical, edited, rtol=1e-5, atol=1e-5,
                                   err_msg=f"physical and edited models differ at history position {k}")
    assert h.position == 0
    assert s.pruner.store.equal(original), "goto(0) is not bit-exact"
    for key, arr in original.arrays.items():
        assert s.pruner.store.arrays[key].tobytes() == arr.tobytes(), key


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_threads_acting_while_a_run_goes(model, probes, round_):
    s = make(model, seed=round_, strategy="stochastic" if round_ % 2 else "impact")
    original = s.pruner.store.copy()
    refusals: list[str] = []
    errors: list[BaseException] = []
    outcomes: list[str] = []
    states: list[str] = []
    s.subscribe(lambda e: states.append(e.data["state"]), kinds=("state",))
    threads = [threading.Thread(target=_worker, args=(s, 100 * round_ + i, 60, refusals, errors))
               for i in range(WORKERS)]
    threads.append(threading.Thread(target=_runner, args=(s, 100 * round_ + 99, 6, errors, outcomes)))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a thread hangs: deadlock?"
    elapsed = time.perf_counter() - t0
    assert errors == [], errors
    assert s.state == "idle" and not s.running
    assert outcomes, "no run ever started"
    assert "running" in states and states[-1] == "idle"
    busy = [r for r in refusals if "in progress" in r]
    # a refusal during a run always says so, never something misleading
    assert all("a run is in progress" in r for r in busy)
    assert len(s.history.entries) > 0
    print(f"round {round_}: {elapsed:.2f}s, {len(s.history.entries)} entries, {len(outcomes)} runs "
          f"({', '.join(sorted(set(outcomes)))}), {len(refusals)} refusals ({len(busy)} busy)")
    _check_history(s, original, probes)


# ---------------------------------------------------------------------- refusals during a run
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


def test_every_action_during_a_run_says_a_run_is_in_progress(model):
    s = make(model)
    s.propose()
    s.lock("dense_2")
    gate = _Gate()
    handle = s.start_run(target=0.9, progress=gate)
    try:
        assert gate.entered.wait(30)
        assert s.state == "running" and s.running
        for action in (lambda: s.accept("dense"), lambda: s.skip("dense"), lambda: s.lock("dense_2"),
                       lambda: s.unlock("dense"), s.accept_all, s.propose, s.step, s.undo, s.redo,
                       lambda: s.goto(0), lambda: s.goto(-5), lambda: s.configure(step=0.3),
                       lambda: s.configure(step="x"), lambda: s.run(target=0.9), lambda: s.run(target="x"),
                       lambda: s.start_run(target=0.9), s.snapshot, lambda: s.save("/nonexistent/x.pws")):
            with pytest.raises(SessionError, match="^a run is in progress"):
                action()
        # readers still work
        assert s.layer("dense").units_alive < 12 and s.alive("dense_2").all()
    finally:
        assert s.cancel() is True
        gate.release.set()
    result = handle.wait(30)
    assert result.reason == "cancelled" and s.state == "idle"
    assert s.cancel() is False, "cancel() when idle is a no-op"


# ---------------------------------------------------------------------- cancel from anywhere
def test_cancel_from_another_thread_stops_within_an_iteration(model):
    s = make(model, step=0.05, target=0.9)
    seen: list[int] = []
    at_two = threading.Event()
    proceed = threading.Event()

    def progress(info):
        seen.append(info["iteration"])
        if info["iteration"] == 2:
            at_two.set()
            assert proceed.wait(30)

    handle = s.start_run(target=0.9, progress=progress)
    assert at_two.wait(30)
    answers: list[bool] = []
    other = threading.Thread(target=lambda: answers.append(s.cancel()))
    other.start()
    other.join(30)
    proceed.set()
    result = handle.wait(30)
    assert answers == [True]
    assert result.reason == "cancelled" and result.iterations == 2 == seen[-1]
    assert "cancelled" in s.history_items[-1].label


def test_cancel_reaches_a_synchronous_run_and_a_run_started_elsewhere(model):
    """A run started with run() in one thread is cancelled by session.cancel() from another (a second view)."""
    s = make(model, step=0.05, target=0.9)
    started = threading.Event()
    go = threading.Event()

    def progress(info):
        started.set()
        assert go.wait(30)

    result: list = []
    t = threading.Thread(target=lambda: result.append(s.run(target=0.9, progress=progress)))
    t.start()
    assert started.wait(30)
    assert s.running
    assert s.cancel() is True
    go.set()
    t.join(30)
    assert result[0].reason == "cancelled" and result[0].iterations == 1
    assert not s.running


def test_an_old_handle_never_cancels_a_later_run(model):
    s = make(model, step=0.05, target=0.9)
    first = s.start_run(target=0.3)
    first.wait(30)
    gate = _Gate()
    second = s.start_run(target=0.9, progress=gate)
    try:
        assert gate.entered.wait(30)
        assert first.cancel() is False
    finally:
        gate.release.set()
    assert second.wait(30).reason == "target"


def test_state_events_follow_the_run(model):
    s = make(model)
    events = []
    s.subscribe(events.append, kinds=("state",))
    s.run(target=0.3)
    assert [e.data["state"] for e in events] == ["running", "idle"]
    s.propose()
    assert events[-1].data["state"] == "idle"


# ---------------------------------------------------------------------- all or nothing
def _full(s: PruningSession):
    return (s.pruner.store.copy(), _statuses(s), sorted(s.proposals), s.history.position, s.settings,
            s.pruner.rng.bit_generator.state)


def _assert_same(s: PruningSession, full) -> None:
    store, st, props, pos, settings, rng = full
    assert s.pruner.store.equal(store)
    assert (_statuses(s), sorted(s.proposals), s.history.position, s.settings) == (st, props, pos, settings)
    assert s.pruner.rng.bit_generator.state == rng


def _poison(entry, first: bool) -> ArrayPatch:
    """Make one array part of an entry's patch fail when swapped (an index past the axis)."""
    parts = entry.patch.arrays
    victim = parts[0] if first else parts[-1]
    bad = ArrayPatch(victim.key, victim.axis, np.array([10**6]), victim.values[:1])
    parts.insert(0 if first else len(parts), bad)
    return bad


def test_a_failing_undo_goto_leaves_position_and_weights(model):
    s = make(model)
    original = s.pruner.store.copy()
    s.step()
    s.step()
    s.step()
    # reverting goes through the parts in reverse: poisoning the first part fails after all others moved
    bad = _poison(s.history.entries[1], first=True)
    full = _full(s)
    with pytest.raises(SessionError, match="goto to position 0 failed.*nothing changed"):
        s.goto(0)
    _assert_same(s, full)
    s.undo()  # entry 3 is fine
    with pytest.raises(SessionError, match="undo .*failed"):
        s.undo()
    assert s.history.position == 2
    s.history.entries[1].patch.arrays.remove(bad)
    s.goto(0)
    assert s.pruner.store.equal(original)


def test_a_failing_redo_leaves_position_and_weights(model):
    s = make(model)
    s.step()
    s.step()
    after = s.pruner.store.copy()
    s.goto(0)
    bad = _poison(s.history.entries[1], first=False)  # applying goes forward: the last part fails last
    full = _full(s)
    with pytest.raises(SessionError, match="failed"):
        s.goto(2)
    _assert_same(s, full)
    s.redo()
    full = _full(s)
    with pytest.raises(SessionError, match="redo .*failed"):
        s.redo()
    _assert_same(s, full)
    s.history.entries[1].patch.arrays.remove(bad)
    s.redo()
    assert s.pruner.store.equal(after)


def test_an_engine_failure_inside_an_action_changes_nothing(model, monkeypatch):
    s = make(model)
    s.propose()
    full = _full(s)
    calls = []
    apply = s.pruner.apply

    def second_fails(p):
        calls.append(p.name)
        if len(calls) == 2:
            raise ValueError(f"{p.name}: simulated engine failure")
        return apply(p)

    monkeypatch.setattr(s.pruner, "apply", second_fails)
    with pytest.raises(SessionError, match="accept_all failed: .*simulated") as info:
        s.accept_all()
    assert isinstance(info.value.__cause__, ValueError)
    _assert_same(s, full)
    assert len(s.history.entries) == 1


# ---------------------------------------------------------------------- validation at the boundary
@pytest.mark.parametrize("call, match", [
    (lambda s: s.run(target="0.5"), "target.*'0.5'"),
    (lambda s: s.run(target=float("nan")), "target.*nan"),
    (lambda s: s.run(target=True), "target.*True"),
    (lambda s: s.run(target=np.array([0.5])), "target"),
    (lambda s: s.run(min_accuracy="x"), "min_accuracy.*'x'"),
    (lambda s: s.run(min_fidelity=float("nan")), "min_fidelity.*nan"),
    (lambda s: s.run(max_iterations=0), "max_iterations"),
    (lambda s: s.run(max_iterations=2.5), "max_iterations"),
    (lambda s: s.run(progress="x"), "progress"),
    (lambda s: s.run(cancel=3), "cancel"),
    (lambda s: s.start_run(target="0.5"), "target.*'0.5'"),
    (lambda s: s.configure(step=True), "step.*True"),
    (lambda s: s.configure(target="0.5"), "target.*'0.5'"),
    (lambda s: s.configure(step=float("inf")), "step.*inf"),
    (lambda s: s.configure(strategy=3), "strategy.*3"),
    (lambda s: s.configure(pool=float("nan")), "pool.*nan"),
    (lambda s: s.configure(alpha=np.array([0.5, 0.2])), "alpha"),
    (lambda s: s.configure(alpha=[0.5]), "alpha"),
    (lambda s: s.configure(strategy="impact", alpha="x"), "alpha"),
    (lambda s: s.goto(True), "history position"),
])
def test_bad_arguments_are_refused_by_name(model, call, match):
    s = make(model)
    s.propose()
    full = _full(s)
    with pytest.raises(SessionError, match=match):
        call(s)
    _assert_same(s, full)
    assert not s.running


@pytest.mark.parametrize("kwargs, match", [
    ({"step": True}, "step"), ({"target": "0.5"}, "target"), ({"seed": 1.5}, "seed"), ({"seed": -1}, "seed"),
    ({"epsilons": [0.1] * 65}, "epsilons"), ({"epsilons": [float("nan")]}, "epsilons"),
    ({"epsilons": "0.1"}, "epsilons"), ({"n_probes": 10**12}, "n_probes"), ({"n_probes": 0}, "n_probes"),
    ({"pool": float("nan")}, "pool"), ({"alpha": np.zeros(3)}, "alpha"), ({"strategy": 3}, "strategy"),
])
def test_constructor_refuses_by_name(model, kwargs, match):
    with pytest.raises(SessionError, match=match):
        make(model, **kwargs)


def test_metrics_without_eval_data(model):
    s = make(model)
    m = s.metrics()
    assert m.accuracy is None and m.robust == {} and m.agreement == 1.0
