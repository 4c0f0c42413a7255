"""The Jupyter widget without a browser: traits, binary heatmaps, validation, sync.

``PruningWidget`` is driven exactly as the front end drives it: messages go in
through ``widget._on_msg(widget, {"type": "action", ...}, [])`` and whatever
the kernel sends back is captured by replacing ``widget.send`` with a recorder
of ``(content, buffers)``.  Each check compares the widget's traits with the
session it mirrors; refused messages must leave the session bit-for-bit
unchanged (``store.equal`` and the history length/position).

Bugs these tests found were fixed; the tests guard against their return.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import build_mlp, randomize

from paoding_widgets.engine.strategies import STRATEGIES
from paoding_widgets.session import PruningSession
from paoding_widgets.widget import PruningWidget, payload

NAMES = ["h1", "h2", "h3", "out"]  # Dense 20 -> Dropout -> Dense 16 -> Dense 12 -> Dense 3 (output)


# ---------------------------------------------------------------------- helpers
def make_session(**kwargs: Any) -> PruningSession:
    return PruningSession(build_mlp(hidden=(20, 16, 12), names=NAMES), n_probes=64, **kwargs)


class Recorder:
    """Stands in for ``widget.send``: keeps every (content, buffers) the kernel sends."""

    def __init__(self, widget: PruningWidget) -> None:
        self.msgs: list[tuple[dict[str, Any], list[Any]]] = []
        widget.send = self  # instance attribute shadows the method

    def __call__(self, content: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.msgs.append((content, list(buffers or [])))

    def of(self, kind: str) -> list[tuple[dict[str, Any], list[Any]]]:
        return [(c, b) for c, b in self.msgs if c.get("type") == kind]

    def heatmap_names(self) -> list[str]:
        return [n for c, _ in self.of("heatmaps") for n in c["names"]]

    def clear(self) -> None:
        self.msgs.clear()


def act(widget: PruningWidget, action: str, **fields: Any) -> None:
    """Send an action as the front end does, then wait for the metrics (computed in the background)."""
    widget._on_msg(widget, {"type": "action", "action": action, **fields}, [])
    widget.settle()


def snapshot(s: PruningSession) -> tuple:
    return (s.pruner.store.copy(), len(s.history.entries), s.history.position,
            {x.name: x.status for x in s.layers}, sorted(s.proposals), s.settings)


def assert_unchanged(s: PruningSession, snap: tuple) -> None:
    store, n, pos, status, props, settings = snap
    assert s.pruner.store.equal(store), "a refused message changed the weights"
    assert (len(s.history.entries), s.history.position) == (n, pos), "a refused message changed the history"
    assert {x.name: x.status for x in s.layers} == status
    assert sorted(s.proposals) == props
    assert s.settings == settings


def dropout(s: PruningSession) -> str:
    """The Dropout layer's name (Keras numbers auto-named layers per process)."""
    return next(n.name for n in s.graph.nodes if n.type == "Dropout")


def row(widget: PruningWidget, name: str) -> dict[str, Any]:
    return next(r for r in widget.rows() if r["name"] == name)


def assert_mirrors(widget: PruningWidget, s: PruningSession) -> None:
    """The traits say what the session says."""
    assert [r["name"] for r in widget.layers if r["depth"] == 0] == [n.name for n in s.graph.nodes]
    for info in s.layers:
        r = row(widget, info.name)
        assert r["group"] == info.name
        assert r["status"] == info.status
        assert (r["units_alive"], r["units_total"]) == (info.units_alive, info.units_total)
        assert r["reason"] == info.reason
        if info.proposal is None:
            assert r["proposal"] is None
        else:
            assert r["proposal"]["drop"] == info.proposal["drop"]
            assert r["proposal"]["keep"] == info.proposal["keep"]
    assert widget.settings == {k: s.settings[k] for k in ("strategy", "step", "target")}
    assert widget.position == s.history.position
    assert [{k: x for k, x in h.items() if k != "metrics"} for h in widget.history] == [
        {"index": h.index, "kind": h.kind, "label": h.label, "applied": h.applied,
         "share_pruned": h.share_pruned} for h in s.history_items]
    assert widget.running == s.running


def synced_state(widget: PruningWidget) -> dict[str, Any]:
    return {k: getattr(widget, k) for k in ("layers", "states", "settings", "strategies", "metrics", "metrics_history",
                                            "history", "position", "running")}


@pytest.fixture
def session() -> PruningSession:
    return make_session()


@pytest.fixture
def widget(session: PruningSession, tmp_path: Path) -> PruningWidget:
    w = session.widget(export_path=str(tmp_path / "pruned.keras")).settle()
    yield w
    w.close()


@pytest.fixture
def sent(widget: PruningWidget) -> Recorder:
    return Recorder(widget)


# ---------------------------------------------------------------------- traits mirror the session
def test_initial_traits_mirror_the_session(session: PruningSession, widget: PruningWidget) -> None:
    assert isinstance(widget, PruningWidget) and widget.session is session
    assert_mirrors(widget, session)
    assert widget.strategies == sorted(STRATEGIES)
    assert widget.position == 0 and widget.history == [] and widget.error == "" and not widget.running
    params = session.model.count_params()
    assert widget.metrics["size"]["params"] == session.metrics().as_dict()["size"]["params"] == params
    assert widget.metrics["share_pruned"] == 0.0
    assert [m["position"] for m in widget.metrics_history] == [0]
    assert row(widget, "h1")["status"] == "ready" and row(widget, "h1")["heatmap"] is True
    assert row(widget, "out")["status"] == "not prunable" and row(widget, "out")["reason"]
    assert row(widget, dropout(session))["group"] is None and row(widget, dropout(session))["heatmap"] is False
    json.dumps(synced_state(widget))  # plain JSON: no NumPy scalars or arrays in the traits


def test_propose_shows_drop_and_keep(session: PruningSession, widget: PruningWidget, sent: Recorder) -> None:
    act(widget, "propose")
    assert widget.error == ""
    assert_mirrors(widget, session)
    pending = [r for r in widget.rows() if r["status"] == "pending"]
    assert {r["name"] for r in pending} == {"h1", "h2", "h3"}
    for r in pending:
        p = r["proposal"]
        assert p["drop"] and set(p) == {"action", "drop", "keep", "params_saved"}
        assert all(0 <= u < r["units_total"] for u in p["drop"])
    assert widget.history[-1]["kind"] == "propose" and widget.position == 1
    assert sent.of("heatmaps") == [], "a proposal changes no weights, so no heatmap is resent"
    json.dumps(synced_state(widget))


def test_accept_updates_history_position_and_metrics(session: PruningSession, widget: PruningWidget) -> None:
    params0 = widget.metrics["size"]["params"]
    act(widget, "propose")
    dropped = len(row(widget, "h1")["proposal"]["drop"])
    act(widget, "accept", layer="h1")
    assert widget.error == ""
    assert_mirrors(widget, session)
    r = row(widget, "h1")
    assert r["status"] in ("accepted", "done") and r["proposal"] is None
    assert r["units_alive"] == r["units_total"] - dropped
    assert [h["kind"] for h in widget.history] == ["propose", "accept"] and widget.position == 2
    assert widget.metrics["size"]["params"] < params0
    assert widget.metrics["share_pruned"] > 0
    assert [m["position"] for m in widget.metrics_history] == [0, 1, 2]


def test_settings_undo_redo_goto_accept_all_step(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "configure", settings={"strategy": "magnitude", "step": 0.1, "target": 0.4})
    assert widget.error == "" and widget.settings == {"strategy": "magnitude", "step": 0.1, "target": 0.4}
    assert widget.history[-1]["kind"] == "settings"
    act(widget, "propose")
    act(widget, "accept_all")
    assert widget.error == "" and not any(r["status"] == "pending" for r in widget.rows())
    act(widget, "step")
    assert widget.error == "" and widget.position == 4
    assert_mirrors(widget, session)
    params = widget.metrics["size"]["params"]
    act(widget, "undo")
    assert widget.position == 3 and widget.metrics["size"]["params"] > params
    act(widget, "redo")
    assert widget.position == 4 and widget.metrics["size"]["params"] == params
    act(widget, "goto", n=0)
    assert widget.error == "" and widget.position == 0
    assert widget.settings["strategy"] == "compensated"  # the session's default, before the settings entry
    assert widget.metrics["size"]["params"] == session.model.count_params()
    assert all(h["applied"] is False for h in widget.history) and len(widget.history) == 4
    assert_mirrors(widget, session)
    act(widget, "goto", n=4)
    assert widget.position == 4 and widget.metrics["size"]["params"] == params
    assert_mirrors(widget, session)


def test_lock_and_unlock(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "lock", layer="h2")
    assert row(widget, "h2")["status"] == "locked"
    act(widget, "propose")
    assert row(widget, "h2")["proposal"] is None and row(widget, "h1")["status"] == "pending"
    act(widget, "unlock", layer="h2")
    assert widget.error == "" and row(widget, "h2")["status"] == "ready"
    assert_mirrors(widget, session)


# ---------------------------------------------------------------------- heatmaps as binary buffers
def test_hello_sends_every_heatmap_as_binary(session: PruningSession, widget: PruningWidget, sent: Recorder) -> None:
    for _ in range(2):  # a second view's hello gets everything again
        sent.clear()
        act(widget, "hello")
        msgs = sent.of("heatmaps")
        assert len(msgs) == 1
        content, buffers = msgs[0]
        assert set(content) == {"type", "names", "shapes"}
        assert content["names"] == [r["name"] for r in widget.layers if r["heatmap"]] == ["h1", "h2", "h3", "out"]
        assert len(buffers) == len(content["names"]) == len(content["shapes"])
        _, expected = payload.heatmaps(session)
        for (h, w), buf, want in zip(content["shapes"], buffers, expected):
            assert isinstance(buf, (bytes, bytearray, memoryview))
            assert len(buf) == h * w and 0 < h <= payload.HEATMAP_ROWS and 0 < w <= payload.HEATMAP_COLS
            assert bytes(buf) == want
        # the JSON part carries names and [h, w] pairs only -- never pixel lists
        text = json.dumps(content)
        assert len(text) < 200
        assert all(isinstance(s, list) and len(s) == 2 for s in content["shapes"])


def test_accept_resends_only_changed_heatmaps(session: PruningSession, widget: PruningWidget,
                                              sent: Recorder) -> None:
    act(widget, "propose")
    act(widget, "hello")
    sent.clear()
    before = dict(zip(payload.heatmaps(session)[0]["names"], payload.heatmaps(session)[1]))
    act(widget, "accept", layer="h1")
    after = dict(zip(payload.heatmaps(session)[0]["names"], payload.heatmaps(session)[1]))
    changed = [n for n in after if after[n] != before[n]]
    msgs = sent.of("heatmaps")
    assert len(msgs) == 1
    content, buffers = msgs[0]
    assert content["names"] == changed
    assert "h1" in changed
    assert "h3" not in content["names"] and "out" not in content["names"], "unchanged heatmaps were resent"
    assert [bytes(b) for b in buffers] == [after[n] for n in changed]
    sent.clear()
    act(widget, "undo")  # back: the same layers change again
    assert sent.heatmap_names() == changed
    sent.clear()
    act(widget, "lock", layer="h3")  # no weight change -> nothing resent
    assert sent.of("heatmaps") == []


# ---------------------------------------------------------------------- validation
BAD = [
    ({"action": "explode"}, "unknown action"),
    ({"action": None}, "unknown action"),
    ({"action": "accept"}, "needs 'layer'"),
    ({"action": "detail"}, "needs 'layer'"),
    ({"action": "accept", "layer": "nope"}, "unknown layer"),
    ({"action": "lock", "layer": "h1/kernel"}, "unknown layer"),
    ({"action": "accept", "layer": 3}, "unknown layer"),
    ({"action": "skip", "layer": None}, "unknown layer"),
    ({"action": "lock", "layer": ["h1"]}, "unknown layer"),
    ({"action": "lock", "layer": {"name": "h1"}}, "unknown layer"),
    ({"action": "goto"}, "needs 'n'"),
    ({"action": "goto", "n": 99}, "history position"),
    ({"action": "goto", "n": -1}, "history position"),
    ({"action": "goto", "n": True}, "history position"),
    ({"action": "goto", "n": 1.0}, "history position"),
    ({"action": "goto", "n": "1"}, "history position"),
    ({"action": "configure"}, "needs 'settings'"),
    ({"action": "configure", "settings": {"step": 0}}, "step"),
    ({"action": "configure", "settings": {"step": 1.5}}, "step"),
    ({"action": "configure", "settings": {"step": float("nan")}}, "step"),
    ({"action": "configure", "settings": {"step": float("inf")}}, "step"),
    ({"action": "configure", "settings": {"step": "x"}}, "step"),
    ({"action": "configure", "settings": {"step": True}}, "step"),
    ({"action": "configure", "settings": {"target": 1}}, "target"),
    ({"action": "configure", "settings": {"strategy": "nope"}}, "unknown strategy"),
    ({"action": "configure", "settings": {"strategy": None}}, "unknown strategy"),
    ({"action": "configure", "settings": {"speed": 2}}, "unknown settings"),
    ({"action": "configure", "settings": [0.1]}, "settings must be an object"),
    ({"action": "export", "path": "model.h5"}, "export path"),
    ({"action": "export", "path": "model.txt"}, "export path"),
    ({"action": "export", "path": ""}, "export path"),
    ({"action": "export", "path": 7}, "export path"),
    ({"action": "detail", "layer": "h1", "kind": "pixels"}, "detail kind"),
    ({"action": "run", "target": 1.5}, "target"),
    ({"action": "run", "target": float("nan")}, "target"),
]


@pytest.mark.parametrize("fields, problem", BAD, ids=[f"{f}" for f, _ in BAD])
def test_bad_message_is_refused_and_changes_nothing(session: PruningSession, widget: PruningWidget,
                                                    sent: Recorder, tmp_path: Path, monkeypatch,
                                                    fields: dict, problem: str) -> None:
    monkeypatch.chdir(tmp_path)  # a wrongly accepted export would land here
    act(widget, "propose")  # open proposals: accept/skip would be valid for a good layer
    snap, traits = snapshot(session), synced_state(widget)
    sent.clear()
    widget._on_msg(widget, {"type": "action", **fields}, [])
    assert problem in widget.error, f"error {widget.error!r} does not name {problem!r}"
    assert [c for c, _ in sent.msgs] == [{"type": "error", "message": widget.error}]
    assert_unchanged(session, snap)
    assert synced_state(widget) == traits
    assert not list(tmp_path.glob("*.keras")) and not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.txt"))
    # the next good action clears the error
    act(widget, "accept", layer="h1")
    assert widget.error == "" and row(widget, "h1")["status"] in ("accepted", "done")


@pytest.mark.parametrize("content", [["x"], "hello", None, 42, {"type": "other", "action": "propose"},
                                     {"action": "propose"}, {}], ids=repr)
def test_non_action_message_is_refused(session: PruningSession, widget: PruningWidget, sent: Recorder,
                                       content: Any) -> None:
    snap = snapshot(session)
    widget._on_msg(widget, content, [])
    assert "unknown message" in widget.error
    assert [c["type"] for c, _ in sent.msgs] == ["error"]
    assert_unchanged(session, snap)


@pytest.mark.parametrize("action", ["accept", "skip", "lock", "unlock"])
def test_non_prunable_layer_shows_the_sessions_reason(session: PruningSession, widget: PruningWidget,
                                                      sent: Recorder, action: str) -> None:
    act(widget, "propose")
    snap = snapshot(session)
    reason = session.layer("out").reason
    assert reason and row(widget, "out")["reason"] == reason
    act(widget, action, layer="out")
    assert "not prunable" in widget.error and reason in widget.error and "'out'" in widget.error
    assert sent.of("error")[-1][0]["message"] == widget.error
    assert_unchanged(session, snap)


def test_session_refusals_are_shown(session: PruningSession, widget: PruningWidget, sent: Recorder) -> None:
    snap = snapshot(session)
    for action, fields, problem in [("accept", {"layer": "h1"}, "no pending proposal"),
                                    ("accept_all", {}, "no pending proposals"),
                                    ("undo", {}, "nothing to undo"),
                                    ("redo", {}, "nothing to redo"),
                                    ("unlock", {"layer": "h1"}, "not locked"),
                                    ("lock", {"layer": dropout(session)}, f"no layer '{dropout(session)}'"),
                                    ("detail", {"layer": dropout(session)}, "no weights")]:
        act(widget, action, **fields)
        assert problem in widget.error, (action, widget.error)
        assert sent.of("error")[-1][0]["message"] == widget.error
        assert_unchanged(session, snap)


# ---------------------------------------------------------------------- several widgets, saved sessions
def test_two_widgets_on_one_session_stay_in_sync(session: PruningSession) -> None:
    a, b = session.widget(), session.widget()
    sa, sb = Recorder(a), Recorder(b)
    try:
        for action, fields in [("propose", {}), ("accept", {"layer": "h1"}), ("skip", {"layer": "h2"}),
                               ("lock", {"layer": "h3"}), ("configure", {"settings": {"step": 0.2}}),
                               ("propose", {}), ("accept_all", {}), ("undo", {}), ("goto", {"n": 2})]:
            sa.clear()
            sb.clear()
            act(a, action, **fields)
            b.settle()
            assert a.error == "" and b.error == "", (action, a.error)
            assert synced_state(b) == synced_state(a), f"widget b is stale after {action} through a"
            assert_mirrors(b, session)
            assert sb.heatmap_names() == sa.heatmap_names(), "b's view must get the same new heatmaps"
            if action == "accept":  # weights changed: b's view gets the new heatmap too
                assert "h1" in sb.heatmap_names()
        # and the other way round
        act(b, "undo")
        a.settle()
        assert synced_state(a) == synced_state(b) and a.position == 1
    finally:
        a.close()
        b.close()


def test_widget_of_a_loaded_session_matches_the_original(session: PruningSession, widget: PruningWidget,
                                                         tmp_path: Path) -> None:
    act(widget, "propose")
    act(widget, "accept", layer="h1")
    act(widget, "lock", layer="h3")
    act(widget, "propose")
    act(widget, "accept", layer="h2")
    act(widget, "undo")  # keep a redo entry and open proposals
    assert widget.error == ""
    path = session.save(str(tmp_path / "session.pws"))
    loaded = PruningSession.load(path)
    other = PruningWidget(loaded).settle()
    try:
        assert other.layers == widget.layers and other.rows() == widget.rows()
        assert other.position == widget.position == 4
        strip = lambda rows: [{k: x for k, x in h.items() if k != "metrics"} for h in rows]  # noqa: E731
        assert strip(other.history) == strip(widget.history)  # metrics: only those this view has seen
        assert other.settings == widget.settings
        assert other.metrics["size"] == widget.metrics["size"]
        sa, sb = Recorder(widget), Recorder(other)
        act(widget, "hello")
        act(other, "hello")
        assert sa.of("heatmaps")[0][0] == sb.of("heatmaps")[0][0]
        assert [bytes(x) for x in sa.of("heatmaps")[0][1]] == [bytes(x) for x in sb.of("heatmaps")[0][1]]
        act(other, "redo")  # the loaded history works through the widget
        assert other.error == "" and other.position == 5
        act(widget, "redo")
        assert other.rows() == widget.rows()
    finally:
        other.close()


# ---------------------------------------------------------------------- background run
def _gate(session: PruningSession, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold the run's first proposal until ``release`` is set (so cancel can arrive mid-run)."""
    entered, release = threading.Event(), threading.Event()
    original = session.pruner.propose

    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30), "test gate never released"
        return original(*args, **kwargs)

    monkeypatch.setattr(session.pruner, "propose", gated)
    return entered, release


def test_run_then_cancel(session: PruningSession, widget: PruningWidget, sent: Recorder, monkeypatch) -> None:
    act(widget, "propose")
    entered, release = _gate(session, monkeypatch)
    try:
        act(widget, "run")
        assert widget.error == ""
        assert entered.wait(30)
        assert widget.running and session.running
        # (no other session action here: it would wait for the session lock the held iteration keeps)
        act(widget, "cancel")
        assert widget.error == ""
    finally:
        release.set()
    result = widget._run.wait(30)
    widget.settle()
    assert widget._run.done
    assert result.reason == "cancelled" and result.iterations == 1
    assert not widget.running and not session.running
    assert widget.history[-1]["kind"] == "run" and "cancelled" in widget.history[-1]["label"]
    assert widget.position == len(widget.history) == len(session.history.entries) == 2
    assert_mirrors(widget, session)
    assert widget.metrics["share_pruned"] == pytest.approx(session.share_pruned()) and session.share_pruned() > 0
    assert [m["position"] for m in widget.metrics_history] == [0, 1, 2]
    assert not any(r["status"] == "pending" for r in widget.rows()), "a run closes open proposals"


def test_run_to_target(session: PruningSession, widget: PruningWidget) -> None:
    seen: list[float] = []
    widget.observe(lambda ch: seen.append(ch["new"]), "progress")
    act(widget, "run", target=0.3)
    assert widget.error == ""
    result = widget._run.wait(60)
    assert result.reason in ("target", "exhausted") and result.iterations > 0
    assert not widget.running and not session.running
    assert widget.history == [{"index": 1, "kind": "run", "label": widget.history[0]["label"], "applied": True,
                               "share_pruned": session.share_pruned(), "metrics": widget.history[0]["metrics"]}]
    assert_mirrors(widget, session)
    assert seen and all(0 < p <= 1 for p in seen) and seen == sorted(seen)
    act(widget, "undo")
    assert widget.position == 0 and widget.metrics["size"]["params"] == session.model.count_params()


# ---------------------------------------------------------------------- export, detail, close
def test_export_writes_and_refuses_to_overwrite(session: PruningSession, widget: PruningWidget, sent: Recorder,
                                                tmp_path: Path) -> None:
    act(widget, "step")
    target = tmp_path / "out.keras"
    act(widget, "export", path=str(target))
    assert widget.error == "" and target.is_file() and target.stat().st_size > 0
    assert sent.of("exported") == [({"type": "exported", "path": str(target.resolve()), "format": "keras",
                                     "bytes": target.stat().st_size}, [])]
    assert widget.notice.startswith(f"exported {target.resolve()}") and "KiB" in widget.notice
    import keras

    model = keras.models.load_model(target)
    assert model.count_params() == widget.metrics["size"]["params"] < session.model.count_params()
    data = target.read_bytes()
    sent.clear()
    act(widget, "export", path=str(target))  # the file exists: the view is asked to confirm, nothing is written
    assert widget.error == "" and not sent.of("exported")
    assert sent.of("confirm_overwrite") == [({"type": "confirm_overwrite", "path": str(target), "format": "keras"},
                                             [])]
    assert target.read_bytes() == data
    act(widget, "export", path=str(target), overwrite=True)
    assert widget.error == "" and sent.of("exported")
    # without a path the widget's export_path is used (the fixture points it into tmp_path)
    act(widget, "export")
    assert widget.error == "" and Path(widget.export_path).is_file()
    act(widget, "export", path=str(tmp_path / "missing_dir" / "m.keras"))
    assert "does not exist" in widget.error


@pytest.mark.parametrize("kind", ["weights", "saliency"])
def test_detail_sends_one_binary_image(session: PruningSession, widget: PruningWidget, sent: Recorder,
                                       kind: str) -> None:
    act(widget, "detail", layer="h1", kind=kind)
    assert widget.error == ""
    (content, buffers), = sent.of("detail")
    assert content["name"] == "h1" and content["kind"] == kind
    h, w = content["shape"]
    assert len(buffers) == 1 and isinstance(buffers[0], (bytes, bytearray, memoryview))
    assert len(buffers[0]) == h * w
    assert content["source_shape"] == ([8, 20] if kind == "weights" else [20, 20])
    assert math.isfinite(content["max"]) and content["max"] > 0
    assert max(bytes(buffers[0])) == 255
    json.dumps(content)


def test_closing_unsubscribes(session: PruningSession) -> None:
    keep, gone = session.widget().settle(), session.widget().settle()
    s_gone = Recorder(gone)
    n = len(session.events._listeners)
    traits = synced_state(gone)
    gone.close()
    assert len(session.events._listeners) == n - 1
    session.propose()
    session.accept("h1")
    assert synced_state(gone) == traits, "a closed widget still follows the session"
    assert s_gone.msgs == []
    assert keep.position == 2  # the other widget still follows
    keep.close()
    assert len(session.events._listeners) == n - 2


# ---------------------------------------------------------------------- known bugs
@pytest.mark.parametrize("fields, problem", [({"action": ["propose"]}, "action"),
                                             ({"action": {"a": 1}}, "action"),
                                             ({"action": "configure", "settings": {"strategy": ["impact"]}},
                                              "strategy")], ids=["action-list", "action-dict", "strategy-list"])
def test_unhashable_values_are_named(session: PruningSession, widget: PruningWidget, sent: Recorder,
                                     fields: dict, problem: str) -> None:
    snap = snapshot(session)
    widget._on_msg(widget, {"type": "action", **fields}, [])
    assert_unchanged(session, snap)
    assert [c["type"] for c, _ in sent.msgs] == ["error"]
    assert problem in widget.error, widget.error


def test_saliency_detail_of_the_output_layer(session: PruningSession, widget: PruningWidget,
                                             sent: Recorder) -> None:
    assert row(widget, "out")["heatmap"]  # so the front end shows the detail buttons
    act(widget, "detail", layer="out", kind="saliency")
    if widget.error:
        assert "out" in widget.error, widget.error
    else:
        (content, buffers), = sent.of("detail")
        assert len(buffers[0]) == content["shape"][0] * content["shape"][1]


def test_running_flag_survives_a_run_that_finishes_first(session: PruningSession, widget: PruningWidget,
                                                         monkeypatch) -> None:
    start_run = session.start_run

    def thread_wins(**kwargs: Any) -> Any:  # the scheduler runs the thread to the end before returning
        handle = start_run(**kwargs)
        handle.wait(30)
        return handle

    monkeypatch.setattr(session, "start_run", thread_wins)
    act(widget, "run", target=0.1)
    assert widget._run.done and not session.running
    assert widget.running is False


def test_second_widget_sees_a_run_start(session: PruningSession, monkeypatch) -> None:
    a, b = session.widget().settle(), session.widget().settle()
    Recorder(a), Recorder(b)
    entered, release = _gate(session, monkeypatch)
    try:
        act(a, "run")
        assert entered.wait(30)
        assert a.running and session.running
        assert b.running, "widget b does not know a run is in progress"
    finally:
        release.set()
        act(a, "cancel")
        if a._run is not None:
            a._run.wait(30)
        a.close()
        b.close()


def test_progress_is_relative_to_the_runs_target() -> None:
    final = []
    for configure_first in (True, False):
        s = make_session()
        w = s.widget()
        Recorder(w)
        if configure_first:
            act(w, "configure", settings={"target": 0.2})
            act(w, "run")
        else:
            act(w, "run", target=0.2)
        result = w._run.wait(60)
        assert result.reason == "target"
        final.append((result.share_pruned, w.progress))
        w.close()
    (share_a, prog_a), (share_b, prog_b) = final
    assert share_a == share_b  # the same pruning either way
    assert prog_b == pytest.approx(prog_a)


def test_synced_traits_are_strict_json_when_bounds_overflow() -> None:
    model = randomize(build_mlp(hidden=(20, 16, 12), names=NAMES, randomize_weights=False), scale=1e10)
    s = PruningSession(model, n_probes=16)
    w = s.widget().settle()
    try:
        for name, value in synced_state(w).items():
            try:
                json.dumps(value, allow_nan=False)  # what jupyter_client's json_packer tries first
            except ValueError:
                pytest.fail(f"trait {name!r} is not strict JSON: {value!r}"[:300])
    finally:
        w.close()


# ---------------------------------------------------------------------- tree structure, small updates, metrics
def test_residual_blocks_are_tree_parents() -> None:
    from conftest import build_residual

    s = PruningSession(build_residual(), n_probes=16)
    rows = payload.layer_rows(s)
    names = [r["name"] for r in rows]
    block = next(r for r in rows if r["type"] == "Block")
    assert block["depth"] == 0 and block["group"] is None and not block["heatmap"]
    children = [r for r in rows if r["parent"] == block["name"]]
    assert [r["name"] for r in children] == ["res_a", "res_b", "add", "add_relu"]
    assert all(r["depth"] == 1 for r in children)
    assert names.index(block["name"]) < min(names.index(r["name"]) for r in children), "parent first"
    assert block["params"] == sum(r["params"] for r in children)
    assert "pool" in block["reason"] and "add" in block["reason"]
    assert sorted(n for n in names if n != block["name"]) == sorted(n.name for n in s.graph.nodes)
    merged = payload.merge_rows(rows, payload.layer_states(s))
    res_a = next(r for r in merged if r["name"] == "res_a")
    assert res_a["status"] == s.layer("res_a").status and res_a["units_alive"] == 8


def test_an_update_resends_states_not_the_tree(session: PruningSession, widget: PruningWidget) -> None:
    changed: list[str] = []
    widget.observe(lambda ch: changed.append(ch["name"]), ["layers", "states"])
    act(widget, "propose")
    act(widget, "accept", layer="h1")
    act(widget, "lock", layer="h2")
    assert "layers" not in changed and changed.count("states") == 3
    assert widget.states["h1"]["status"] == "accepted" and widget.states["h2"]["status"] == "locked"
    assert widget.states["h1"]["units_alive"] == session.layer("h1").units_alive < 20
    assert set(widget.states) == {info.name for info in session.layers}


def test_metrics_are_computed_in_the_background(monkeypatch) -> None:
    """A slow evaluation neither delays the view nor blocks actions; its result lands when ready."""
    import paoding_widgets.session.core as core

    s = make_session()
    gate, entered = threading.Event(), threading.Event()
    evaluate = core.evaluate

    def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert gate.wait(30), "test gate never released"
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(core, "evaluate", slow)
    w = s.widget()
    try:
        assert entered.wait(30) and w.metrics_pending and w.metrics == {}
        w._on_msg(w, {"type": "action", "action": "propose"}, [])  # not blocked by the evaluation
        w._on_msg(w, {"type": "action", "action": "accept", "layer": "h1"}, [])
        assert w.error == "" and w.position == 2 and w.metrics_pending
        gate.set()
        w.settle(30)
        assert not w.metrics_pending
        assert w.metrics["size"]["params"] == s.metrics().size.params < s.model.count_params()
        assert w.metrics_history[-1]["position"] == 2, "the stale result for position 0 is not the last shown"
        assert {m["position"] for m in w.metrics_history} <= {0, 2}
    finally:
        gate.set()
        w.close()


def test_a_refresh_draws_only_the_heatmaps_whose_weights_were_written(session: PruningSession,
                                                                        widget: PruningWidget, sent: Recorder,
                                                                        monkeypatch) -> None:
    drawn: list[tuple[int, ...]] = []
    heatmap = payload.heatmap
    monkeypatch.setattr(payload, "heatmap",
                        lambda kernel, *a, **k: drawn.append(kernel.shape) or heatmap(kernel, *a, **k))
    act(widget, "propose")  # proposals write nothing
    assert drawn == [] and sent.heatmap_names() == []
    act(widget, "accept", layer="h1")  # h1's kernel and its reader h2's rows change
    assert len(drawn) == 2 and sorted(sent.heatmap_names()) == ["h1", "h2"]
    drawn.clear()
    sent.clear()
    act(widget, "lock", layer="h3")
    assert drawn == []
    act(widget, "undo")  # the lock: no weights
    act(widget, "undo")  # the accept: h1 and h2 back
    assert len(drawn) == 2 and sorted(sent.heatmap_names()) == ["h1", "h2"]
    drawn.clear()
    act(widget, "hello")  # a new view still gets every heatmap
    assert len(drawn) == 4
