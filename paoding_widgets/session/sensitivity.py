"""Per-layer sensitivity, data-free: how the output degrades if one layer alone is pruned.

Why: a user deciding what to accept, lock or plan needs to know which layers
are fragile.  For every prunable unit group we prune that group alone, on a
private copy of the current weights (the session is never touched), to several
shares of its units with the session's strategy, and record at each share:

* ``bound`` -- the **certified** bound of the largest change of any output
  (logit) over the whole input box, caused by the edits made since the current
  state.  The change injected at the group's readers is the sum, over the edits,
  of the engine's interval of each edit's change (``UnitView.merge_error`` and
  ``UnitView.injections``: sums of intervals contain sums of changes), carried to
  the outputs by ``Propagator.deltas`` around the current bounds.  Any number
  at least as large is still a bound, so the curve is made non-decreasing in the
  share (a running maximum): sound, and monotone by construction.
* ``agreement`` -- top-1 agreement with the current state on box samples (when
  the model is small enough to run that often within the time budget).
* ``accuracy`` -- with the session's eval data (a subset), likewise.
* ``robust`` -- robustness kept, with eval data: FGSM at the session's step sizes
  on up to ``MAX_ROBUST`` eval samples, crafted on the pruned copy (white-box);
  the share of the current state's robust instances count, averaged over the
  step sizes (it may exceed 1: a pruned model can resist where the current one
  did not).
* ``params`` / ``flops`` -- what removing those units saves (FLOPs estimated from
  each slot's parameters times its output's spatial size).

A layer whose units can go without changing anything scores zero.  The
computation reads the session once (under its lock), then runs without it: it
never blocks an action, reports progress, and stops when cancelled.  Results
are keyed by the session's revision, so a view can cache them per state.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SessionError

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_PROBES = 256  # box samples for agreement (a subset of the session's)
MAX_EVAL = 512  # eval samples for accuracy
MAX_ROBUST = 128  # eval samples for FGSM robustness (one gradient and one pass per step size each)
Interval = tuple[np.ndarray, np.ndarray]


class Cancelled(SessionError):
    """The sensitivity computation was cancelled."""


@dataclass
class Curve:
    """One group pruned alone: per share of its units (``ratios``), what happens."""

    name: str
    ratios: list[float]  # shares of the group's units pruned (the current share first)
    bound: list[float | None]  # certified bound of the largest output change (None: cannot be bounded)
    agreement: list[float | None]
    accuracy: list[float | None]
    params: list[int]  # parameters removed (relative to the current state)
    flops: list[int]
    note: str = ""
    score: list[float] = field(default_factory=list)  # the strategy's own cost of the units removed (summed)
    robust: list[float | None] = field(default_factory=list)  # robustness kept, share of the current state's

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ratios": [round(r, 4) for r in self.ratios],
                "bound": [_num(b) for b in self.bound], "agreement": [_num(a) for a in self.agreement],
                "accuracy": [_num(a) for a in self.accuracy], "params": self.params, "flops": self.flops,
                "score": [_num(x) for x in self.score], "robust": [_num(x) for x in self.robust],
                "note": self.note}


@dataclass
class Sensitivity:
    revision: tuple[int, int]
    curves: dict[str, Curve]
    seconds: float
    total_params: int
    total_flops: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"revision": list(self.revision), "curves": {k: c.as_dict() for k, c in self.curves.items()},
                "seconds": round(self.seconds, 3), "total_params": self.total_params,
                "total_flops": self.total_flops, "notes": list(self.notes)}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")


# ---------------------------------------------------------------------- shared helpers
def flops_per_unit(graph: Any, store: Any, group: Any) -> int:
    """Estimated FLOPs that go with one unit: 2 x its kernel parameters x the output's spatial size."""
    total = 0
    for s in group.slots():
        arr = store.arrays.get((s.layer, s.var))
        if arr is None or arr.ndim < 2:
            continue
        shape = graph.node(s.layer).output_shape
        spatial = int(np.prod([d for d in shape[1:-1] if d is not None])) if len(shape) > 2 else 1
        total += 2 * (arr.size // arr.shape[s.axis]) * s.index.shape[1] * spatial
    return total


def joint_injection(view: Any, cand: Any) -> dict[str, Interval] | None:
    """The interval of the change at the group's readers caused by all of ``cand`` together.

    ``view.injections`` gives each candidate alone (plus the change accumulated by
    earlier edits); by linearity at the readers' pre-activations the joint change is
    contained in the sum of the candidates' own intervals.  None when the engine
    cannot bound the edit.
    """
    if len(cand) == 0:
        return {}
    err = view.merge_error(cand, True)
    if err is None:
        return None
    inj = view.injections(cand, err)
    out: dict[str, Interval] = {}
    from ..engine.units import impact_key

    for layer, (lo, hi) in inj.items():
        c, r = (lo + hi) / 2, (hi - lo) / 2
        acc = view.store.get(*impact_key(view.group, layer))
        c_sum, r_sum = c.sum(0, keepdims=True), r.sum(0, keepdims=True)
        if acc is not None:  # each candidate carries the accumulated change once: keep it out
            n = len(cand)
            c_sum = c_sum - n * (acc[0] + acc[1]) / 2
            r_sum = r_sum - n * (acc[1] - acc[0]) / 2
        r_sum = np.maximum(r_sum, 0)
        out[layer] = (c_sum - r_sum, c_sum + r_sum)
    return out


def add_injections(total: dict[str, Interval], more: dict[str, Interval]) -> dict[str, Interval]:
    out = dict(total)
    for layer, (lo, hi) in more.items():
        if layer in out:
            out[layer] = (out[layer][0] + lo, out[layer][1] + hi)
        else:
            out[layer] = (lo, hi)
    return out


def output_change_bound(pruner: Any, base: Any, injections: dict[str, Interval]) -> float | None:
    """The largest |change| of any output over the box for the injected reader changes (None: unbounded)."""
    if not injections:
        return 0.0
    res = pruner.propagator.deltas(base, injections, 1)
    if res is None:
        return None
    lo, hi = res
    if not lo.size:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.maximum(np.abs(lo), np.abs(hi))
    if np.isnan(m).any():
        return None
    b = float(m.max())
    return b if math.isfinite(b) else None


def proposal_bound(pruner: Any, group: Any, cand: Any) -> float | None:
    """Certified bound of the largest output change if this proposal were accepted now (reads only)."""
    view = pruner.view(group)
    inj = joint_injection(view, cand)
    if inj is None:
        return None
    return output_change_bound(pruner, pruner.bounds(), inj)


def private_pruner(pruner: Any, seed: int = 0) -> Any:
    """A pruner on a private copy of the weights (shares the graph; the session's is untouched)."""
    from ..engine.bounds import Propagator

    p = copy.copy(pruner)
    p.store = pruner.store.copy()
    p.propagator = Propagator(p.graph, p.store)
    p._bounds = None
    p.rng = np.random.default_rng(seed)
    return p


# ---------------------------------------------------------------------- the computation
def compute(view: Any, ratios: Sequence[float] = RATIOS, progress: Callable[[dict[str, Any]], None] | None = None,
            cancelled: Callable[[], bool] | None = None, groups: Sequence[str] | None = None,
            agreement: bool | None = None, budget: float = 20.0) -> Sensitivity:
    """Sensitivity of every prunable group (or ``groups``) of the session ``view`` shows.

    ``agreement``: measure agreement / accuracy by running the model (None: only if
    the estimated time fits ``budget`` seconds).  Raises :class:`Cancelled` when
    ``cancelled()`` turns true.
    """
    from ..engine.evaluate import predict_classes, robust_instances
    from ..engine.weights import layer_variable_names

    t0 = time.monotonic()
    ratios = sorted({float(r) for r in ratios if 0 < float(r) < 1})
    if not ratios:
        raise SessionError("sensitivity needs at least one share strictly between 0 and 1")
    stop = cancelled or (lambda: False)
    session = view.session
    with session._lock:  # one consistent reading of the state; everything after runs on copies
        revision = session.revision
        p = private_pruner(session.pruner, session.seed)
        wanted = [g for g in session.graph.prunable_groups if groups is None or g.name in groups]
        probes = session._probes[:MAX_PROBES]
        eval_data = session.eval_data
        epsilons = tuple(session.epsilons)
    if eval_data is not None:
        eval_data = (eval_data[0][:MAX_EVAL], eval_data[1][:MAX_EVAL])
    graph, store = p.graph, p.store
    notes: list[str] = []
    base = p.bounds()
    # The value bounds stay pinned to the current state's while we prune: pruning one group changes nothing
    # upstream of it, so its units' value intervals (all the injections need) are still these; and the
    # certified change is measured around the current state.  One propagation instead of one per step.
    pinned = lambda: setattr(p, "_bounds", (store.version, base))  # noqa: E731
    width = p.output_bound_width()
    can_bound = math.isfinite(width)
    if not can_bound:
        notes.append("the value bounds of this model overflow (a deep net): no certified bound; "
                     "plans rank layers by the strategy's own score")
    total_params = int(session.model.count_params())
    per_unit = {g.name: (p.params_per_unit(g), flops_per_unit(graph, store, g)) for g in wanted}
    total_flops = int(sum(per_unit[g.name][1] * int(store.alive[g.id].sum()) for g in wanted))

    model = None
    reference = None
    if agreement is not False:
        model = p.edited_model()
        t = time.monotonic()
        reference = predict_classes(model, probes)
        one = time.monotonic() - t
        if eval_data is not None:  # accuracy, and FGSM: a gradient (about two passes) and a pass per step size
            n_robust = min(MAX_ROBUST, len(eval_data[0])) if epsilons else 0
            one *= 1 + (len(eval_data[0]) + n_robust * (2 + len(epsilons))) / max(1, len(probes))
        estimate = one * len(wanted) * len(ratios)
        if agreement is None and estimate > budget:
            notes.append(f"agreement not measured: running the model {len(wanted) * len(ratios)} times would take "
                         f"~{estimate:.0f} s; the certified bound is shown alone")
            model = None
    labels = None
    if eval_data is not None and model is not None:
        y = np.asarray(eval_data[1])
        labels = y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)
    robust_x = robust_y = None
    if labels is not None and epsilons:
        assert eval_data is not None
        robust_x, robust_y = np.asarray(eval_data[0][:MAX_ROBUST]), labels[:MAX_ROBUST]

    def robust_counts() -> dict[float, int] | None:
        if robust_x is None or robust_y is None or model is None:
            return None
        return robust_instances(model, robust_x, robust_y, epsilons, p.input_range)

    def kept(counts: dict[float, int] | None, now: dict[float, int] | None) -> float | None:
        shares = [counts[e] / now[e] for e in now if now[e] > 0] if counts and now else []
        return float(np.mean(shares)) if shares else None

    def load(keys: set[tuple[str, str]]) -> None:
        if model is None:
            return
        for name in sorted({k[0] for k in keys if not k[0].startswith("__")}):
            layer = model.get_layer(name)
            layer.set_weights([store.arrays[(name, v)] for v in layer_variable_names(layer)])

    curves: dict[str, Curve] = {}
    for i, g in enumerate(wanted):
        if stop():
            raise Cancelled("sensitivity cancelled")
        ppu, fpu = per_unit[g.name]
        start = int((~store.alive[g.id]).sum())
        share0 = start / g.size
        curve = Curve(g.name, [share0], [0.0], [1.0 if model is not None else None],
                      [None], [0], [0], score=[0.0])
        score = 0.0
        if labels is not None:
            assert model is not None and eval_data is not None
            curve.accuracy[0] = float((predict_classes(model, eval_data[0]) == labels).mean())
        robust_now = robust_counts()
        curve.robust = [1.0 if kept(robust_now, robust_now) is not None else None]
        patches = []
        unloaded: set[tuple[str, str]] = set()
        total: dict[str, Interval] = {}
        bounded = can_bound
        best = 0.0
        try:
            for r in ratios:
                if r <= share0 + 1e-9:
                    continue
                if stop():
                    raise Cancelled("sensitivity cancelled")
                p.step = r
                for _ in range(20):  # merges pair units up: one proposal may not reach the share
                    if p.next_k(g, r) <= 0:
                        break
                    pinned()
                    props = p.propose([g], r)
                    prop = props.get(g.id)
                    if prop is None or len(prop.candidates) == 0:
                        break
                    if bounded:
                        inj = joint_injection(p.view(g), prop.candidates)
                        if inj is None:
                            bounded = False
                        else:
                            total = add_injections(total, inj)
                    cost = np.asarray(prop.candidates.cost, float)
                    score += float(cost[np.isfinite(cost)].sum()) if cost.size else 0.0
                    prop.extra = {"impact": {}}  # the bound is ours: leave the running impact alone
                    patches.append(p.apply(prop))
                    unloaded.update(a.key for a in patches[-1].arrays)
                removed = int((~store.alive[g.id]).sum()) - start
                if (start + removed) / g.size <= curve.ratios[-1] + 1e-9:
                    break  # no candidate left: the curve ends here
                b = output_change_bound(p, base, total) if bounded else None
                if b is None:
                    bounded = False
                else:
                    best = max(best, b)
                agree = acc = rob = None
                if model is not None:
                    load(unloaded)
                    unloaded.clear()
                    agree = float((predict_classes(model, probes) == reference).mean())
                    if labels is not None:
                        assert eval_data is not None
                        acc = float((predict_classes(model, eval_data[0]) == labels).mean())
                    rob = kept(robust_counts(), robust_now)
                curve.ratios.append((start + removed) / g.size)
                curve.bound.append(best if bounded else None)
                curve.agreement.append(agree)
                curve.accuracy.append(acc)
                curve.robust.append(rob)
                curve.params.append(ppu * removed)
                curve.flops.append(fpu * removed)
                curve.score.append(score)
        finally:
            touched: set[tuple[str, str]] = set()
            for patch in reversed(patches):
                store.revert(patch)
                touched.update(a.key for a in patch.arrays)
            load(touched)
        if not bounded:
            curve.note = ("the engine cannot carry this layer's change to the outputs: no certified bound"
                          if can_bound else "no certified bound (the model's value bounds overflow)")
            curve.bound = [0.0] + [None] * (len(curve.bound) - 1)
        curves[g.name] = curve
        if progress is not None:
            progress({"done": i + 1, "total": len(wanted), "layer": g.name,
                      "elapsed": time.monotonic() - t0})
    return Sensitivity(revision, curves, time.monotonic() - t0, total_params, total_flops, notes)


# ---------------------------------------------------------------------- accuracy after accepting a proposal
def _labels_of(y: Any) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)


def _load_layers(model: Any, store: Any, keys: set[tuple[str, str]]) -> None:
    """Copy the store's current arrays of the layers owning ``keys`` into the full-size ``model``."""
    from ..engine.weights import layer_variable_names

    for name in sorted({k[0] for k in keys if not k[0].startswith("__")}):
        layer = model.get_layer(name)
        layer.set_weights([store.arrays[(name, v)] for v in layer_variable_names(layer)])


@dataclass
class PreviewAccuracy:
    """Accuracy now and after accepting each open proposal alone, on the same eval samples."""

    revision: tuple[int, int]
    samples: int
    now: float
    after: dict[str, float]  # layer -> accuracy if its proposal alone were accepted now


MIN_PREVIEW_EVAL = 64  # fewer samples than this make an accuracy figure too coarse to show


def proposal_accuracies(view: Any, limit: int = MAX_EVAL, cancelled: Callable[[], bool] | None = None,
                        on_result: Callable[[str, float, PreviewAccuracy], None] | None = None,
                        budget: float | None = 60.0) -> PreviewAccuracy | None:
    """Accuracy on the session's eval data (the first ``limit`` samples) if each open proposal were accepted.

    Why: "what will accepting this cost" in the one figure people trust most.  Runs on a private
    copy of the weights, off the session lock (an action is never blocked); ``cancelled()`` stops it
    between layers (raises :class:`Cancelled`); ``on_result(layer, accuracy, so_far)`` reports each as it comes.
    ``budget``: seconds the whole preview may take (it runs the model once per open proposal); on a large
    model the sample count shrinks to fit it, down to ``MIN_PREVIEW_EVAL`` (the figure says how many).
    None when the session has no eval data or no open proposal.
    """
    from ..engine.evaluate import predict_classes

    stop = cancelled or (lambda: False)
    session = view.session
    with session._lock:
        props = dict(session.proposals)
        revision = session.revision
        eval_data = session.eval_data
        if eval_data is None or not props:
            return None
        p = private_pruner(session.pruner, session.seed)
    x, labels = np.asarray(eval_data[0])[:limit], _labels_of(eval_data[1])[:limit]
    model = p.edited_model()
    if budget is not None and len(x) > MIN_PREVIEW_EVAL:
        t = time.monotonic()
        predict_classes(model, x[:MIN_PREVIEW_EVAL])  # per-sample cost (also warms the model up)
        per_sample = (time.monotonic() - t) / MIN_PREVIEW_EVAL
        fits = int(budget / max(per_sample * (len(props) + 1), 1e-9))
        n = max(MIN_PREVIEW_EVAL, min(len(x), fits))
        x, labels = x[:n], labels[:n]
    now = float((predict_classes(model, x) == labels).mean())
    out = PreviewAccuracy(revision, len(x), now, {})
    for name, prop in props.items():
        if stop():
            raise Cancelled("preview accuracy cancelled")
        # a copy: applying fills in coefficients and bookkeeping we must not write into the session's proposal
        mine = dataclasses.replace(prop, candidates=copy.copy(prop.candidates), extra=dict(prop.extra))
        patch = p.apply(mine)
        keys = {a.key for a in patch.arrays}
        try:
            _load_layers(model, p.store, keys)
            acc = float((predict_classes(model, x) == labels).mean())
        finally:
            p.store.revert(patch)
            _load_layers(model, p.store, keys)
        out.after[name] = acc
        if on_result is not None:
            on_result(name, acc, out)
    return out
