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
    Default path the Export button writes to.

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
from typing import Any

import anywidget
import traitlets

from ..engine.strategies import STRATEGIES
from ..session import PruningSession
from ..session.events import Event
from . import payload
from .wire import WireError, validate

log = logging.getLogger("paoding_widgets")
STATIC = pathlib.Path(__file__).parent / "static"


class PruningWidget(anywidget.AnyWidget):
    """Layer tree with inline heatmaps; accept / skip / lock between automated iterations."""

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

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
        self.session = session
        self.export_path = export_path
        self.strategies = sorted(STRATEGIES)
        self._sent: dict[str, str] = {}  # layer -> digest of the heatmap last sent
        self._drawn: dict[str, int] = {}  # layer -> the store's write version its heatmap was last drawn at
        self._metrics_by_position: dict[int, dict[str, Any]] = {}
        self._run = None
        self._lock = threading.RLock()
        self._metrics_wanted = threading.Event()  # set: the shown metrics may be stale
        self._metrics_idle = threading.Event()
        self._metrics_idle.set()
        self._metrics_thread: threading.Thread | None = None
        self._closed = False
        self.layers = payload.layer_rows(session)  # the structure never changes during a session
        self._unsubscribe = session.subscribe(self._on_event)
        self.on_msg(self._on_msg)
        self.refresh(metrics=True)

    # ------------------------------------------------------------ session -> view
    def refresh(self, metrics: bool = False) -> None:
        """Mirror the session into the traits; resend only changed states and heatmaps."""
        with self._lock:
            s = self.session
            with self.hold_sync():
                self.states = payload.layer_states(s)
                self.settings = {k: s.settings[k] for k in ("strategy", "step", "target")}
                self.history = [{"index": h.index, "kind": h.kind, "label": h.label, "applied": h.applied,
                                 "share_pruned": h.share_pruned} for h in s.history_items]
                self.position = s.history.position
                self.running = s.running
            self._send_heatmaps(force=False)
        if metrics and not self.session.running:
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
        m = self.session.cached_metrics()
        if m is not None:
            self._publish(self.session.history.position, m)
            return
        with self._lock:
            self._metrics_idle.clear()
            self._metrics_wanted.set()
            self.metrics_pending = True
            if self._metrics_thread is None or not self._metrics_thread.is_alive():
                self._metrics_thread = threading.Thread(target=self._metrics_worker, name="paoding-metrics",
                                                        daemon=True)
                self._metrics_thread.start()

    def _metrics_worker(self) -> None:
        s = self.session
        while True:
            with self._lock:
                if not self._metrics_wanted.is_set() or s.running:
                    self.metrics_pending = False
                    self._metrics_thread = None
                    self._metrics_idle.set()
                    return
                self._metrics_wanted.clear()
            try:
                position, version = s.revision
                m = s.metrics()
                if s.revision == (position, version):
                    self._publish(position, m)
                else:
                    self._metrics_wanted.set()  # the state moved while we measured: measure again
            except Exception as exc:  # a failed evaluation is shown, never raised into a thread
                log.exception("paoding_widgets: metrics failed")
                self.error = f"metrics failed: {exc}"

    def _publish(self, position: int, m: Any) -> None:
        with self._lock:
            if self._closed:  # a late result for a view that is gone
                return
            d = {**m.as_dict(), "share_pruned": self.session.share_pruned()}
            self._metrics_by_position[position] = d
            with self.hold_sync():
                self.metrics = d
                n = len(self.session.history.entries)
                self.metrics_history = [{"position": p, **v} for p, v in sorted(self._metrics_by_position.items())
                                        if p <= n]

    def _send_heatmaps(self, force: bool) -> None:
        """Send heatmaps: all of them if ``force`` (a new view), else those whose weights were written since."""
        store = self.session.pruner.store

        def written(name: str) -> int:
            return store.changed.get(payload.heatmap_key(self.session, name), 0)

        todo = [r["name"] for r in self.layers if r["heatmap"]]
        if not force:  # ResNet50, one accept: 3 of 54
            todo = [n for n in todo if written(n) != self._drawn.get(n)]
            if not todo:
                return
        self._drawn.update({n: written(n) for n in todo})
        header, buffers = payload.heatmaps(self.session, todo, self.layers)
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
    def _on_msg(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        try:
            msg = validate(content, self.session)
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
            self._send_heatmaps(force=True)
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
            if self._run is not None:
                self._run.cancel()
        elif a == "export":
            path = s.export(msg.get("path") or self.export_path, overwrite=bool(msg.get("overwrite")))
            self.send({"type": "exported", "path": path})
        elif a == "detail":
            header, bufs = payload.detail(s, msg["layer"], msg.get("kind", "weights"))
            self.send({"type": "detail", **header}, bufs)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._unsubscribe()
        super().close()
