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
                      lr: float = 0.05, ce: float = 0.0, project: bool = True) -> np.ndarray | None:
    """Inputs in the box whose statistics at every BatchNorm match its moving mean and variance.

    ZeroQ (Cai et al., CVPR 2020): start from uniform points of the box and descend on
    ``sum_BN mean_c ((mu_c - m_c)^2 + (sd_c - s_c)^2) / s_c^2`` -- the batch's per-channel moments at
    each BN input against the BN's running statistics -- with Adam on the inputs, projected back
    into the box after each step (``project=False``: a sigmoid parametrisation instead, measured
    slower to converge).  ``ce`` adds DeepInversion's pull towards random classes (measured: no gain).
    Returns None when the model has no BN, cannot be differentiated here,
    or would cost more than ``budget`` FLOPs (about ``3 * FLOPs * samples * steps``).
    """
    bns = [n for n in graph.nodes if isinstance(n.rule, BatchNormRule)]
    model = graph.model
    if not bns or len(getattr(model, "inputs", [])) != 1:
        return None
    try:
        import keras
        import tensorflow as tf

        from .evaluate import flops

        per = max(float(flops(model)), 1.0)
        want = steps
        steps = int(min(want, budget / (3.0 * per * samples)))
        if steps < min(want, 20):  # too costly: fewer samples first (never more than asked)
            samples = int(min(samples, max(16, budget / (3.0 * per * min(want, 20)))))
            steps = int(min(want, budget / (3.0 * per * samples)))
        if steps < min(want, 10):
            return None
        feat = keras.Model(model.inputs, [n.layer.input for n in bns] + [model.outputs[0]])
        n_out = int(model.outputs[0].shape[-1])
        labels = tf.constant(np.random.default_rng(seed + 1).integers(0, max(n_out, 1), samples))
        targets = []
        for n in bns:
            mm, mv = store.get(n.name, "moving_mean"), store.get(n.name, "moving_variance")
            if mm is None or mv is None:
                return None
            targets.append((tf.constant(mm), tf.constant(np.sqrt(np.maximum(mv, 0.0)))))
        lo, hi = (tf.constant(np.asarray(a, np.float32)) for a in input_range)
        shape = (samples, *[int(d) for d in model.inputs[0].shape[1:]])
        rng = np.random.default_rng(seed)
        width = hi - lo
        if project:  # projected Adam on the inputs themselves, from uniform points of the box
            w = tf.Variable((lo + width * rng.random(shape, dtype=np.float32)).numpy())
        else:
            w = tf.Variable(rng.standard_normal(shape).astype(np.float32))

        def inputs() -> Any:
            return w if project else lo + width * tf.sigmoid(w)

        opt = keras.optimizers.Adam(lr)

        @tf.function
        def step() -> Any:
            with tf.GradientTape() as tape:
                outs = feat(inputs(), training=False)
                loss = tf.constant(0.0)
                if ce:  # DeepInversion: each sample also drawn towards a random class
                    loss += ce * tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                        labels, outs[-1], from_logits=not _squashed(model)))
                for a, (m, sd) in zip(outs[:-1], targets):
                    axes = tuple(range(len(a.shape) - 1))
                    mu = tf.reduce_mean(a, axes)
                    s = tf.sqrt(tf.reduce_mean(tf.square(a - mu), axes) + 1e-8)  # no NaN gradient at zero spread
                    scale = sd + 1e-3
                    loss += tf.reduce_mean(((mu - m) / scale) ** 2 + ((s - sd) / scale) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
            if project:
                w.assign(tf.clip_by_value(w, lo, hi))
            return loss

        for _ in range(steps):
            step()
        x = np.asarray(inputs(), np.float32)
        return x if np.all(np.isfinite(x)) else None
    except Exception:  # a model this cannot differentiate (custom layers, several inputs...): box samples
        return None


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
        for _ in range(max(kk, 0)):
            total = np.zeros(n + 1)
            for i in range(len(mats)):
                pdiag = np.diag(invs[i])
                with np.errstate(divide="ignore", invalid="ignore"):
                    total += np.where(pdiag > 0, (vs[i] ** 2).sum(1) / pdiag, np.inf)
            total[n] = np.inf
            total[~active] = np.inf
            if not reconstruct:
                total[:n] = np.where(active[:n], _plain_costs(mats, vs, n, const_ok), np.inf)
            j = int(np.argmin(total))
            if not np.isfinite(total[j]):
                break
            for i in range(len(mats)):
                p = invs[i]
                a = -p[:, j] / p[j, j]  # regression of x_j on the rest (zero outside the active set)
                a[j] = 0.0
                if reconstruct:
                    vs[i] += np.outer(a, vs[i][j])
                vs[i][j] = 0.0
                invs[i] = p - np.outer(p[:, j], p[j, :]) / p[j, j]
                invs[i][j, :] = invs[i][:, j] = 0.0
            active[j] = False
            chosen.append(j)
            costs.append(float(total[j]))
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
