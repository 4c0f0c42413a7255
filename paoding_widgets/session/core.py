"""PruningSession: layer states, automated iterations, undo/redo, metrics, export.

Why: a notebook, the widget and the command line drive pruning the same way,
through this object.  It owns a :class:`~paoding_widgets.engine.pruner.Pruner`
(the engine), the per-layer status (ready / pending / accepted / skipped /
locked / done), an undo/redo :class:`~.history.History` and an event
:class:`~.events.Emitter`.  It knows nothing of widgets or the DOM.

The class is put together from one module per concern:

* this module -- construction, the read-only API, snapshot / restore, save / load;
* :mod:`.base` -- the fields, the idle/running state machine and the transaction rule;
* :mod:`.actions` -- propose, accept, skip, lock, unlock, accept_all, step, configure,
  undo, redo, goto;
* :mod:`.running` -- run, start_run, cancel;
* :mod:`.metrics` -- metrics, pruned_model, export.

Every public action validates its input first and changes nothing when it
raises; every change is one history entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.evaluate import DEFAULT_EPSILONS, is_stream, probe_count_for, sample_box
from ..engine.evaluate import evaluate as evaluate  # noqa: F401  (metrics._evaluate looks it up here)
from ..engine.graph import UnitGroup
from ..engine.pruner import Proposal, Pruner
from ..errors import PaodingError, SessionError
from . import validate
from .base import (
    ACCEPTED,
    DONE,
    IDLE,
    LOCKED,
    NOT_PRUNABLE,
    PENDING,
    READY,
    RUNNING,
    SKIPPED,
)
from .events import Emitter, Event
from .history import History, HistoryItem, SessionState, copy_entry
from .metrics import MetricsMixin
from .running import RunHandle, RunMixin, RunResult
from .snapshot import SessionSnapshot, check_snapshot, store_digest, store_restore, store_snapshot

if TYPE_CHECKING:
    from ..engine.deploy import DeployReport


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


class PruningSession(RunMixin, MetricsMixin):
    """Interactive, undoable, data-free pruning of one Keras model.

    Parameters
    ----------
    model: a built Keras 3 model; never modified.
    input_range: the legal input box ``(low, high)`` (scalars or per-feature arrays).
    strategy, step, target, seed: as for :class:`~paoding_widgets.engine.pruner.Pruner`.
    eval_data: optional ``(x, y)`` for accuracy and FGSM robustness; without it the
        session is fully data-free (fidelity on inputs sampled from the box).  It may also
        be a stream of ``(x, y)`` batches -- a ``tf.data.Dataset``, a ``keras.utils.PyDataset``
        or a function returning a generator -- that ``metrics()`` reads batch by batch after
        every change (``run(min_accuracy=...)`` too); a stream is not saved with the session,
        and the sensitivity scan and ``deploy`` work data-free with it.
    epsilons: FGSM step sizes for robustness (at most 64).
    n_probes: box samples for the data-free agreement metric (default: 1,000 for small
        inputs, fewer for large images and costly models -- one pass over them is at most
        about 1e11 FLOPs -- so metrics stay quick after every click; at most 100,000).
    strategy_options: plain numbers, bools or strings (they are saved as JSON).
    """

    def __init__(self, model: Any, input_range: Any = (0.0, 1.0), strategy: str = "compensated", step: float = 0.05,
                 target: float = 0.5, seed: int = 0, eval_data: Any = None,
                 epsilons: Sequence[float] = DEFAULT_EPSILONS, n_probes: int | None = None,
                 source_path: str | None = None, **strategy_options: Any) -> None:
        if not isinstance(strategy, str):
            raise SessionError(f"strategy must be a strategy name, got {strategy!r}")
        step, target = validate.fraction("step", step), validate.fraction("target", target)
        self.seed = validate.seed(seed)
        self.epsilons = validate.epsilons(epsilons)
        options = validate.strategy_options(strategy, strategy_options)
        try:
            self._pruner = Pruner(model, input_range, strategy, step, target, self.seed, **options)
        except (PaodingError, TypeError, ValueError) as exc:
            raise SessionError(str(exc)) from exc
        self.model = model
        self.source_path = source_path
        if is_stream(eval_data):  # streamed batch by batch by metrics(); the array-only features see no data
            self.eval_data, self.eval_stream = None, validate.check_eval_stream(eval_data)
        else:
            self.eval_data, self.eval_stream = validate.check_eval_data(model, eval_data), None
        shape = tuple(model.inputs[0].shape[1:])
        n = probe_count_for(model) if n_probes is None else validate.n_probes(n_probes, shape)
        self.events = Emitter()
        self.history = History()
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()
        self._cancel_guard = threading.Lock()
        self._run_state = IDLE
        self._cancel_event = threading.Event()
        self._outbox = []
        self._depth = 0
        self._metrics_cache = None
        self._original_robust = None
        self._probes = sample_box(shape, self._pruner.input_range, n, self.seed)
        self._probe_classes = None  # the original's answers, computed once
        status = {g.name: READY for g in self._pruner.graph.prunable_groups}
        settings = {"strategy": strategy, "step": step, "target": target, "options": options}
        self._state = SessionState(status, {}, settings, self._rng_state())

    # ------------------------------------------------------------ read-only
    @property
    def pruner(self) -> Pruner:
        return self._pruner

    @property
    def settings(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state.settings)

    @property
    def proposals(self) -> dict[str, Proposal]:
        with self._lock:
            return dict(self._state.proposals)

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

    @property
    def history_items(self) -> list[HistoryItem]:
        with self._lock:
            return self.history.items()

    def widget(self, **kwargs: Any) -> Any:
        """A Jupyter view of this session (``PruningWidget``); several stay in sync."""
        from ..widget import PruningWidget

        return PruningWidget(self, **kwargs)

    def subscribe(self, listener: Callable[[Event], None], kinds: tuple[str, ...] | None = None) -> Callable[[], None]:
        """Be told of changes (events "state", "proposal", "progress", "error"); returns an unsubscribe.

        "state" events carry ``state`` ("idle" / "running"), ``action``, ``position``, ``share_pruned``.
        """
        return self.events.subscribe(listener, kinds)

    # ------------------------------------------------------------ snapshot / restore
    def snapshot(self) -> SessionSnapshot:
        """Everything this session is, as plain data independent of it (refused during a run)."""
        with self._transaction():
            arrays, alive = store_snapshot(self._pruner.store)
            lo, hi = self._pruner.input_range
            return SessionSnapshot(
                settings=dict(self._state.settings), input_range=(np.array(lo), np.array(hi)), seed=self.seed,
                epsilons=self.epsilons, n_probes=len(self._probes), state=self._state.copy(),
                entries=[copy_entry(e) for e in self.history.entries], position=self.history.position,
                arrays=arrays, alive=alive, eval_data=self.eval_data, source_path=self.source_path)

    @classmethod
    def from_snapshot(cls, model: Any, snap: SessionSnapshot, source_path: str | None = None) -> PruningSession:
        """A session resumed from a snapshot of a session on ``model`` (undo history included).

        Everything is checked against the model first (see :mod:`.snapshot`), and the
        history is replayed back to the start, which must give ``model``'s own weights
        bit for bit; anything inconsistent raises SessionError naming the part.
        """
        s = snap.settings
        if not isinstance(s, dict) or set(s) != {"strategy", "step", "target", "options"} \
                or not isinstance(s["options"], dict):
            raise SessionError(f"settings must name strategy, step, target and options, got {s!r}")
        session = cls(model, snap.input_range, s["strategy"], s["step"], s["target"], snap.seed, snap.eval_data,
                      snap.epsilons, snap.n_probes, source_path if source_path is not None else snap.source_path,
                      **s["options"])
        for st in [snap.state] + [x for e in snap.entries for x in (e.before, e.after)]:
            _check_settings(session, st.settings)
        store = session._pruner.store
        check_snapshot(snap, session.graph, store)
        original = store_digest(store)
        store_restore(store, snap.arrays, snap.alive)
        session.history.entries = [copy_entry(e) for e in snap.entries]
        session.history.position = snap.position
        try:
            session._restore(snap.state)
            position = snap.position
            session.goto(0)
            if store_digest(store) != original or not all(m.all() for m in store.alive.values()):
                raise SessionError(f"undoing the {position} applied history entries does not give the model's "
                                   "own weights: the weights, the patches or the position were changed")
            session.goto(position)
        except (PaodingError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, SessionError):
                raise
            raise SessionError(f"the history does not replay: {exc}") from exc
        session._restore(snap.state)
        return session

    # ------------------------------------------------------------ files
    def deploy(self, out_dir: str, formats: Sequence[str] | None = None, overwrite: bool = False,
               calibration_data: np.ndarray | None = None, **kwargs: Any) -> DeployReport:
        """Prune -> quantise -> export -> verify: the pruned model in each deployment format, every file run.

        Returns a table (``.table()``): original, pruned, pruned + int8 ... -- size on disk, accuracy and
        robustness kept (with eval data), agreement with the original. ``formats`` from
        :data:`~paoding_widgets.engine.deploy.FORMATS` (default: Keras, Keras int8/int4, TFLite float16 and
        int8, ONNX and ONNX int8; full-integer TFLite too when there is data to calibrate on -- ours is
        never invented). Files are written atomically into ``out_dir``, never over an existing file
        unless ``overwrite``.
        """
        from ..engine.deploy import deploy

        return deploy(self.pruned_model(), out_dir, original=self.model, eval_data=self.eval_data,
                      input_range=self._pruner.input_range, formats=formats, calibration_data=calibration_data,
                      epsilons=self.epsilons, probes=self._probes, protected=(self.source_path,),
                      overwrite=overwrite, **kwargs)

    def save(self, path: str, overwrite: bool = False) -> str:
        """Write the whole session (model, weights, states, history) to one file (refused during a run)."""
        from .persistence import save_session

        return str(save_session(self.snapshot(), self.model, path, overwrite))

    @classmethod
    def load(cls, path: str, safe_mode: bool = True, custom_objects: dict[str, Any] | None = None) -> PruningSession:
        """Resume a saved session exactly, undo history included.

        ``safe_mode=False`` loads a model that holds Python code (a ``Lambda``):
        only for files you trust.  ``custom_objects`` names your own layer classes.
        """
        from .persistence import load_session

        return load_session(path, cls, safe_mode, custom_objects)

    # ------------------------------------------------------------ internals
    def _layer_info(self, g: UnitGroup) -> LayerInfo:
        alive = int(self._pruner.store.alive[g.id].sum())
        status = self._state.status.get(g.name, NOT_PRUNABLE) if g.prunable else NOT_PRUNABLE
        prop = self._state.proposals.get(g.name)
        return LayerInfo(g.name, g.kind, status, g.size, alive, self._pruner.params_per_unit(g) * alive,
                         g.reason, tuple(g.layers), prop.summary() if prop else None)


def _check_settings(session: PruningSession, s: Any) -> None:
    """Settings inside a snapshot's states must be ones configure() could have made."""
    from ..engine.strategies import make_strategy

    if not isinstance(s, dict) or set(s) != {"strategy", "step", "target", "options"} \
            or not isinstance(s["strategy"], str) or not isinstance(s["options"], dict):
        raise SessionError(f"settings must name strategy, step, target and options, got {s!r}")
    validate.fraction("step", s["step"])
    validate.fraction("target", s["target"])
    try:
        make_strategy(s["strategy"], **validate.strategy_options(s["strategy"], s["options"]))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SessionError):
            raise
        raise SessionError(f"settings name strategy {s['strategy']!r} with options {s['options']}: {exc}") from exc


__all__ = ["ACCEPTED", "DONE", "LOCKED", "NOT_PRUNABLE", "PENDING", "READY", "RUNNING", "SKIPPED", "LayerInfo",
           "PruningSession", "RunHandle", "RunResult", "SessionError", "SessionSnapshot"]

