"""PruningWidget: a thin anywidget view over a PruningSession.

Why: the session holds all state and logic; this class only mirrors it into
traitlets, turns front-end messages into session calls (after validating
them), and pushes heatmaps as binary buffers -- only the ones that changed.
Several widgets on one session stay in sync because each listens to the
session's events.

Traits (all synced to the front end)
------------------------------------
layers: list of dict
    The tree, sent once (see :func:`~.payload.layer_rows`): one row per layer,
    block (residual / branching, found from the graph) or nested model, in
    display order; name, type, shape, depth/parent, params, group,
    units_total, reason, heatmap (bool).  Rows without a unit group also
    carry their fixed status ("" or "unsupported").
states: dict
    Per unit group (``row["group"]``): status, units_alive, proposal
    (drop/keep units or None) -- the part an action changes, so an update
    resends only this.
settings: dict
    strategy, step, target (the session's current settings).
strategies: list of str
    Strategy names the toolbar offers.
metrics_pending: bool
    The metrics of the current state are being computed (in a background
    thread: they take seconds on large models, and the view must not wait).
metrics: dict
    Latest computed metrics (size params/bytes/flops, accuracy, robust, robust_preserved,
    agreement, output_bound_width, share_pruned).
metrics_history: list of dict
    ``{"position": n, **metrics}`` for every history position seen, for the chart.
history: list of dict
    index, kind, label, applied, share_pruned of every history entry.
position: int
    How many history entries are applied (0 = original model).
running: bool
    A background run is in progress.
progress: float
    Share of the run's target reached (0..1) while running.
error: str
    The last error message ("" when the last action succeeded).
export_path: str
    Default path the Export button writes to.  The only trait the front end may
    write (checked: a ``.keras`` file name); writes to any other trait are
    refused and the kernel's value is sent back.

Lifetime: the session holds only a weak reference to a widget (its event
listener), and :meth:`PruningWidget.close` unsubscribes, lets the metrics
thread end and drops the widget's references to the session, so closing a
view (or re-running a ``s.widget()`` cell and closing the old one) leaks
neither.  The widget reads the session only through a
:class:`~paoding_widgets.session.readonly.SessionView`; it acts through the
session's public methods (Cancel is ``session.cancel()``, so any view stops
any run of its session, however it was started).

Messages
--------
Front end -> kernel: ``{"type": "action", "action": ..., ...}`` (see
:data:`~.wire.ACTIONS`). Kernel -> front end: ``{"type": "heatmaps", "names",
"shapes"}`` and ``{"type": "detail", ...}`` with uint8 buffers, ``{"type":
"error", "message"}``.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from ..engine.strategies import STRATEGIES
from ..errors import SessionError
from ..session.readonly import SessionView
from . import payload
from .wire import WireError, validate

if TYPE_CHECKING:
    from ..session import PruningSession, RunHandle
    from ..session.events import Event

log = logging.getLogger("paoding_widgets")
STATIC = pathlib.Path(__file__).parent / "static"
# The bundle's text, not its path: given a path, anywidget connects every instance to a class-wide file
# watcher signal through a closure over ``self``, which keeps every widget ever made alive.
_ESM = (STATIC / "widget.js").read_text(encoding="utf-8")
_CSS = (STATIC / "widget.css").read_text(encoding="utf-8")

FRONT_END_WRITABLE = frozenset({"export_path"})  # every other synced trait belongs to the kernel
MAX_PATH = 4096


class PruningWidget(anywidget.AnyWidget):
    """Layer tree with inline heatmaps; accept / skip / lock between automated iterations."""

    _esm = traitlets.Unicode(_ESM).tag(sync=True)
    _css = traitlets.Unicode(_CSS).tag(sync=True)

    layers = traitlets.List(traitlets.Dict()).tag(sync=True)
    states = traitlets.Dict().tag(sync=True)
    metrics_pending = traitlets.Bool(False).tag(sync=True)
    settings = traitlets.Dict().tag(sync=True)
    strategies = traitlets.List(traitlets.Unicode()).tag(sync=True)
    metrics = traitlets.Dict().tag(sync=True)
    metrics_history = traitlets.List(traitlets.Dict()).tag(sync=True)
    history = traitlets.List(traitlets.Dict()).tag(sync=True)
    position = traitlets.Int(0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    progress = traitlets.Float(0.0).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    export_path = traitlets.Unicode("pruned.keras").tag(sync=True)

    def __init__(self, session: PruningSession, export_path: str = "pruned.keras", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session: PruningSession | None = session
        self._view: SessionView | None = SessionView(session)
        self.export_path = export_path
        self.strategies = sorted(STRATEGIES)
        self._sent: dict[str, str] = {}  # layer -> digest of the heatmap last sent
        self._drawn: dict[str, int] = {}  # layer -> the write version its heatmap was last drawn at
        self._metrics_by_position: dict[int, dict[str, Any]] = {}
        self._run: RunHandle | None = None  # the last run started from this view (for scripts and tests)
        self._lock = threading.RLock()
        self._metrics_wanted = threading.Event()  # set: the shown metrics may be stale
        self._metrics_idle = threading.Event()
        self._metrics_idle.set()
        self._metrics_thread: threading.Thread | None = None
        self._closed = False
        self.layers = payload.layer_rows(self._view)  # the structure never changes during a session
        self._unsubscribe: Callable[[], None] = session.subscribe(_weak_listener(self))
        self.on_msg(self._on_msg)
        self.refresh(metrics=True)

    @property
    def session(self) -> PruningSession:
        """The session this widget shows (SessionError once the widget is closed)."""
        if self._session is None:
            raise SessionError("this widget is closed; open a new one with session.widget()")
        return self._session

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ session -> view
    def refresh(self, metrics: bool = False) -> None:
        """Mirror the session into the traits; resend only changed states and heatmaps."""
        with self._lock:
            v = self._view
            if v is None:  # closed
                return
            with self.hold_sync():
                self.states = payload.layer_states(v)
                self.settings = {k: v.settings[k] for k in ("strategy", "step", "target")}
                self.history = [{"index": h.index, "kind": h.kind, "label": h.label, "applied": h.applied,
                                 "share_pruned": h.share_pruned} for h in v.history_items]
                self.position = v.position
                self.running = v.running
            self._send_heatmaps(v, force=False)
        if metrics and not v.running:
            self._request_metrics()

    def rows(self) -> list[dict[str, Any]]:
        """The tree rows as the front end shows them (structure with each group's state)."""
        return payload.merge_rows(self.layers, self.states)

    def settle(self, timeout: float | None = 120.0) -> PruningWidget:
        """Wait until the metrics of the current state are shown (for scripts and tests)."""
        if not self._metrics_idle.wait(timeout):
            raise TimeoutError(f"metrics still computing after {timeout} s")
        return self

    def _request_metrics(self) -> None:
        """Show the current metrics now if known, else compute them in a background thread."""
        with self._lock:
            v = self._view
            if v is None:
                return
            m = v.cached_metrics()
            if m is not None:
                self._publish(v.position, m)
                return
            self._metrics_idle.clear()
            self._metrics_wanted.set()
            self.metrics_pending = True
            if self._metrics_thread is None or not self._metrics_thread.is_alive():
                # the thread holds the widget weakly: a closed, dropped widget is not kept alive by it
                self._metrics_thread = threading.Thread(target=_metrics_worker, args=(weakref.ref(self), v),
                                                        name="paoding-metrics", daemon=True)
                self._metrics_thread.start()

    def _next_metrics_job(self, v: SessionView) -> bool:
        """Whether the worker should measure again (False: it ends, and says so)."""
        with self._lock:
            if self._closed or not self._metrics_wanted.is_set() or v.running:
                self.metrics_pending = False
                self._metrics_thread = None
                self._metrics_idle.set()
                return False
            self._metrics_wanted.clear()
            return True

    def _publish(self, position: int, m: Any) -> None:
        with self._lock:
            v = self._view
            if v is None:  # a late result for a view that is gone
                return
            d = {**m.as_dict(), "share_pruned": v.share_pruned()}
            self._metrics_by_position[position] = d
            with self.hold_sync():
                self.metrics = d
                n = v.history_length
                self.metrics_history = [{"position": p, **x} for p, x in sorted(self._metrics_by_position.items())
                                        if p <= n]

    def _send_heatmaps(self, v: SessionView, force: bool) -> None:
        """Send heatmaps: all of them if ``force`` (a new view), else those whose weights were written since."""
        todo = [r["name"] for r in self.layers if r["heatmap"]]
        if not force:  # ResNet50, one accept: 3 of 54
            todo = [n for n in todo if v.kernel_version(n) != self._drawn.get(n)]
            if not todo:
                return
        self._drawn.update({n: v.kernel_version(n) for n in todo})
        header, buffers = payload.heatmaps(v, todo, self.layers)
        keep_names, keep_shapes, keep_bufs = [], [], []
        for name, shape, buf in zip(header["names"], header["shapes"], buffers):
            digest = hashlib.blake2b(buf, digest_size=8).hexdigest()
            if force or self._sent.get(name) != digest:
                self._sent[name] = digest
                keep_names.append(name)
                keep_shapes.append(shape)
                keep_bufs.append(buf)
        if keep_names:
            self.send({"type": "heatmaps", "names": keep_names, "shapes": keep_shapes}, keep_bufs)

    def _on_event(self, event: Event) -> None:
        if self._closed:
            return
        try:
            if event.kind == "progress":
                target = event.data.get("target") or self.settings.get("target") or 1.0
                self.progress = min(1.0, float(event.data.get("share_pruned", 0.0)) / target)
                self.refresh(metrics=False)
            elif event.kind in ("state", "proposal"):
                self.refresh(metrics=event.kind == "state")
            elif event.kind == "error":
                self.error = str(event.data.get("message", ""))
        except Exception as exc:  # never let a view problem escape into the session
            log.exception("paoding_widgets: widget refresh failed")
            self.error = f"widget refresh failed: {exc}"

    # ------------------------------------------------------------ view -> session
    def set_state(self, sync_data: dict[str, Any]) -> None:
        """A front-end trait write: only ``export_path`` is accepted (checked); the rest are sent back."""
        accepted: dict[str, Any] = {}
        refused: list[str] = []
        for key, value in dict(sync_data).items():
            if key not in self.keys:
                continue
            if key in FRONT_END_WRITABLE and _valid_export_path(value):
                accepted[key] = value
            else:
                refused.append(key)
        if accepted:
            super().set_state(accepted)
        if refused:
            bad = ", ".join(sorted(refused))
            log.warning("paoding_widgets: refused a front-end write to %s", bad)
            if refused == ["export_path"]:
                self.error = f"export path must be a .keras file name, got {str(sync_data['export_path'])[:80]!r}"
            else:
                self.error = f"refused a front-end write to {bad} (owned by the kernel)"
            self.send_state(key=refused)  # the front end shows the kernel's values again

    def _on_msg(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        if self._closed:
            return
        try:
            msg = validate(content, self._view)
            self.error = ""
            self._dispatch(msg)
        except (WireError, ValueError, KeyError, FileExistsError, FileNotFoundError, OSError) as exc:
            self._report(exc)
        except Exception as exc:  # the kernel must survive anything the front end sends
            log.exception("paoding_widgets: unexpected error handling %r", content)
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        log.warning("paoding_widgets: %s", message)
        self.error = message
        self.send({"type": "error", "message": message})

    def _dispatch(self, msg: dict[str, Any]) -> None:
        s, a = self.session, msg["action"]
        if a == "hello":  # a (new) view wants everything
            if self._view is not None:
                self._send_heatmaps(self._view, force=True)
        elif a in ("accept", "skip", "lock", "unlock"):
            getattr(s, a)(msg["layer"])
        elif a in ("propose", "accept_all", "undo", "redo", "step"):
            getattr(s, a)()
        elif a == "goto":
            s.goto(msg["n"])
        elif a == "configure":
            s.configure(**msg["settings"])
        elif a == "run":
            self._run = s.start_run(target=msg.get("target"))  # the session announces the start
        elif a == "cancel":
            s.cancel()  # the session's run, whoever started it (this view, another one, or code)
        elif a == "export":
            path = s.export(msg.get("path") or self.export_path, overwrite=bool(msg.get("overwrite")))
            self.send({"type": "exported", "path": path})
        elif a == "detail":
            header, bufs = payload.detail(self._view, msg["layer"], msg.get("kind", "weights"))
            self.send({"type": "detail", **header}, bufs)

    def close(self) -> None:
        """Close the view: stop following the session, let the metrics thread end, drop every reference."""
        with self._lock:
            self._closed = True
            self._metrics_wanted.clear()
            unsubscribe, self._unsubscribe = self._unsubscribe, _nothing
            self._session = self._view = None
            self._run = None
            self._metrics_by_position.clear()
            self._sent.clear()
            self._drawn.clear()
        unsubscribe()
        self.on_msg(self._on_msg, remove=True)
        super().close()


def _nothing() -> None:
    pass


def _weak_listener(widget: PruningWidget) -> Callable[[Event], None]:
    """A session listener that does not keep the widget alive (the session outlives its views)."""
    ref = weakref.ref(widget)

    def listener(event: Event) -> None:
        w = ref()
        if w is not None:
            w._on_event(event)

    return listener


def _metrics_worker(ref: weakref.ref[PruningWidget], v: SessionView) -> None:
    """Measure the current state until nobody wants newer metrics; publish each result that is still current."""
    while True:
        w = ref()
        if w is None or not w._next_metrics_job(v):
            return
        del w  # not held while measuring (seconds on a large model)
        try:
            position, version = v.revision
            m = v.metrics()
            w = ref()
            if w is None:
                return
            if v.revision == (position, version):
                w._publish(position, m)
            else:
                w._metrics_wanted.set()  # the state moved while we measured: measure again
        except Exception as exc:  # a failed evaluation is shown, never raised into a thread
            log.exception("paoding_widgets: metrics failed")
            w = ref()
            if w is not None:
                w.error = f"metrics failed: {exc}"
        finally:
            w = None


def _valid_export_path(value: Any) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= MAX_PATH and "\x00" not in value
            and bool(value.strip()) and value.strip().endswith(".keras"))
