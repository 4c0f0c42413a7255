"""What a strategy sees of one unit group: weights, transfers, bounds, impact.

Why: strategies should be small (a criterion and a selection rule).  This module
does the shared work once per group and iteration -- gathering each unit's
incoming vector ``u``, outgoing rows ``v``, the per-unit transfer between them,
the value bounds of the units -- and offers :meth:`UnitView.impact`, which
scores a whole batch of candidate merges by propagating their error intervals
to the model outputs in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import EditError
from .activations import RULES, ActivationRule
from .bounds import Bounds, Propagator, activation_of
from .graph import ModelGraph, UnitGroup
from .scores import difference_interval, impact_score, tight_difference
from .threads import blas_for
from .weights import WeightStore

IMPACT_LAYER = "__impact__"


def impact_key(group: UnitGroup, consumer: str) -> tuple[str, str]:
    """Store key of a group's accumulated output-change interval at a consumer."""
    return (IMPACT_LAYER, f"{group.id}/{consumer}")


@dataclass
class Transfer:
    """``x = q * f(p * z + p0) + q0`` per unit, ``z`` the producer's linear output."""

    rule: ActivationRule
    p: np.ndarray
    p0: np.ndarray
    q: np.ndarray
    q0: np.ndarray

    @property
    def rescalable(self) -> bool:
        return self.rule.homogeneous


@dataclass
class Candidates:
    """A batch of candidate edits in one group (one row per removed unit)."""

    keep: np.ndarray  # (P,) kept partner, -1 for plain removal
    drop: np.ndarray  # (P,)
    scale: np.ndarray  # (P,) factor folding v_drop into v_keep
    shift: np.ndarray  # (P,) constant folded into the consumers' bias
    cost: np.ndarray = field(default_factory=lambda: np.zeros(0))  # selection cost (lower first)
    # Compensation (``compensated`` strategy): per consumer slot of the group, ``(P, n + 1)``
    # coefficients expressing each removed unit over the group's units plus a constant (last column);
    # the readers' rows of those units get ``coef * v_drop`` added, their bias ``const * v_drop``.
    mix: list[np.ndarray] | None = field(default=None, kw_only=True)
    # Error-correcting refit (``compensated``): per consumer slot, ``(rows, bias)`` -- additive changes of
    # the reader's rows of the group's units (shape of ``v[slot.index]``) and of its bias (or of the
    # moving mean of the BatchNorm after a bias-free reader, with the sign flipped).  Applied instead
    # of that slot's ``mix``; solved jointly for the whole edit, so :meth:`take` drops it.
    refit: list[tuple[np.ndarray, np.ndarray] | None] | None = field(default=None, kw_only=True)

    def __len__(self) -> int:
        return len(self.drop)

    def take(self, idx: np.ndarray) -> Candidates:
        return Candidates(self.keep[idx], self.drop[idx], self.scale[idx], self.shift[idx],
                          self.cost[idx] if len(self.cost) else self.cost,
                          mix=None if self.mix is None else [m[idx] for m in self.mix])


class UnitView:
    """Lazy, per-iteration view of one group for the strategies."""

    def __init__(self, graph: ModelGraph, store: WeightStore, group: UnitGroup,
                 propagator: Propagator, bounds: Callable[[], Bounds],
                 input_range: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.graph, self.store, self.group = graph, store, group
        self.input_range = input_range  # the legal input box (for strategies that sample it)
        self.propagator = propagator
        self._bounds = bounds  # lazy: filter removal never needs bounds

    @cached_property
    def bounds(self) -> Bounds:
        return self._bounds()

    # ------------------------------------------------------------- basics
    @property
    def alive(self) -> np.ndarray:
        return self.store.alive[self.group.id]

    @property
    def dead(self) -> np.ndarray:
        return np.flatnonzero(~self.alive)

    @cached_property
    def producer(self) -> str:
        return self.group.producers[0].layer

    @cached_property
    def mergeable(self) -> bool:
        return self.group.merge_chain is not None and self.transfer is not None

    @cached_property
    def u(self) -> np.ndarray:
        """Incoming weights, one column per unit (fan-in, n) of the first producer."""
        node = self.graph.node(self.producer)
        k = self.store[(self.producer, node.rule.kernel_var or "kernel")]
        return k.reshape(-1, k.shape[-1])

    @cached_property
    def b(self) -> np.ndarray:
        bias = self.store.get(self.producer, "bias")
        return np.zeros(self.group.size, np.float32) if bias is None else bias

    @cached_property
    def v_rows(self) -> list[tuple[str, np.ndarray]]:
        """Per consumer: outgoing rows ``(n, rep, fan_out)`` of every unit."""
        out = []
        for slot in self.group.consumers:
            k = np.moveaxis(self.store[(slot.layer, slot.var)], slot.axis, 0)
            # (n, rep * taps, fan_out): a Dense row per flattened position, a conv slice per tap
            out.append((slot.layer, k[slot.index].reshape(self.group.size, -1, k.shape[-1])))
        return out

    @cached_property
    def v_norm(self) -> np.ndarray:
        sq = sum((v.astype(np.float64) ** 2).sum((1, 2)) for _, v in self.v_rows)
        return np.sqrt(sq).astype(np.float32)

    def magnitude(self) -> np.ndarray:
        """L1 norm of each unit's incoming weights over all producers."""
        total = np.zeros(self.group.size, np.float64)
        for slot in self.group.producers:
            if slot.var.endswith("bias"):
                continue
            arr = self.store[(slot.layer, slot.var)]
            # |w| summed over everything but the unit axis, once, then every position the unit owns
            # (an LSTM unit: one column per gate)
            per_position = np.abs(np.moveaxis(arr, slot.axis, -1).reshape(-1, arr.shape[slot.axis])).sum(
                0, dtype=np.float64)
            total += per_position[slot.index].sum(1)
        return total

    def scaled_l1(self) -> np.ndarray:
        """L1 norm divided by the kernel's element count (the method's filter scale)."""
        counts = sum(np.moveaxis(self.store[(s.layer, s.var)], s.axis, 0)[0].size * s.index.shape[1]
                     for s in self.group.producers if not s.var.endswith("bias"))
        return self.magnitude() / max(counts, 1)

    # ------------------------------------------------------------- transfer
    @cached_property
    def transfer(self) -> Transfer | None:
        """The per-unit map from the producer's linear output to what readers see."""
        if self.group.merge_chain is None:
            return None
        n = self.group.size
        one, zero = np.ones(n, np.float32), np.zeros(n, np.float32)
        p, p0, q, q0 = one, zero, one.copy(), zero.copy()
        rule: ActivationRule | None = None
        nodes = [self.graph.node(self.producer)] + [self.graph.node(x) for x in self.group.merge_chain]
        for i, node in enumerate(nodes):
            aff = node.rule.affine(self.store, node) if i > 0 and node.rule.channel_affine else None
            if aff is not None:
                s, t = aff
                if rule is None:
                    p, p0 = p * s, p0 * s + t
                else:
                    q, q0 = q * s, q0 * s + t
                continue
            if i > 0 and node.rule.transparent:
                continue
            name, r = activation_of(node)
            if r is None:
                return None
            if r.name == "linear":
                continue
            if rule is not None:
                return None  # two non-linearities in a row: no per-unit closed form
            rule = r
        return Transfer(rule or RULES["linear"], p, p0, q, q0)

    @property
    def merge_transfer(self) -> Transfer:
        """The transfer of a mergeable group (merges are only proposed where there is one)."""
        t = self.transfer
        if t is None:
            raise EditError(f"{self.group.name}: units cannot be merged ({self.group.merge_note or 'no per-unit map'})")
        return t

    @cached_property
    def read_tensor(self) -> int:
        """The tensor the consumers read (after the merge chain)."""
        last = self.group.merge_chain[-1] if self.group.merge_chain else self.producer
        return self.graph.node(last).outputs[0]

    @cached_property
    def input_box(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Hull of the producer's input bounds over all non-channel axes."""
        iv = self.bounds.of(self.graph.node(self.producer).inputs[0])
        if iv is None:
            return None
        f = iv[0].shape[-1]
        lo, hi = iv[0].reshape(-1, f).min(0), iv[1].reshape(-1, f).max(0)
        taps = self.u.shape[0] // f  # a convolution kernel sees the box once per tap
        return np.tile(lo, taps), np.tile(hi, taps)

    @cached_property
    def x_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        iv = self.bounds.of(self.read_tensor)
        if iv is None:
            return None
        n = self.group.size
        if self.read_tensor not in self.group.tensors or iv[0].shape[-1] % n:
            return None  # units read inside their own layer (attention heads, key/value dims): no tensor holds them
        return iv[0].reshape(-1, n).min(0), iv[1].reshape(-1, n).max(0)

    @cached_property
    def effective_u(self) -> tuple[np.ndarray, np.ndarray]:
        """``(p * u, p * b + p0)``: the pre-activation each unit's non-linearity sees."""
        t = self.merge_transfer
        if not np.all(t.p == 1):
            return self.u * t.p[None, :], self.b * t.p + t.p0
        return self.u, self.b * t.p + t.p0  # no scale (no BatchNorm before the activation): u * 1 is u, no copy

    def rms_input_weight(self) -> np.ndarray:
        """Per input feature, its RMS size over the box (uniform), for error norms."""
        box = self.input_box
        if box is None:
            return np.ones(self.u.shape[0], np.float32)
        lo, hi = box
        c, r = (lo + hi) / 2, (hi - lo) / 2
        return np.sqrt(c**2 + r**2 / 3.0).astype(np.float32)

    # ------------------------------------------------------------- errors
    def merge_error(self, cand: Candidates, tight: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """Interval of ``x_drop - scale * x_keep - shift`` per candidate."""
        xb = self.x_bounds
        if xb is None:
            return None
        keep = np.where(cand.keep >= 0, cand.keep, 0)
        xa = (np.where(cand.keep >= 0, xb[0][keep], 0.0), np.where(cand.keep >= 0, xb[1][keep], 0.0))
        lo, hi = difference_interval(xa, (xb[0][cand.drop], xb[1][cand.drop]), cand.scale, cand.shift)
        if tight and self.mergeable and self.input_box is not None and np.all(cand.keep >= 0):
            t = self.merge_transfer
            ue, be = self.effective_u
            a, bq = cand.keep, cand.drop
            s = cand.scale * t.q[a] / t.q[bq]  # pre-activation scale behind the reader-side scale
            du = ue[:, bq] - s[None, :] * ue[:, a]
            db = be[bq] - s * be[a]
            c_in, r_in = (self.input_box[0] + self.input_box[1]) / 2, (self.input_box[1] - self.input_box[0]) / 2
            # one BLAS thread: OpenBLAS splits a matrix-vector product over 9,216 entries (784 x 128 here)
            # across its threads, which then wait for each other when another process holds a core
            with blas_for(2.0 * ue.size):
                dc, dr = c_in @ du + db, r_in @ np.abs(du)
                zc, zr = c_in @ ue + be, r_in @ np.abs(ue)
            za = ((zc - zr)[a], (zc + zr)[a])
            tl, th = tight_difference(t.rule, za, s, (dc - dr, dc + dr))
            tl, th = tl * t.q[bq], th * t.q[bq]
            tl, th = np.minimum(tl, th), np.maximum(tl, th)
            # x_b - r x_a - c = q_b (f(z_b) - f(s z_a)) + (q0_b - r q0_a - c): the shift cancels it.
            off = t.q0[bq] - cand.scale * t.q0[a] - cand.shift
            lo, hi = np.maximum(lo, tl + off), np.minimum(hi, th + off)
            hi = np.maximum(hi, lo)
        return lo.astype(np.float32), hi.astype(np.float32)

    def injections(self, cand: Candidates,
                   err: tuple[np.ndarray, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per consumer: accumulated + candidate change of its pre-activation, batched."""
        # The readers lose v_b * x_b and gain v_b * (r x_a + c): their change is -v_b * err.
        with np.errstate(invalid="ignore", over="ignore"):  # infinite bounds of deep nets stay infinite
            ec, er = -(err[0] + err[1]) / 2, (err[1] - err[0]) / 2
        ec = np.nan_to_num(ec, nan=0.0)  # (-inf + inf) / 2: centre unknown, the radius is infinite
        out = {}
        for layer, v in self.v_rows:
            vb = v[cand.drop].sum(1)  # (P, fan_out): rows of every flattened position
            vabs = np.abs(v[cand.drop]).sum(1)
            with np.errstate(invalid="ignore", over="ignore"):
                c = ec[:, None] * vb
                r = np.where(vabs == 0, 0.0, er[:, None] * vabs)  # inf * 0: a zero row adds nothing
            acc = self.store.get(*impact_key(self.group, layer))
            if acc is not None:
                c, r = c + (acc[0] + acc[1]) / 2, r + (acc[1] - acc[0]) / 2
            shape = self.graph.shapes[self.graph.node(layer).outputs[0]]
            extra = (1,) * (len(shape) - 2)
            c = c.reshape(len(cand), *extra, c.shape[-1])
            r = r.reshape(len(cand), *extra, r.shape[-1])
            out[layer] = (c - r, c + r)
        return out

    def impact(self, cand: Candidates, tight: bool, alpha: float = 0.75, beta: float = 0.25,
               ) -> tuple[np.ndarray, np.ndarray, dict | None]:
        """(score, L1 width of output change, injections) for each candidate alone.

        Falls back to the consumer-side width when the change cannot be carried
        to the outputs (then the score is that width).
        """
        err = self.merge_error(cand, tight)
        if err is None:
            w = self.v_norm[cand.drop]
            return w, w, None
        inj = self.injections(cand, err)
        res = self.propagator.deltas(self.bounds, inj, len(cand))
        if res is None:
            w = sum((hi - lo).reshape(len(cand), -1).sum(1) for lo, hi in inj.values())
            return w, w, inj
        lo, hi = res
        with np.errstate(invalid="ignore", over="ignore"):
            width = np.nan_to_num((hi - lo).sum(1), nan=np.inf)
            score = np.nan_to_num(impact_score(lo, hi, alpha, beta), nan=np.inf)
        return score, width, inj
