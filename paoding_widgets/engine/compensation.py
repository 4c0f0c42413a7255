"""Data-free compensation of removed units: reconstruct them from the kept ones, folded into the readers.

Why: removing a unit (or filter, or a channel of a residual stream) takes its signal ``x_d`` away from
every layer that reads it.  Most of that signal is predictable from the units that stay: a constant
part (its mean) and a part correlated with kept units.  Replacing ``x_d`` by its best linear estimate
``x_d ~ sum_k a_dk x_k + c_d`` costs nothing at inference -- the readers' rows of the kept units get
``a_dk * v_d`` added and their bias ``c_d * v_d`` -- so the pruned model keeps its size and computes
what the edited full-size model computes.  (Neuron Merging is the one-partner case ``a = 1``; UDFC,
ICCV 2023, the many-partner case; DFQ's bias correction, Nagel et al. 2019, the ``a = 0`` case.)

The estimate needs the second moments ``E[x x^T]`` of the units as their readers see them, and we
have no data.  Two free sources give them:

* **BatchNorm statistics.**  A BN layer's moving mean and variance are the per-channel moments of its
  input over the training data.  :func:`activation_moments` propagates *box samples* (uniform over the
  legal input box) through the model, and at every BN re-standardises the samples channel by channel
  to the BN's moving mean and variance, so from the first BN on every channel has its real mean and
  spread; the correlations between channels come from the network's own weights acting on the
  samples (the "kernel similarity" of the channels).  Where a unit's pre-activation is a BN output
  followed by a ReLU, the closed-form Gaussian moments (:func:`relu_gaussian_moments`) replace the
  sampled mean and variance (the correlations stay).
* **The input box** where there is no BN: the samples are uniform in the box, which is all a
  data-free method knows of the inputs.

Given the moments, :func:`plan_removal` picks the units to remove greedily, each time the one whose
loss costs the readers least *after* compensation -- ``||v_j||^2 / [M_S^{-1}]_jj``, the residual
variance of ``x_j`` given the units still kept times the size of its outgoing rows (Optimal Brain
Surgeon on the readers' inputs, Hassibi & Stork 1993) -- and returns the joint least-squares
coefficients per reader.  A coupled group (channels joined by ``Add``, read at several tensors) is
scored on every reader at once, each with the moments of the tensor it reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EditError
from .graph import ModelGraph, UnitGroup
from .rules.builtin import BatchNormRule
from .units import UnitView
from .weights import WeightStore

_SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------ closed forms
def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(x))


def relu_gaussian_moments(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(E[relu(z)], E[relu(z)^2])`` for ``z ~ N(mean, std^2)``, element-wise (DFQ's bias correction).

    ``E[relu(z)] = m Phi(m/s) + s phi(m/s)``, ``E[relu(z)^2] = (m^2 + s^2) Phi(m/s) + m s phi(m/s)``;
    with ``std = 0`` the unit is the constant ``relu(mean)``.
    """
    m, s = np.asarray(mean, np.float64), np.abs(np.asarray(std, np.float64))
    safe = np.where(s > 0, s, 1.0)
    t = m / safe
    cdf, pdf = _Phi(t), _phi(t)
    e1 = np.where(s > 0, m * cdf + s * pdf, np.maximum(m, 0.0))
    e2 = np.where(s > 0, (m * m + s * s) * cdf + m * s * pdf, np.maximum(m, 0.0) ** 2)
    return e1, e2


def bn_relu_prior(view: UnitView) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and variance of each unit as its readers see it, when the chain is producer -> BN -> ReLU.

    The BN's moving statistics are the data's moments of the producer's output ``z``; the
    pre-activation ``p z + p0`` is taken as Gaussian.  None when the chain is of another form.
    """
    chain = view.group.merge_chain
    if not chain or view.transfer is None or view.transfer.rule.name != "relu":
        return None
    first = view.graph.node(chain[0])
    if not isinstance(first.rule, BatchNormRule):
        return None
    t = view.transfer
    mm = view.store.get(first.name, "moving_mean")
    mv = view.store.get(first.name, "moving_variance")
    if mm is None or mv is None:
        return None
    e1, e2 = relu_gaussian_moments(t.p * mm + t.p0, np.abs(t.p) * np.sqrt(np.maximum(mv, 0.0)))
    mean = t.q * e1 + t.q0
    var = t.q.astype(np.float64) ** 2 * np.maximum(e2 - e1 * e1, 0.0)
    return mean, var


# ------------------------------------------------------------------------------ where the moments come from
def bn_informed(graph: ModelGraph) -> set[int]:
    """Tensors at or after a BatchNormalization (their channels' moments are anchored on BN statistics)."""
    seen: set[int] = set()
    for node in graph.nodes:
        if isinstance(node.rule, BatchNormRule) or any(t in seen for t in node.inputs):
            seen.update(node.outputs)
    return seen


def synthesize_inputs(graph: ModelGraph, store: WeightStore, input_range: tuple[np.ndarray, np.ndarray],
                      samples: int = 256, steps: int = 200, seed: int = 0, budget: float = 6e11,
                      lr: float = 0.05, ce: float = 0.0, tv: float = 0.0, l2: float = 0.0,
                      prior_spread: float = 1.0) -> np.ndarray | None:
    """Inputs in the box whose statistics at every BatchNorm match its moving mean and variance.

    ZeroQ (Cai et al., CVPR 2020): start from uniform points of the box and descend on
    ``sum_BN mean_c ((mu_c - m_c)^2 + (sd_c - s_c)^2) / s_c^2`` -- the batch's per-channel moments at
    each BN input against the BN's running statistics -- with Adam on the inputs, projected back
    into the box after each step (measured: faster than a sigmoid parametrisation), on whichever
    backend runs (:func:`~paoding_widgets.engine.gradients.invert_inputs`).  ``ce`` adds
    DeepInversion's pull of each sample towards a class (classes dealt out evenly), ``tv`` a
    total-variation prior on image inputs, ``l2`` DeepInversion's L2 prior; with ``ce`` a model
    without BN is inverted too (DAFL-style model inversion).  ``prior_spread``: the L2 weight varies
    per sample from ``l2 / prior_spread`` to ``l2 * prior_spread`` (:func:`prior_weights`).
    Returns None when there is nothing to match, the model cannot be differentiated here,
    or would cost more than ``budget`` FLOPs (about ``3 * FLOPs * samples * steps``).
    """
    bns = [n for n in graph.nodes if isinstance(n.rule, BatchNormRule)]
    model = graph.model
    if (not bns and not ce) or len(getattr(model, "inputs", [])) != 1:
        return None
    try:
        from .evaluate import flops

        per = max(float(flops(model)), 1.0)
        want = steps
        steps = int(min(want, budget / (3.0 * per * samples)))
        if steps < min(want, 20):  # too costly: fewer samples first (never more than asked)
            samples = int(min(samples, max(16, budget / (3.0 * per * min(want, 20)))))
            steps = int(min(want, budget / (3.0 * per * samples)))
        if steps < min(want, 10):
            return None
        lr *= min(8.0, want / steps)  # fewer steps than asked (the budget): longer ones (measured: better matched)
        targets = []
        for n in bns:
            mm, mv = store.get(n.name, "moving_mean"), store.get(n.name, "moving_variance")
            if mm is None or mv is None:
                return None
            targets.append((np.asarray(mm, np.float32), np.sqrt(np.maximum(mv, 0.0)).astype(np.float32)))
        n_out = int(model.outputs[0].shape[-1])
        labels = (np.arange(samples) % max(n_out, 1)).astype(np.int32)
        lo, hi = (np.asarray(a, np.float32) for a in input_range)
        shape = (samples, *[int(d) for d in model.inputs[0].shape[1:]])
        rng = np.random.default_rng(seed)
        from .gradients import invert_inputs

        x0 = (lo + (hi - lo) * rng.random(shape, dtype=np.float32)).astype(np.float32)
        x = invert_inputs(model, [n.layer for n in bns], targets, x0, lo, hi, steps, lr,
                          labels if ce and n_out > 1 else None, ce, tv, not _squashed(model),
                          l2 * prior_weights(samples, max(n_out, 1), prior_spread))
        return x if np.all(np.isfinite(x)) else None
    except Exception:  # a model this cannot differentiate (custom layers, several inputs...): box samples
        return None


def prior_weights(samples: int, n_out: int, spread: float) -> np.ndarray:
    """Per-sample factors of the L2 prior, log-evenly from ``1/spread`` to ``spread`` within each class.

    Why: the prior's weight sets how strongly the inputs (hence the activations) are shrunk, and the
    data's scale is unknown; a range of weights brackets it (measured on the MNIST MLP: one weight
    gives activations too large or too small).
    """
    per = -(-samples // n_out)  # samples per class (classes are dealt out in turn)
    rank = np.arange(samples) // n_out
    return (spread ** (2.0 * rank / max(per - 1, 1) - 1.0)).astype(np.float32)


def disagreement_inputs(model: Any, rival: Any, x0: np.ndarray, input_range: tuple[np.ndarray, np.ndarray],
                        steps: int = 20, lr: float = 0.05, tv: float = 0.0, l2: float = 0.0) -> np.ndarray | None:
    """``x0`` moved, in the box, to where ``model`` and ``rival`` (the pruned model) disagree most.

    Why: a refit fitted on inputs where the two already agree cannot see the regions where the pruned
    model went wrong.  Data-free adversarial distillation (DFAD, Fang et al. 2019; zero-shot knowledge
    transfer, Micaelli & Storkey 2019) trains on inputs that maximise the teacher/student discrepancy;
    here projected Adam ascends ``mean |model(x) - rival(x)|`` (logits, or probabilities for squashed
    outputs) from the synthetic samples, with the same smoothness priors as the inversion.  None when
    the models cannot be differentiated here.
    """
    if len(getattr(model, "inputs", [])) != 1 or not steps:
        return None
    from .gradients import invert_inputs

    lo, hi = (np.asarray(a, np.float32) for a in input_range)
    try:
        x = invert_inputs(model, [], [], x0, lo, hi, steps, lr, None, 0.0, tv, True, l2, rival=rival, disagree=1.0)
    except Exception:  # a model this cannot differentiate: no disagreement samples
        return None
    return x if np.all(np.isfinite(x)) else None


def _squashed(model: Any) -> bool:
    from .evaluate import outputs_are_probabilities

    return bool(outputs_are_probabilities(model))


# ------------------------------------------------------------------------------ sampled moments
@dataclass
class ReaderMoments:
    """Second moments of a group's units at one reader's input, pooled over positions."""

    mean: np.ndarray  # (n,)
    cov: np.ndarray  # (n, n)
    tensor: int  # the tensor the reader reads


def _reader_input(graph: ModelGraph, layer: str, group: UnitGroup) -> int:
    ins = graph.node(layer).inputs
    for t in ins:
        if t in group.tensors:
            return t
    return ins[0]


def activation_moments(graph: ModelGraph, store: WeightStore, input_range: tuple[np.ndarray, np.ndarray],
                       groups: list[UnitGroup], samples: int = 512, seed: int = 0,
                       budget: float = 4e7, inputs: np.ndarray | None = None) -> dict[tuple[int, int], ReaderMoments]:
    """Moments of every group's units at every reader, from BN-re-standardised samples.

    The samples are ``inputs`` when given (e.g. from :func:`synthesize_inputs`), else uniform
    points of the box.  Keyed by ``(group id, consumer slot index)``.  Samples run through the
    model's own layers in chunks (at most ``budget`` activation values alive at once); the moments
    are accumulated.
    """
    import keras

    per_sample = sum(int(np.prod([d or 1 for d in s[1:]])) for s in graph.shapes.values()) or 1
    total = int(max(16, min(samples, budget * 8 // per_sample))) if inputs is None else len(inputs)
    chunk = int(max(1, min(total, budget // per_sample)))
    needed: dict[int, list[tuple[int, int, UnitGroup]]] = {}
    for g in groups:
        for i, slot in enumerate(g.consumers):
            if not any(t in g.tensors for t in graph.node(slot.layer).inputs):
                continue  # read inside its own layer (attention heads, key_dim): no tensor holds them, no moments
            needed.setdefault(_reader_input(graph, slot.layer, g), []).append((g.id, i, g))
    last_use: dict[int, int] = {}
    for k, node in enumerate(graph.nodes):
        for t in node.inputs:
            last_use[t] = k
    acc: dict[tuple[int, int], list[np.ndarray]] = {}
    counts: dict[tuple[int, int], int] = {}
    rng = np.random.default_rng(seed)
    lo, hi = input_range
    done = 0
    while done < total:
        m = min(chunk, total - done)
        done += m
        vals: dict[int, np.ndarray] = {}
        if inputs is not None and len(graph.input_ids) == 1:
            vals[graph.input_ids[0]] = inputs[done - m: done]
        for tid in graph.input_ids:
            if tid in vals:
                continue
            shape = (m, *[int(d) for d in graph.shapes[tid][1:]])
            u = rng.random(shape, dtype=np.float32)
            vals[tid] = (np.broadcast_to(lo, shape[1:]) + u * (np.broadcast_to(hi, shape[1:]) - lo)).astype(np.float32)
        for k, node in enumerate(graph.nodes):
            if not node.inputs:
                continue
            xs = [vals.get(t) for t in node.inputs]
            if any(x is None for x in xs):
                continue
            try:
                if isinstance(node.rule, BatchNormRule) and xs[0] is not None:
                    xs = [_restandardise(xs[0], store, node.name)]
                arg: Any = xs if len(xs) > 1 else xs[0]
                out = node.layer(arg, training=False) if node.rule.takes_training or _has_training(node) \
                    else node.layer(arg)
            except Exception:  # a layer that cannot run on samples: its readers get no moments
                continue
            outs = out if isinstance(out, (list, tuple)) else [out]
            for t, o in zip(node.outputs, outs):
                vals[t] = np.asarray(keras.ops.convert_to_numpy(o), np.float32)  # a PyTorch tensor may carry grads
            for t in node.inputs:
                if last_use.get(t) == k and t not in needed:
                    vals.pop(t, None)
            for t in node.outputs:
                if t in needed and t in vals:
                    _accumulate(vals[t], needed[t], acc, counts)
                    if t not in last_use:
                        vals.pop(t, None)
        for t in graph.input_ids:
            if t in needed and t in vals:
                _accumulate(vals[t], needed[t], acc, counts)
    out_m: dict[tuple[int, int], ReaderMoments] = {}
    for key, (s1, s2) in acc.items():
        n = counts[key]
        mean = s1 / n
        cov = s2 / n - np.outer(mean, mean)
        g = next(x for x in groups if x.id == key[0])
        out_m[key] = ReaderMoments(mean, (cov + cov.T) / 2, _reader_input(graph, g.consumers[key[1]].layer, g))
    return out_m


def _has_training(node: Any) -> bool:
    return isinstance(node.rule, BatchNormRule)


def _restandardise(x: np.ndarray, store: WeightStore, layer: str) -> np.ndarray:
    """Give each channel of ``x`` the BN's moving mean and variance (the data's moments)."""
    mm, mv = store.get(layer, "moving_mean"), store.get(layer, "moving_variance")
    if mm is None or mv is None:
        return x
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mu, sd = flat.mean(0), flat.std(0)
    scale = np.sqrt(np.maximum(mv, 0.0)) / np.where(sd > 1e-12, sd, 1.0)
    return ((x - mu) * scale + mm).astype(np.float32)


def _accumulate(x: np.ndarray, readers: list[tuple[int, int, UnitGroup]], acc: dict, counts: dict) -> None:
    f = x.shape[-1]
    flat = x.reshape(-1, f).astype(np.float64)
    for gid, i, g in readers:
        idx = g.consumers[i].index  # (n, rep) positions of each channel along the reader's input axis
        if idx.max() >= f:
            continue
        xg = flat[:, idx]  # (M, n, rep)
        xg = np.moveaxis(xg, 2, 1).reshape(-1, idx.shape[0])
        s1, s2 = xg.sum(0), xg.T @ xg
        if (gid, i) in acc:
            acc[(gid, i)][0] += s1
            acc[(gid, i)][1] += s2
            counts[(gid, i)] += len(xg)
        else:
            acc[(gid, i)] = [s1, s2]
            counts[(gid, i)] = len(xg)


# ------------------------------------------------------------------------------ the removal plan
def reader_bias_target(graph: ModelGraph, layer: str) -> tuple[str, str] | None:
    """Where a constant input of reader ``layer`` can be folded: its bias, or the BN right after it."""
    node = graph.node(layer)
    if "bias" in node.var_shapes:
        return (layer, "bias")
    readers = graph.consumers_of(node.outputs[0])
    if len(readers) == 1 and isinstance(readers[0].rule, BatchNormRule) and "moving_mean" in readers[0].var_shapes:
        return (readers[0].name, "moving_mean")
    return None


def _output_weights(graph: ModelGraph, store: WeightStore, layer: str) -> np.ndarray | None:
    """Per output channel of a reader, the squared scale a BN right after it applies (errors grow by it)."""
    node = graph.node(layer)
    readers = graph.consumers_of(node.outputs[0])
    if len(readers) == 1 and readers[0].rule.channel_affine:
        aff = readers[0].rule.affine(store, readers[0])
        if aff is not None:
            return np.asarray(aff[0], np.float64) ** 2
    return None


def plan_removal(view: UnitView, moments: dict[tuple[int, int], ReaderMoments], k: int, ridge: float = 1e-2,
                 reconstruct: bool = True, bn_prior: bool = True,
                 drop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Choose ``k`` units to remove (or take ``drop``) and their compensation per reader.

    Returns ``(drop, cost, mix)``: ``mix[i]`` is ``(k, n + 1)`` per consumer slot ``i`` -- row ``p``
    expresses removed unit ``drop[p]`` as coefficients over the group's units plus a constant
    (last column); zero on removed and dead units, and zero constant where the reader has nowhere
    to fold one.
    """
    g = view.group
    n = g.size
    alive = view.alive.copy()
    prior = bn_relu_prior(view) if bn_prior else None
    read_tensor = view.read_tensor if prior is not None else None
    mats, vs, const_ok = [], [], []
    for i, (layer, v) in enumerate(view.v_rows):
        mo = moments.get((g.id, i))
        if mo is None:
            mean, cov = np.zeros(n), np.eye(n)
        else:
            mean, cov = mo.mean.copy(), mo.cov.copy()
            if prior is not None and mo.tensor == read_tensor:
                sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
                corr = cov / np.outer(sd, sd)
                psd = np.sqrt(np.maximum(prior[1], 1e-12))
                mean, cov = prior[0].astype(np.float64), corr * np.outer(psd, psd)
        ok = reader_bias_target(view.graph, layer) is not None
        second = np.zeros((n + 1, n + 1))
        second[:n, :n] = cov + np.outer(mean, mean)
        second[:n, n] = second[n, :n] = mean
        second[n, n] = 1.0
        diag = np.diag(second)[:n][alive]
        lam = ridge * (float(diag.mean()) if diag.size else 1.0) + 1e-12
        second[:n, :n] += lam * np.eye(n)
        w = v.reshape(n, -1).astype(np.float64)
        ow = _output_weights(view.graph, view.store, layer)
        if ow is not None:
            w = (w.reshape(n, -1, len(ow)) * np.sqrt(ow)).reshape(n, -1)
        mats.append(second)
        vs.append(np.vstack([w, np.zeros((1, w.shape[1]))]))
        const_ok.append(ok)
    active = np.concatenate([alive, [True]])
    for i in range(len(mats)):
        if not const_ok[i]:
            mats[i][n, :] = mats[i][:, n] = 0.0
            mats[i][n, n] = 1.0
    chosen: list[int] = []
    costs: list[float] = []
    if drop is None:
        kk = min(k, int(alive.sum()) - 1)
        invs = [_inverse(m, active, const_ok[i]) for i, m in enumerate(mats)]
        plain = None if reconstruct else (lambda: _plain_costs(mats, vs, n, const_ok))
        _greedy(invs, vs, active, kk, chosen, costs, plain)
        drop_arr = np.asarray(chosen, np.int64)
    else:
        drop_arr = np.asarray(drop, np.int64)
        costs = [0.0] * len(drop_arr)
        active[drop_arr] = False
    mix = []
    keep_idx = np.flatnonzero(active)
    for i, m in enumerate(mats):
        coef = np.zeros((len(drop_arr), n + 1))
        if len(drop_arr):
            kidx = keep_idx if const_ok[i] else keep_idx[keep_idx < n]
            a = m[np.ix_(kidx, kidx)]
            b = m[np.ix_(kidx, drop_arr)]
            if not reconstruct:  # bias correction only (DFQ): each removed unit becomes its mean
                kidx = kidx[kidx == n]
                a, b = m[np.ix_(kidx, kidx)], m[np.ix_(kidx, drop_arr)]
            sol = np.linalg.solve(a, b) if len(kidx) else np.zeros((0, len(drop_arr)))
            coef[:, kidx] = sol.T
        if not np.all(np.isfinite(coef)):
            raise EditError(f"{g.name}: compensation coefficients are not finite")
        mix.append(coef.astype(np.float32))
    return drop_arr, np.asarray(costs, np.float32), mix




def _greedy(invs: list[np.ndarray], vs: list[np.ndarray], active: np.ndarray, k: int, chosen: list[int],
            costs: list[float], plain: Callable[[], np.ndarray] | None = None) -> None:
    """Remove up to ``k`` units one at a time, each the cheapest to reconstruct from the rest over all
    readers (``v_j^2 / P_jj`` summed; the last slot, the constant, never goes); ``plain`` replaces the
    costs of the real units by removal without reconstruction.  Appends to ``chosen`` and ``costs``."""
    n = len(active) - 1
    for _ in range(max(k, 0)):
        total = np.zeros(n + 1)
        for p, v in zip(invs, vs):
            pdiag = np.diag(p)
            with np.errstate(divide="ignore", invalid="ignore"):
                total += np.where(pdiag > 0, (v ** 2).sum(1) / pdiag, np.inf)
        total[n] = np.inf
        total[~active] = np.inf
        if plain is not None:
            total[:n] = np.where(active[:n], plain(), np.inf)
        j = int(np.argmin(total))
        if not np.isfinite(total[j]):
            break
        _eliminate(invs, vs, j, plain is None)
        active[j] = False
        chosen.append(j)
        costs.append(float(total[j]))

def _eliminate(invs: list[np.ndarray], vs: list[np.ndarray], j: int, reconstruct: bool) -> None:
    """Remove unit ``j`` from every reader's precision matrix (in place); with ``reconstruct``, fold its
    regression on the remaining units (zero outside the active set) into the readers' rows ``vs``."""
    for i, p in enumerate(invs):
        if reconstruct:
            a = -p[:, j] / p[j, j]
            a[j] = 0.0
            vs[i] += np.outer(a, vs[i][j])
        vs[i][j] = 0.0
        invs[i] = p - np.outer(p[:, j], p[j, :]) / p[j, j]
        invs[i][j, :] = invs[i][:, j] = 0.0

def _plain_costs(mats: list[np.ndarray], vs: list[np.ndarray], n: int, const_ok: list[bool]) -> np.ndarray:
    """Per unit: the readers' loss when it goes with only its mean folded (its variance, or second moment)."""
    total = np.zeros(n)
    for i, m in enumerate(mats):
        d = np.diag(m)[:n] - (m[:n, n] ** 2 if const_ok[i] else 0.0)
        total += np.maximum(d, 0.0) * (vs[i][:n] ** 2).sum(1)
    return total


def _inverse(m: np.ndarray, active: np.ndarray, const_ok: bool) -> np.ndarray:
    """Inverse of ``m`` on the active rows/columns, zero elsewhere."""
    idx = np.flatnonzero(active)
    if not const_ok:
        idx = idx[idx < len(m) - 1]
    out = np.zeros_like(m)
    out[np.ix_(idx, idx)] = np.linalg.inv(m[np.ix_(idx, idx)])
    return out


# ------------------------------------------------------------------------------ error-correcting refit
@dataclass
class JointMoments:
    """At one reader's input: moments of the pruned model's units (and a constant) against the original's.

    ``cc = E[c c^T]`` with ``c = [x_current; 1]``, ``co = E[c x_original^T]``; pooled over positions.
    """

    cc: np.ndarray  # (n + 1, n + 1)
    co: np.ndarray  # (n + 1, n)
    tensor: int


def sample_inputs(graph: ModelGraph, input_range: tuple[np.ndarray, np.ndarray], samples: int,
                  seed: int = 0) -> np.ndarray | None:
    """Uniform points of the box for a single-input model (None for several inputs)."""
    if len(graph.input_ids) != 1:
        return None
    tid = graph.input_ids[0]
    shape = (samples, *[int(d) for d in graph.shapes[tid][1:]])
    lo, hi = input_range
    u = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return (np.broadcast_to(lo, shape[1:]) + u * (np.broadcast_to(hi, shape[1:]) - lo)).astype(np.float32)


def joint_moments(graph: ModelGraph, original: WeightStore, current: dict[str, Any] | None, inputs: np.ndarray,
                  groups: list[UnitGroup], budget: float = 4e7) -> dict[tuple[int, int], JointMoments]:
    """The same inputs through the original model and the pruned one; their moments at every reader.

    ``current`` maps layer names to the layers of a clone carrying the pruned weights (None: the model
    is not pruned yet, both passes are the original).  At every BatchNorm both passes get the affine
    re-standardisation computed on the original's batch (as in :func:`activation_moments`), so the
    synthetic data stays the same for both; the pruned model's drift is kept.  ``original`` holds the
    original weights (BN statistics).
    """
    import keras

    per_sample = sum(int(np.prod([d or 1 for d in s[1:]])) for s in graph.shapes.values()) or 1
    total = len(inputs)
    chunk = int(max(1, min(total, budget // (2 * per_sample))))
    needed: dict[int, list[tuple[int, int, UnitGroup]]] = {}
    for g in groups:
        for i, slot in enumerate(g.consumers):
            needed.setdefault(_reader_input(graph, slot.layer, g), []).append((g.id, i, g))
    last_use: dict[int, int] = {}
    for k, node in enumerate(graph.nodes):
        for t in node.inputs:
            last_use[t] = k
    acc: dict[tuple[int, int], list[np.ndarray]] = {}
    counts: dict[tuple[int, int], int] = {}

    def call(layer: Any, node: Any, arg: Any) -> list[np.ndarray]:
        out = layer(arg, training=False) if _has_training(node) else layer(arg)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(keras.ops.convert_to_numpy(o), np.float32) for o in outs]

    for start in range(0, total, chunk):
        xin = inputs[start: start + chunk]
        vals: dict[int, tuple[np.ndarray, np.ndarray]] = {graph.input_ids[0]: (xin, xin)}
        for k, node in enumerate(graph.nodes):
            if not node.inputs or any(t not in vals for t in node.inputs):
                continue
            xo = [vals[t][0] for t in node.inputs]
            xc = [vals[t][1] for t in node.inputs]
            try:
                if isinstance(node.rule, BatchNormRule):
                    ro, rc = _restandardise_pair(xo[0], xc[0], original, node.name)
                    xo, xc = [ro], [rc]
                outs_o = call(node.layer, node, xo if len(xo) > 1 else xo[0])
                if current is None:
                    outs_c = outs_o
                else:
                    outs_c = call(current.get(node.name, node.layer), node, xc if len(xc) > 1 else xc[0])
            except Exception:  # a layer that cannot run on samples: its readers get no moments
                continue
            for t, o, c in zip(node.outputs, outs_o, outs_c):
                vals[t] = (o, c)
            for t in node.inputs:
                if last_use.get(t) == k and t not in needed:
                    vals.pop(t, None)
            for t in node.outputs:
                if t in needed and t in vals:
                    _accumulate_joint(vals[t][0], vals[t][1], needed[t], acc, counts)
        for t in graph.input_ids:
            if t in needed and t in vals:
                _accumulate_joint(vals[t][0], vals[t][1], needed[t], acc, counts)
    out: dict[tuple[int, int], JointMoments] = {}
    for key, (cc, co) in acc.items():
        n = counts[key]
        g = next(x for x in groups if x.id == key[0])
        cc = cc / n
        out[key] = JointMoments((cc + cc.T) / 2, co / n, _reader_input(graph, g.consumers[key[1]].layer, g))
    return out


def moments_of(joint: dict[tuple[int, int], JointMoments]) -> dict[tuple[int, int], ReaderMoments]:
    """The plain reader moments of an unpruned joint pass (``current`` None: both sides the original)."""
    out = {}
    for key, jm in joint.items():
        n = jm.co.shape[1]
        mean = jm.cc[n, :n].copy()
        cov = jm.cc[:n, :n] - np.outer(mean, mean)
        out[key] = ReaderMoments(mean, (cov + cov.T) / 2, jm.tensor)
    return out


def _restandardise_pair(xo: np.ndarray, xc: np.ndarray, store: WeightStore,
                        layer: str) -> tuple[np.ndarray, np.ndarray]:
    """The original batch re-standardised to the BN's moving statistics, the pruned one by the same map."""
    mm, mv = store.get(layer, "moving_mean"), store.get(layer, "moving_variance")
    if mm is None or mv is None:
        return xo, xc
    flat = xo.reshape(-1, xo.shape[-1]).astype(np.float64)
    mu, sd = flat.mean(0), flat.std(0)
    scale = np.sqrt(np.maximum(mv, 0.0)) / np.where(sd > 1e-12, sd, 1.0)
    # the *original* moving mean: a refit may have shifted the pruned model's (it absorbs constants)
    return ((xo - mu) * scale + mm).astype(np.float32), ((xc - mu) * scale + mm).astype(np.float32)


def _accumulate_joint(xo: np.ndarray, xc: np.ndarray, readers: list[tuple[int, int, UnitGroup]], acc: dict,
                      counts: dict) -> None:
    f = xo.shape[-1]
    fo = xo.reshape(-1, f)
    fc = xc.reshape(-1, f)
    done: dict[bytes, tuple[np.ndarray, np.ndarray, int]] = {}  # readers of one tensor share their moments
    for gid, i, g in readers:
        idx = g.consumers[i].index
        if idx.max() >= f:
            continue
        key = idx.tobytes() + bytes(str(idx.shape), "ascii")
        if key not in done:
            if idx.shape[1] == 1 and np.array_equal(idx[:, 0], np.arange(f)):
                a, c = fo.astype(np.float64), fc.astype(np.float64)  # the whole tensor, in order
            else:
                a = np.moveaxis(fo[:, idx], 2, 1).reshape(-1, idx.shape[0]).astype(np.float64)
                c = np.moveaxis(fc[:, idx], 2, 1).reshape(-1, idx.shape[0]).astype(np.float64)
            n = idx.shape[0]
            s_cc = np.empty((n + 1, n + 1))
            s_cc[:n, :n] = c.T @ c
            s_cc[:n, n] = s_cc[n, :n] = c.sum(0)
            s_cc[n, n] = len(c)
            s_co = np.vstack([c.T @ a, a.sum(0)[None, :]])
            done[key] = (s_cc, s_co, len(c))
        s_cc, s_co, m = done[key]
        if (gid, i) in acc:
            acc[(gid, i)][0] += s_cc
            acc[(gid, i)][1] += s_co
            counts[(gid, i)] += m
        else:
            acc[(gid, i)] = [s_cc.copy(), s_co.copy()]
            counts[(gid, i)] = m


@dataclass
class ReaderTarget:
    """What one reader computed in the original model: its rows of the group's units, its constant."""

    rows: np.ndarray  # (n, F): original rows, flattened over positions, taps and outputs; pruned outputs zeroed
    offset: np.ndarray  # (fan_out,): the reader's current constant minus the original one (in bias units)
    live: np.ndarray  # (fan_out,) bool: outputs of the reader still alive (a pruned one keeps its zero bias)


def reader_targets(view: UnitView, original: WeightStore) -> list[ReaderTarget | None]:
    """Per consumer slot of the view's group: the reader's original rows and its constant's drift."""
    out: list[ReaderTarget | None] = []
    n = view.group.size
    for slot, (layer, v) in zip(view.group.consumers, view.v_rows):
        arr = original.get(slot.layer, slot.var)
        if arr is None:
            out.append(None)
            continue
        rows = np.moveaxis(arr, slot.axis, 0)[slot.index].reshape(v.shape).astype(np.float64)
        live = np.any(v != 0, axis=(0, 1))
        rows = (rows * live).reshape(n, -1)
        offset = np.zeros(v.shape[-1])
        target = reader_bias_target(view.graph, layer)
        if target is not None and original.get(*target) is not None:
            d = view.store[target].astype(np.float64) - original[target].astype(np.float64)
            offset = d if target[1] == "bias" else -d
        out.append(ReaderTarget(rows, offset, live))
    return out


def plan_refit(view: UnitView, joint: dict[tuple[int, int], JointMoments], targets: list[ReaderTarget | None],
               k: int, ridge: float = 0.3, drop: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray] | None]] | None:
    """Choose ``k`` units (or take ``drop``) and refit every reader to the ORIGINAL model's output.

    Per reader, with ``c = [x_current; 1]`` (the pruned model's kept units and a constant) and the
    original rows ``W_o`` acting on the original units ``x_o``: the new rows are the ridge
    least-squares fit ``B = (E[c c^T] + lam I)^-1 (E[c x_o^T] W_o + lam W_c)`` of the original
    output from the current inputs, shrunk towards the current rows ``W_c`` (so an exact case stays
    exact and a unit with no information keeps its weights; measured better than shrinking towards the
    plain reconstruction of :func:`plan_removal`).  This corrects the drift that earlier
    removals upstream left in ``x_current`` as well as the removed units.  Units go greedily by
    ``||B_j||^2 / [M^-1]_jj`` summed over readers (OBS on the refit).  Returns None when some reader
    has no moments or target (the caller falls back to :func:`plan_removal`).
    """
    g = view.group
    n = g.size
    alive = view.alive.copy()
    mats, vs, rhs, const_ok, wcs, shapes, outw = [], [], [], [], [], [], []
    for i, (layer, v) in enumerate(view.v_rows):
        jm, tgt = joint.get((g.id, i)), targets[i]
        if jm is None or tgt is None:
            return None
        ok = reader_bias_target(view.graph, layer) is not None
        fan_out = v.shape[-1]
        wc = np.zeros((n + 1, v.reshape(n, -1).shape[1]))
        wc[:n] = v.reshape(n, -1)
        if ok:  # the current constant relative to the original, spread on the first position/tap
            wc[n, :fan_out] = tgt.offset
        m = jm.cc.copy()
        diag = np.diag(m)[:n][alive]
        lam = ridge * (float(diag.mean()) if diag.size else 1.0) + 1e-12
        m[:n, :n] += lam * np.eye(n)
        r = jm.co @ tgt.rows + lam * np.vstack([wc[:n], np.zeros((1, wc.shape[1]))])
        if not ok:
            m[n, :] = m[:, n] = 0.0
            m[n, n] = 1.0
            r[n] = 0.0
        mats.append(m)
        rhs.append(r)
        const_ok.append(ok)
        wcs.append(wc)
        shapes.append(v.shape)
        ow = _output_weights(view.graph, view.store, layer)
        outw.append(np.ones(fan_out) if ow is None else ow)
    active = np.concatenate([alive, [True]])

    def solve(i: int) -> np.ndarray:
        idx = np.flatnonzero(active)
        if not const_ok[i]:
            idx = idx[idx < n]
        b = np.zeros_like(rhs[i])
        b[idx] = np.linalg.solve(mats[i][np.ix_(idx, idx)], rhs[i][idx])
        return b

    chosen: list[int] = []
    costs: list[float] = []
    if drop is None:
        kk = min(k, int(alive.sum()) - 1)
        invs = [_inverse(m, active, const_ok[i]) for i, m in enumerate(mats)]
        for i in range(len(mats)):  # the refit with every current unit: the greedy's starting rows (weighted)
            b = solve(i)
            sw = np.sqrt(outw[i])
            vs.append((b.reshape(n + 1, -1, len(sw)) * sw).reshape(n + 1, -1))
        _greedy(invs, vs, active, kk, chosen, costs)
        drop_arr = np.asarray(chosen, np.int64)
    else:
        drop_arr = np.asarray(drop, np.int64)
        costs = [0.0] * len(drop_arr)
        active[drop_arr] = False
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i in range(len(mats)):
        b = solve(i)
        delta = b[:n] - wcs[i][:n]
        delta[~active[:n]] = 0.0  # removed rows are zeroed by the edit, dead ones stay zero
        fan_out = shapes[i][-1]
        bias = np.zeros(fan_out)
        if const_ok[i]:
            live = targets[i].live  # type: ignore[union-attr]
            bias = np.where(live, b[n].reshape(-1, fan_out).sum(0) - wcs[i][n, :fan_out], 0.0)
        if not (np.all(np.isfinite(delta)) and np.all(np.isfinite(bias))):
            raise EditError(f"{g.name}: refit is not finite")
        slot = g.consumers[i]
        arr = np.moveaxis(view.store[(slot.layer, slot.var)], slot.axis, 0)
        out.append((delta.reshape(arr[slot.index].shape).astype(np.float32), bias.astype(np.float32)))
    return drop_arr, np.asarray(costs, np.float32), out


def refit_energy(view: UnitView, joint: dict[tuple[int, int], JointMoments]) -> float:
    """What the group's readers output from it: ``sum_readers sum_outputs w_o Var(y_o)`` under the current rows.

    The scale against which :func:`plan_refit`'s costs compare across groups (``w_o`` the squared BN
    scale after the reader, as in the costs; positions and taps pooled).
    """
    g = view.group
    n = g.size
    total = 0.0
    for i, (layer, v) in enumerate(view.v_rows):
        jm = joint.get((g.id, i))
        if jm is None:
            continue
        mean = jm.cc[n, :n]
        cov = jm.cc[:n, :n] - np.outer(mean, mean)
        w = v.reshape(n, -1, v.shape[-1]).astype(np.float64)  # (n, taps, fan_out)
        var = np.einsum("ito,ij,jto->o", w, cov, w)
        ow = _output_weights(view.graph, view.store, layer)
        total += float(np.sum(np.maximum(var, 0.0) * (1.0 if ow is None else ow)))
    return total
