"""Widget lifetime, kernel-owned traits, and a Cancel that belongs to the session.

* Closing a widget frees it and lets its session go: nothing the session, the
  comm layer, anywidget or a thread keeps may hold a closed widget (or, through
  it, the session) alive.
* The front end may write ``export_path`` only (checked); a write to any other
  synced trait (``layers``, ``running``, ...) is refused and answered with the
  kernel's value, as ipywidgets' comm ``update`` message arrives.
* Any view's Cancel stops the session's run, however it was started: from
  another view or by ``session.start_run()`` in code.
"""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import pytest
from conftest import build_mlp

from paoding_widgets.errors import PaodingError, SessionError
from paoding_widgets.session import PruningSession
from paoding_widgets.session.readonly import SessionView
from paoding_widgets.widget import PruningWidget
from paoding_widgets.widget.wire import WireError

NAMES = ["h1", "h2", "h3", "out"]
N_WIDGETS = 50


def make_session() -> PruningSession:
    return PruningSession(build_mlp(hidden=(20, 16, 12), names=NAMES), n_probes=64)


class Recorder:
    """Keeps what the kernel sends: custom messages (``send``) and comm state updates (``_send``)."""

    def __init__(self, widget: PruningWidget) -> None:
        self.msgs: list[tuple[dict[str, Any], list[Any]]] = []
        widget.send = self
        widget._send = self  # ipywidgets' send_state goes through _send(msg, buffers)

    def __call__(self, content: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.msgs.append((content, list(buffers or [])))


def act(widget: PruningWidget, action: str, **fields: Any) -> None:
    widget._on_msg(widget, {"type": "action", "action": action, **fields}, [])


def comm_update(widget: PruningWidget, state: dict[str, Any]) -> None:
    """What ipywidgets does with a front-end ``update`` message on the widget's comm."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                        "buffers": []})


def listeners(s: PruningSession) -> int:
    return len(s.events._listeners)


def collect() -> None:
    for _ in range(3):
        gc.collect()


@pytest.fixture(scope="module")
def session() -> PruningSession:
    return make_session()


# ---------------------------------------------------------------------- lifetime
def test_many_closed_widgets_are_all_collected(session: PruningSession) -> None:
    collect()
    before = listeners(session)
    threads = threading.active_count()
    refs = []
    for _ in range(N_WIDGETS):
        w = session.widget().settle()
        refs.append(weakref.ref(w))
        w.close()
        assert w.closed
    del w
    collect()
    alive = [r for r in refs if r() is not None]
    assert not alive, (f"{len(alive)} of {N_WIDGETS} closed widgets still referenced, e.g. by "
                       f"{[type(x).__name__ for x in gc.get_referrers(alive[0]())][:8]}")
    assert listeners(session) == before, "a closed widget is still subscribed to its session"
    assert threading.active_count() <= threads, "a metrics thread outlived its widget"
    session.propose()  # the session works on, telling nobody
    session.undo()


def test_a_session_with_a_closed_widget_is_collected() -> None:
    s = make_session()
    w = s.widget().settle()
    act(w, "propose")
    w.settle()
    s_ref, w_ref = weakref.ref(s), weakref.ref(w)
    w.close()
    del s
    collect()
    assert s_ref() is None, "a closed widget keeps its session alive"
    # even a closed widget somebody still holds (IPython's Out[] cache) does not pin the session
    assert w_ref() is w
    with pytest.raises(SessionError, match="closed"):
        w.session  # noqa: B018
    del w
    collect()
    assert w_ref() is None


def test_a_dropped_open_widget_does_not_pin_the_session_through_its_listener() -> None:
    s = make_session()
    w = s.widget().settle()
    w_ref = weakref.ref(w)
    w.close()
    del w
    collect()
    assert w_ref() is None
    s.propose()  # a dead listener is harmless


def test_a_closed_widget_ignores_late_messages_and_events(session: PruningSession) -> None:
    w = session.widget().settle()
    rec = Recorder(w)
    w.close()
    act(w, "propose")
    w.refresh(metrics=True)
    assert rec.msgs == []


# ---------------------------------------------------------------------- kernel-owned traits
@pytest.mark.parametrize("trait, value", [
    ("layers", []), ("states", {}), ("metrics", {"accuracy": 1.0}), ("metrics_history", []),
    ("history", []), ("position", 7), ("running", True), ("progress", 0.5), ("settings", {"target": 0.9}),
    ("strategies", ["evil"]), ("metrics_pending", True), ("error", "forged"),
])
def test_front_end_writes_to_kernel_traits_are_refused(session: PruningSession, trait: str, value: Any) -> None:
    w = session.widget().settle()
    try:
        rec = Recorder(w)
        before = getattr(w, trait)
        comm_update(w, {trait: value})
        if trait == "error":  # the refusal itself is the kernel's message, not the forged one
            assert w.error != value and "refused" in w.error
        else:
            assert getattr(w, trait) == before, f"the front end rewrote {trait}"
            assert "refused" in w.error and trait in w.error
        # the kernel's value went back to the front end (ipywidgets' state update)
        sent_back = [c for c, _ in rec.msgs if c.get("method") == "update" and trait in c.get("state", {})]
        assert sent_back, rec.msgs
    finally:
        w.close()


def test_front_end_may_set_a_valid_export_path_only(session: PruningSession) -> None:
    w = session.widget().settle()
    try:
        Recorder(w)
        comm_update(w, {"export_path": "small.keras"})
        assert w.export_path == "small.keras" and w.error == ""
        for bad in ("", "   ", "model.h5", 42, None, "x" * 5000 + ".keras", "a\x00b.keras"):
            comm_update(w, {"export_path": bad})
            assert w.export_path == "small.keras", bad
            assert "export path" in w.error
        comm_update(w, {"export_path": "other.keras", "running": True, "layers": []})  # mixed: keep the good one
        assert w.export_path == "other.keras" and w.running is False and w.layers
    finally:
        w.close()


def test_wire_errors_are_paoding_errors() -> None:
    assert issubclass(WireError, PaodingError) and issubclass(WireError, ValueError)


# ---------------------------------------------------------------------- the read-only view
def test_session_view_is_read_only(session: PruningSession) -> None:
    v = SessionView(session)
    k = v.kernel("h1")
    with pytest.raises(ValueError):
        k[0, 0] = 1.0
    assert k.base is not None  # a view, not a copy
    assert {n.name for n in v.nodes} >= set(NAMES)
    assert [g.name for g in v.groups] == [x.name for x in v.layers]
    assert v.node("h1").params == 20 * (session.model.inputs[0].shape[-1] + 1)
    assert v.state in ("idle", "running") and v.position == session.history.position
    with pytest.raises(KeyError):
        v.kernel("no such layer")
    with pytest.raises(AttributeError):
        v.nodes[0].name = "x"  # type: ignore[misc]


def test_widget_modules_do_not_reach_into_session_internals() -> None:
    import inspect

    from paoding_widgets.widget import payload, pruning_widget, wire

    for mod in (payload, pruning_widget, wire):
        src = inspect.getsource(mod)
        for internal in ("pruner", ".store", ".graph", ".history.", "session._", "s._", "events._"):
            assert internal not in src, f"{mod.__name__} reaches into the session ({internal})"


def test_session_imports_no_widget_at_import_time() -> None:
    import subprocess
    import sys

    code = ("import sys, paoding_widgets.session; "
            "print([m for m in sys.modules if m.startswith('paoding_widgets.widget') or m == 'anywidget'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---------------------------------------------------------------------- cancel belongs to the session
def _gate(session: PruningSession, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    entered, release = threading.Event(), threading.Event()
    original = session.pruner.propose

    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30), "test gate never released"
        return original(*args, **kwargs)

    monkeypatch.setattr(session.pruner, "propose", gated)
    return entered, release


@pytest.mark.parametrize("started_by", ["other view", "code"])
def test_any_view_cancels_the_sessions_run(monkeypatch: pytest.MonkeyPatch, started_by: str) -> None:
    s = make_session()
    a, b = s.widget().settle(), s.widget().settle()
    Recorder(a), Recorder(b)
    entered, release = _gate(s, monkeypatch)
    handle = None
    try:
        if started_by == "code":
            handle = s.start_run(target=0.5)
        else:
            act(a, "run", target=0.5)
            handle = a._run
        assert entered.wait(30)
        assert a.running and b.running, "a view does not show the session's run"
        act(b, "cancel")
        assert b.error == "", b.error
    finally:
        release.set()
    assert handle is not None
    result = handle.wait(30)
    assert result is not None and result.reason == "cancelled"
    for w in (a, b):
        w.settle()
        assert not w.running and w.history[-1]["kind"] == "run" and "cancelled" in w.history[-1]["label"]
    assert s.state == "idle"
    a.close()
    b.close()
