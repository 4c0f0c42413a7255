"""A session as plain data, and the checks that data must pass before it becomes a session again.

Why: saving and loading (and any other persistence a user writes) go through
:meth:`PruningSession.snapshot` and :meth:`PruningSession.from_snapshot`, never
through private attributes.  A snapshot may come from a file someone edited,
so restoring cross-checks every part against the model: array keys, shapes and
dtypes, alive-mask lengths, patch keys, axes, positions and value shapes,
statuses and proposals, random states and the history position -- and then
replays the history back to the start, which must give the model's own
weights bit for bit.  Anything else is refused with a SessionError naming the
part and the value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.graph import ModelGraph
from ..engine.pruner import Proposal
from ..engine.weights import Key, Patch, WeightStore
from ..errors import SessionError
from .base import STATUSES
from .history import Entry, SessionState


@dataclass
class SessionSnapshot:
    """Everything a session is, as plain data (arrays are copies, independent of the session)."""

    settings: dict[str, Any]  # strategy, step, target, options (the current ones)
    input_range: tuple[np.ndarray, np.ndarray]
    seed: int
    epsilons: tuple[float, ...]
    n_probes: int
    state: SessionState  # statuses, open proposals, settings, random state, iteration
    entries: list[Entry]  # the whole history, redo branch included
    position: int  # how many entries are applied
    arrays: dict[Key, np.ndarray]  # the current weights (WeightStore arrays)
    alive: dict[int, np.ndarray]  # the current alive masks, per group id
    eval_data: tuple[np.ndarray, np.ndarray] | None = None
    source_path: str | None = None


# ------------------------------------------------------------------ the store, through one public door
def store_snapshot(store: WeightStore) -> tuple[dict[Key, np.ndarray], dict[int, np.ndarray]]:
    """Copies of the store's arrays and alive masks.  (Meant as ``WeightStore.snapshot()``.)"""
    return ({k: v.copy() for k, v in store.arrays.items()}, {g: m.copy() for g, m in store.alive.items()})


def store_restore(store: WeightStore, arrays: dict[Key, np.ndarray], alive: dict[int, np.ndarray]) -> None:
    """Replace the store's contents after checking them.  (Meant as ``WeightStore.restore()``.)

    The same keys, shapes and dtypes as the store has, the same groups with
    boolean masks of the right length; nothing is written unless all match.
    """
    check_arrays(store, arrays, alive)
    for k in store.arrays:
        store.arrays[k] = np.array(arrays[k], copy=True)
    for g in store.alive:
        store.alive[g] = np.array(alive[g], dtype=bool, copy=True)
    store.version += 1
    store.changed.update({k: store.version for k in store.arrays})


def store_digest(store: WeightStore) -> dict[Key, bytes]:
    """A digest per array, to compare weights bit for bit without keeping a copy."""
    return {k: hashlib.blake2b(np.ascontiguousarray(v).view(np.uint8).data, digest_size=16).digest()
            for k, v in store.arrays.items()}


def check_arrays(store: WeightStore, arrays: dict[Key, np.ndarray], alive: dict[int, np.ndarray]) -> None:
    missing, extra = set(store.arrays) - set(arrays), set(arrays) - set(store.arrays)
    if missing or extra:
        raise SessionError(f"the weights do not match the model: missing {sorted(missing)[:5]}, "
                           f"unknown {sorted(extra)[:5]} (the file does not match its model)")
    for k, ref in store.arrays.items():
        a = arrays[k]
        if not isinstance(a, np.ndarray) or a.shape != ref.shape or a.dtype != ref.dtype:
            got = (a.shape, str(a.dtype)) if isinstance(a, np.ndarray) else type(a).__name__
            raise SessionError(f"array {k} does not match the model: {got}, the model has "
                               f"{ref.shape} {ref.dtype}")
    if set(alive) != set(store.alive):
        raise SessionError(f"alive masks for groups {sorted(alive)} but the model has groups {sorted(store.alive)}")
    for g, ref in store.alive.items():
        m = alive[g]
        if not isinstance(m, np.ndarray) or m.ndim != 1 or len(m) != len(ref) or m.dtype != bool:
            got = (m.shape, str(m.dtype)) if isinstance(m, np.ndarray) else type(m).__name__
            raise SessionError(f"alive mask of group {g} is {got}; the group has {len(ref)} units (bool)")
        if not m.any():
            raise SessionError(f"alive mask of group {g} has no unit left; at least one always stays")


# ------------------------------------------------------------------ checks against the model
def check_snapshot(snap: SessionSnapshot, graph: ModelGraph, store: WeightStore) -> None:
    """Refuse (SessionError naming the part) anything that is not consistent with the model."""
    check_arrays(store, snap.arrays, snap.alive)
    n = len(snap.entries)
    if not isinstance(snap.position, int) or isinstance(snap.position, bool) or not 0 <= snap.position <= n:
        raise SessionError(f"history position {snap.position!r} is outside 0..{n}")
    check_state("state", snap.state, graph, store)
    for i, e in enumerate(snap.entries):
        where = f"history entry {i + 1}"
        check_patch(where, e.patch, store)
        check_state(f"{where} (before)", e.before, graph, store)
        check_state(f"{where} (after)", e.after, graph, store)
    here = snap.entries[snap.position - 1].after if snap.position else None
    if here is not None and _state_key(here) != _state_key(snap.state):
        raise SessionError(f"the current state differs from history entry {snap.position}'s result "
                           "(the history position was changed)")
    if snap.position < n and _state_key(snap.entries[snap.position].before) != _state_key(snap.state):
        raise SessionError(f"the current state differs from history entry {snap.position + 1}'s start "
                           "(the history position was changed)")


def _state_key(st: SessionState) -> tuple:
    return (sorted(st.status.items()), sorted(st.proposals), st.iteration, st.rng)


def check_patch(where: str, patch: Patch, store: WeightStore) -> None:
    for j, a in enumerate(patch.arrays):
        part = f"{where}, array patch {j + 1}"
        if a.key not in store.arrays:
            raise SessionError(f"{part}: no array {a.key} in the model")
        ref = store.arrays[a.key]
        if not isinstance(a.axis, int) or not 0 <= a.axis < ref.ndim:
            raise SessionError(f"{part}: axis {a.axis!r} outside 0..{ref.ndim - 1} of {a.key} {ref.shape}")
        _check_indices(f"{part} positions", a.positions, ref.shape[a.axis])
        rest = ref.shape[:a.axis] + ref.shape[a.axis + 1:]
        want = a.positions.shape + rest
        if not isinstance(a.values, np.ndarray) or a.values.shape != want or a.values.dtype != ref.dtype:
            got = (a.values.shape, str(a.values.dtype)) if isinstance(a.values, np.ndarray) else a.values
            raise SessionError(f"{part}: values {got} do not fit {len(a.positions)} positions of {a.key} "
                               f"{ref.shape} along axis {a.axis} (want {want} {ref.dtype})")
    for j, (g, units, _value) in enumerate(patch.alive):
        part = f"{where}, alive patch {j + 1}"
        if g not in store.alive:
            raise SessionError(f"{part}: no group {g!r} in the model")
        _check_indices(f"{part} units", units, len(store.alive[g]))


def _check_indices(what: str, idx: Any, size: int) -> None:
    if not isinstance(idx, np.ndarray) or not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
        got = (idx.shape, str(idx.dtype)) if isinstance(idx, np.ndarray) else type(idx).__name__
        raise SessionError(f"{what} must be a 1-d integer array, got {got}")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise SessionError(f"{what} {idx.min()}..{idx.max()} outside 0..{size - 1}")


def check_state(where: str, st: SessionState, graph: ModelGraph, store: WeightStore) -> None:
    names = {g.name for g in graph.prunable_groups}
    if set(st.status) != names:
        raise SessionError(f"{where}: statuses for {sorted(st.status)} but the prunable layers are {sorted(names)}")
    bad = {k: v for k, v in st.status.items() if v not in STATUSES}
    if bad:
        raise SessionError(f"{where}: unknown status {bad}; known: {', '.join(STATUSES)}")
    if not isinstance(st.iteration, int) or isinstance(st.iteration, bool) or st.iteration < 0:
        raise SessionError(f"{where}: iteration must be a non-negative integer, got {st.iteration!r}")
    _check_rng(where, st.rng)
    for name, p in st.proposals.items():
        check_proposal(f"{where}: proposal for {name!r}", name, p, graph, store)


def check_proposal(where: str, name: str, p: Proposal, graph: ModelGraph, store: WeightStore) -> None:
    try:
        g = graph.group(name)
    except KeyError:
        raise SessionError(f"{where}: no layer {name!r} in the model") from None
    if not g.prunable or p.group != g.id or p.name != g.name:
        raise SessionError(f"{where}: names group {p.group!r} / {p.name!r}, the model's is {g.id} / {g.name}")
    c = p.candidates
    _check_indices(f"{where} drop", c.drop, g.size)
    n = len(c.drop)
    if not isinstance(c.keep, np.ndarray) or c.keep.shape != (n,) or not np.issubdtype(c.keep.dtype, np.integer) \
            or (n and (c.keep.min() < -1 or c.keep.max() >= g.size)):
        raise SessionError(f"{where}: keep must be {n} integers in -1..{g.size - 1}")
    for field in ("scale", "shift"):
        v = getattr(c, field)
        if not isinstance(v, np.ndarray) or v.shape != (n,) or not np.issubdtype(v.dtype, np.floating) \
                or not np.all(np.isfinite(v)):
            raise SessionError(f"{where}: {field} must be {n} finite floats")
    if not isinstance(c.cost, np.ndarray) or c.cost.ndim != 1 or len(c.cost) not in (0, n):
        raise SessionError(f"{where}: cost must have 0 or {n} values")
    impact = p.extra.get("impact", {})
    for key, inc in impact.items():
        if key not in store.arrays or not isinstance(inc, np.ndarray) or inc.shape != store.arrays[key].shape:
            raise SessionError(f"{where}: impact increment {key} does not fit the model")


def _check_rng(where: str, rng: Any) -> None:
    scratch = np.random.default_rng(0)
    try:
        scratch.bit_generator.state = rng
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise SessionError(f"{where}: not a random state of {type(scratch.bit_generator).__name__} ({exc})") from None
