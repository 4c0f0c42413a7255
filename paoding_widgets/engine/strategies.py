"""Pruning strategies: one small class per criterion, behind one interface.

Why: users compare criteria (PAODING's baseline / impact / stochastic modes,
plain magnitude and random baselines, our certified merge).  Each strategy
only *chooses* which units go and how they are folded; the shared work lives in
:class:`~paoding_widgets.engine.units.UnitView` and the edits in
:mod:`~paoding_widgets.engine.edits`.  A new criterion is one new subclass
registered in :data:`STRATEGIES`.

Groups that cannot be merged (convolution filters, units joined across
layers) are pruned by removal; the PAODING modes use the method's scale-based
L1 criterion there.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .edits import shift_is_exact
from .scores import disjoint_pairs, saliency_matrix, scaled_match
from .units import Candidates, UnitView


class Strategy:
    """Choose ``k`` units of a group to remove (and where to fold them)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    merges_filters: ClassVar[bool] = False  # PAODING removes filters by scale-based L1
    uses_impact: ClassVar[bool] = True  # keeps a running output-impact total (costs history bytes)
    allocates: bool = False  # True: :meth:`allocate` shares each iteration's units among the groups

    def allocate(self, views: dict[int, UnitView], total: int, room: dict[int, int],
                 target: float) -> dict[int, int] | None:
        """Units per group id for the next iteration (summing to ``total``, each within ``room``); None: uniform."""
        return None

    def propose(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        if not view.mergeable or (view.group.kind == "conv" and not self.merges_filters):
            return self.remove(view, k, rng)
        return self.merge(view, k, rng)

    def merge(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        return self.remove(view, k, rng)

    def remove(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        """Scale-based L1 removal: the method's criterion for filters."""
        return removal(view, view.scaled_l1(), k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def removal(view: UnitView, cost: np.ndarray, k: int) -> Candidates:
    """The ``k`` living units of least cost, removed without folding."""
    cost = np.where(view.alive, cost, np.inf)
    order = np.argsort(cost, kind="stable")[: min(k, int(view.alive.sum()) - 1)]
    z = np.zeros(len(order), np.float32)
    return Candidates(np.full(len(order), -1, np.int64), order.astype(np.int64), z, z.copy(), cost[order])


def _pairs(view: UnitView, cost: np.ndarray, m: int, scale: np.ndarray | None = None) -> Candidates:
    keep, drop = disjoint_pairs(cost, m, exclude=view.dead)
    s = np.ones(len(drop), np.float32) if scale is None else scale[keep, drop]
    shift = np.zeros(len(drop), np.float32)
    return Candidates(keep, drop, s, shift, cost[keep, drop])


#: Saliency runs on the living units' block once at most this share of the group lives.
BLOCK_SHARE = 0.8


def _saliency_pairs(view: UnitView, m: int, bias_aware: bool) -> Candidates:
    """Up to ``m`` disjoint pairs of least saliency among the living units.

    Why: the Gram matrix, the bias term and the pairing only ever use living units (the dead are
    excluded), so once enough units are gone they run on the ``n_alive x n_alive`` block.  Indices map
    back in increasing order, so ties break as on the full matrix (same pairs, tested).  Above
    :data:`BLOCK_SHARE` living units the gather of the living columns costs what the smaller product
    saves (measured at 128 units: 784 x 109 gathered and multiplied is no faster than 784 x 128).
    """
    alive = view.alive
    if alive.mean() > BLOCK_SHARE:
        cost = saliency_matrix(view.u, view.b, view.v_norm, bias_aware)
        return _pairs(view, cost, m)
    idx = np.flatnonzero(alive)
    cost = saliency_matrix(view.u[:, idx], view.b[idx], view.v_norm[idx], bias_aware)
    keep, drop = disjoint_pairs(cost, m)
    return Candidates(idx[keep], idx[drop], np.ones(len(drop), np.float32), np.zeros(len(drop), np.float32),
                      cost[keep, drop])


class Baseline(Strategy):
    """PAODING baseline: the ``k`` disjoint pairs of least saliency, merged."""

    uses_impact = False
    name = "baseline"
    description = "merge the least-saliency pairs (PAODING baseline mode)"

    def __init__(self, bias_aware: bool = True) -> None:
        self.bias_aware = bias_aware

    def merge(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        return _saliency_pairs(view, k, self.bias_aware)


class Impact(Strategy):
    """PAODING impact mode: a ``2k`` least-saliency pool, the ``k`` of least output impact."""

    name = "impact"
    description = "score a saliency pool by interval impact on the outputs (PAODING impact mode)"

    def __init__(self, alpha: float = 0.75, beta: float = 0.25, bias_aware: bool = True,
                 pool: float = 2.0) -> None:
        self.alpha, self.beta, self.bias_aware, self.pool = alpha, beta, bias_aware, pool

    def merge(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        cand = _saliency_pairs(view, max(k, int(math.ceil(self.pool * k))), self.bias_aware)
        score, _, _ = view.impact(cand, tight=False, alpha=self.alpha, beta=self.beta)
        best = np.argsort(score, kind="stable")[:k]
        out = cand.take(best)
        out.cost = np.asarray(score[best], np.float32)
        return out


class Stochastic(Strategy):
    """PAODING stochastic mode: simulated annealing over saliency-ordered pairs.

    Walk the pool in saliency order; accept a pair whose impact score is at
    most the running target (which then becomes the target), else accept it
    with probability ``exp(-(score - target) / T)``, ``T = 1.0001 - progress``.
    Seeded through the ``rng`` the session passes, so runs are reproducible.
    """

    name = "stochastic"
    description = "simulated annealing on impact scores (PAODING stochastic mode)"

    def __init__(self, alpha: float = 0.75, beta: float = 0.25, bias_aware: bool = True,
                 pool: float = 4.0) -> None:
        self.alpha, self.beta, self.bias_aware, self.pool = alpha, beta, bias_aware, pool

    def merge(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        cand = _saliency_pairs(view, max(k, int(math.ceil(self.pool * k))), self.bias_aware)
        score, _, _ = view.impact(cand, tight=False, alpha=self.alpha, beta=self.beta)
        progress = 1.0 - float(view.alive.mean())
        temp = 1.0001 - progress
        accepted: list[int] = []
        target = float(score[0]) if len(score) else 0.0
        remaining = list(range(len(cand)))
        for _walk in range(64):
            if len(accepted) >= k or not remaining:
                break
            left = []
            for i in remaining:
                if len(accepted) >= k:
                    left.append(i)
                    continue
                if score[i] <= target:
                    accepted.append(i)
                    target = float(score[i])
                elif rng.random() < math.exp(-(score[i] - target) / temp):
                    accepted.append(i)
                else:
                    left.append(i)
            remaining = left
        idx = np.asarray(accepted[:k] + remaining[: max(0, k - len(accepted))], np.int64)
        out = cand.take(idx)
        out.cost = np.asarray(score[idx], np.float32)
        return out


class Magnitude(Strategy):
    """Global-magnitude baseline: remove the units with the smallest L1 weights."""

    uses_impact = False
    name = "magnitude"
    description = "remove the units of smallest L1 incoming weights (plain baseline)"

    def propose(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        return removal(view, view.magnitude(), k)


class Random(Strategy):
    """Seeded random removal: the floor every criterion must beat."""

    uses_impact = False
    name = "random"
    description = "remove random units (seeded; plain baseline)"

    def propose(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        return removal(view, rng.random(view.group.size), k)


class Certified(Strategy):
    """Ours: merges chosen by the certified change they cause on the outputs.

    A pool of least-saliency pairs is scored by the *tight* interval of each
    merge's error -- ``x_b - x_a`` bounded through the difference of the two
    pre-activations, which are linear in the same input, so near-duplicates
    score near zero -- propagated to the outputs; the pairs whose output change
    is narrowest are merged.  With ``rescale=True`` the removed unit is folded
    with the positive scale that best fits its incoming weights (``x_b ~ s x_a``
    for ReLU-like units, after Neuron Merging, Kim et al. 2020); measured on an
    MNIST MLP this compensates worse than plain merges, so it is off by default.
    """

    name = "certified"
    description = "merges ranked by their certified output change (ours)"
    merges_filters = True

    def __init__(self, pool: float = 2.0, rescale: bool = False, bias_aware: bool = True) -> None:
        self.pool, self.rescale, self.bias_aware = pool, bool(rescale), bias_aware

    def merge(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        m = max(k, int(math.ceil(self.pool * k)))
        t = view.merge_transfer
        if self.rescale and t.rescalable:
            ue, be = view.effective_u
            w = np.concatenate([view.rms_input_weight(), np.ones(1, np.float32)])
            scale, resid = scaled_match(np.vstack([ue, be[None, :]]), w)
            with np.errstate(invalid="ignore"):
                cost = resid * (np.abs(t.q) * view.v_norm)[None, :]
            r = scale * t.q[None, :] / t.q[:, None]  # reader-side scale r = q_b s / q_a
            cand = _pairs(view, cost, m, np.nan_to_num(r))
            if shift_is_exact(view.graph, view.group):
                cand.shift = (t.q0[cand.drop] - cand.scale * t.q0[cand.keep]).astype(np.float32)
        else:
            cand = _saliency_pairs(view, m, self.bias_aware)
        _, width, _ = view.impact(cand, tight=True)
        best = np.argsort(width, kind="stable")[:k]
        out = cand.take(best)
        out.cost = np.asarray(width[best], np.float32)
        return out


class Compensated(Strategy):
    """Ours: remove units and refit their readers to the original model's outputs, data-free.

    Every layer that reads a group (Dense units, filters, channels joined by residual ``Add``,
    channels carried through depthwise convs) gets, when units of the group go, new rows for the kept
    units and a new bias: the ridge least-squares fit of the ORIGINAL model's reader output from the
    PRUNED model's current activations on the same synthetic inputs (error-correcting, as layer-wise
    data-driven pruning does; it also corrects drift left by earlier removals upstream).  Units are
    chosen greedily by what they cost the readers after that refit; groups no BatchNorm anchors are
    chosen by ``certified`` (``hybrid``; ``hybrid=False``: merged by it) and refit.  The synthetic
    inputs match every BatchNorm's statistics (ZeroQ) or, without BN, are a class-conditional model
    inversion (``ce``, ``tv``, ``l2``).  ``refit=False`` gives the earlier plain reconstruction
    (removed units replaced by their least-squares estimate from the kept ones, moments of the
    original model).  See :mod:`~paoding_widgets.engine.compensation`.

    Options: ``samples`` / ``steps`` (synthetic inputs, Adam steps), ``ridge`` (shrinkage towards the
    current rows, relative to the mean second moment), ``reconstruct`` / ``bn_prior`` (plain
    reconstruction only: False = DFQ bias correction; closed-form BN/ReLU moments), ``everywhere``
    (compensate groups with no BN anchor by the greedy choice too), ``ce`` / ``tv`` / ``l2`` (weights
    of the inversion's class pull, total-variation and L2 priors; models without BN only),
    ``prior_spread`` (the L2 weight varies per sample from ``l2 / prior_spread`` to ``l2 * prior_spread``),
    ``adversarial`` / ``adv_steps`` / ``adv_pool`` (per pruned state, this share of the samples moved by
    ``adv_steps`` steps to where the pruned model disagrees most with the original, the last ``adv_pool``
    batches added to the refit's inputs; 0 = off, measured worse on the MNIST MLP), ``spread``
    (in runs on models where BatchNorm anchors every group, units move between groups, ranked by
    relative refit cost; a group goes at most this far past the target share; 0: every group its
    share), ``sequential`` (the groups of a batch are refit one after another, each on the state the
    earlier proposals leave, while passes stay cheap).
    """

    name = "compensated"
    description = "remove units and fold their data-free reconstruction from the kept ones into the readers (ours)"
    # the groups merged by ``certified`` keep its running output impact, so they are pruned exactly as there
    uses_impact = True

    def __init__(self, samples: float = 256, steps: float = 200, ridge: float = 0.3, reconstruct: bool = True,
                 bn_prior: bool = False, everywhere: bool = False, refit: bool = True, hybrid: bool = True,
                 ce: float = 1.0, tv: float = 0.3, l2: float = 1.0, spread: float = 0.3,
                 sequential: bool = True, prior_spread: float = 10.0, adversarial: float = 0.0,
                 adv_steps: float = 20, adv_pool: float = 4.0) -> None:
        self.samples, self.steps, self.ridge = int(samples), int(steps), float(ridge)
        self.reconstruct, self.bn_prior, self.everywhere = bool(reconstruct), bool(bn_prior), bool(everywhere)
        self.refit, self.hybrid = bool(refit), bool(hybrid)
        self.ce, self.tv, self.l2 = float(ce), float(tv), float(l2)
        self.spread, self.sequential = float(spread), bool(sequential)
        self.prior_spread = float(prior_spread)
        self.adversarial, self.adv_steps, self.adv_pool = float(adversarial), int(adv_steps), float(adv_pool)
        self._adv: list[np.ndarray] = []  # disagreement samples of this run's earlier states (newest last)
        # edits proposed earlier in this batch, on a copy of the weights: (graph, version, copy, group ids)
        self._pending: tuple[Any, int, Any, list[int]] | None = None
        self._batch_joints: dict[tuple[int, int], dict] = {}  # the batch's joint moments per staged state
        self._seq_ok: tuple[Any, bool] | None = None
        # per group id, the greedy order :meth:`allocate` found: (graph, version, units, costs)
        self._orders: dict[int, tuple[Any, int, np.ndarray, np.ndarray]] = {}
        self.allocates = self.refit and self.spread > 0
        self._moments: tuple[Any, dict, set[int]] | None = None
        self._inputs: np.ndarray | None = None
        self._joint: tuple[Any, tuple[int, int], dict] | None = None
        self._original: tuple[Any, Any, Any] | None = None  # (graph, original weights, clone for the pruned ones)
        self._certified = Certified()

    def moments(self, view: UnitView) -> tuple[dict, set[int]]:
        """The reader moments of the view's model and its BN-anchored tensors (computed once per graph)."""
        from .bounds import parse_input_range
        from .compensation import activation_moments, bn_informed, synthesize_inputs
        from .rules.builtin import BatchNormRule

        if self._moments is None or self._moments[0] is not view.graph:
            box = view.input_range if view.input_range is not None else parse_input_range((0.0, 1.0))
            # BatchNorm statistics when the model has them (ZeroQ; the priors measured harmful there),
            # else class-conditional model inversion with smoothness priors
            inv = not any(isinstance(n.rule, BatchNormRule) for n in view.graph.nodes)
            x = synthesize_inputs(view.graph, view.store, box, self.samples, self.steps, ce=self.ce * inv,
                                  tv=self.tv * inv, l2=self.l2 * inv, prior_spread=self.prior_spread) \
                if self.steps > 0 else None
            self._adv = []
            stats = None
            if self.refit:  # the original model's moments are the refit's first joint pass: one pass, not two
                from .compensation import joint_moments, moments_of, sample_inputs

                xs = x if x is not None else sample_inputs(view.graph, box, max(self.samples, 256))
                if xs is not None:
                    j0 = joint_moments(view.graph, self.original(view), None, self._joint_inputs(view, xs),
                                       view.graph.prunable_groups)
                    stats = moments_of(j0)
                    if view.store.version == 0:  # unpruned: this is also the first refit's joint pass
                        self._joint = (view.graph, (0, 0), j0)
            if stats is None:
                stats = activation_moments(view.graph, view.store, box, view.graph.prunable_groups,
                                           max(self.samples, 256) if x is None else self.samples, inputs=x)
            self._moments = (view.graph, stats, bn_informed(view.graph))
            self._inputs = x
        return self._moments[1], self._moments[2]

    def original(self, view: UnitView) -> Any:
        """The original weights of the view's model (its BN statistics, the readers' rows), copied once."""
        from .weights import WeightStore

        if self._original is None or self._original[0] is not view.graph:
            self._original = (view.graph, WeightStore.from_model(view.graph.model, {}), None)
            self._joint = None
        return self._original[1]

    def _joint_inputs(self, view: UnitView, x: np.ndarray) -> np.ndarray:
        """At most ``4e10`` FLOPs per pass of the joint moments (a MobileNetV2 at 224: 66 samples)."""
        from .evaluate import flops

        try:
            per = max(float(flops(view.graph.model)), 1.0)
        except Exception:
            return x
        return x[: max(32, int(4e10 / per))]

    def joint(self, view: UnitView, fresh: bool = True) -> dict | None:
        """Moments of the pruned model's units against the original's (recomputed when the weights change).

        ``fresh=False`` reuses the last ones of this model even if the weights changed since: a restored
        proposal is refit from the state its batch was proposed in, as the original proposal was.
        """
        from .bounds import parse_input_range
        from .compensation import joint_moments, sample_inputs
        from .surgery import clone
        from .weights import _all_layers

        self.moments(view)
        g = view.graph
        self.original(view)
        assert self._original is not None
        if self._original[2] is None:
            try:
                twin = clone(g.model)
            except Exception:  # a model that cannot be cloned: no refit
                twin = False
            self._original = (g, self._original[1], twin)
        pend = self._pending if fresh and self._pending is not None and self._pending[0] is g \
            and self._pending[1] == view.store.version and self._pending[3] else None
        state = (view.store.version, len(pend[3]) if pend is not None else 0)
        if self._joint is None or self._joint[0] is not g or (fresh and self._joint[1] != state):
            if self._joint is not None and self._joint[0] is g and self._sequential_ok(view):
                self._batch_joints[self._joint[1]] = self._joint[2]
            _, original, twin = self._original
            x = self._inputs
            if x is None:
                box = view.input_range if view.input_range is not None else parse_input_range((0.0, 1.0))
                x = sample_inputs(g, box, max(self.samples, 256))
            if x is None or twin is False:
                return None
            x = self._joint_inputs(view, x)
            current = None
            if view.store.version or pend is not None:  # edited (version 0: the original, one pass serves both)
                (view.store if pend is None else pend[2]).load_into(twin)
                current = {layer.name: layer for layer in _all_layers(twin)}
                x = self._with_disagreement(view, twin, x, state)
            self._joint = (g, state, joint_moments(g, original, current, x, g.prunable_groups))
            if self._sequential_ok(view):  # kept for the batch: a restored proposal is refit on its own state
                self._batch_joints = {k: v for k, v in self._batch_joints.items() if k[0] == state[0]}
                self._batch_joints[state] = self._joint[2]
        return self._joint[2]

    def _with_disagreement(self, view: UnitView, twin: Any, x: np.ndarray, state: tuple[int, int]) -> np.ndarray:
        """``x`` and the disagreement samples of this state and the earlier ones (``adversarial``).

        A share ``adversarial`` of the synthetic samples (drawn afresh per state) is moved to where the
        pruned model, as it is now, disagrees most with the original
        (:func:`~paoding_widgets.engine.compensation.disagreement_inputs`); the refit then also fits
        the regions the pruning has broken.  The last ``adv_pool`` batches of them are kept.
        """
        from .bounds import parse_input_range
        from .compensation import disagreement_inputs
        from .rules.builtin import BatchNormRule

        count = int(round(self.adversarial * len(x)))
        if count <= 0:
            return x
        box = view.input_range if view.input_range is not None else parse_input_range((0.0, 1.0))
        rng = np.random.default_rng([state[0], state[1], len(self._adv)])
        pick = rng.choice(len(x), size=min(count, len(x)), replace=False)
        # the inversion's smoothness priors where there is no BN (as for the synthetic inputs)
        inv = not any(isinstance(n.rule, BatchNormRule) for n in view.graph.nodes)
        xa = disagreement_inputs(view.graph.model, twin, x[np.sort(pick)], box, self.adv_steps,
                                 tv=self.tv * inv, l2=self.l2 * inv)
        if xa is not None:
            self._adv = (self._adv + [xa])[-max(1, int(self.adv_pool)):]
        return np.concatenate([x, *self._adv]) if self._adv else x

    def _sequential_ok(self, view: UnitView) -> bool:
        """One joint pass per group (not per batch) only while they stay cheap: at most ``2e11`` FLOPs a batch."""
        from .evaluate import flops

        if not self.sequential:
            return False
        if self._seq_ok is not None and self._seq_ok[0] is view.graph:
            return self._seq_ok[1]
        self._seq_ok = (view.graph, False)
        try:
            per = 2.0 * float(flops(view.graph.model)) * min(len(self._inputs) if self._inputs is not None
                                                              else self.samples, max(32, 4e10 / max(
                                                                  float(flops(view.graph.model)), 1.0)))
        except Exception:
            return False
        self._seq_ok = (view.graph, per * len(view.graph.prunable_groups) <= 2e11)
        return self._seq_ok[1]

    def _stage(self, view: UnitView, cand: Candidates) -> None:
        """Apply a proposed edit to a copy of the weights, so the next groups of the batch are refit after it.

        Why: each refit also corrects the drift it sees upstream; refit on the same state, a reader would
        correct drift that the upstream group's own refit removes in the same batch -- twice the correction
        (measured on the residual model: 53.5 % instead of 69.7 % at 30 %).  Refitting group after group
        on the state the earlier proposals leave is what layer-wise data-driven pruning does.  A batch
        starts again when the weights change or a group comes round again (groups go in graph order).
        """
        from .edits import apply_edit

        if not self._sequential_ok(view):
            return
        g, gid = view.graph, view.group.id
        p = self._pending
        if p is None or p[0] is not g or p[1] != view.store.version or (p[3] and gid <= p[3][-1]):
            p = (g, view.store.version, view.store.copy(), [])
        apply_edit(g, p[2], view.group, cand, increment={})
        p[3].append(gid)
        self._pending = p

    def propose(self, view: UnitView, k: int, rng: np.random.Generator) -> Candidates:
        from .compensation import plan_removal

        p = self._pending
        if p is not None and (p[1] != view.store.version or (p[3] and view.group.id <= p[3][-1])):
            self._pending = None  # a new batch: the edits staged for the last one are not in it

        stats, informed = self.moments(view)
        fixed = None
        if not self.everywhere and view.mergeable and not any(t in informed for t in view.group.tensors):
            # no BatchNorm statistics anchor these units: the box alone predicts them poorly (measured),
            # so they are merged by their certified output change instead
            cert = self._certified.merge(view, k, rng)
            if not (self.refit and self.hybrid):
                return cert
            fixed = cert.drop
        if self.refit:
            from .compensation import plan_refit, reader_targets

            joint = self.joint(view)
            assert self._original is not None
            known = self._orders.get(view.group.id)
            staged = self._pending is not None and bool(self._pending[3])
            reuse = fixed is None and known is not None and known[0] is view.graph \
                and known[1] == view.store.version and not staged and len(known[2]) >= k
            # the greedy picks the same first units whatever k: the allocation's order, no second greedy
            chosen = known[2][:k] if reuse and known is not None else fixed
            res = None if joint is None else plan_refit(view, joint, reader_targets(view, self._original[1]), k,
                                                         self.ridge, drop=chosen)
            if res is not None and reuse and known is not None:
                res = (res[0], np.asarray(known[3][:k], np.float32), res[2])
            if res is not None:
                drop, cost, refit = res
                mix = plan_removal(view, stats, k, self.ridge, self.reconstruct, self.bn_prior, drop=drop)[2]
                z = np.zeros(len(drop), np.float32)
                out = Candidates(np.full(len(drop), -1, np.int64), drop, z, z.copy(), cost, mix=mix, refit=refit)
                self._stage(view, out)
                return out
        if fixed is not None:
            return self._certified.merge(view, k, rng)
        drop, cost, mix = plan_removal(view, stats, k, self.ridge, self.reconstruct, self.bn_prior)
        z = np.zeros(len(drop), np.float32)
        return Candidates(np.full(len(drop), -1, np.int64), drop, z, z.copy(), cost, mix=mix)

    def allocate(self, views: dict[int, UnitView], total: int, room: dict[int, int],
                 target: float) -> dict[int, int] | None:
        """Share the iteration's units among the groups by the refit's predicted cost per unit.

        Per group, the greedy of :func:`~paoding_widgets.engine.compensation.plan_refit` orders the units
        by what each costs the readers after the refit; divided by the readers' output energy (so layers
        of different scales compare) and made non-decreasing, these costs are merged over the groups and
        the ``total`` cheapest taken: fragile groups give up fewer units, redundant ones more.  A group
        goes at most ``spread`` past the target share.  None (uniform) when some group has no refit.
        """
        from .compensation import plan_refit, reader_targets, refit_energy

        if not self.allocates:
            return None
        self._pending = None  # a batch starts
        informed = self.moments(next(iter(views.values())))[1] if views else set()
        if not all(any(t in informed for t in v.group.tensors) for v in views.values()):
            # only where BatchNorm statistics anchor every group (measured gains there); on the MNIST MLP it
            # kept the wide first layer: more units, but more parameters and less accuracy per parameter
            return None
        pool: list[tuple[float, int]] = []
        for gid, view in views.items():
            n = view.group.size
            pruned = n - int(view.alive.sum())
            cap = min(room[gid], max(0, int(math.floor(min(0.95, target + self.spread) * n + 0.5)) - pruned))
            if cap <= 0:
                continue
            self.moments(view)
            joint = self.joint(view)
            if joint is None or self._original is None:
                return None
            res = plan_refit(view, joint, reader_targets(view, self._original[1]), cap, self.ridge)
            if res is None:
                return None
            self._orders[gid] = (view.graph, view.store.version, res[0], res[1])  # the greedy's first picks
            energy = refit_energy(view, joint)
            cost = np.maximum.accumulate(np.asarray(res[1], np.float64) / max(energy, 1e-30))
            pool += [(float(c), gid) for c in cost]
        if len(pool) < total:
            return None
        pool.sort(key=lambda cg: cg[0])
        out = dict.fromkeys(views, 0)
        for _, gid in pool[:total]:
            out[gid] += 1
        return out

    def restore(self, view: UnitView, cand: Candidates) -> None:
        """Recompute a restored proposal's folds in place (the refit from the weights as they are now)."""
        cand.mix = self.compensation(view, cand.drop)
        if self.refit:
            from .compensation import plan_refit, reader_targets

            p, joint = self._pending, None
            if p is not None and p[0] is view.graph and view.group.id in p[3]:  # staged: the state it was proposed on
                joint = self._batch_joints.get((p[1], p[3].index(view.group.id)))
            if joint is None:  # refit group after group: the batch's earlier proposals are applied by now
                joint = self.joint(view, fresh=self._sequential_ok(view))
            if joint is not None and self._original is not None:
                res = plan_refit(view, joint, reader_targets(view, self._original[1]), len(cand.drop), self.ridge,
                                 drop=cand.drop)
                cand.refit = None if res is None else res[2]

    def compensation(self, view: UnitView, drop: np.ndarray) -> list[np.ndarray]:
        """The compensation of a given removal (for a proposal restored without its coefficients)."""
        from .compensation import plan_removal

        return plan_removal(view, self.moments(view)[0], len(drop), self.ridge, self.reconstruct, self.bn_prior,
                            drop=drop)[2]


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Baseline, Impact, Stochastic, Magnitude, Random, Certified, Compensated)
}


# Limits of the numeric options (inclusive); every option is a plain number or bool, so settings stay JSON.
_RANGES: dict[str, tuple[float, float]] = {"pool": (1.0, 1000.0), "alpha": (0.0, 1e6), "beta": (0.0, 1e6),
                                          "samples": (16.0, 65536.0), "steps": (0.0, 1e5), "ridge": (0.0, 1e3),
                                          "ce": (0.0, 1e3), "tv": (0.0, 1e3), "l2": (0.0, 1e3),
                                          "spread": (0.0, 1.0), "prior_spread": (1.0, 1e3),
                                          "adversarial": (0.0, 8.0), "adv_steps": (0.0, 1000.0),
                                          "adv_pool": (1.0, 100.0)}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate a strategy's options against its constructor: known names, plain finite numbers, booleans.

    Returns them as plain Python values (NumPy scalars become numbers).
    """
    cls = STRATEGIES[name]
    params = {k: v for k, v in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise ConfigError(f"strategy {name!r} has no option {key!r}; its options are: {known}")
        want = str(params[key].annotation)
        if isinstance(value, np.generic):
            value = value.item()
        if want == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"strategy {name!r} option {key!r} must be true or false, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"strategy {name!r} option {key!r} must be a finite number, got {value!r}")
            lo, hi = _RANGES.get(key, (-math.inf, math.inf))
            if not lo <= value <= hi:
                raise ConfigError(f"strategy {name!r} option {key!r} must be within {lo:g}..{hi:g}, got {value!r}")
            value = float(value)
        out[key] = value
    return out


def make_strategy(spec: str | Strategy, **options: Any) -> Strategy:
    """A strategy from its name (with validated options) or an instance."""
    if isinstance(spec, Strategy):
        if options:
            raise ConfigError("options go with a strategy name, not with a strategy instance")
        return spec
    if not isinstance(spec, str) or spec not in STRATEGIES:
        raise ConfigError(f"unknown strategy {spec!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[spec](**check_options(spec, options))
