"""What every part of the session shares: its fields, the state machine and the transaction rule.

Why: :class:`~.core.PruningSession` is split by concern (``actions.py``,
``running.py``, ``metrics.py``); each part is a mixin over this base, which
declares the session's fields (for readers and for mypy) and holds the few
internals they all use.

The rules, in one place:

* **State.** A session is ``"idle"`` or ``"running"`` (a run, in the calling
  thread or in a background one).  Only a run moves it between the two;
  every change emits a "state" event.
* **Transactions.** Every action holds ``_lock`` from reading the state,
  through applying the change, to recording its history entry
  (:meth:`SessionBase._transaction`).  A run holds it per iteration and
  records one entry at the end.  While a run goes, every other action is
  refused at once with "a run is in progress", before any other check.
* **Events** are queued during a transaction and emitted after the lock is
  released, so a listener never runs while the session is locked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..engine.evaluate import Metrics
from ..engine.graph import UnitGroup
from ..engine.pruner import Pruner
from ..engine.strategies import make_strategy
from ..errors import SessionError
from .events import Emitter
from .history import History, SessionState

READY, PENDING, ACCEPTED, SKIPPED, LOCKED = "ready", "pending", "accepted", "skipped", "locked"
DONE, NOT_PRUNABLE = "done", "not prunable"
STATUSES = (READY, PENDING, ACCEPTED, SKIPPED, LOCKED, DONE)  # the statuses a prunable layer can have
IDLE, RUNNING = "idle", "running"
BUSY = "a run is in progress; cancel it or wait for it to finish"


class SessionBase:
    """Fields and shared internals of a :class:`~.core.PruningSession`."""

    model: Any
    source_path: str | None
    eval_data: tuple[np.ndarray, np.ndarray] | None
    eval_stream: Any  # re-iterable (x, y) batches when eval_data was a stream (then eval_data is None)
    epsilons: tuple[float, ...]
    seed: int
    events: Emitter
    history: History
    _pruner: Pruner
    _state: SessionState
    _lock: threading.RLock  # held by every transaction; reentrant for nested reads
    _eval_lock: threading.Lock  # one evaluation at a time
    _run_state: str  # IDLE or RUNNING
    _cancel_event: threading.Event  # a fresh one per run
    _outbox: list[tuple[str, dict[str, Any]]]  # events queued during the transaction
    _depth: int  # transaction nesting (changed under the lock only)
    _metrics_cache: tuple[int, Metrics] | None
    _original_robust: dict[float, int] | None
    _probes: np.ndarray
    _probe_classes: np.ndarray | None

    @property
    def graph(self) -> Any:
        return self._pruner.graph

    def share_pruned(self) -> float:
        return self._pruner.share_pruned()

    # ------------------------------------------------------------ state machine
    @property
    def state(self) -> str:
        """``"idle"`` or ``"running"``."""
        return self._run_state

    @property
    def running(self) -> bool:
        return self._run_state == RUNNING

    def _refuse_if_running(self) -> None:
        if self._run_state == RUNNING:
            raise SessionError(BUSY)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Hold the lock for a whole action; refuse at once while a run goes.

        The first check needs no lock, so a caller never waits for a run
        iteration to learn it is refused; the second, under the lock, closes
        the gap with a run starting meanwhile.  Queued events are sent when the
        action is complete, still under the lock: listeners see whole states, in
        order, and must not wait for another thread that needs the session.
        """
        self._refuse_if_running()
        with self._lock:
            self._refuse_if_running()
            with self._queued_events():
                yield

    @contextmanager
    def _queued_events(self) -> Iterator[None]:
        """Collect events while the lock is held; send them once the outermost holder lets go."""
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                out: list[tuple[str, dict[str, Any]]] = []
                if self._depth == 0:
                    out, self._outbox = self._outbox, []
        for kind, data in out:
            self.events.emit(kind, **data)

    def _queue(self, kind: str, **data: Any) -> None:
        """Send an event after the current transaction (at once outside one)."""
        with self._queued_events():
            self._outbox.append((kind, data))

    def _emit_state(self, action: str) -> None:
        self._queue("state", action=action, state=self._run_state, position=self.history.position,
                    share_pruned=self.share_pruned())

    # ------------------------------------------------------------ random state, in one place
    def _rng_state(self) -> dict[str, Any]:
        return dict(self._pruner.rng.bit_generator.state)

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self._pruner.rng.bit_generator.state = state

    # ------------------------------------------------------------ shared internals
    def _group(self, name: Any, prunable: bool = True) -> UnitGroup:
        if not isinstance(name, str):
            raise SessionError(f"layer names are strings, got {name!r}")
        try:
            g: UnitGroup = self.graph.group(name)
        except KeyError:
            known = ", ".join(x.name for x in self.graph.groups)
            raise SessionError(f"no layer {name!r} in this model; layers are: {known}") from None
        if prunable and not g.prunable:
            raise SessionError(f"layer {g.name!r} is not prunable: {g.reason}")
        return g

    def _restore(self, st: SessionState) -> None:
        """Make ``st`` the current state (statuses, proposals, settings, random state)."""
        self._apply_settings(st.settings)
        self._set_rng_state(st.rng)
        self._state = st.copy()
        self._refresh_done(self._state)

    def _apply_settings(self, s: dict[str, Any]) -> None:
        p = self._pruner
        if p.strategy.name != s["strategy"] or p.strategy_options != s["options"]:
            p.strategy = make_strategy(s["strategy"], **s["options"])
            p.strategy_options = dict(s["options"])
        p.step, p.target = s["step"], s["target"]

    def _refresh_done(self, st: SessionState) -> None:
        """Layers at the target and without a proposal show as done."""
        for g in self.graph.prunable_groups:
            if st.status[g.name] in (READY, ACCEPTED, SKIPPED) and self._pruner.next_k(g) == 0 \
                    and g.name not in st.proposals:
                st.status[g.name] = DONE
            elif st.status[g.name] == DONE and self._pruner.next_k(g) > 0:
                st.status[g.name] = READY

    def _original_probe_classes(self) -> np.ndarray:
        from ..engine.evaluate import predict_classes

        if self._probe_classes is None:
            self._probe_classes = predict_classes(self.model, self._probes)
        return self._probe_classes


def drop_proposals(st: SessionState) -> None:
    """Close every open proposal; its layer is ready again."""
    st.proposals = {}
    for name, status in st.status.items():
        if status == PENDING:
            st.status[name] = READY
