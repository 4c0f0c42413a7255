"""Runs: iterate to a target in the calling thread or a background one; cancel from anywhere.

Why here: the session's run loop is the only pruning loop of the package (the
headless demo, the command line and the benchmarks all run it).  A run
reserves the session (state ``"running"``), so every other action is refused
while it goes; it holds the lock per iteration so views can read whole
iterations between two, and records one history entry at the end.
:meth:`RunMixin.cancel` stops it at the next iteration boundary, whoever
started it and from whichever thread or view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.weights import Patch
from ..errors import SessionError
from . import validate
from .actions import ENGINE_ERRORS, ActionsMixin
from .base import BUSY, IDLE, LOCKED, RUNNING, drop_proposals
from .history import SessionState, move_patch

Progress = Callable[[dict[str, Any]], None]
CancelFlag = threading.Event | Callable[[], bool]


@dataclass(frozen=True)
class RunResult:
    iterations: int
    reason: str  # "target", "exhausted", "min_accuracy", "min_fidelity", "cancelled"
    share_pruned: float
    locked: tuple[str, ...] = ()  # layers the run left whole because they were locked
    recorded: bool = True  # False: the run had nothing to do and added no history entry


class RunMixin(ActionsMixin):
    """``run``, ``start_run`` and ``cancel``."""

    def run(self, target: float | None = None, min_accuracy: float | None = None,
            min_fidelity: float | None = None, progress: Progress | None = None,
            cancel: CancelFlag | None = None, max_iterations: int = 10_000,
            targets: dict[str, float] | None = None) -> RunResult:
        """Iterate (propose + accept all on unlocked layers) until a stop condition.

        Stops at the target share, when no candidate remains, when
        ``min_accuracy`` (needs eval data) or ``min_fidelity`` (agreement with the
        original on box samples) fails -- then the iteration that broke it is
        undone -- or when cancelled (:meth:`cancel`, or the ``cancel`` event or
        callable).  The whole run is one history entry; a run with nothing to do
        (every unlocked layer at its target, no open proposal) records none and says so
        in its "state" event's ``message``.

        ``targets`` (layer name -> share of its units, e.g. from a plan) prunes each named
        layer to its own share instead of ``target``; layers it does not name stay as they are.
        """
        job = self._prepare_run(target, min_accuracy, min_fidelity, progress, cancel, max_iterations, targets)
        return job()

    def start_run(self, target: float | None = None, min_accuracy: float | None = None,
                  min_fidelity: float | None = None, progress: Progress | None = None,
                  cancel: CancelFlag | None = None, max_iterations: int = 10_000,
                  targets: dict[str, float] | None = None) -> RunHandle:
        """:meth:`run` in a background thread; returns a handle to cancel or wait.

        Arguments are checked and the session is running before this returns,
        so no other change can slip in before the thread starts.
        """
        job = self._prepare_run(target, min_accuracy, min_fidelity, progress, cancel, max_iterations, targets)
        return RunHandle(self, job, self._cancel_event)

    def cancel(self) -> bool:
        """Ask the current run to stop at its next iteration boundary (any thread, any view).

        True if a run was asked to stop; False (and nothing happens) when idle.
        """
        return self._cancel_run(None)

    def _cancel_run(self, event: threading.Event | None) -> bool:
        """Set the current run's cancel flag (only if it is ``event``'s run, when given)."""
        with self._cancel_guard:
            if self._run_state != RUNNING or (event is not None and event is not self._cancel_event):
                return False
            self._cancel_event.set()
            return True

    # ------------------------------------------------------------ the loop
    def _prepare_run(self, target: float | None, min_accuracy: float | None, min_fidelity: float | None,
                     progress: Progress | None, cancel: CancelFlag | None,
                     max_iterations: int, targets: dict[str, float] | None = None) -> Callable[[], RunResult]:
        """Check the arguments, reserve the session, and return the job that runs the loop.

        Refusals come in this order: a run in progress, then bad arguments.
        After this returns the session is ``"running"``; the job sets it back.
        """
        self._refuse_if_running()
        if target is not None:
            target = validate.fraction("target", target)
        if targets is not None:
            targets = self._check_targets(targets)
        if min_accuracy is not None:
            min_accuracy = validate.unit_interval("min_accuracy", min_accuracy)
            if self.eval_data is None and self.eval_stream is None:
                raise SessionError("min_accuracy needs eval_data=(x, y)")
        if min_fidelity is not None:
            min_fidelity = validate.unit_interval("min_fidelity", min_fidelity)
        max_iterations = validate.positive_int("max_iterations", max_iterations, validate.MAX_ITERATIONS)
        if progress is not None and not callable(progress):
            raise SessionError(f"progress must be a callable, got {progress!r}")
        if cancel is not None and not (isinstance(cancel, threading.Event) or callable(cancel)):
            raise SessionError(f"cancel must be a threading.Event or a callable, got {cancel!r}")
        external = (cancel.is_set if isinstance(cancel, threading.Event) else cancel) or (lambda: False)
        with self._queued_events():
            with self._lock:
                self._refuse_if_running()
                with self._cancel_guard:
                    self._cancel_event = event = threading.Event()
                    self._run_state = RUNNING
                self._emit_state("run started")  # every view learns the session is busy

        def cancelled() -> bool:
            return event.is_set() or bool(external())

        def job() -> RunResult:
            return self._run_loop(target, min_accuracy, min_fidelity, progress, cancelled, max_iterations, targets)
        return job

    def _check_targets(self, targets: Any) -> dict[str, float]:
        """Per-layer targets: known prunable layers, each a share in [0, 1)."""
        if not isinstance(targets, dict) or not targets:
            raise SessionError(f"targets must be a non-empty dict of layer name -> share, got {targets!r}")
        out: dict[str, float] = {}
        for name, value in targets.items():
            g = self._group(name)
            if not validate.is_number(value) or not 0.0 <= float(value) < 1.0:
                raise SessionError(f"target of layer {g.name!r} must be a number in [0, 1), got {value!r}")
            out[g.name] = float(value)
        return out

    def _todo_units(self, st: SessionState, target: float | None, targets: dict[str, float] | None) -> int:
        """Units the run still has to remove on the layers it may touch."""
        p = self._pruner
        if p.allocates and targets is None:  # the strategy moves units between layers: the total is owed
            return p.remaining_units([g for g in self.graph.prunable_groups if st.status[g.name] != LOCKED], target)
        return sum(max(0, p.target_units(g, targets.get(g.name, 0.0) if targets is not None else target)
                       - p.pruned_units(g))
                   for g in self.graph.prunable_groups if st.status[g.name] != LOCKED
                   and (targets is None or targets.get(g.name, 0.0) > 0))

    def _run_loop(self, target: float | None, min_accuracy: float | None, min_fidelity: float | None,
                  progress: Progress | None, cancelled: Callable[[], bool], max_iterations: int,
                  targets: dict[str, float] | None = None) -> RunResult:
        patch = Patch()
        with self._lock:
            before = self._state.copy()
            work = self._state.copy()
            todo = self._todo_units(work, target, targets)
            pruned0 = sum(self._pruner.pruned_units(g) for g in self.graph.prunable_groups)
        locked = tuple(n for n, v in before.status.items() if v == LOCKED)
        started = time.monotonic()
        reason, n = "exhausted", 0
        try:
            drop_proposals(work)
            for _ in range(max_iterations):
                if cancelled():
                    reason = "cancelled"
                    break
                with self._lock:  # readers see whole iterations, never half of one
                    part = Patch()
                    kept = work.copy()
                    try:
                        done = self._iterate(part, work, target, targets)
                        failed = self._failed_condition(min_accuracy, min_fidelity) if done else ""
                    except BaseException:
                        move_patch(self._pruner.store, part, revert=True)
                        raise
                    if not done:
                        reason = "target" if self._at_target(work, target, targets) else "exhausted"
                        break
                    if failed:  # undo the iteration that broke the condition
                        move_patch(self._pruner.store, part, revert=True)
                        work = kept
                        self._set_rng_state(kept.rng)
                        reason = failed
                        break
                    patch.extend(part)
                    self._state = work  # the tree can follow the run
                n += 1
                with self._lock:
                    removed = sum(self._pruner.pruned_units(g) for g in self.graph.prunable_groups) - pruned0
                fraction = min(1.0, removed / todo) if todo else 1.0
                elapsed = time.monotonic() - started
                info = {"iteration": n, "share_pruned": self.share_pruned(), "accepted": sorted(done),
                        "target": target if target is not None else work.settings["target"],
                        "fraction": fraction, "elapsed": elapsed,
                        "eta": elapsed * (1 - fraction) / fraction if fraction > 0 else None,
                        "units_removed": removed, "units_to_remove": todo}
                self._queue("progress", **info)
                if progress is not None:
                    progress(info)
        except BaseException as exc:
            with self._queued_events():
                with self._lock:
                    self._rollback(patch, before)
                    self._finish_run()
                    self._queue("error", action="run", message=str(exc))
            if isinstance(exc, ENGINE_ERRORS) and not isinstance(exc, SessionError):
                raise SessionError(f"run failed: {exc}; nothing changed") from exc
            raise
        with self._queued_events():
            with self._lock:
                self._finish_run()
                if n == 0 and not before.proposals and reason in ("target", "exhausted"):
                    # an empty run: nothing changed, so nothing is recorded; the views are told why
                    self._state = before
                    self._set_rng_state(before.rng)
                    message = (self._nothing_to_do("run") if reason == "target"
                               else "nothing to run: no layer has a candidate left to prune")
                    self._queue("state", action="run", state=self._run_state, position=self.history.position,
                                share_pruned=self.share_pruned(), message=message)
                    return RunResult(0, reason, self.share_pruned(), locked, recorded=False)
                what = "run plan" if targets is not None else "run"
                if reason == "target" and locked:
                    why = (f"target on the unlocked layers; {len(locked)} locked layer"
                           f"{'s' if len(locked) != 1 else ''} kept whole")
                else:
                    why = reason
                info = {"reason": reason, "locked": list(locked)}
                if targets is not None:
                    info["targets"] = dict(targets)
                self._commit("run", f"{what}: {n} iterations ({why})", patch, before, work, info)
        return RunResult(n, reason, self.share_pruned(), locked)

    def _finish_run(self) -> None:
        with self._cancel_guard:
            self._run_state = IDLE

    def _at_target(self, st: SessionState, target: float | None, targets: dict[str, float] | None = None) -> bool:
        if targets is not None:
            return all(self._pruner.next_k(g, targets.get(g.name, 0.0)) == 0 for g in self.graph.prunable_groups
                       if st.status[g.name] != LOCKED and targets.get(g.name, 0.0) > 0)
        unlocked = [g for g in self.graph.prunable_groups if st.status[g.name] != LOCKED]
        if self._pruner.allocates:
            return self._pruner.remaining_units(unlocked, target) == 0
        return all(self._pruner.next_k(g, target) == 0 for g in unlocked)

    def _failed_condition(self, min_accuracy: float | None, min_fidelity: float | None) -> str:
        if min_accuracy is None and min_fidelity is None:
            return ""
        from ..engine.evaluate import accuracy, agreement, score_data

        model = self._pruner.edited_model()
        if min_accuracy is not None and self.eval_data is not None \
                and accuracy(model, *self.eval_data) < min_accuracy:
            return "min_accuracy"
        if min_accuracy is not None and self.eval_stream is not None:
            scores = score_data(model, self.eval_stream, (), self._pruner.input_range)
            if scores.correct / scores.n < min_accuracy:
                return "min_accuracy"
        if min_fidelity is not None and agreement(self.model, model, self._probes,
                                                  self._original_probe_classes()) < min_fidelity:
            return "min_fidelity"
        return ""

    _cancel_guard: threading.Lock  # guards _run_state / _cancel_event together (never held long)


class RunHandle:
    """A :meth:`PruningSession.run` in a background thread."""

    def __init__(self, session: RunMixin, job: Callable[[], RunResult], event: threading.Event) -> None:
        self.session = session
        self._event = event  # this run's cancel flag: cancel() never reaches a later run
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(job,), name="paoding-run", daemon=True)
        self._thread.start()

    def _main(self, job: Callable[[], RunResult]) -> None:
        try:
            self.result = job()
        except BaseException as exc:  # reported to the caller through wait(); the session sent an "error" event
            self.error = exc

    def cancel(self) -> bool:
        """Stop this run at its next iteration boundary (the same as ``session.cancel()`` while it goes)."""
        return self.session._cancel_run(self._event)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


__all__ = ["BUSY", "RunHandle", "RunMixin", "RunResult"]
