"""Vectorised importance scores: pairwise saliency, merge errors, interval impact.

Why: the reference loops in Python over units and pairs.  Here every score is a
matrix or batch operation: saliency of all ordered pairs comes from one Gram
matrix, and the output impact of a whole pool of candidate merges is one batched
interval propagation.  Scores are "lower is better" throughout.
"""

from __future__ import annotations

import numpy as np

from .activations import ActivationRule
from .threads import blas_for


def pairwise_distances(u: np.ndarray) -> np.ndarray:
    """``D[i, j] = ||u[:, i] - u[:, j]||_2`` for column vectors, via one Gram matrix (float32, in place).

    ``u.T @ u`` of a contiguous ``u`` is one symmetric BLAS product (syrk), so ``D`` is exactly symmetric.
    """
    u = np.ascontiguousarray(u, np.float32)
    sq = np.einsum("ij,ij->j", u, u)
    with blas_for(float(u.shape[0]) * u.shape[1] ** 2):
        d2 = u.T @ u
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += sq[None, :]
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def bias_term(b: np.ndarray) -> np.ndarray:
    """``|b_i - b_j| / |b_i + b_j|`` (0 where both are equal, inf where the sum vanishes), float32."""
    b = np.asarray(b, np.float32).ravel()
    num = np.subtract.outer(b, b)
    np.abs(num, out=num)
    den = np.add.outer(b, b)
    np.abs(den, out=den)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=num, where=num != 0)  # where num == 0 it stays 0
    return num


def saliency_matrix(u: np.ndarray, b: np.ndarray | None, v_norm: np.ndarray, bias_aware: bool = True) -> np.ndarray:
    """``S[i, j]``: saliency of merging unit j (removed) into unit i (kept).

    ``(||u_i - u_j|| [+ |b_i - b_j| / |b_i + b_j|]) * ||v_j||`` -- the outgoing
    norm is the removed unit's, which is the term the merge actually drops.

    Returned as the transpose of a C-contiguous array (Fortran order): the
    candidates of one removed unit ``j`` -- a column -- are contiguous, which is
    how :func:`disjoint_pairs` reads them.
    """
    s = pairwise_distances(u)  # symmetric, so s is its own transpose
    if bias_aware and b is not None:
        s += bias_term(b)  # symmetric too
    s *= np.asarray(v_norm, np.float32)[:, None]  # row j of the transpose scaled by ||v_j||
    return s.T


def scaled_match(u: np.ndarray, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best positive scale ``s[a, b]`` with ``u_b ~ s * u_a`` and the residual norm.

    ``u`` holds one column per unit (bias as last row); ``weight`` scales each row
    (the RMS size of that input over the box), so the residual approximates the
    RMS pre-activation error of replacing unit b by ``s`` times unit a.
    """
    w = np.asarray(u, np.float32) if weight is None else np.asarray(u, np.float32) * weight[:, None]
    w = np.ascontiguousarray(w)
    with blas_for(float(w.shape[0]) * w.shape[1] ** 2):
        g = w.T @ w
    sq = np.diag(g).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        s = g / sq[:, None]  # s[a, b] = <w_a, w_b> / ||w_a||^2
        res2 = sq[None, :] - g * s
    s = np.where(np.isfinite(s) & (s > 0), s, np.nan)
    res = np.sqrt(np.maximum(np.nan_to_num(res2, nan=np.inf), 0.0))
    return s.astype(np.float32), np.where(np.isnan(s), np.inf, res).astype(np.float32)


def disjoint_pairs(cost: np.ndarray, m: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``m`` disjoint (keep, drop) pairs of least cost, greedily.

    ``cost[i, j]`` is the cost of keeping i and dropping j; non-finite entries
    and units in ``exclude`` are never used.  Each unit appears at most once.
    Only each drop unit's ``t`` cheapest partners are sorted (``t`` grows when
    they run out), so the cost is ``O(n t log)``, not a sort of all ``n^2``.

    Works on the transpose (one row per drop unit, contiguous: a Fortran-order
    ``cost`` as :func:`saliency_matrix` returns costs one plain copy), in
    float32 when ``cost`` is float32 -- comparisons of the same values, so the
    same pairs as in float64.
    """
    n = cost.shape[0]
    dtype = np.result_type(np.asarray(cost).dtype, np.float32)
    ct = np.array(np.asarray(cost).T, dtype, order="C", copy=True)  # ct[j, i] = cost[i, j]
    np.fill_diagonal(ct, np.inf)
    if exclude is not None and len(exclude):
        ct[:, exclude] = np.inf
        ct[exclude, :] = np.inf
    ct[np.isnan(ct)] = np.inf  # never used either way; inf keeps the selection below simple
    t = min(n, 8)
    while True:
        rows, vals2 = _smallest(ct, t)
        # ravel as (rank, drop unit): equal costs go by rank, then by drop unit
        vals = vals2.T.ravel()
        keeps = rows.T.ravel()
        order = np.argsort(vals, kind="stable")
        order = order[np.isfinite(vals[order])]
        keep_idx = keeps[order]
        drop_idx = order % n
        used = np.zeros(n, bool)
        keep_l: list[int] = []
        drop_l: list[int] = []
        for i, j in zip(keep_idx.tolist(), drop_idx.tolist()):
            if used[i] or used[j]:
                continue
            used[i] = used[j] = True
            keep_l.append(i)
            drop_l.append(j)
            if len(keep_l) == m:
                break
        if len(keep_l) >= m or t == n or m <= 0:
            return np.asarray(keep_l[:max(m, 0)], np.int64), np.asarray(drop_l[:max(m, 0)], np.int64)
        t = min(n, t * 4)


def _smallest(ct: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``t`` smallest entries (column indices, values), ascending; equal values by column.

    For small ``t`` this is ``t`` vectorised ``argmin`` passes over the rows
    (each found entry is set to inf, and restored after), several times faster
    than ``argpartition``; larger ``t`` sorts each row.  ``ct`` is unchanged on return.
    """
    n = ct.shape[0]
    if t >= min(n, 24):
        idx = np.argsort(ct, axis=1, kind="stable")[:, :t]
        return idx, np.take_along_axis(ct, idx, 1)
    r = np.arange(n)
    idx = np.empty((n, t), np.intp)
    val = np.empty((n, t), ct.dtype)
    for k in range(t):
        a = ct.argmin(axis=1)
        idx[:, k] = a
        val[:, k] = ct[r, a]
        ct[r, a] = np.inf
    # restore, last pass first: a row with fewer than t finite entries picks an already-found entry again
    # (its value now inf, dropped later as non-finite); the first pass that found it writes its value last
    for k in range(t - 1, -1, -1):
        ct[r, idx[:, k]] = val[:, k]
    return idx, val


def interval_entropy(lo: np.ndarray, hi: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Interval entropy of each row of output intervals (after Dai et al. 2016).

    For each interval, ``p`` is the share of intervals in the row similar to it
    (similarity ``1 - 0.5(|dlo| + |dhi|) / width(union)`` at least ``threshold``);
    the entropy is ``-sum p log p``.  Low when all outputs move alike.
    """
    dl = np.abs(lo[:, :, None] - lo[:, None, :])
    dh = np.abs(hi[:, :, None] - hi[:, None, :])
    union = np.maximum(hi[:, :, None], hi[:, None, :]) - np.minimum(lo[:, :, None], lo[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(union > 0, 1.0 - 0.5 * (dl + dh) / union, 1.0)
    p = (sim >= threshold).mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def impact_score(lo: np.ndarray, hi: np.ndarray, alpha: float = 0.75, beta: float = 0.25) -> np.ndarray:
    """PAODING's score of output-change intervals: ``alpha sig(L1) + beta sig(ENT)``."""
    width = (hi - lo).sum(-1)
    return alpha * _sigmoid(width) + beta * _sigmoid(interval_entropy(lo, hi))


def difference_interval(xa: tuple[np.ndarray, np.ndarray], xb: tuple[np.ndarray, np.ndarray],
                        r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``x_b - r x_a - c`` from the two units' own intervals."""
    ra_lo = np.where(r >= 0, r * xa[0], r * xa[1])
    ra_hi = np.where(r >= 0, r * xa[1], r * xa[0])
    return xb[0] - ra_hi - c, xb[1] - ra_lo - c


def tight_difference(rule: ActivationRule, za: tuple[np.ndarray, np.ndarray], s: np.ndarray,
                     dz: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``f(z_b) - f(s z_a)`` knowing ``z_b - s z_a`` lies in ``dz``.

    Both pre-activations are linear in the same input, so their difference has a
    tight interval of its own; the activation's slope range then bounds the
    change.  This is what makes near-duplicate units score near zero, which the
    difference of two independent intervals never does.
    """
    lo, hi = s * za[0], s * za[1]
    return rule.delta(np.minimum(lo, hi), np.maximum(lo, hi), dz[0], dz[1])
