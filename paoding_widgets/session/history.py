"""Undo/redo history: entries of (weight patch, session state before/after).

Why: every user action must be undoable bit for bit without copying the
model.  An entry keeps the weight :class:`~paoding_widgets.engine.weights.Patch`
(touched positions only) and two small snapshots of the rest of the session
state (layer statuses, open proposals, settings, random state).  A new entry
after an undo drops the redo branch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.pruner import Proposal
from ..engine.weights import ArrayPatch, Patch, WeightStore


@dataclass
class SessionState:
    """The session state besides the weights (small; snapshotted per entry)."""

    status: dict[str, str]  # group name -> ready / pending / accepted / skipped / locked
    proposals: dict[str, Proposal]
    settings: dict[str, Any]
    rng: dict[str, Any]
    iteration: int = 0

    def copy(self) -> SessionState:
        # Proposals are never mutated once made, so a shallow dict copy is enough.
        return SessionState(dict(self.status), dict(self.proposals), copy.deepcopy(self.settings),
                            copy.deepcopy(self.rng), self.iteration)


@dataclass
class Entry:
    """One undoable change."""

    kind: str  # propose, accept, skip, lock, unlock, accept_all, step, run, settings
    label: str
    patch: Patch
    before: SessionState
    after: SessionState
    info: dict[str, Any] = field(default_factory=dict)  # e.g. share pruned after, run stop reason


@dataclass(frozen=True)
class HistoryItem:
    """What a view shows of an entry."""

    index: int  # 1-based position reached by goto(index)
    kind: str
    label: str
    applied: bool
    share_pruned: float | None


class History:
    """A list of entries and the position (how many are applied)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.position = 0

    def push(self, entry: Entry) -> None:
        del self.entries[self.position:]  # a new change drops the redo branch
        self.entries.append(entry)
        self.position = len(self.entries)

    @property
    def can_undo(self) -> bool:
        return self.position > 0

    @property
    def can_redo(self) -> bool:
        return self.position < len(self.entries)

    def items(self) -> list[HistoryItem]:
        return [HistoryItem(i + 1, e.kind, e.label, i < self.position, e.info.get("share_pruned"))
                for i, e in enumerate(self.entries)]

    def nbytes(self) -> int:
        """Memory held by the weight patches (the bulk of the history)."""
        return sum(e.patch.nbytes for e in self.entries)


# ------------------------------------------------------------------ patches, all or nothing
def move_patch(store: WeightStore, patch: Patch, revert: bool) -> None:
    """Revert (or re-apply) one patch; if any part fails, the parts done are put back first.

    ``WeightStore.revert``/``apply`` stop where an array write fails, leaving the
    store half-moved; undo/redo must be all or nothing.  Swapping an
    :class:`ArrayPatch` is its own inverse, so unwinding swaps the done parts again.
    (A transactional ``WeightStore.apply/revert`` would make this function unnecessary.)
    """
    parts = list(reversed(patch.arrays)) if revert else list(patch.arrays)
    alive = list(reversed(patch.alive)) if revert else list(patch.alive)
    masks = {g: store.alive[g].copy() for g, _, _ in alive if g in store.alive}  # small: one bool per unit
    done: list[ArrayPatch] = []
    try:
        for part in parts:
            part.swap(store.arrays)
            done.append(part)
        for g, units, value in alive:
            store.alive[g][units] = (not value) if revert else value
    except BaseException:
        for part in reversed(done):
            part.swap(store.arrays)
        for g, mask in masks.items():
            store.alive[g][...] = mask
        raise
    finally:
        store.version += 1
        for part in done:
            store.changed[part.key] = store.version


def copy_patch(patch: Patch) -> Patch:
    """An independent copy (undo/redo swap values inside patches in place)."""
    return Patch([ArrayPatch(a.key, a.axis, a.positions.copy(), a.values.copy()) for a in patch.arrays],
                 [(int(g), np.array(u, copy=True), bool(v)) for g, u, v in patch.alive])


def copy_entry(e: Entry) -> Entry:
    return Entry(e.kind, e.label, copy_patch(e.patch), e.before.copy(), e.after.copy(), copy.deepcopy(e.info))
