"""The session's actions: propose, accept, skip, lock, step, configure, and moving through history.

Why here: each action is one transaction (see :mod:`.base`): under the
session lock it checks its input against the current state, changes a copy
of the state and the weights, and records one history entry -- or, when
anything raises, puts weights, random state and statuses back and records
nothing.  Undo, redo and goto are all or nothing in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine.pruner import Proposal
from ..engine.strategies import make_strategy
from ..engine.weights import Patch
from ..errors import PaodingError, SessionError
from . import validate
from .base import ACCEPTED, LOCKED, PENDING, READY, SKIPPED, SessionBase, drop_proposals
from .history import Entry, SessionState, move_patch

Change = Callable[[Patch, SessionState], None]

# Engine failures a user's action can meet; they become SessionErrors (the original as __cause__).
ENGINE_ERRORS = (PaodingError, ValueError, IndexError, KeyError, FloatingPointError)


class ActionsMixin(SessionBase):
    """Every change to the session other than a run; each is one transaction."""

    # ------------------------------------------------------------ proposals and statuses
    def propose(self) -> dict[str, Proposal]:
        """One automated iteration's proposals for every unlocked layer (not applied)."""
        with self._transaction():
            groups = [g for g in self.graph.prunable_groups if self._state.status[g.name] != LOCKED]
            try:
                props = self._pruner.propose(groups)
            except ENGINE_ERRORS as exc:
                self._set_rng_state(self._state.rng)
                self._queue("error", action="propose", message=str(exc))
                raise SessionError(f"propose failed: {exc}; nothing changed") from exc
            if not props:  # an empty action: say so, record nothing
                self._set_rng_state(self._state.rng)
                self._queue("state", action="propose", state=self._run_state, position=self.history.position,
                            share_pruned=self.share_pruned(), message=self._nothing_to_do("propose"))
                return {}

            def change(patch: Patch, st: SessionState) -> None:
                st.proposals = {self.graph.groups[gid].name: p for gid, p in props.items()}
                for g in groups:
                    st.status[g.name] = PENDING if g.name in st.proposals else READY
                st.iteration += 1
            self._change("propose", f"propose iteration {self._state.iteration + 1}", change)
            self._queue("proposal", proposals={k: p.summary() for k, p in self._state.proposals.items()})
            return dict(self._state.proposals)

    def accept(self, name: str) -> None:
        """Apply the open proposal of one layer."""
        with self._transaction():
            g = self._pending(name)
            self._change("accept", f"accept {g.name}", lambda patch, st: self._accept(g.name, patch, st))

    def skip(self, name: str) -> None:
        """Decline one layer's proposal for this iteration (the next iteration proposes again)."""
        with self._transaction():
            g = self._pending(name)

            def change(patch: Patch, st: SessionState) -> None:
                st.proposals.pop(g.name)
                st.status[g.name] = SKIPPED
            self._change("skip", f"skip {g.name}", change)

    def lock(self, name: str) -> None:
        """Never propose or change this layer's units until unlocked."""
        with self._transaction():
            g = self._group(name)
            if self._state.status[g.name] == LOCKED:
                raise SessionError(f"layer {g.name!r} is already locked")

            def change(patch: Patch, st: SessionState) -> None:
                st.proposals.pop(g.name, None)
                st.status[g.name] = LOCKED
            self._change("lock", f"lock {g.name}", change)

    def unlock(self, name: str) -> None:
        with self._transaction():
            g = self._group(name)
            if self._state.status[g.name] != LOCKED:
                raise SessionError(f"layer {g.name!r} is not locked")
            self._change("unlock", f"unlock {g.name}", lambda patch, st: st.status.__setitem__(g.name, READY))

    def accept_all(self) -> None:
        """Apply every open proposal."""
        with self._transaction():
            if not self._state.proposals:
                raise SessionError("no pending proposals; call propose() first")

            def change(patch: Patch, st: SessionState) -> None:
                for name in list(st.proposals):
                    self._accept(name, patch, st)
            self._change("accept_all", f"accept all ({len(self._state.proposals)} layers)", change)

    def step(self) -> dict[str, Proposal]:
        """One automated iteration on the unlocked layers: propose and accept everything."""
        with self._transaction():
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
        with self._transaction():
            s = dict(self._state.settings)
            if strategy is not None and not isinstance(strategy, str):
                raise SessionError(f"strategy must be a strategy name, got {strategy!r}")
            if strategy is not None or strategy_options:
                name = strategy or s["strategy"]
                options = validate.plain_options(strategy_options)
                opts = options if strategy is not None else {**s["options"], **options}
                opts = validate.strategy_options(name, opts)
                try:
                    make_strategy(name, **opts)
                except (TypeError, ValueError) as exc:
                    raise SessionError(f"strategy {name!r}: {exc}") from exc
                s["strategy"], s["options"] = name, dict(opts)
            for key, value in (("step", step), ("target", target)):
                if value is not None:
                    s[key] = validate.fraction(key, value)
            if s == self._state.settings:
                return

            def change(patch: Patch, st: SessionState) -> None:
                st.settings = s
                drop_proposals(st)
            self._change("settings", _describe_settings(self._state.settings, s), change)

    # ------------------------------------------------------------ history
    def undo(self) -> None:
        with self._transaction():
            if not self.history.can_undo:
                raise SessionError("nothing to undo")
            self._move(self.history.position - 1, "undo")

    def redo(self) -> None:
        with self._transaction():
            if not self.history.can_redo:
                raise SessionError("nothing to redo")
            self._move(self.history.position + 1, "redo")

    def goto(self, n: int) -> None:
        """Jump to the state after the first ``n`` entries (0: the original model)."""
        with self._transaction():
            size = len(self.history.entries)
            if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)) or not 0 <= n <= size:
                raise SessionError(f"history position must be an integer in 0..{size}, got {n!r}")
            self._move(int(n), "goto")

    def _move(self, n: int, action: str) -> None:
        """Revert or re-apply patches up to position ``n`` and restore that position's state.

        All or nothing: if a patch or the state cannot be restored, the patches
        already moved are moved back and position, weights and state are as before.
        """
        h, store = self.history, self._pruner.store
        if n == h.position:
            return
        start, current = h.position, self._state.copy()
        moved: list[tuple[Patch, bool]] = []  # (patch, reverted?)
        try:
            while h.position > n:
                move_patch(store, h.entries[h.position - 1].patch, revert=True)
                moved.append((h.entries[h.position - 1].patch, True))
                h.position -= 1
            while h.position < n:
                move_patch(store, h.entries[h.position].patch, revert=False)
                moved.append((h.entries[h.position].patch, False))
                h.position += 1
            self._restore(h.entries[n].before if n < len(h.entries) else h.entries[n - 1].after)
        except ENGINE_ERRORS as exc:
            for patch, reverted in reversed(moved):
                move_patch(store, patch, revert=not reverted)
            h.position = start
            self._restore(current)
            self._queue("error", action=action, message=str(exc))
            raise SessionError(f"{action} to position {n} failed ({exc}); nothing changed") from exc
        self._emit_state(action)

    # ------------------------------------------------------------ internals
    def _pending(self, name: str) -> Any:
        g = self._group(name)
        if g.name not in self._state.proposals:
            raise SessionError(f"layer {g.name!r} has no pending proposal (status: {self._state.status[g.name]}); "
                               "call propose() first")
        return g

    def _accept(self, name: str, patch: Patch, st: SessionState) -> None:
        patch.extend(self._pruner.apply(st.proposals.pop(name)))
        st.status[name] = ACCEPTED

    def _nothing_to_do(self, action: str) -> str:
        """Why an action found nothing to do (shown by views; no history entry is recorded)."""
        locked = [n for n, v in self._state.status.items() if v == LOCKED]
        why = "every unlocked layer is at its target" if locked else "every layer is at its target"
        extra = f" ({len(locked)} locked layer{'s' if len(locked) != 1 else ''} kept whole)" if locked else ""
        return f"nothing to {action}: {why} ({100 * self._state.settings['target']:.0f} %){extra}"

    def _iterate(self, patch: Patch, st: SessionState, target: float | None,
                 targets: dict[str, float] | None = None) -> dict[str, Proposal]:
        """One automated iteration on ``st``: propose for the unlocked layers and apply everything.

        ``targets`` (layer -> share, from a plan) replaces the one ``target`` per layer; layers
        it does not name are left alone.
        """
        drop_proposals(st)  # an automated iteration replaces any open proposal
        groups = [g for g in self.graph.prunable_groups if st.status[g.name] != LOCKED]
        if targets is None:
            props = self._pruner.propose(groups, target, allocate=True)  # a run may move units between layers
        else:
            props = {}
            for g in groups:
                if targets.get(g.name, 0.0) > 0:
                    props.update(self._pruner.propose([g], targets[g.name]))
        out = {}
        for gid, p in props.items():
            name = self.graph.groups[gid].name
            patch.extend(self._pruner.apply(p))
            st.status[name] = ACCEPTED
            out[name] = p
        st.iteration += 1
        st.rng = self._rng_state()
        return out

    def _change(self, kind: str, label: str, change: Change) -> None:
        """Run ``change`` on a copy of the state; commit it as one entry, or roll everything back.

        The caller holds the lock (inside :meth:`_transaction`) from its checks
        to here, so the state read, the change and the entry are one step.
        """
        before = self._state.copy()
        work = self._state.copy()
        patch = Patch()
        try:
            change(patch, work)
        except BaseException as exc:
            self._rollback(patch, before)
            if isinstance(exc, SessionError):
                raise
            self._queue("error", action=kind, message=str(exc))
            if isinstance(exc, ENGINE_ERRORS):
                raise SessionError(f"{kind} failed: {exc}; nothing changed") from exc
            raise
        self._commit(kind, label, patch, before, work)

    def _rollback(self, patch: Patch, before: SessionState) -> None:
        move_patch(self._pruner.store, patch, revert=True)
        self._set_rng_state(before.rng)
        self._apply_settings(before.settings)
        self._state = before

    def _commit(self, kind: str, label: str, patch: Patch, before: SessionState, work: SessionState,
                info: dict[str, Any] | None = None) -> None:
        work.rng = self._rng_state()
        self._apply_settings(work.settings)
        self._state = work
        self._refresh_done(work)
        self.history.push(Entry(kind, label, patch, before, work.copy(),
                                {"share_pruned": self.share_pruned(), **(info or {})}))
        self._emit_state(kind)


def _describe_settings(old: dict, new: dict) -> str:
    parts = [f"{k} {old[k]} -> {new[k]}" for k in ("strategy", "step", "target") if old[k] != new[k]]
    if old["options"] != new["options"]:
        parts.append(f"options {new['options']}")
    return "settings: " + ", ".join(parts)
