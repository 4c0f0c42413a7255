"""The pruning loop: proposals per group, exact target accounting, application.

Why: this is PAODING's progressive process made explicit.  One iteration
proposes, for every group it is asked about, the next ``step`` share of its
units (never past the target); callers -- the session, the CLI, a script --
decide which proposals to apply.  It knows nothing of widgets or history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, EditError, ModelError
from .bounds import Bounds, Propagator, parse_input_range
from .edits import apply_edit, impact_increment, init_impact
from .graph import ModelGraph, UnitGroup
from .strategies import Strategy, check_options, make_strategy
from .units import Candidates, UnitView
from .weights import Patch, WeightStore


@dataclass
class Proposal:
    """The next edit proposed for one group."""

    group: int
    name: str
    action: str  # "merge" or "remove"
    candidates: Candidates
    strategy: str
    params_saved: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def drop(self) -> np.ndarray:
        return self.candidates.drop

    @property
    def keep(self) -> np.ndarray:
        return self.candidates.keep

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: which units go and where they are folded."""
        c = self.candidates
        return {"group": self.group, "name": self.name, "action": self.action, "strategy": self.strategy,
                "drop": c.drop.tolist(), "keep": c.keep.tolist(), "scale": c.scale.round(6).tolist(),
                "score": np.asarray(c.cost, float).round(6).tolist(), "params_saved": self.params_saved}


class Pruner:
    """Data-free PAODING pruning of a Keras model, on private weight copies.

    Parameters
    ----------
    model: a built Keras 3 ``Sequential`` or functional model; never modified.
    input_range: the legal input box ``(low, high)``, scalars or per-feature arrays.
    strategy: a name from :data:`~paoding_widgets.engine.strategies.STRATEGIES` or an instance.
    step: share of each group's original units pruned per iteration.
    target: share of each group's original units pruned in the end.
    seed: seeds the stochastic and random strategies.
    """

    def __init__(self, model: Any, input_range: Any = (0.0, 1.0), strategy: str | Strategy = "compensated",
                 step: float = 0.05, target: float = 0.5, seed: int = 0, **strategy_options: Any) -> None:
        self.model = model
        self.graph = ModelGraph(model)
        if not self.graph.prunable_groups:
            raise ModelError(f"model {model.name!r} has no prunable layer:\n{self.graph.report()}")
        self.input_range = parse_input_range(input_range, tuple(model.inputs[0].shape[1:]))
        check_fraction("step", step)
        check_fraction("target", target)
        self.step, self.target = float(step), float(target)
        self.strategy = make_strategy(strategy, **strategy_options)
        self.strategy_options = check_options(self.strategy.name, strategy_options) if strategy_options else {}
        self.rng = np.random.default_rng(seed)
        self.store = WeightStore.from_model(model, {g.id: g.size for g in self.graph.groups})
        init_impact(self.graph, self.store)
        self.propagator = Propagator(self.graph, self.store)
        self._bounds: tuple[int, Bounds] | None = None

    # ---------------------------------------------------------------- counts
    def pruned_units(self, group: UnitGroup) -> int:
        return int((~self.store.alive[group.id]).sum())

    def target_units(self, group: UnitGroup, target: float | None = None) -> int:
        """Units of the group pruned at the target (at least one unit stays)."""
        t = self.target if target is None else target
        return min(group.size - 1, int(math.floor(t * group.size + 0.5)))

    def share_pruned(self) -> float:
        groups = self.graph.prunable_groups
        return sum(self.pruned_units(g) for g in groups) / sum(g.size for g in groups)

    def next_k(self, group: UnitGroup, target: float | None = None) -> int:
        """Units to prune in the next iteration: one step, never past the target."""
        return max(0, min(self.step_units(group), self.target_units(group, target) - self.pruned_units(group)))

    def step_units(self, group: UnitGroup) -> int:
        return max(1, int(math.floor(self.step * group.size + 0.5)))

    @property
    def allocates(self) -> bool:
        """Whether the strategy moves units between groups (then the target is a total, not per group)."""
        return bool(getattr(self.strategy, "allocates", False))

    def remaining_units(self, groups: Iterable[UnitGroup], target: float | None = None) -> int:
        """Units still to prune over ``groups`` to reach the target in total (what an allocating strategy owes)."""
        gs = list(groups)
        return max(0, sum(self.target_units(g, target) for g in gs) - sum(self.pruned_units(g) for g in gs))

    def allot(self, groups: Iterable[UnitGroup], target: float | None = None) -> dict[int, int]:
        """Units each group gives up in the next iteration.

        Uniform (every strategy but an allocating one): :meth:`next_k` per group.  An allocating strategy
        (``allocates = True``) is asked how to share this iteration's total -- the units still owed over
        ``groups``, at most one step of each -- among the groups, each within its room (at most two
        steps, at least one unit left); the pruner checks the answer, so the total over the groups reaches
        the target exactly, and groups not passed (locked) are never touched.
        """
        gs = list(groups)
        uniform = {g.id: self.next_k(g, target) for g in gs}
        if not self.allocates or len(gs) < 2:
            return uniform
        room = {g.id: max(0, min(2 * self.step_units(g), g.size - 1 - self.pruned_units(g))) for g in gs}
        total = min(self.remaining_units(gs, target), sum(self.step_units(g) for g in gs), sum(room.values()))
        if total <= 0:
            return {g.id: 0 for g in gs}
        views = {g.id: self.view(g) for g in gs}
        t = self.target if target is None else target
        got = self.strategy.allocate(views, total, room, t)
        if got is None:
            return uniform
        out = {g.id: int(got.get(g.id, 0)) for g in gs}
        bad = [g.name for g in gs if not 0 <= out[g.id] <= room[g.id]]
        if bad or sum(out.values()) != total:
            raise EditError(f"strategy {self.strategy.name!r} allotted {sum(out.values())} units for {total}"
                            + (f" (out of range on {', '.join(bad)})" if bad else ""))
        return out

    # -------------------------------------------------------------- proposals
    def bounds(self) -> Bounds:
        """Value bounds of the current weights (cached until the weights change)."""
        if self._bounds is None or self._bounds[0] != self.store.version:
            # Let go of the old version first: the propagator's memo replaces each stale interval as it
            # goes, so only one version is alive (on ResNet50 the two together cost 0.27 GiB more).
            self._bounds = None
            self._bounds = (self.store.version, self.propagator.values(self.input_range))
        return self._bounds[1]

    def view(self, group: UnitGroup) -> UnitView:
        return UnitView(self.graph, self.store, group, self.propagator, self.bounds, self.input_range)

    def propose(self, groups: Iterable[UnitGroup] | None = None, target: float | None = None,
                allocate: bool = False) -> dict[int, Proposal]:
        """One iteration's proposals for the given (default: all prunable) groups.

        ``allocate`` (automated iterations: :meth:`iterate`, the session's run) lets an allocating strategy
        share the units among the groups (:meth:`allot`); otherwise every group proposes its own step.
        """
        out: dict[int, Proposal] = {}
        gs = list(self.graph.prunable_groups if groups is None else groups)
        ks = self.allot(gs, target) if allocate else {g.id: self.next_k(g, target) for g in gs}
        if not allocate and self.allocates:  # one step per layer, but never past the total a run may have shared
            left = self.remaining_units(gs, target)
            for g in gs:
                ks[g.id] = min(ks[g.id], left)
                left -= ks[g.id]
        for g in gs:
            k = ks[g.id]
            if k <= 0:
                continue
            view = self.view(g)
            cand = self.strategy.propose(view, k, self.rng)
            if len(cand) == 0:
                continue
            action = "merge" if np.any(cand.keep >= 0) else "remove"
            out[g.id] = Proposal(g.id, g.name, action, cand, self.strategy.name,
                                 params_saved=self.params_per_unit(g) * len(cand),
                                 extra={"impact": impact_increment(g, view, cand)
                                        if self._keeps_impact(g) else {}})
        return out

    def _keeps_impact(self, group: UnitGroup) -> bool:
        """Whether a group's running output impact is ever read: only merges are scored on it, so filters
        that this strategy only removes need none (and no bound pass to compute it)."""
        if not self.strategy.uses_impact:
            return False
        return group.kind != "conv" or self.strategy.merges_filters

    def apply(self, proposal: Proposal) -> Patch:
        """Apply one proposal to the weights; returns the patch that undoes it."""
        g = self.graph.groups[proposal.group]
        cand = proposal.candidates
        restore = getattr(self.strategy, "compensation", None)
        if (cand.mix is None and cand.refit is None and restore is not None
                and proposal.strategy == self.strategy.name and len(cand) and np.all(cand.keep < 0)):
            # a proposal restored from a session file carries no coefficients: they are recomputed
            # (a strategy with ``restore`` fills in everything it folds, e.g. the compensated refit)
            fill = getattr(self.strategy, "restore", None)
            if fill is not None:
                fill(self.view(g), cand)
            else:
                cand.mix = restore(self.view(g), cand.drop)
        inc = proposal.extra.get("impact")  # computed with the bounds the proposal was scored on
        if inc is None:
            return apply_edit(self.graph, self.store, g, proposal.candidates, self.view(g))
        return apply_edit(self.graph, self.store, g, proposal.candidates, increment=inc)

    def iterate(self, target: float | None = None) -> list[Patch]:
        """Propose for every group and apply everything (one automated iteration).

        The loop over iterations -- stop conditions, cancel, history -- is the
        session's (:meth:`PruningSession.run`), the one pruning loop.
        """
        proposals = self.propose(target=target, allocate=True)
        return [self.apply(p) for p in proposals.values()]

    def output_bound_width(self) -> float:
        """Mean width of the certified output intervals (logits) over the input box.

        A data-free fidelity signal: how far the outputs can range for legal
        inputs.  Widths are taken before a final softmax/sigmoid.
        """
        b = self.bounds()
        widths = []
        for tid in self.graph.output_ids:
            node = self.graph.producer_of(tid)
            iv = b.pre.get(node.name) if node is not None and node.name in b.pre else b.of(tid)
            if iv is None:
                return float("nan")
            widths.append((iv[1] - iv[0]).ravel())
        return float(np.mean(np.concatenate(widths)))

    def summary(self) -> list[dict[str, Any]]:
        """Per group: name, kind, units pruned / total, and why not prunable."""
        return [{"name": g.name, "kind": g.kind, "total": g.size,
                 "pruned": self.pruned_units(g), "prunable": g.prunable, "reason": g.reason}
                for g in self.graph.groups]

    # ---------------------------------------------------------------- helpers
    def params_per_unit(self, group: UnitGroup) -> int:
        """Parameters that go with one unit of the group (all its slots)."""
        total = 0
        for s in group.slots():
            arr = self.store[(s.layer, s.var)]
            total += (arr.size // arr.shape[s.axis]) * s.index.shape[1]
        return total

    def pruned_model(self) -> Any:
        """A physically smaller Keras model computing what the edited weights compute."""
        from .surgery import physical_model

        return physical_model(self.graph, self.store)

    def edited_model(self) -> Any:
        """A full-size clone of the model carrying the edited weights."""
        from .surgery import clone

        model = clone(self.model)
        self.store.load_into(model)
        return model


def check_fraction(name: str, value: float) -> None:
    """Raise a clear error unless ``value`` is a number with ``0 < value < 1`` (no strings, no bools)."""
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
          and 0.0 < float(value) < 1.0)
    if not ok:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
