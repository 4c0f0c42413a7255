"""PruningWidget: a thin anywidget view over a PruningSession.

Why: the session holds all state and logic; this class only mirrors it into
traitlets, turns front-end messages into session calls (after validating
them), and pushes heatmaps as binary buffers -- only the ones that changed.
Several widgets on one session stay in sync because each listens to the
session's events.

Traits (all synced to the front end)
------------------------------------
layers: list of dict
    One row per layer (see :func:`~.payload.layer_rows`): name, type, shape,
    depth/parent, params, group, status, units_alive/units_total, reason,
    heatmap (bool), proposal (drop/keep units or None).
settings: dict
    strategy, step, target (the session's current settings).
strategies: list of str
    Strategy names the toolbar offers.
metrics: dict
    Current metrics (size params/bytes/flops, accuracy, robust, robust_preserved,
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
        self._metrics_by_position: dict[int, dict[str, Any]] = {}
        self._run = None
        self._lock = threading.Lock()
        self._unsubscribe = session.subscribe(self._on_event)
        self.on_msg(self._on_msg)
        self.refresh(metrics=True)

    # ------------------------------------------------------------ session -> view
    def refresh(self, metrics: bool = False) -> None:
        """Mirror the session into the traits; resend only changed heatmaps."""
        with self._lock:
            s = self.session
            with self.hold_sync():
                self.layers = payload.layer_rows(s)
                self.settings = {k: s.settings[k] for k in ("strategy", "step", "target")}
                self.history = [{"index": h.index, "kind": h.kind, "label": h.label, "applied": h.applied,
                                 "share_pruned": h.share_pruned} for h in s.history_items]
                self.position = s.history.position
                self.running = s.running
                if metrics and not s.running:
                    m = {**s.metrics().as_dict(), "share_pruned": s.share_pruned()}
                    self._metrics_by_position[self.position] = m
                    self.metrics = m
                    self.metrics_history = [{"position": p, **v} for p, v in
                                            sorted(self._metrics_by_position.items()) if p <= len(s.history.entries)]
            self._send_heatmaps(force=False, rows=self.layers)

    def _send_heatmaps(self, force: bool, names: list[str] | None = None,
                       rows: list[dict[str, Any]] | None = None) -> None:
        header, buffers = payload.heatmaps(self.session, names, rows)
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
        self._unsubscribe()
        super().close()
