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
    carry their fixed status ("" or "unsupported").  A layer with several
    unit groups (an attention layer's heads, key_dim and value_dim; the two
    directions of a concat Bidirectional) has one row per group, named by the
    layer (first) or the group, with ``layer``, ``part`` ("key_dim") and
    ``label`` ("mha · key_dim"); actions on it name its group.
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
progress_info: dict
    While a run goes: fraction (of the units the run removes), iteration, elapsed and
    eta (seconds left, estimated), units_removed / units_to_remove.
notice: str
    The last message that is not an error ("exported …", "nothing to run: …", why a
    run stopped short of the target); "" after the next state change.
value: dict
    Changes with every change of the session (position, revision, share_pruned,
    state, history_length): reactive notebooks (marimo) re-run cells that read it.
live_params: dict
    Row name -> parameters alive now (follows the units; ``layers[i].params`` is the original); a
    row of one of a layer's several groups counts the parameters that go with its units.
previews: dict
    Per pending layer: units, params and flops the proposal removes; ``bound`` (certified bound
    of the largest output change if accepted) and, with eval data (``eval``), ``accuracy`` after
    accepting it alone next to ``accuracy_now`` on ``samples`` eval samples -- both computed in the
    background, each with ``*_pending`` (not yet known for this state) and ``*_stale`` (the value
    shown is of an earlier state).
sensitivity: dict
    ``{"status": "idle"|"computing"|"done"|"cancelled"|"error", "done", "total",
    "current": bool (computed for the state shown), "seconds", "notes",
    "curves": {layer: {ratios, bound, agreement, accuracy, params, flops}}}``
    (see :mod:`paoding_widgets.session.sensitivity`).
plan: dict
    The plan (layer -> share) from sensitivity and a goal, as the user edited it:
    ``{"targets", "metric", "goal", "saved", "total", "share", "reached", "message"}`` or {}.
compare: dict
    Two history points side by side (``{"a", "b", "layers": [{name, units_a, units_b,
    params_a, params_b, went}], "metrics_a", "metrics_b"}``) or {}.
deploy: dict
    The widget's deployment (:meth:`PruningSession.deploy` in the background): ``{"status": "idle" |
    "running" | "done" | "error", "offered": [{name, description, data}], "eval": bool, "dir", "step",
    "rows": [DeployRow.as_dict()], "original_bytes", "epsilons", "message"}``.
export_path: str
    Default path the Export button writes to.  The only trait the front end may
    write (checked: a ``.keras`` or ``.tflite`` file name); writes to any other trait are
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
import numpy as np
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
    progress_info = traitlets.Dict().tag(sync=True)
    notice = traitlets.Unicode("").tag(sync=True)
    value = traitlets.Dict().tag(sync=True)
    live_params = traitlets.Dict().tag(sync=True)
    previews = traitlets.Dict().tag(sync=True)
    sensitivity = traitlets.Dict().tag(sync=True)
    plan = traitlets.Dict().tag(sync=True)
    compare = traitlets.Dict().tag(sync=True)
    deploy = traitlets.Dict().tag(sync=True)

    def __init__(self, session: PruningSession, export_path: str = "pruned.keras", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session: PruningSession | None = session
        self._view: SessionView | None = SessionView(session)
        self.export_path = export_path
        self.strategies = sorted(STRATEGIES)
        self._sent: dict[str, str] = {}  # layer -> digest of the heatmap last sent
        self._drawn: dict[str, int] = {}  # layer -> the write version its heatmap was last drawn at
        self._metrics_by_position: dict[tuple[int, int], dict[str, Any]] = {}  # state key -> metrics
        self._sens_cache: dict[tuple[int, int], dict[str, Any]] = {}  # state key -> sensitivity result
        self._sens_cancel = threading.Event()
        self._sens_thread: threading.Thread | None = None
        self._preview_sig: Any = None  # (state key, open proposals) the preview figures are being computed for
        self._preview_cancel = threading.Event()
        self._preview_cache: dict[tuple[Any, ...], dict[str, Any]] = {}  # (state key, layer, drop) -> figures
        self._unit_costs: dict[str, tuple[int, int]] | None = None
        self.sensitivity = {"status": "idle"}
        self._deploy_thread: threading.Thread | None = None
        self.deploy = _deploy_offer(self._view)
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
        view = self._view
        if view is None:  # closed
            return
        # the session lock first, as every other path that holds both (a preview or metrics thread publishing
        # holds it while it waits for ours: taking ours first here deadlocked with it)
        with view.reading(), self._lock:
            v = self._view
            if v is None:  # closed meanwhile
                return
            with self.hold_sync():
                self.states = payload.layer_states(v)
                self.settings = {k: v.settings[k] for k in ("strategy", "step", "target")}
                self.history = self._history_rows(v)
                self.position = v.position
                self.running = v.running
                if self._unit_costs is None:
                    self._unit_costs = v.unit_costs()
                self.live_params = payload.row_params(v, self.layers, self._unit_costs)
                self.value = {"position": v.position, "revision": list(v.revision), "share_pruned": v.share_pruned(),
                              "state": v.state, "history_length": v.history_length}
                self._refresh_previews(v)
                self._refresh_sensitivity(v)
                if self.compare and max(self.compare.get("a", 0), self.compare.get("b", 0)) > v.history_length:
                    self.compare = {}
            self._send_heatmaps(v, force=False)
        if metrics and not v.running:
            self._request_metrics()

    def _history_rows(self, v: SessionView) -> list[dict[str, Any]]:
        rows = []
        for h in v.history_items:
            m = self._metrics_by_position.get(v.state_key(h.index)) if h.index <= v.history_length else None
            rows.append({"index": h.index, "kind": h.kind, "label": h.label, "applied": h.applied,
                         "share_pruned": h.share_pruned, "metrics": _short_metrics(m)})
        return rows

    def _refresh_previews(self, v: SessionView) -> None:
        """What accepting each open proposal removes (now); its certified bound and, with eval data, the
        accuracy after (in the background, cached per state, cancelled when the state moves on).

        A value computed for an earlier state stays shown, marked stale, until the new one arrives.
        """
        costs = self._unit_costs
        if costs is None:
            costs = self._unit_costs = v.unit_costs()
        key = v.state_key()
        has_eval = v.has_eval_data
        out: dict[str, Any] = {}
        for info in v.layers:
            if info.proposal is None:
                continue
            drop = list(info.proposal["drop"])
            n = len(drop)
            ppu, fpu = costs.get(info.name, (0, 0))
            old = self.previews.get(info.name, {})
            cached = self._preview_cache.get((key, info.name, tuple(drop)), {})
            same = old.get("drop") == drop  # an earlier state's figures for the same units: shown as stale
            p: dict[str, Any] = {"units": n, "params": ppu * n, "flops": fpu * n, "drop": drop, "eval": has_eval}
            for k in ("bound", "accuracy"):
                if k in cached:
                    p[k], p[f"{k}_pending"], p[f"{k}_stale"] = cached[k], False, False
                elif same and old.get(k) is not None:
                    p[k], p[f"{k}_pending"], p[f"{k}_stale"] = old[k], True, True
                else:
                    p[k], p[f"{k}_pending"], p[f"{k}_stale"] = None, k == "bound" or has_eval, False
            for k in ("accuracy_now", "samples"):
                p[k] = cached.get(k, old.get(k) if same else None)
            out[info.name] = p
        self.previews = out
        sig = (key, tuple(sorted((k, tuple(p["drop"])) for k, p in out.items())))
        if sig == self._preview_sig:
            return
        self._preview_sig = sig
        self._preview_cancel.set()  # the state moved on: whatever was being computed is of no use
        self._preview_cancel = threading.Event()
        if any(p["bound_pending"] or p["accuracy_pending"] for p in out.values()):
            threading.Thread(target=_preview_worker, args=(weakref.ref(self), v, sig, self._preview_cancel),
                             name="paoding-preview", daemon=True).start()

    def _publish_preview(self, v: SessionView, sig: Any, name: str, **values: Any) -> bool:
        """Show (and cache) a preview figure if the proposals it was computed for are still the open ones."""
        with v.reading(), self._lock:  # session lock first: events arrive holding it
            if self._view is None or self._closed or sig != self._preview_sig:
                return False
            p = self.previews.get(name)
            if p is None:
                return True
            ckey = (sig[0], name, tuple(p["drop"]))
            self._preview_cache.setdefault(ckey, {}).update(values)
            while len(self._preview_cache) > 256:
                del self._preview_cache[next(iter(self._preview_cache))]
            upd = dict(p)
            for k, x in values.items():
                upd[k] = x
                if k in ("bound", "accuracy"):
                    upd[f"{k}_pending"] = upd[f"{k}_stale"] = False
            self.previews = {**self.previews, name: upd}
            return True

    def _refresh_sensitivity(self, v: SessionView) -> None:
        sens = self.sensitivity
        if sens.get("status") == "computing":
            return
        key = v.state_key()
        cached = self._sens_cache.get(key)
        if cached is not None:
            self.sensitivity = {**cached, "current": True}
        elif sens.get("curves"):
            self.sensitivity = {**sens, "current": False}

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
        v = self._view
        if v is None:  # a late result for a view that is gone
            return
        with v.reading(), self._lock:  # session lock first: events arrive holding it
            if self._view is None:
                return
            n_eval, n_probes = v.sample_counts
            d = {**m.as_dict(), "share_pruned": v.share_pruned(), "eval_samples": n_eval, "probes": n_probes}
            if position > v.history_length:
                return
            self._metrics_by_position[v.state_key(position)] = d
            with self.hold_sync():
                self.metrics = d
                live = {v.state_key(n) for n in range(v.history_length + 1)}
                for k in [k for k in self._metrics_by_position if k not in live]:  # entries that are gone
                    del self._metrics_by_position[k]
                self.metrics_history = [{"position": k[0], **x} for k, x in sorted(self._metrics_by_position.items())]
                self.history = self._history_rows(v)
                cmp = self.compare
                for side in ("a", "b"):  # a compared point whose metrics arrive after the comparison was made
                    if cmp and cmp.get(side) == position and cmp.get(f"metrics_{side}") is None:
                        cmp = {**cmp, f"metrics_{side}": d}
                self.compare = cmp

    def _send_heatmaps(self, v: SessionView, force: bool) -> None:
        """Send heatmaps: all of them if ``force`` (a new view), else those whose weights were written since."""
        rows = {r["name"]: r for r in self.layers if r["heatmap"]}
        versions = {n: payload.matrix_version(v, r) for n, r in rows.items()}
        todo = list(rows)
        if not force:  # ResNet50, one accept: 3 of 54
            todo = [n for n in todo if versions[n] != self._drawn.get(n)]
            if not todo:
                return
        self._drawn.update({n: versions[n] for n in todo})
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
                d = event.data
                if "fraction" in d:  # share of the units this run removes (locked layers do not count)
                    self.progress = float(d["fraction"])
                else:
                    target = d.get("target") or self.settings.get("target") or 1.0
                    self.progress = min(1.0, float(d.get("share_pruned", 0.0)) / target)
                self.progress_info = {k: d.get(k) for k in ("fraction", "iteration", "elapsed", "eta",
                                                            "units_removed", "units_to_remove")}
                self.refresh(metrics=False)
            elif event.kind in ("state", "proposal"):
                if event.kind == "state":
                    msg = event.data.get("message")
                    if msg:
                        self.notice = str(msg)
                    elif event.data.get("action") == "run started":
                        self.notice = ""
                        self.progress, self.progress_info = 0.0, {}
                    elif event.data.get("action") == "run":
                        self.notice = self._run_notice()
                    else:
                        self.notice = ""
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
            if key == "value" and value == self.value:  # the front end echoing the session's value (marimo)
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
                got = str(sync_data["export_path"])[:80]
                self.error = f"export path must be a .keras or .tflite file name, got {got!r}"
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
            self._export(s, msg)
        elif a == "sensitivity":
            self._start_sensitivity()
        elif a == "cancel_sensitivity":
            self._sens_cancel.set()
        elif a == "plan":
            self._make_plan(msg["goal"], msg.get("metric", "params"))
        elif a == "plan_set":
            if not self.plan:
                raise WireError("no plan to edit: make one from the sensitivity first")
            targets = dict(self.plan.get("targets", {}))
            if msg["share"] <= 0:
                targets.pop(msg["layer"], None)
            else:
                targets[msg["layer"]] = msg["share"]
            self.plan = {**self.plan, "targets": targets, "edited": True}
        elif a == "plan_clear":
            self.plan = {}
        elif a == "run_plan":
            targets = {k: float(x) for k, x in (self.plan or {}).get("targets", {}).items() if x > 0}
            if not targets:
                raise WireError("the plan is empty: make one from the sensitivity first")
            self._run = s.start_run(targets=targets)
        elif a == "compare":
            self._compare(msg["a"], msg["b"])
        elif a == "compare_clear":
            self.compare = {}
        elif a == "deploy":
            self._start_deploy(msg)
        elif a == "detail":
            header, bufs = payload.detail(self._view, msg["layer"], msg.get("kind", "weights"), self.layers)
            self.send({"type": "detail", **header}, bufs)

    # ------------------------------------------------------------ helpers for the actions
    def _run_notice(self) -> str:
        """What the last run did, when it is worth saying (stopped short of the target, by locks or else)."""
        v = self._view
        if v is None or not v.history_items:
            return ""
        last = v.history_items[-1]
        if last.kind != "run" or not last.applied:
            return ""
        if "locked layer" in last.label:
            share = 100 * (last.share_pruned or 0.0)
            return (f"{last.label}: {share:.1f} % of the prunable units are pruned; the locked layers count "
                    "in that share but were not touched")
        if "(exhausted)" in last.label:
            return f"{last.label}: no candidate left before the target"
        return ""

    def _export(self, s: PruningSession, msg: dict[str, Any]) -> None:
        fmt = msg.get("format") or "keras"
        path = msg.get("path") or self.export_path
        stem = path.rsplit(".", 1)[0] if path.endswith((".keras", ".tflite")) else path
        path = stem + (".keras" if fmt == "keras" else ".tflite")
        overwrite = bool(msg.get("overwrite"))
        if not overwrite and pathlib.Path(path).exists():  # ask the person, in the view
            self.send({"type": "confirm_overwrite", "path": path, "format": fmt})
            return
        if fmt == "keras":
            out = s.export(path, overwrite=overwrite)
        else:
            out = s.export_tflite(path, quantize="float16", overwrite=overwrite)
        size = pathlib.Path(out).stat().st_size
        self.notice = f"exported {out} ({_size(size)})"
        self.send({"type": "exported", "path": out, "format": fmt, "bytes": size})

    def _start_deploy(self, msg: dict[str, Any]) -> None:
        """Quantise, export and verify in the chosen formats, in the background; ask before overwriting."""
        from ..engine.deploy import target_path

        v = self._view
        if v is None:
            return
        if self._deploy_thread is not None and self._deploy_thread.is_alive():
            raise WireError("a deployment is already running")
        if v.running:
            raise WireError("wait for the run to end (or cancel it) before deploying")
        formats = msg["formats"]
        if "tflite-full-int8" in formats and not v.has_eval_data:
            raise WireError("tflite-full-int8 is calibrated on your own inputs: give the session eval_data "
                            "(paoding_widgets never invents data)")
        folder = pathlib.Path(msg["dir"]).expanduser()
        stem = pathlib.Path(self.export_path).name.rsplit(".", 1)[0] or "model"
        if not msg["overwrite"]:
            existing = [str(target_path(folder, f, stem)) for f in formats if target_path(folder, f, stem).exists()]
            if existing:
                self.send({"type": "confirm_overwrite", "kind": "deploy", "paths": existing, "path": existing[0],
                           "dir": msg["dir"], "formats": formats})
                return
        self.deploy = {**_deploy_offer(v), "status": "running", "dir": str(folder), "formats": formats,
                       "step": "starting"}
        self._deploy_thread = threading.Thread(
            target=_deploy_worker, args=(weakref.ref(self), self.session, str(folder), stem, formats,
                                         msg["overwrite"]), name="paoding-deploy", daemon=True)
        self._deploy_thread.start()

    def wait_deploy(self, timeout: float | None = 600.0) -> dict[str, Any]:
        """Wait for a deployment started from this view to end (for scripts and tests); returns the trait."""
        t = self._deploy_thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"deployment still running after {timeout} s")
        return self.deploy

    def _start_sensitivity(self) -> None:
        v = self._view
        if v is None:
            return
        if self._sens_thread is not None and self._sens_thread.is_alive():
            return  # already computing
        key = v.state_key()
        if key in self._sens_cache:
            self.sensitivity = {**self._sens_cache[key], "current": True}
            return
        self._sens_cancel = threading.Event()
        self.sensitivity = {**{k: x for k, x in self.sensitivity.items() if k != "status"}, "status": "computing",
                            "done": 0, "total": len([g for g in v.groups if g.prunable])}
        self._sens_thread = threading.Thread(target=_sensitivity_worker,
                                             args=(weakref.ref(self), v, key, self._sens_cancel),
                                             name="paoding-sensitivity", daemon=True)
        self._sens_thread.start()

    def wait_sensitivity(self, timeout: float | None = 300.0) -> dict[str, Any]:
        """Wait for a sensitivity computation to end (for scripts and tests); returns the trait."""
        t = self._sens_thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"sensitivity still computing after {timeout} s")
        return self.sensitivity

    def _make_plan(self, goal: float, metric: str) -> None:
        from ..session.plan import make_plan
        from ..session.sensitivity import Curve, Sensitivity

        v = self._view
        sens = self.sensitivity
        if v is None or not sens.get("curves"):
            raise WireError("compute the sensitivity first (the Sensitivity button)")
        if not sens.get("current"):
            raise WireError("the sensitivity is of another state: compute it again for this one")
        curves = {k: Curve(k, c["ratios"], c["bound"], c["agreement"], c["accuracy"], c["params"], c["flops"],
                           score=c.get("score", []))
                  for k, c in sens["curves"].items()}
        rev = sens.get("revision") or (0, 0)
        obj = Sensitivity((int(rev[0]), int(rev[1])), curves, 0.0, int(sens["total_params"]),
                          int(sens["total_flops"]))
        locked = [i.name for i in v.layers if i.status == "locked"]
        self.plan = make_plan(obj, goal, metric, locked).as_dict()

    def _compare(self, a: int, b: int) -> None:
        v = self._view
        if v is None:
            return
        ma, mb = v.alive_at(a), v.alive_at(b)
        costs = self._unit_costs if self._unit_costs is not None else v.unit_costs()
        layers = []
        for g in v.groups:
            if not g.prunable:
                continue
            x, y = ma[g.name], mb[g.name]
            ppu = costs.get(g.name, (0, 0))[0]
            went = np.flatnonzero(x & ~y)
            back = np.flatnonzero(~x & y)
            layers.append({"name": g.name, "units_a": int(x.sum()), "units_b": int(y.sum()),
                           "params_a": ppu * int(x.sum()), "params_b": ppu * int(y.sum()),
                           "went": went.tolist(), "went_count": int(len(went)),
                           "back": back.tolist(), "back_count": int(len(back))})
        self.compare = {"a": a, "b": b, "layers": layers,
                        "metrics_a": self._metrics_by_position.get(v.state_key(a)),
                        "metrics_b": self._metrics_by_position.get(v.state_key(b))}

    def close(self) -> None:
        """Close the view: stop following the session, let the metrics thread end, drop every reference."""
        self._sens_cancel.set()
        self._preview_cancel.set()
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
            and bool(value.strip()) and value.strip().endswith((".keras", ".tflite")))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _short_metrics(m: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a history row shows of its state's metrics."""
    if m is None:
        return None
    size = m.get("size") or {}
    return {"params": size.get("params"), "bytes": size.get("bytes"), "flops": size.get("flops"),
            "accuracy": m.get("accuracy"), "agreement": m.get("agreement"),
            "output_bound_width": m.get("output_bound_width"), "share_pruned": m.get("share_pruned")}


def _preview_worker(ref: weakref.ref[PruningWidget], v: SessionView, sig: Any, cancel: threading.Event) -> None:
    """Certified bounds, then (with eval data) the accuracy after, of the open proposals: on a private
    copy of the weights, never under the lock; stops when the state moves on."""
    from ..session.sensitivity import Cancelled

    def publish(name: str, **values: Any) -> None:
        w = ref()
        if w is None or not w._publish_preview(v, sig, name, **values):
            cancel.set()

    try:
        revision, bounds = v.proposal_bounds(still=lambda rev: not cancel.is_set() and v.revision == rev)
        for name, b in bounds.items():
            publish(name, bound=b)
        if not v.has_eval_data or cancel.is_set():
            return

        def stale() -> bool:
            return cancel.is_set() or v.revision != revision

        v.proposal_accuracies(cancelled=stale, on_result=lambda name, acc, res: publish(
            name, accuracy=acc, accuracy_now=res.now, samples=res.samples))
    except Cancelled:
        return
    except Exception:  # a preview is a hint: never raise into a thread
        log.exception("paoding_widgets: proposal preview failed")
        w = ref()
        if w is not None:
            for name in list(w.previews):
                publish(name, bound=w.previews[name].get("bound"), accuracy=None)


def _deploy_offer(v: SessionView | None) -> dict[str, Any]:
    """The formats the widget offers (the calibrated one only with the user's eval data)."""
    from ..engine.deploy import CALIBRATED_FORMATS, DEFAULT_FORMATS, FORMATS

    has_eval = v is not None and v.has_eval_data
    return {"status": "idle", "eval": has_eval,
            "offered": [{"name": f, "description": FORMATS[f].description, "data": FORMATS[f].data,
                         "default": f in ("keras", "keras-int8", "tflite-int8")}
                        for f in DEFAULT_FORMATS + CALIBRATED_FORMATS]}


def _deploy_worker(ref: weakref.ref[PruningWidget], session: PruningSession, folder: str, stem: str,
                   formats: list[str], overwrite: bool) -> None:
    def say(step: str) -> None:
        w = ref()
        if w is not None and not w._closed:
            w.deploy = {**w.deploy, "step": step}

    try:
        report = session.deploy(folder, formats=formats, overwrite=overwrite, strict=False, stem=stem,
                                progress=say)
    except Exception as exc:  # shown in the view, never raised into a thread
        log.warning("paoding_widgets: deploy failed: %s", exc)
        w = ref()
        if w is not None and not w._closed:
            w.deploy = {**w.deploy, "status": "error", "message": str(exc), "step": ""}
            w.error = f"deploy failed: {exc}"
        return
    w = ref()
    if w is None or w._closed:
        return
    d = report.as_dict()
    written = [r for r in d["rows"] if r.get("path") and r.get("bytes")]
    failed = [r["name"] for r in d["rows"] if r.get("path") and not r.get("bytes")]
    w.deploy = {**w.deploy, **d, "status": "done", "step": ""}
    w.notice = (f"deployed {len(written)} file{'s' if len(written) != 1 else ''} to {folder}, each run and checked"
                + (f"; not written: {', '.join(failed)} (see the table)" if failed else ""))


def _sensitivity_worker(ref: weakref.ref[PruningWidget], v: SessionView, key: tuple[int, int],
                        cancel: threading.Event) -> None:
    from ..session import sensitivity

    def progress(d: dict[str, Any]) -> None:
        w = ref()
        if w is not None and not w._closed:
            w.sensitivity = {**w.sensitivity, "status": "computing", "done": d["done"], "total": d["total"],
                             "layer": d["layer"], "elapsed": round(d["elapsed"], 2)}

    try:
        result = sensitivity.compute(v, progress=progress, cancelled=cancel.is_set).as_dict()
        result.update(status="done", done=len(result["curves"]), total=len(result["curves"]))
        w = ref()
        if w is None or w._closed:
            return
        w._sens_cache[key] = result
        while len(w._sens_cache) > 8:
            del w._sens_cache[next(iter(w._sens_cache))]
        w.sensitivity = {**result, "current": w._view is not None and w._view.state_key() == key}
    except sensitivity.Cancelled:
        w = ref()
        if w is not None and not w._closed:
            w.sensitivity = {**w.sensitivity, "status": "cancelled"}
    except Exception as exc:
        log.exception("paoding_widgets: sensitivity failed")
        w = ref()
        if w is not None and not w._closed:
            w.sensitivity = {**w.sensitivity, "status": "error", "message": str(exc)}
