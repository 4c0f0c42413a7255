"""Deciding with the widget: sensitivity, plans, proposal previews, comparing history points,
empty actions, runs stopped by locks, export formats, per-row parameters, the value trait.

Sensitivity and plans are tested on the session side first (no widget), then through the
widget exactly as the front end drives it (messages in, traits and sent messages out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import build_mlp, randomize

from paoding_widgets.session import PruningSession, sensitivity
from paoding_widgets.session import plan as plan_mod
from paoding_widgets.session.readonly import SessionView
from paoding_widgets.widget import PruningWidget

NAMES = ["h1", "h2", "h3", "out"]


def make_session(**kwargs: Any) -> PruningSession:
    return PruningSession(build_mlp(hidden=(20, 16, 12), names=NAMES), n_probes=64, **kwargs)


class Recorder:
    def __init__(self, widget: PruningWidget) -> None:
        self.msgs: list[tuple[dict[str, Any], list[Any]]] = []
        widget.send = self

    def __call__(self, content: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.msgs.append((content, list(buffers or [])))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [c for c, _ in self.msgs if c.get("type") == kind]


def act(widget: PruningWidget, action: str, **fields: Any) -> None:
    widget._on_msg(widget, {"type": "action", "action": action, **fields}, [])
    widget.settle()


@pytest.fixture
def session() -> PruningSession:
    return make_session()


@pytest.fixture
def widget(session: PruningSession, tmp_path: Path):
    w = session.widget(export_path=str(tmp_path / "pruned.keras")).settle()
    yield w
    w.close()


# ---------------------------------------------------------------------- sensitivity (session side)
def test_a_layer_whose_removal_changes_nothing_scores_zero() -> None:
    model = build_mlp(hidden=(20, 16, 12), names=NAMES)
    h3 = model.get_layer("h3")
    kernel, bias = h3.get_weights()
    h3.set_weights([np.zeros_like(kernel), bias])  # nothing h2 computes reaches the output
    s = PruningSession(model, n_probes=64, strategy="magnitude")
    sens = sensitivity.compute(SessionView(s), agreement=True)  # measured however loaded the machine is
    h2 = sens.curves["h2"]
    assert len(h2.ratios) > 3 and h2.ratios[-1] > 0.8
    assert all(b == 0.0 for b in h2.bound), h2.bound
    assert all(a == 1.0 for a in h2.agreement)
    assert max(b for b in sens.curves["h1"].bound if b is not None) >= 0  # the others are measured too
    assert max(sens.curves["h3"].bound) > 0  # h3's own units still matter (its bias reaches the output)


@pytest.mark.parametrize("strategy", ["impact", "magnitude", "certified"])
def test_the_certified_bound_is_monotone_in_the_share(strategy: str) -> None:
    s = make_session(strategy=strategy)
    sens = sensitivity.compute(SessionView(s))
    assert set(sens.curves) == {"h1", "h2", "h3"}
    for c in sens.curves.values():
        assert c.ratios == sorted(c.ratios) and c.ratios[0] == 0.0
        bounds = [b for b in c.bound if b is not None]
        assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > 0
        assert c.params == sorted(c.params) and c.flops == sorted(c.flops)


def test_sensitivity_measures_robustness_kept_with_eval_data() -> None:
    from paoding_widgets.engine.evaluate import predict_classes, robust_instances

    model = randomize(build_mlp(hidden=(20, 16, 12), names=NAMES), seed=3)
    x = np.random.default_rng(4).random((200, 8)).astype(np.float32)
    y = predict_classes(model, x)  # the model's own answers: everything correct now
    assert len(np.unique(y)) > 1  # decision boundaries inside the box: FGSM can flip some answers
    s = PruningSession(model, n_probes=64, strategy="magnitude", eval_data=(x, y), epsilons=(0.05, 0.1))
    sens = sensitivity.compute(SessionView(s), agreement=True)
    now = robust_instances(model, x[:sensitivity.MAX_ROBUST], y[:sensitivity.MAX_ROBUST], (0.05, 0.1))
    assert min(now.values()) > 0
    for c in sens.curves.values():
        assert len(c.robust) == len(c.ratios) and c.robust[0] == 1.0
        assert all(r is not None and 0 <= r for r in c.robust)
        assert c.as_dict()["robust"][0] == 1.0
    assert any(r != 1.0 for c in sens.curves.values() for r in c.robust)  # pruning moves robustness somewhere
    s2 = PruningSession(build_mlp(hidden=(20, 16, 12), names=NAMES), n_probes=64, strategy="magnitude",
                        eval_data=(x, y), epsilons=())
    assert all(r is None for c in sensitivity.compute(SessionView(s2), agreement=True).curves.values()
               for r in c.robust)  # no step sizes: nothing to measure


def test_sensitivity_leaves_the_session_untouched_and_is_cancellable(session: PruningSession) -> None:
    before = session.pruner.store.copy()
    version = session.pruner.store.version
    sensitivity.compute(SessionView(session))
    assert session.pruner.store.equal(before) and session.pruner.store.version == version
    assert session.history.entries == []
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(sensitivity.Cancelled):
        sensitivity.compute(SessionView(session), cancelled=cancelled)
    assert session.pruner.store.equal(before)


def test_the_bound_certifies_the_change_on_samples(session: PruningSession) -> None:
    """Pruning a layer alone to a share changes no logit by more than its certified bound (box samples)."""
    from paoding_widgets.engine.evaluate import predict

    sens = sensitivity.compute(SessionView(session), ratios=(0.5,))
    x = np.random.default_rng(1).random((200, 8)).astype(np.float32)
    base = predict(session.model, x)
    for name, c in sens.curves.items():
        other = make_session()
        other.run(targets={name: c.ratios[-1]})
        change = np.abs(predict(other.pruner.edited_model(), x) - base).max()
        assert change <= c.bound[-1] * (1 + 1e-4) + 1e-5, (name, change, c.bound[-1])


# ---------------------------------------------------------------------- plans
def test_the_plan_reaches_the_target_and_respects_locks(session: PruningSession) -> None:
    sens = sensitivity.compute(SessionView(session))
    p = plan_mod.make_plan(sens, 0.3, locked=["h2"])
    assert p.reached and p.saved >= 0.3 * p.total
    assert "h2" not in p.targets and p.targets
    session.lock("h2")
    result = session.run(targets=p.targets)
    assert result.reason == "target"
    assert session.layer("h2").units_alive == 16  # locked: untouched
    for name, share in p.targets.items():
        info = session.layer(name)
        assert info.units_total - info.units_alive == session.pruner.target_units(session.graph.group(name), share)
    removed = session.model.count_params() - session.metrics().size.params
    assert removed >= 0.8 * p.saved  # the prediction counts shared rows and columns twice; close enough


def test_an_unreachable_goal_says_so(session: PruningSession) -> None:
    sens = sensitivity.compute(SessionView(session))
    p = plan_mod.make_plan(sens, 0.95, locked=["h1", "h2"])
    assert not p.reached and "cannot be reached" in p.message and "2 locked layers" in p.message
    assert set(p.targets) <= {"h3"}
    with pytest.raises(Exception, match="goal"):
        plan_mod.make_plan(sens, 1.5)


def test_flops_plans_prefer_flops(session: PruningSession) -> None:
    sens = sensitivity.compute(SessionView(session))
    p = plan_mod.make_plan(sens, 0.2, metric="flops")
    assert p.metric == "flops" and p.reached and p.saved >= 0.2 * sens.total_flops


# ---------------------------------------------------------------------- the session's empty and short actions
def test_empty_actions_add_nothing_to_the_history(session: PruningSession) -> None:
    events = []
    session.subscribe(lambda e: events.append(e))
    session.run(target=0.3)
    n = len(session.history.entries)
    r = session.run(target=0.3)
    assert r.iterations == 0 and not r.recorded and len(session.history.entries) == n
    assert "nothing to run" in events[-1].data["message"]
    session.configure(target=0.3)
    n = len(session.history.entries)
    assert session.propose() == {}
    assert len(session.history.entries) == n and "nothing to propose" in events[-1].data["message"]


def test_a_run_stopped_short_by_locks_says_so(session: PruningSession) -> None:
    session.lock("h1")
    r = session.run(target=0.5)
    assert r.reason == "target" and r.locked == ("h1",)
    assert "locked layer kept whole" in session.history_items[-1].label
    with pytest.raises(Exception, match="must be a number"):
        session.run(targets={"h2": 1.5})
    with pytest.raises(Exception, match="not prunable"):
        session.run(targets={"out": 0.5})


# ---------------------------------------------------------------------- through the widget
def test_widget_value_and_live_params_follow_the_session(session: PruningSession, widget: PruningWidget) -> None:
    seen = []
    widget.observe(lambda ch: seen.append(ch["new"]), "value")
    full = dict(widget.live_params)
    assert full["h1"] == session.model.get_layer("h1").count_params()
    act(widget, "propose")
    act(widget, "accept", layer="h1")
    assert seen and seen[-1]["position"] == 2 and seen[-1]["history_length"] == 2
    assert widget.live_params["h1"] < full["h1"] and widget.live_params["h2"] < full["h2"]  # h1's units feed h2
    assert widget.live_params["h3"] == full["h3"]
    gone = 20 - session.layer("h1").units_alive
    assert widget.live_params["h1"] == full["h1"] - gone * (8 + 1)  # one kernel column and one bias per unit
    # the rows alive after surgery agree with the physical model
    pruned = session.pruned_model()
    assert widget.live_params["h1"] == pruned.get_layer("h1").count_params()


def test_previews_of_a_proposal(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "propose")
    import time

    deadline = time.monotonic() + 30
    while any(p["bound_pending"] for p in widget.previews.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(widget.previews) == {"h1", "h2", "h3"}
    for name, p in widget.previews.items():
        prop = session.proposals[name]
        assert p["units"] == len(prop.drop) and p["params"] == prop.params_saved > 0 and p["flops"] > 0
        assert p["bound"] is not None and p["bound"] >= 0
        expected = sensitivity.proposal_bound(session.pruner, session.graph.group(name), prop.candidates)
        assert p["bound"] == pytest.approx(expected)
    act(widget, "accept", layer="h1")
    assert "h1" not in widget.previews


def test_empty_actions_in_the_widget(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "run", target=0.3)
    widget._run.wait(60)
    widget.settle()
    n = len(widget.history)
    act(widget, "run", target=0.3)
    widget._run.wait(60)
    widget.settle()
    assert len(widget.history) == n and "nothing to run" in widget.notice and widget.error == ""


def test_run_with_locks_tells_the_view(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "lock", layer="h1")
    progress = []
    widget.observe(lambda ch: progress.append(ch["new"]), "progress_info")
    act(widget, "run", target=0.5)
    widget._run.wait(60)
    widget.settle()
    assert "locked" in widget.notice and widget.error == ""
    assert progress and progress[-1]["fraction"] == pytest.approx(1.0)
    assert all(p["iteration"] >= 1 and p["eta"] is None or p["eta"] >= 0 for p in progress if p)
    assert widget.progress == pytest.approx(1.0)  # the bar fills: the locked layer is not part of the run


def test_sensitivity_plan_edit_and_run_through_the_widget(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "plan", goal=0.3)  # no sensitivity yet
    assert "sensitivity first" in widget.error
    act(widget, "sensitivity")
    sens = widget.wait_sensitivity(60)
    assert sens["status"] == "done" and sens["current"] and set(sens["curves"]) == {"h1", "h2", "h3"}
    act(widget, "lock", layer="h2")  # a new state: the curves are kept, marked as of another state
    assert widget.sensitivity["current"] is False
    act(widget, "sensitivity")
    widget.wait_sensitivity(60)
    assert widget.sensitivity["current"] is True
    act(widget, "plan", goal=0.25)
    assert widget.error == "" and widget.plan["reached"] and "h2" not in widget.plan["targets"]
    act(widget, "plan_set", layer="h3", share=0.5)
    assert widget.plan["targets"]["h3"] == 0.5 and widget.plan["edited"]
    act(widget, "run_plan")
    widget._run.wait(60)
    widget.settle()
    assert widget.error == ""
    assert session.layer("h3").units_alive == 6 and session.layer("h2").units_alive == 16
    assert session.history_items[-1].label.startswith("run plan:")
    act(widget, "undo")
    act(widget, "sensitivity")  # the state before the plan: served from the cache
    assert widget.sensitivity["status"] == "done"


def test_cancel_sensitivity(session: PruningSession, widget: PruningWidget, monkeypatch) -> None:
    import threading

    gate = threading.Event()
    real = sensitivity.compute

    def slow(*a: Any, **k: Any) -> Any:
        gate.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(sensitivity, "compute", slow)
    act(widget, "sensitivity")
    assert widget.sensitivity["status"] == "computing"
    act(widget, "propose")  # never blocked by the sensitivity
    assert session.proposals
    act(widget, "cancel_sensitivity")
    gate.set()
    assert widget.wait_sensitivity(60)["status"] == "cancelled"


def test_compare_two_history_points(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "propose")
    act(widget, "accept", layer="h1")
    act(widget, "step")
    act(widget, "goto", n=1)  # compare points on both sides of the current one
    act(widget, "compare", a=0, b=3)
    c = widget.compare
    assert (c["a"], c["b"]) == (0, 3)
    by = {x["name"]: x for x in c["layers"]}
    assert by["h1"]["units_a"] == 20 and by["h1"]["units_b"] == 20 - by["h1"]["went_count"] < 20
    act(widget, "goto", n=3)
    assert by["h1"]["units_b"] == session.layer("h1").units_alive
    alive = session.alive("h1")
    assert sorted(by["h1"]["went"]) == np.flatnonzero(~alive).tolist()
    assert c["metrics_a"] is not None and c["metrics_a"]["size"]["params"] == session.model.count_params()
    assert all(h["metrics"] is not None for h in widget.history)  # every point carries its metrics once seen
    act(widget, "compare", a=0, b=9)
    assert "history position" in widget.error
    act(widget, "step")  # a new point, compared before its metrics are known: they fill in when computed
    widget._metrics_by_position.pop(widget._view.state_key(4), None)
    act(widget, "compare", a=0, b=4)
    assert widget.compare["metrics_b"] is None
    widget._publish(4, session.metrics())  # what the metrics thread does when it ends
    assert widget.compare["metrics_b"]["size"]["params"] == session.metrics().size.params


def test_export_formats_and_overwrite(session: PruningSession, widget: PruningWidget, tmp_path: Path) -> None:
    sent = Recorder(widget)
    act(widget, "step")
    path = tmp_path / "m.keras"
    act(widget, "export", path=str(path), format="tflite16")
    tfl = tmp_path / "m.tflite"
    assert widget.error == "" and tfl.is_file() and sent.of("exported")[0]["format"] == "tflite16"
    data = tfl.read_bytes()
    act(widget, "export", path=str(tfl), format="tflite16")
    assert sent.of("confirm_overwrite")[-1]["path"] == str(tfl) and tfl.read_bytes() == data
    act(widget, "export", path=str(tfl), format="tflite16", overwrite=True)
    assert len(sent.of("exported")) == 2
    act(widget, "export", path=str(path), format="onnx")
    assert "export format" in widget.error


def test_a_plan_without_certified_bounds_uses_the_strategys_score() -> None:
    """Deep nets' bounds can overflow (ResNet50): the plan then ranks by the strategy's own score."""
    curve = sensitivity.Curve
    curves = {
        "cheap": curve("cheap", [0, 0.5, 0.9], [0.0, None, None], [None] * 3, [None] * 3, [0, 50, 90], [0, 50, 90],
                       score=[0.0, 1.0, 2.0]),
        "dear": curve("dear", [0, 0.5, 0.9], [0.0, None, None], [None] * 3, [None] * 3, [0, 50, 90], [0, 50, 90],
                      score=[0.0, 10.0, 20.0]),
    }
    sens = sensitivity.Sensitivity((0, 0), curves, 0.0, 200, 200)
    p = plan_mod.make_plan(sens, 0.25)
    assert p.reached and p.targets == {"cheap": 0.5}
    p = plan_mod.make_plan(sens, 0.25, locked=["cheap"])
    assert p.reached and p.targets == {"dear": 0.5}


def test_the_front_end_may_echo_the_value_but_not_change_it(session: PruningSession, widget: PruningWidget) -> None:
    """marimo re-runs cells when the front end reports a value: the echo of the kernel's own value is accepted."""
    act(widget, "propose")
    widget.set_state({"value": dict(widget.value)})
    assert widget.error == ""
    before = dict(widget.value)
    widget.set_state({"value": {**before, "position": 99}})
    assert widget.value == before and "refused" in widget.error


# ---------------------------------------------------------------------- accuracy after accepting (eval data)
def _eval_session() -> PruningSession:
    model = build_mlp(hidden=(20, 16, 12), names=NAMES)
    rng = np.random.default_rng(3)
    x = rng.uniform(-5, 5, (300, 8)).astype("float32")
    y = model.predict(x, verbose=0).argmax(-1)  # the original is right on all: accuracy after = agreement
    return PruningSession(model, n_probes=64, eval_data=(x, y), step=0.6, strategy="magnitude", input_range=(-5.0, 5.0))


def _wait(cond: Any, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _accuracy(model: Any, data: Any) -> float:
    return float((model.predict(data[0], verbose=0).argmax(-1) == data[1]).mean())


def test_preview_accuracy_is_the_accuracy_after_accepting(tmp_path: Path) -> None:
    s = _eval_session()
    w = s.widget(export_path=str(tmp_path / "p.keras")).settle()
    try:
        act(w, "propose")
        _wait(lambda: w.previews and not any(p["accuracy_pending"] for p in w.previews.values()))
        assert set(w.previews) == {"h1", "h2", "h3"}
        before = _accuracy(s.pruned_model(), s.eval_data)
        expected = {}
        for name in ("h1", "h2", "h3"):
            p = w.previews[name]
            assert p["samples"] == 300 and p["accuracy_now"] == pytest.approx(before)
            probe = _eval_session()
            probe.propose()
            probe.accept(name)
            expected[name] = _accuracy(probe.pruned_model(), probe.eval_data)
            assert p["accuracy"] == pytest.approx(expected[name]), name
        assert before == 1.0 and min(expected.values()) < 1.0  # the figure says something
        # accepting h1 moves the state on: h2's figure is kept, marked stale, then computed again
        seen: list[dict[str, Any]] = []
        w.observe(lambda ch: seen.append(dict(ch["new"].get("h2", {}))), "previews")
        act(w, "accept", layer="h1")
        assert "h1" not in w.previews
        _wait(lambda: not w.previews["h2"]["accuracy_pending"])
        assert any(x.get("accuracy_stale") and x.get("accuracy") == pytest.approx(expected["h2"]) for x in seen)
        probe = _eval_session()
        probe.propose()
        probe.accept("h1")
        probe.accept("h2")
        assert w.previews["h2"]["accuracy"] == pytest.approx(_accuracy(probe.pruned_model(), probe.eval_data))
        assert not w.previews["h2"]["accuracy_stale"]
        # cached per state: undo brings the first figures back at once (nothing pending)
        act(w, "undo")
        assert not w.previews["h2"]["accuracy_pending"]
        assert w.previews["h2"]["accuracy"] == pytest.approx(expected["h2"])
    finally:
        w.close()


def test_preview_accuracy_never_blocks_an_action_and_is_cancelled(tmp_path: Path, monkeypatch) -> None:
    import threading

    s = _eval_session()
    w = s.widget(export_path=str(tmp_path / "p.keras")).settle()
    gate, calls = threading.Event(), []
    real = sensitivity.proposal_accuracies

    def slow(view: Any, **k: Any) -> Any:
        calls.append(view.revision)
        gate.wait(20)
        return real(view, **k)

    monkeypatch.setattr(sensitivity, "proposal_accuracies", slow)
    try:
        act(w, "propose")
        _wait(lambda: calls)
        assert w.previews["h1"]["accuracy_pending"]
        w_drop = w.previews["h1"]["units"]
        act(w, "accept", layer="h1")  # not blocked by the computation in flight
        assert s.layer("h1").units_alive == 20 - w_drop
        _wait(lambda: len(calls) == 2)
        gate.set()
        _wait(lambda: not w.previews["h2"]["accuracy_pending"])
        assert "h1" not in w.previews and w.previews["h2"]["accuracy"] is not None
    finally:
        gate.set()
        w.close()


def test_no_eval_data_no_accuracy_preview(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "propose")
    _wait(lambda: not any(p["bound_pending"] for p in widget.previews.values()))
    for p in widget.previews.values():
        assert p["eval"] is False and p["accuracy"] is None and p["accuracy_pending"] is False


# ---------------------------------------------------------------------- deploying from the widget
def test_deploy_from_the_widget(tmp_path: Path) -> None:
    s = _eval_session()
    w = s.widget(export_path=str(tmp_path / "small.keras")).settle()
    sent = Recorder(w)
    try:
        offered = {f["name"]: f for f in w.deploy["offered"]}
        assert {"keras", "keras-int8", "tflite-int8", "onnx", "tflite-full-int8"} <= set(offered)
        assert offered["tflite-full-int8"]["data"] and w.deploy["eval"] is True
        act(w, "step")
        folder = tmp_path / "out"
        act(w, "deploy", formats=["keras", "keras-int8", "tflite-int8"], dir=str(folder))
        assert w.error == ""
        d = w.wait_deploy(300)
        assert d["status"] == "done", d
        names = [r["name"] for r in d["rows"]]
        assert names == ["original", "pruned", "pruned + keras-int8", "pruned + tflite-int8"]
        for r in d["rows"][1:]:
            assert Path(r["path"]).is_file() and Path(r["path"]).stat().st_size == r["bytes"] > 0
            assert Path(r["path"]).name.startswith("small.")
            assert 0 <= r["accuracy"] <= 1 and 0 <= r["agreement"] <= 1
            assert r["times_smaller"] == pytest.approx(d["original_bytes"] / r["bytes"])
        assert d["rows"][1]["accuracy"] == pytest.approx(_accuracy(s.pruned_model(), s.eval_data))
        assert "deployed 3 files" in w.notice
        # a second time: the widget asks before overwriting, and writes nothing until confirmed
        data = (folder / "small.int8.tflite").read_bytes()
        act(w, "deploy", formats=["tflite-int8"], dir=str(folder))
        ask = sent.of("confirm_overwrite")[-1]
        assert ask["kind"] == "deploy" and ask["paths"] == [str(folder / "small.int8.tflite")]
        assert w.deploy["status"] == "done" and (folder / "small.int8.tflite").read_bytes() == data
        act(w, "deploy", formats=["tflite-int8"], dir=str(folder), overwrite=True)
        assert w.wait_deploy(300)["status"] == "done"
        assert [r["name"] for r in w.deploy["rows"]][-1] == "pruned + tflite-int8"
        act(w, "deploy", formats=["zip"], dir=str(folder))
        assert "deploy formats" in w.error
    finally:
        w.close()


def test_full_int8_deploy_needs_eval_data(session: PruningSession, widget: PruningWidget, tmp_path: Path) -> None:
    assert widget.deploy["eval"] is False
    act(widget, "deploy", formats=["tflite-full-int8"], dir=str(tmp_path / "d"))
    assert "eval_data" in widget.error and widget.deploy["status"] == "idle"
    assert not (tmp_path / "d").exists()


def test_certified_bounds_after_units_are_removed_need_no_widening() -> None:
    """A removed unit's pre-activation is a point exactly at ReLU's kink: its slopes are both sides', so the
    change carried through it is finite (it was inf * 0 before the engine's ReLU rule knew the point case)."""
    from paoding_widgets.engine.activations import relu_rule

    lo = np.array([0.0, -1.0, 2.0, 6.0], np.float32)
    gmin, gmax = relu_rule().slope(lo, lo.copy())
    assert gmin.tolist() == [0.0, 0.0, 1.0, 1.0] and gmax.tolist() == [1.0, 0.0, 1.0, 1.0]
    gmin, gmax = relu_rule(max_value=6.0).slope(lo, lo.copy())
    assert gmin.tolist() == [0.0, 0.0, 1.0, 0.0] and gmax.tolist() == [1.0, 0.0, 1.0, 1.0]
    d = relu_rule().delta(lo, lo.copy(), np.zeros_like(lo), np.zeros_like(lo))
    assert np.all(np.isfinite(d[0])) and np.all(d[0] == 0) and np.all(d[1] == 0)

    s = make_session(step=0.3)
    s.propose()
    s.accept("h1")
    s.accept("h2")
    s.propose()
    p = s.pruner
    for name, prop in s.proposals.items():
        inj = sensitivity.joint_injection(p.view(p.graph.group(name)), prop.candidates)
        assert inj is not None
        lo, hi = p.propagator.deltas(p.bounds(), inj, 1)
        assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)), name
        b = sensitivity.proposal_bound(p, p.graph.group(name), prop.candidates)
        assert b is not None and 0 < b < np.inf


def test_preview_accuracy_fits_its_time_budget() -> None:
    """A large model gets fewer samples (the figure says how many), never fewer than MIN_PREVIEW_EVAL."""
    s = _eval_session()
    s.propose()
    v = SessionView(s)
    full = sensitivity.proposal_accuracies(v, budget=None)
    assert full is not None and full.samples == 300
    tight = sensitivity.proposal_accuracies(v, budget=1e-6)
    assert tight is not None and tight.samples == sensitivity.MIN_PREVIEW_EVAL
    assert set(tight.after) == set(full.after) == {"h1", "h2", "h3"}
    x, y = s.eval_data
    probe = _eval_session()
    probe.propose()
    probe.accept("h3")
    n = sensitivity.MIN_PREVIEW_EVAL
    assert tight.after["h3"] == pytest.approx(_accuracy(probe.pruned_model(), (x[:n], y[:n])))
