"""Apply chosen edits to the weight store: real weight changes, recorded as patches.

Why: a merge is not a mask.  Merging unit b into unit a folds ``scale * v_b``
into ``v_a`` in every reader's kernel (every flattened position), folds the
constant part into the readers' bias, zeroes b's rows there and b's column in
its producers, and marks b dead.  After that the edited full-size model computes
exactly what the physically smaller model will.  Every write goes through the
store, so the returned :class:`Patch` undoes it bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..errors import EditError
from .graph import ModelGraph, Slot, UnitGroup
from .units import Candidates, UnitView, impact_key
from .weights import Key, Patch, WeightStore

Increment = dict[Key, np.ndarray]  # (2, width) interval to add per running-impact array


def validate(group: UnitGroup, store: WeightStore, cand: Candidates, graph: ModelGraph | None = None) -> None:
    """Refuse edits that would touch dead units, repeat a unit, empty the group,
    or fold with numbers that are not finite."""
    alive = store.alive[group.id]
    drop = cand.drop
    if not (len(cand.keep) == len(drop) == len(cand.scale) == len(cand.shift)):
        raise EditError(f"{group.name}: keep, drop, scale and shift must have the same length")
    if not (np.all(np.isfinite(cand.scale)) and np.all(np.isfinite(cand.shift))):
        raise EditError(f"{group.name}: merge scale and shift must be finite numbers")
    if np.any((cand.keep < -1) | (cand.keep >= group.size)):
        raise EditError(f"{group.name}: kept unit index out of range 0..{group.size - 1}")
    if graph is not None and np.any(cand.shift != 0) and not shift_is_exact(graph, group):
        raise EditError(f"{group.name}: a reader cannot absorb a constant exactly "
                         "(no bias, or zero padding around its input)")
    if len(np.unique(drop)) != len(drop):
        raise EditError(f"{group.name}: a unit is removed twice in one edit")
    if np.any((drop < 0) | (drop >= group.size)):
        raise EditError(f"{group.name}: unit index out of range 0..{group.size - 1}")
    if not np.all(alive[drop]):
        raise EditError(f"{group.name}: units {drop[~alive[drop]].tolist()} are already pruned")
    kept = cand.keep[cand.keep >= 0]
    if np.any(np.isin(kept, drop)) or not np.all(alive[kept]):
        raise EditError(f"{group.name}: a merge folds into a unit that is pruned in the same edit")
    if alive.sum() - len(drop) < 1:
        raise EditError(f"{group.name}: at least one unit must stay")
    if cand.mix is not None:
        _validate_mix(group, alive, cand, graph)
    if cand.refit is not None:
        _validate_refit(group, store, cand, graph)


def _validate_refit(group: UnitGroup, store: WeightStore, cand: Candidates, graph: ModelGraph | None) -> None:
    """Refit changes: one entry per consumer, finite, shaped like the reader's rows and bias."""
    refit = cand.refit or []
    if len(refit) != len(group.consumers):
        raise EditError(f"{group.name}: a refit needs one entry per reader ({len(group.consumers)}), got {len(refit)}")
    for slot, r in zip(group.consumers, refit):
        if r is None:
            continue
        rows, bias = r
        v = np.moveaxis(store[(slot.layer, slot.var)], slot.axis, 0)
        if rows.shape != v[slot.index].shape or bias.shape != (v.shape[-1],):
            raise EditError(f"{group.name}: refit of reader {slot.layer} has shapes {rows.shape}, {bias.shape}, "
                            f"expected {v[slot.index].shape}, {(v.shape[-1],)}")
        if not (np.all(np.isfinite(rows)) and np.all(np.isfinite(bias))):
            raise EditError(f"{group.name}: refit of reader {slot.layer} must be finite numbers")
        if graph is not None and np.any(bias != 0):
            from .compensation import reader_bias_target

            if reader_bias_target(graph, slot.layer) is None:
                raise EditError(f"{slot.layer} has no bias (nor BatchNorm after it) to absorb a refit constant")


def _validate_mix(group: UnitGroup, alive: np.ndarray, cand: Candidates, graph: ModelGraph | None) -> None:
    """Compensation coefficients: one finite ``(P, n + 1)`` matrix per consumer, nothing on removed or dead units."""
    mix = cand.mix or []
    if len(mix) != len(group.consumers):
        raise EditError(f"{group.name}: compensation needs one coefficient matrix per reader "
                        f"({len(group.consumers)}), got {len(mix)}")
    gone = ~alive.copy()
    gone[cand.drop] = True
    for i, m in enumerate(mix):
        if m.shape != (len(cand.drop), group.size + 1):
            raise EditError(f"{group.name}: compensation coefficients for reader {i} have shape {m.shape}, "
                            f"expected {(len(cand.drop), group.size + 1)}")
        if not np.all(np.isfinite(m)):
            raise EditError(f"{group.name}: compensation coefficients must be finite numbers")
        if np.any(m[:, :-1][:, gone] != 0):
            raise EditError(f"{group.name}: compensation folds into a removed or pruned unit")
        if graph is not None and np.any(m[:, -1] != 0):
            from .compensation import reader_bias_target

            if reader_bias_target(graph, group.consumers[i].layer) is None:
                raise EditError(f"{group.consumers[i].layer} has no bias (nor BatchNorm after it) "
                                "to absorb a compensation constant")


def apply_edit(graph: ModelGraph, store: WeightStore, group: UnitGroup, cand: Candidates,
               view: UnitView | None = None, increment: Increment | None = None) -> Patch:
    """Fold and remove the candidate units; returns the patch that undoes it.

    ``increment`` (from :func:`impact_increment`, computed when the edit was
    proposed) is added to the group's running impact; without it, it is
    computed from ``view`` when given.
    """
    validate(group, store, cand, graph)
    patch = Patch()
    if len(cand) == 0:
        return patch
    if increment is None and view is not None:
        increment = impact_increment(group, view, cand)
    for key, add in (increment or {}).items():
        acc = store.get(*key)
        if acc is not None:
            store.write(key, 0, np.arange(2), (acc + add).astype(acc.dtype), patch)
    merges = cand.keep >= 0
    for ci, slot in enumerate(group.consumers):
        key = (slot.layer, slot.var)
        v = np.moveaxis(store[key], slot.axis, 0)
        drop_rows = slot.index[cand.drop]  # (P, rep)
        if merges.any():
            src = slot.index[cand.drop[merges]].reshape(-1)
            dst = slot.index[cand.keep[merges]].reshape(-1)
            coef = np.repeat(cand.scale[merges], slot.index.shape[1])
            touched = np.unique(dst)
            new = v[touched].astype(np.float64)
            pos = np.searchsorted(touched, dst)
            np.add.at(new, pos, coef.reshape(-1, *([1] * (v.ndim - 1))) * v[src].astype(np.float64))
            store.write(key, slot.axis, touched, new.astype(v.dtype), patch)
        if np.any(cand.shift != 0):
            bias = store.get(slot.layer, "bias")
            if bias is None:
                raise EditError(f"{slot.layer} has no bias to absorb a merge's constant part")
            rows = v[drop_rows.reshape(-1)].astype(np.float64)
            contrib = (np.repeat(cand.shift, slot.index.shape[1]).reshape(-1, *([1] * (v.ndim - 1))) * rows)
            add = contrib.reshape(-1, contrib.shape[-1]).sum(0)
            store.write((slot.layer, "bias"), 0, np.arange(bias.shape[0]), (bias + add).astype(bias.dtype), patch)
        change = None if cand.refit is None else cand.refit[ci]
        if change is not None:
            _refit(graph, store, slot, change, patch)
        elif cand.mix is not None:
            _compensate(graph, store, slot, cand.drop, cand.mix[ci], patch)
        store.write(key, slot.axis, drop_rows.reshape(-1), 0, patch)
    for slot in group.producers:
        store.write((slot.layer, slot.var), slot.axis, slot.index[cand.drop].reshape(-1), 0, patch)
    store.set_alive(group.id, cand.drop, False, patch)
    return patch


def _compensate(graph: ModelGraph, store: WeightStore, slot: Slot, drop: np.ndarray, coef: np.ndarray,
                patch: Patch) -> None:
    """Fold the removed units' rows, weighted by ``coef``, into the kept units' rows and the bias.

    Row ``p`` of ``coef`` expresses removed unit ``drop[p]`` over the units (and a constant, last
    column); every flattened position (``rep``) and kernel tap of the reader gets the same fold.
    """
    key = (slot.layer, slot.var)
    v = np.moveaxis(store[key], slot.axis, 0)
    rows = v[slot.index[drop]].astype(np.float64)  # (P, rep, *rest)
    units = np.flatnonzero(np.any(coef[:, :-1] != 0, axis=0))
    if len(units):
        add = np.tensordot(coef[:, units].astype(np.float64).T, rows, axes=(1, 0))  # (U, rep, *rest)
        pos = slot.index[units].reshape(-1)
        new = v[pos].astype(np.float64) + add.reshape(len(pos), *v.shape[1:])
        store.write(key, slot.axis, pos, new.astype(v.dtype), patch)
    const = coef[:, -1].astype(np.float64)
    if np.any(const != 0):
        from .compensation import reader_bias_target

        target = reader_bias_target(graph, slot.layer)
        if target is None:
            raise EditError(f"{slot.layer} has no bias to absorb a compensation constant")
        contrib = np.tensordot(const, rows, axes=(0, 0))  # (rep, *rest): summed over all positions and taps
        add_b = contrib.reshape(-1, contrib.shape[-1]).sum(0)
        arr = store[target]
        sign = 1.0 if target[1] == "bias" else -1.0  # BN(y + d) with moving_mean - d
        store.write(target, 0, np.arange(arr.shape[0]), (arr + sign * add_b).astype(arr.dtype), patch)


def _refit(graph: ModelGraph, store: WeightStore, slot: Slot, change: tuple[np.ndarray, np.ndarray],
           patch: Patch) -> None:
    """Add a refit's changes to the reader's rows of the group's units and to its bias."""
    rows, bias = change
    key = (slot.layer, slot.var)
    v = np.moveaxis(store[key], slot.axis, 0)
    pos = slot.index.reshape(-1)
    # outputs of the reader pruned since the refit was solved (same batch) keep their zeros
    live = np.any(v[pos].reshape(-1, v.shape[-1]) != 0, axis=0)
    rows, bias = rows * live, bias * live
    new = v[pos].astype(np.float64) + rows.reshape(len(pos), *v.shape[1:])
    store.write(key, slot.axis, pos, new.astype(v.dtype), patch)
    if np.any(bias != 0):
        from .compensation import reader_bias_target

        target = reader_bias_target(graph, slot.layer)
        if target is None:
            raise EditError(f"{slot.layer} has no bias to absorb a refit constant")
        arr = store[target]
        sign = 1.0 if target[1] == "bias" else -1.0
        store.write(target, 0, np.arange(arr.shape[0]), (arr + sign * bias.astype(np.float64)).astype(arr.dtype),
                    patch)


def shift_is_exact(graph: ModelGraph, group: UnitGroup) -> bool:
    """Whether every reader can absorb a constant input channel into its bias.

    A Dense reader can; a convolution only without zero padding (its own, or a
    ZeroPadding layer on the way), since the padded border would not carry the constant.
    """
    for tid in group.tensors:
        if any(n.rule.pads_zeros for n in graph.consumers_of(tid)):
            return False
    for slot in group.consumers:
        node = graph.node(slot.layer)
        if not node.rule.absorbs_constant(node.config) or "bias" not in node.var_shapes:
            return False
    return True


def impact_increment(group: UnitGroup, view: UnitView, cand: Candidates) -> Increment:
    """The edits' change intervals at each reader, to add to the group's running impact."""
    if not view.mergeable or view.x_bounds is None or len(cand) == 0:
        return {}
    err = view.merge_error(cand, tight=True)
    if err is None:
        return {}
    out: Increment = {}
    for layer, (lo, hi) in view.injections(cand, err).items():
        key = impact_key(group, layer)
        acc = view.store.get(*key)
        if acc is None:
            continue
        lo2, hi2 = lo.reshape(len(cand), -1), hi.reshape(len(cand), -1)
        # injections include the running total once per candidate: take it out again
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where the bounds overflowed
            c = ((lo2 + hi2) / 2).sum(0) - len(cand) * (acc[0] + acc[1]) / 2
            r = ((hi2 - lo2) / 2).sum(0) - len(cand) * (acc[1] - acc[0]) / 2
        unbounded = ~(np.isfinite(c) & np.isfinite(r))  # overflowed bounds say "anything": keep it unbounded, not NaN
        out[key] = np.stack([np.where(unbounded, -np.inf, c - r),
                             np.where(unbounded, np.inf, c + r)]).astype(np.float32)
    return out


def init_impact(graph: ModelGraph, store: WeightStore) -> None:
    """Create zeroed running-impact arrays for every mergeable group's readers."""
    for g in graph.prunable_groups:
        if g.merge_chain is None:
            continue
        for slot in g.consumers:
            out = graph.shapes[graph.node(slot.layer).outputs[0]][-1]
            store.arrays.setdefault(impact_key(g, slot.layer), np.zeros((2, int(out)), np.float32))
