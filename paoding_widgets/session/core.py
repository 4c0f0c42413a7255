"""PruningSession: layer states, automated iterations, undo/redo, metrics, export.

Why: a notebook, the widget and the command line drive pruning the same way,
through this object.  It owns a :class:`~paoding_widgets.engine.pruner.Pruner`
(the engine), the per-layer status (ready / pending / accepted / skipped /
locked), an undo/redo :class:`~.history.History` and an event
:class:`~.events.Emitter`.  It knows nothing of widgets or the DOM.

Every public action validates its input first and changes nothing when it
raises; every change is one history entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.evaluate import (
    DEFAULT_EPSILONS,
    Metrics,
    default_probe_count,
    evaluate,
    robust_instances,
    sample_box,
)
from ..engine.export import save_keras, save_tflite
from ..engine.graph import UnitGroup
from ..engine.pruner import Proposal, Pruner, check_fraction
from ..engine.strategies import make_strategy
from ..engine.weights import Patch
from ..errors import SessionError
from .events import Emitter, Event
from .history import Entry, History, HistoryItem, SessionState

READY, PENDING, ACCEPTED, SKIPPED, LOCKED = "ready", "pending", "accepted", "skipped", "locked"
DONE, NOT_PRUNABLE = "done", "not prunable"


@dataclass(frozen=True)
class LayerInfo:
    """One prunable unit group (or a group that cannot be pruned) as a user sees it."""

    name: str
    kind: str  # "dense" or "conv"
    status: str  # ready, pending, accepted, skipped, locked, done, not prunable
    units_total: int
    units_alive: int
    params: int  # parameters tied to the group's living units
    reason: str  # why it is not prunable ("" if it is)
    layers: tuple[str, ...]  # Keras layers whose arrays the group indexes
    proposal: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunResult:
    iterations: int
    reason: str  # "target", "exhausted", "min_accuracy", "min_fidelity", "cancelled"
    share_pruned: float


class PruningSession:
    """Interactive, undoable, data-free pruning of one Keras model.

    Parameters
    ----------
    model: a built Keras 3 model; never modified.
    input_range: the legal input box ``(low, high)`` (scalars or per-feature arrays).
    strategy, step, target, seed: as for :class:`~paoding_widgets.engine.pruner.Pruner`.
    eval_data: optional ``(x, y)`` for accuracy and FGSM robustness; without it the
        session is fully data-free (fidelity on inputs sampled from the box).
    epsilons: FGSM step sizes for robustness.
    n_probes: box samples for the data-free agreement metric (default: 1,000 for small
        inputs, fewer for large images, so metrics stay quick).
    """

    def __init__(self, model: Any, input_range: Any = (0.0, 1.0), strategy: str = "impact", step: float = 0.05,
                 target: float = 0.5, seed: int = 0, eval_data: tuple[np.ndarray, np.ndarray] | None = None,
                 epsilons: Sequence[float] = DEFAULT_EPSILONS, n_probes: int | None = None,
                 source_path: str | None = None, **strategy_options: Any) -> None:
        try:
            strategy_options = {k: _plain(v) for k, v in strategy_options.items()}
            self._pruner = Pruner(model, input_range, strategy, step, target, seed, **strategy_options)
        except (TypeError, ValueError) as exc:
            raise SessionError(str(exc)) from exc
        self.model = model
        self.source_path = source_path
        self.eval_data = _check_eval_data(model, eval_data)
        self.epsilons = tuple(float(e) for e in epsilons)
        self.seed = int(seed)
        self.events = Emitter()
        self.history = History()
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()
        self._running = False
        self._metrics_cache: tuple[int, Metrics] | None = None
        self._original_robust: dict[float, int] | None = None
        shape = tuple(model.inputs[0].shape[1:])
        n_probes = default_probe_count(shape) if n_probes is None else int(n_probes)
        self._probes = sample_box(shape, self._pruner.input_range, n_probes, seed)
        self._probe_classes: np.ndarray | None = None  # the original's answers, computed once
        status = {g.name: READY for g in self._pruner.graph.prunable_groups}
        self._state = SessionState(status, {}, self._settings(strategy, step, target, strategy_options),
                                   self._pruner.rng.bit_generator.state)

    # ------------------------------------------------------------ read-only
    @property
    def pruner(self) -> Pruner:
        return self._pruner

    @property
    def graph(self) -> Any:
        return self._pruner.graph

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._state.settings)

    @property
    def proposals(self) -> dict[str, Proposal]:
        return dict(self._state.proposals)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def revision(self) -> tuple[int, int]:
        """(history position, weights version): changes with every edit, undo or redo."""
        with self._lock:
            return self.history.position, self._pruner.store.version

    @property
    def layers(self) -> list[LayerInfo]:
        """Every unit group, prunable or not, in model order."""
        with self._lock:
            return [self._layer_info(g) for g in self.graph.groups]

    def layer(self, name: str) -> LayerInfo:
        with self._lock:
            return self._layer_info(self._group(name, prunable=False))

    def alive(self, name: str) -> np.ndarray:
        """Which units (or filters) of a layer survive, as a boolean array (a copy)."""
        with self._lock:
            return self._pruner.store.alive[self._group(name, prunable=False).id].copy()

    def status(self, name: str) -> str:
        return self.layer(name).status

    def share_pruned(self) -> float:
        return self._pruner.share_pruned()

    @property
    def history_items(self) -> list[HistoryItem]:
        return self.history.items()

    def widget(self, **kwargs: Any) -> Any:
        """A Jupyter view of this session (``PruningWidget``); several stay in sync."""
        from ..widget import PruningWidget

        return PruningWidget(self, **kwargs)

    def subscribe(self, listener: Callable[[Event], None], kinds: tuple[str, ...] | None = None) -> Callable[[], None]:
        """Be told of changes (events "state", "proposal", "progress", "error"); returns an unsubscribe."""
        return self.events.subscribe(listener, kinds)

    # ------------------------------------------------------------ actions
    def propose(self) -> dict[str, Proposal]:
        """One automated iteration's proposals for every unlocked layer (not applied)."""
        def change(patch: Patch, st: SessionState) -> None:
            groups = [g for g in self.graph.prunable_groups if st.status[g.name] != LOCKED]
            props = self._pruner.propose(groups)
            st.proposals = {self.graph.groups[gid].name: p for gid, p in props.items()}
            for g in groups:
                st.status[g.name] = PENDING if g.name in st.proposals else READY
            st.iteration += 1
        self._change("propose", f"propose iteration {self._state.iteration + 1}", change)
        self.events.emit("proposal", proposals={k: p.summary() for k, p in self._state.proposals.items()})
        return self.proposals

    def accept(self, name: str) -> None:
        """Apply the open proposal of one layer."""
        g = self._pending(name)
        self._change("accept", f"accept {g.name}", lambda patch, st: self._accept(g.name, patch, st))

    def skip(self, name: str) -> None:
        """Decline one layer's proposal for this iteration (the next iteration proposes again)."""
        g = self._pending(name)

        def change(patch: Patch, st: SessionState) -> None:
            st.proposals.pop(g.name)
            st.status[g.name] = SKIPPED
        self._change("skip", f"skip {g.name}", change)

    def lock(self, name: str) -> None:
        """Never propose or change this layer's units until unlocked."""
        g = self._group(name)
        if self._state.status[g.name] == LOCKED:
            raise SessionError(f"layer {g.name!r} is already locked")

        def change(patch: Patch, st: SessionState) -> None:
            st.proposals.pop(g.name, None)
            st.status[g.name] = LOCKED
        self._change("lock", f"lock {g.name}", change)

    def unlock(self, name: str) -> None:
        g = self._group(name)
        if self._state.status[g.name] != LOCKED:
            raise SessionError(f"layer {g.name!r} is not locked")
        self._change("unlock", f"unlock {g.name}", lambda patch, st: st.status.__setitem__(g.name, READY))

    def accept_all(self) -> None:
        """Apply every open proposal."""
        if not self._state.proposals:
            raise SessionError("no pending proposals; call propose() first")
        def change(patch: Patch, st: SessionState) -> None:
            for name in list(st.proposals):
                self._accept(name, patch, st)
        self._change("accept_all", f"accept all ({len(self._state.proposals)} layers)", change)

    def step(self) -> dict[str, Proposal]:
        """One automated iteration on the unlocked layers: propose and accept everything."""
        accepted: dict[str, Proposal] = {}

        def change(patch: Patch, st: SessionState) -> None:
            accepted.update(self._iterate(patch, st, None))
            if not accepted:
                raise SessionError("nothing left to prune: every unlocked layer is at its target")
        self._change("step", f"step {self._state.iteration + 1}", change)
        return accepted

    def configure(self, strategy: str | None = None, step: float | None = None, target: float | None = None,
                  **strategy_options: Any) -> None:
        """Change settings (one undoable entry); open proposals are dropped."""
        s = dict(self._state.settings)
        if strategy is not None or strategy_options:
            name = strategy or s["strategy"]
            strategy_options = {k: _plain(v) for k, v in strategy_options.items()}
            opts = strategy_options if strategy is not None else {**s["options"], **strategy_options}
            try:
                make_strategy(name, **opts)
            except (TypeError, ValueError) as exc:
                raise SessionError(f"strategy {name!r}: {exc}") from exc
            s["strategy"], s["options"] = name, dict(opts)
        for key, value in (("step", step), ("target", target)):
            if value is not None:
                try:
                    check_fraction(key, value)
                except ValueError as exc:
                    raise SessionError(str(exc)) from exc
                s[key] = float(value)
        if s == self._state.settings:
            return

        def change(patch: Patch, st: SessionState) -> None:
            st.settings = s
            _drop_proposals(st)
        self._change("settings", _describe_settings(self._state.settings, s), change)

    def run(self, target: float | None = None, min_accuracy: float | None = None,
            min_fidelity: float | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
            cancel: threading.Event | Callable[[], bool] | None = None, max_iterations: int = 10_000,
            _reserved: bool = False) -> RunResult:
        """Iterate (propose + accept all on unlocked layers) until a stop condition.

        Stops at the target share, when no candidate remains, when
        ``min_accuracy`` (needs eval data) or ``min_fidelity`` (agreement with the
        original on box samples) fails -- then the iteration that broke it is
        undone -- or when ``cancel`` is set.  The whole run is one history entry.
        """
        if target is not None:
            try:
                check_fraction("target", target)
            except ValueError as exc:
                raise SessionError(str(exc)) from exc
        if min_accuracy is not None and self.eval_data is None:
            raise SessionError("min_accuracy needs eval_data=(x, y)")
        for name, v in (("min_accuracy", min_accuracy), ("min_fidelity", min_fidelity)):
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise SessionError(f"{name} must be between 0 and 1, got {v!r}")
        is_cancelled = (cancel.is_set if isinstance(cancel, threading.Event) else cancel) or (lambda: False)
        result: dict[str, Any] = {}

        def change(patch: Patch, st: SessionState) -> None:
            _drop_proposals(st)
            reason, n = "exhausted", 0
            for _ in range(max_iterations):
                if is_cancelled():
                    reason = "cancelled"
                    break
                with self._lock:  # readers see whole iterations, never half of one
                    part = Patch()
                    before = st.copy()
                    done = self._iterate(part, st, target)
                    if not done:
                        reason = "target" if self._at_target(st, target) else "exhausted"
                        break
                    failed = self._failed_condition(min_accuracy, min_fidelity)
                    if failed:
                        self._pruner.store.revert(part)
                        st.status, st.rng, st.iteration = before.status, before.rng, before.iteration
                        self._pruner.rng.bit_generator.state = before.rng
                        reason = failed
                        break
                    patch.extend(part)
                    self._state = st  # the tree can follow the run
                n += 1
                info = {"iteration": n, "share_pruned": self.share_pruned(), "accepted": sorted(done),
                        "target": target if target is not None else st.settings["target"]}
                self.events.emit("progress", **info)
                if progress is not None:
                    progress(info)
            result.update(iterations=n, reason=reason)
        def job() -> RunResult:
            try:
                self._change("run", "run", change, label_from=lambda: f"run: {result.get('iterations', 0)} "
                                                                     f"iterations ({result.get('reason', '?')})")
            finally:
                self._running = False
            self._emit_state("run finished")  # views see running == False now
            return RunResult(result["iterations"], result["reason"], self.share_pruned())

        if _reserved:
            return job  # type: ignore[return-value]  # start_run runs it in its thread
        self._reserve()
        return job()

    def start_run(self, **kwargs: Any) -> RunHandle:
        """:meth:`run` in a background thread; returns a handle to cancel or wait.

        Arguments are checked and the session is marked running before this
        returns, so no other change can slip in before the thread starts.
        """
        cancel = threading.Event()
        job = self.run(cancel=cancel, _reserved=True, **kwargs)
        self._reserve()
        self._emit_state("run started")  # every view learns the session is busy
        return RunHandle(self, job, cancel)

    # ------------------------------------------------------------ history
    def undo(self) -> None:
        self._idle()  # a running session says so first
        if not self.history.can_undo:
            raise SessionError("nothing to undo")
        self._move(self.history.position - 1, "undo")

    def redo(self) -> None:
        self._idle()  # a running session says so first
        if not self.history.can_redo:
            raise SessionError("nothing to redo")
        self._move(self.history.position + 1, "redo")

    def goto(self, n: int) -> None:
        """Jump to the state after the first ``n`` entries (0: the original model)."""
        if not isinstance(n, (int, np.integer)) or not 0 <= n <= len(self.history.entries):
            raise SessionError(f"history position must be an integer in 0..{len(self.history.entries)}, got {n!r}")
        self._move(int(n), "goto")

    def _move(self, n: int, action: str) -> None:
        """Revert or re-apply patches up to position ``n``; restore that position's state once."""
        self._idle()  # refuse at once, without waiting for a run iteration's lock
        with self._lock:
            self._idle()
            h = self.history
            if not 0 <= n <= len(h.entries):  # the history moved under a concurrent caller
                raise SessionError(f"history position {n} is outside 0..{len(h.entries)}")
            if n == h.position:
                return
            while h.position > n:
                h.position -= 1
                self._pruner.store.revert(h.entries[h.position].patch)
            while h.position < n:
                self._pruner.store.apply(h.entries[h.position].patch)
                h.position += 1
            self._restore(h.entries[n].before if n < len(h.entries) else h.entries[n - 1].after)
        self._emit_state(action)

    # ------------------------------------------------------------ results
    def metrics(self) -> Metrics:
        """Size of the physically pruned model, accuracy / robustness with eval data, fidelity.

        The model is snapshotted under the session lock, then evaluated outside
        it, so a slow evaluation (seconds on a ResNet50) never blocks an action.
        """
        with self._eval_lock:  # one evaluation at a time: two views asking at once build and measure once
            with self._lock:
                version = self._pruner.store.version
                cached = self.cached_metrics()
                if cached is not None:
                    return cached
                pruned = self._pruner.pruned_model()
                width = self._pruner.output_bound_width()
            box = self._pruner.input_range
            if self.eval_data is not None and self._original_robust is None and self.epsilons:
                self._original_robust = robust_instances(self.model, *self.eval_data, self.epsilons, box)
            m = evaluate(pruned, self.model, self.eval_data, self.epsilons, box, self._original_robust,
                         self._probes, width, self._original_probe_classes())
            with self._lock:
                if self._metrics_cache is None or self._metrics_cache[0] < version:
                    self._metrics_cache = (version, m)
        return m

    def cached_metrics(self) -> Metrics | None:
        """The metrics of the current weights if already computed, else None (never computes)."""
        hit = self._metrics_cache
        return hit[1] if hit is not None and hit[0] == self._pruner.store.version else None

    def pruned_model(self) -> Any:
        """A physically smaller ``keras.Model`` with the current edits."""
        with self._lock:
            return self._pruner.pruned_model()

    def export(self, path: str, overwrite: bool = False) -> str:
        """Save the pruned model as ``.keras`` (atomic; never over the source model)."""
        return str(save_keras(self.pruned_model(), path, overwrite, protected=(self.source_path,)))

    def export_tflite(self, path: str, quantize: str | None = "float16", overwrite: bool = False) -> str:
        return str(save_tflite(self.pruned_model(), path, quantize, overwrite, protected=(self.source_path,)))

    def save(self, path: str, overwrite: bool = False) -> str:
        """Write the whole session (model, weights, states, history) to one file."""
        from .persistence import save_session

        with self._lock:
            self._idle()  # a half-done run is not a state to resume
            return str(save_session(self, path, overwrite))

    @classmethod
    def load(cls, path: str) -> PruningSession:
        """Resume a saved session exactly, undo history included."""
        from .persistence import load_session

        return load_session(path)

    # ------------------------------------------------------------ internals
    def _settings(self, strategy: Any, step: float, target: float, options: dict) -> dict[str, Any]:
        name = strategy if isinstance(strategy, str) else self._pruner.strategy.name
        return {"strategy": name, "step": float(step), "target": float(target), "options": dict(options)}

    def _group(self, name: str, prunable: bool = True) -> UnitGroup:
        if not isinstance(name, str):
            raise SessionError(f"layer names are strings, got {name!r}")
        try:
            g = self.graph.group(name)
        except KeyError:
            known = ", ".join(x.name for x in self.graph.groups)
            raise SessionError(f"no layer {name!r} in this model; layers are: {known}") from None
        if prunable and not g.prunable:
            raise SessionError(f"layer {g.name!r} is not prunable: {g.reason}")
        return g

    def _pending(self, name: str) -> UnitGroup:
        g = self._group(name)
        if g.name not in self._state.proposals:
            raise SessionError(f"layer {g.name!r} has no pending proposal (status: {self._state.status[g.name]}); "
                               "call propose() first")
        return g

    def _accept(self, name: str, patch: Patch, st: SessionState) -> None:
        patch.extend(self._pruner.apply(st.proposals.pop(name)))
        st.status[name] = ACCEPTED

    def _iterate(self, patch: Patch, st: SessionState, target: float | None) -> dict[str, Proposal]:
        _drop_proposals(st)  # an automated iteration replaces any open proposal
        groups = [g for g in self.graph.prunable_groups if st.status[g.name] != LOCKED]
        props = self._pruner.propose(groups, target)
        out = {}
        for gid, p in props.items():
            name = self.graph.groups[gid].name
            patch.extend(self._pruner.apply(p))
            st.status[name] = ACCEPTED
            out[name] = p
        st.iteration += 1
        st.rng = self._pruner.rng.bit_generator.state
        return out

    def _original_probe_classes(self) -> np.ndarray:
        from ..engine.evaluate import predict_classes

        if self._probe_classes is None:
            self._probe_classes = predict_classes(self.model, self._probes)
        return self._probe_classes

    def _at_target(self, st: SessionState, target: float | None) -> bool:
        return all(self._pruner.next_k(g, target) == 0 for g in self.graph.prunable_groups
                   if st.status[g.name] != LOCKED)

    def _failed_condition(self, min_accuracy: float | None, min_fidelity: float | None) -> str:
        if min_accuracy is None and min_fidelity is None:
            return ""
        from ..engine.evaluate import accuracy, agreement

        model = self._pruner.edited_model()
        if min_accuracy is not None and accuracy(model, *self.eval_data) < min_accuracy:
            return "min_accuracy"
        if min_fidelity is not None and agreement(self.model, model, self._probes,
                                                  self._original_probe_classes()) < min_fidelity:
            return "min_fidelity"
        return ""

    def _change(self, kind: str, label: str, change: Callable[[Patch, SessionState], None],
                label_from: Callable[[], str] | None = None) -> None:
        """Run ``change`` on a copy of the state; commit it as one entry, or roll back.

        A run takes the lock per iteration (inside ``change``) so that views can
        read the session while it goes; the running flag keeps other changes out.
        """
        if kind != "run":
            self._idle()  # refuse at once, without waiting for a run iteration's lock
        with self._lock:
            if kind != "run":
                self._idle()
            before = self._state.copy()
            work = self._state.copy()
        patch = Patch()
        with self._lock if kind != "run" else _nullcontext():
            try:
                change(patch, work)
            except BaseException as exc:
                with self._lock:
                    self._pruner.store.revert(patch)
                    self._pruner.rng.bit_generator.state = before.rng
                    self._state = before
                if not isinstance(exc, SessionError):
                    self.events.emit("error", action=kind, message=str(exc))
                raise
        with self._lock:
            work.rng = self._pruner.rng.bit_generator.state
            self._apply_settings(work.settings)
            self._state = work
            self._refresh_done(work)
            entry = Entry(kind, label_from() if label_from else label, patch, before, work.copy(),
                          {"share_pruned": self.share_pruned()})
            self.history.push(entry)
        self._emit_state(kind)

    def _refresh_done(self, st: SessionState) -> None:
        """Layers at the target and without a proposal show as done."""
        for g in self.graph.prunable_groups:
            if st.status[g.name] in (READY, ACCEPTED, SKIPPED) and self._pruner.next_k(g) == 0 \
                    and g.name not in st.proposals:
                st.status[g.name] = DONE
            elif st.status[g.name] == DONE and self._pruner.next_k(g) > 0:
                st.status[g.name] = READY

    def _restore(self, st: SessionState) -> None:
        self._state = st.copy()
        self._pruner.rng.bit_generator.state = st.rng
        self._apply_settings(st.settings)
        self._refresh_done(self._state)

    def _apply_settings(self, s: dict[str, Any]) -> None:
        p = self._pruner
        if p.strategy.name != s["strategy"] or p.strategy_options != s["options"]:
            p.strategy = make_strategy(s["strategy"], **s["options"])
            p.strategy_options = dict(s["options"])
        p.step, p.target = s["step"], s["target"]

    def _idle(self) -> None:
        if self._running:
            raise SessionError("a run is in progress; cancel it or wait for it to finish")

    def _reserve(self) -> None:
        """Mark the session running (refused if it already is)."""
        with self._lock:
            self._idle()
            self._running = True

    def _emit_state(self, action: str) -> None:
        self.events.emit("state", action=action, position=self.history.position,
                         share_pruned=self.share_pruned())

    def _layer_info(self, g: UnitGroup) -> LayerInfo:
        alive = int(self._pruner.store.alive[g.id].sum())
        status = self._state.status.get(g.name, NOT_PRUNABLE) if g.prunable else NOT_PRUNABLE
        prop = self._state.proposals.get(g.name)
        return LayerInfo(g.name, g.kind, status, g.size, alive, self._pruner.params_per_unit(g) * alive,
                         g.reason, tuple(g.layers), prop.summary() if prop else None)


class RunHandle:
    """A :meth:`PruningSession.run` in a background thread."""

    def __init__(self, session: PruningSession, job: Callable[[], RunResult], cancel: threading.Event) -> None:
        self.session = session
        self._cancel = cancel
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(job,), name="paoding-run", daemon=True)
        self._thread.start()

    def _main(self, job: Callable[[], RunResult]) -> None:
        try:
            self.result = job()
        except BaseException as exc:  # reported to the caller through wait()
            self.error = exc
            if isinstance(exc, SessionError):  # other errors were already reported by the session
                self.session.events.emit("error", action="run", message=str(exc))

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def _drop_proposals(st: SessionState) -> None:
    """Close every open proposal; its layer is ready again."""
    st.proposals = {}
    for name, status in st.status.items():
        if status == PENDING:
            st.status[name] = READY


def _plain(v: Any) -> Any:
    """NumPy scalars as Python numbers (settings are saved as JSON)."""
    return v.item() if isinstance(v, np.generic) else v


def _check_eval_data(model: Any, data: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if data is None:
        return None
    try:
        x, y = data
    except (TypeError, ValueError):
        raise SessionError("eval_data must be a pair (x, y)") from None
    x, y = np.asarray(x), np.asarray(y)
    want = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, x.shape[1:])):
        raise SessionError(f"eval_data x has shape {x.shape}; the model expects (N, {', '.join(map(str, want))})")
    if len(y) != len(x):
        raise SessionError(f"eval_data has {len(x)} inputs but {len(y)} labels")
    if not np.issubdtype(x.dtype, np.number):
        raise SessionError(f"eval_data x must be numeric, got dtype {x.dtype}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise SessionError(f"eval_data y must be numeric labels, got dtype {y.dtype}")
    return x.astype(np.float32), y


def _describe_settings(old: dict, new: dict) -> str:
    parts = [f"{k} {old[k]} -> {new[k]}" for k in ("strategy", "step", "target") if old[k] != new[k]]
    if old["options"] != new["options"]:
        parts.append(f"options {new['options']}")
    return "settings: " + ", ".join(parts)
