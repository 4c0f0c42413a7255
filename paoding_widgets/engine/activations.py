"""Interval rules for element-wise activations.

Why: both kinds of interval propagation need, for every activation, (1) its image
of an input interval and (2) the range of its slope over an interval, which
bounds how far a perturbation ``f(z + d) - f(z)`` can move (mean-value theorem).
Keeping the rules in one table makes a new activation one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Arr = np.ndarray


@dataclass(frozen=True)
class ActivationRule:
    """Image and slope range of an element-wise activation over intervals."""

    name: str
    f: Callable[[Arr], Arr]
    slope: Callable[[Arr, Arr], tuple[Arr, Arr]]  # (lo, hi) -> (min slope, max slope)
    minimum: tuple[float, float] | None = None  # (argmin, min) for non-monotone functions
    homogeneous: bool = False  # f(s z) = s f(z) for s > 0: merges may rescale

    def image(self, lo: Arr, hi: Arr) -> tuple[Arr, Arr]:
        flo, fhi = self.f(lo), self.f(hi)
        if self.minimum is None:
            return flo, fhi
        xm, fm = self.minimum
        low = np.minimum(flo, fhi)
        low = np.where((lo < xm) & (hi > xm), np.minimum(low, fm), low)
        return low.astype(lo.dtype), np.maximum(flo, fhi)

    def delta(self, lo: Arr, hi: Arr, dlo: Arr, dhi: Arr) -> tuple[Arr, Arr]:
        """Bounds of ``f(z + d) - f(z)`` for ``z in [lo, hi]``, ``d in [dlo, dhi]``."""
        gmin, gmax = self.slope(lo + np.minimum(dlo, 0), hi + np.maximum(dhi, 0))
        corners = np.stack([dlo * gmin, dlo * gmax, dhi * gmin, dhi * gmax])
        return corners.min(0), corners.max(0)


def _sigmoid(x: Arr) -> Arr:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bell_slope(d: Callable[[Arr], Arr]) -> Callable[[Arr, Arr], tuple[Arr, Arr]]:
    """Slope range of a function whose slope peaks at 0 (sigmoid, tanh)."""
    def slope(lo: Arr, hi: Arr) -> tuple[Arr, Arr]:
        return np.minimum(d(lo), d(hi)), d(np.clip(0.0, lo, hi))
    return slope


def _monotone_slope(d: Callable[[Arr], Arr]) -> Callable[[Arr, Arr], tuple[Arr, Arr]]:
    """Slope range of a convex function (its slope is non-decreasing)."""
    return lambda lo, hi: (d(lo), d(hi))


def relu_rule(negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0,
              name: str = "relu") -> ActivationRule:
    """ReLU family: leaky slope below ``threshold``, 1 above, 0 above ``max_value``."""
    a, cap, thr = float(negative_slope), max_value, float(threshold)

    def f(x: Arr) -> Arr:
        y = np.where(x >= thr, x, a * (x - thr) if thr else a * x)
        return np.minimum(y, cap) if cap is not None else y

    def slope(lo: Arr, hi: Arr) -> tuple[Arr, Arr]:
        has_low = lo < thr
        has_mid = (hi > thr) & ((lo < cap) if cap is not None else True)
        has_cap = (hi > cap) if cap is not None else np.zeros_like(has_low)
        big = np.float32(np.inf)
        gmin = np.minimum(np.minimum(np.where(has_low, a, big), np.where(has_mid, 1.0, big)),
                          np.where(has_cap, 0.0, big))
        gmax = np.maximum(np.maximum(np.where(has_low, a, -big), np.where(has_mid, 1.0, -big)),
                          np.where(has_cap, 0.0, -big))
        # A point exactly at a kink (lo == hi == thr or cap: a removed unit's constant pre-activation) is in
        # no piece above; its slopes are both sides' (the subgradient), else deltas get inf * 0 = inf / nan.
        empty = gmin > gmax
        if np.any(empty):
            at_cap = (lo >= cap) if cap is not None else np.zeros_like(empty)
            gmin = np.where(empty, np.where(at_cap, 0.0, min(a, 1.0)), gmin).astype(gmin.dtype)
            gmax = np.where(empty, np.where(at_cap, 1.0, max(a, 1.0)), gmax).astype(gmax.dtype)
        return gmin, gmax

    return ActivationRule(name, f, slope, homogeneous=cap is None and thr == 0.0)


def _dsig(x: Arr) -> Arr:
    s = _sigmoid(x)
    return s * (1 - s)


def _dtanh(x: Arr) -> Arr:
    return 1 - np.tanh(x) ** 2


def _elu(x: Arr) -> Arr:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _silu(x: Arr) -> Arr:
    return x * _sigmoid(x)


def _gelu(x: Arr) -> Arr:
    return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def _hard_sigmoid(x: Arr) -> Arr:
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _const_slope(lo_s: float, hi_s: float) -> Callable[[Arr, Arr], tuple[Arr, Arr]]:
    return lambda lo, hi: (np.full_like(lo, lo_s), np.full_like(lo, hi_s))


RULES: dict[str, ActivationRule] = {
    "linear": ActivationRule("linear", lambda x: x, _const_slope(1.0, 1.0), homogeneous=True),
    "relu": relu_rule(),
    "relu6": relu_rule(max_value=6.0, name="relu6"),
    "leaky_relu": relu_rule(negative_slope=0.2, name="leaky_relu"),
    "elu": ActivationRule("elu", _elu, _monotone_slope(lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0))))),
    "sigmoid": ActivationRule("sigmoid", _sigmoid, _bell_slope(_dsig)),
    "hard_sigmoid": ActivationRule("hard_sigmoid", _hard_sigmoid, _const_slope(0.0, 1.0 / 6.0)),
    "tanh": ActivationRule("tanh", np.tanh, _bell_slope(_dtanh)),
    "softplus": ActivationRule("softplus", lambda x: np.logaddexp(0, x), _monotone_slope(_sigmoid)),
    "softsign": ActivationRule("softsign", lambda x: x / (1 + np.abs(x)),
                               _bell_slope(lambda x: 1 / (1 + np.abs(x)) ** 2)),
    "exponential": ActivationRule("exponential", np.exp, _monotone_slope(np.exp)),
    # Non-monotone: slope range is a safe constant envelope, minimum is known.
    "silu": ActivationRule("silu", _silu, _const_slope(-0.1, 1.1), minimum=(-1.2785, -0.2785)),
    "swish": ActivationRule("swish", _silu, _const_slope(-0.1, 1.1), minimum=(-1.2785, -0.2785)),
    "gelu": ActivationRule("gelu", _gelu, _const_slope(-0.13, 1.13), minimum=(-0.7518, -0.1700)),
}


# Keras activations that act on each unit alone: a unit of a layer using one can be removed
# without changing the others.  softmax / log_softmax normalise over the units and are not here.
PER_UNIT = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish",
    "sigmoid", "hard_sigmoid", "tanh", "softplus", "softsign", "exponential",
    "hard_silu", "hard_swish", "mish", "celu", "hard_tanh", "tanh_shrink", "soft_shrink",
    "hard_shrink", "squareplus", "sparse_plus", "log_sigmoid",
}


def activation_name(act: object) -> str:
    """The name of a Keras activation as found in a layer config (a string, a dict or a function)."""
    if act is None:
        return "linear"
    if isinstance(act, str):
        return act
    if isinstance(act, dict):
        inner = act.get("config", act)
        name = inner.get("name", act.get("class_name", "?")) if isinstance(inner, dict) else act.get("class_name")
        return str(name)
    return str(getattr(act, "__name__", act))


def rule_for(name: str) -> ActivationRule | None:
    """The interval rule of a Keras activation name, or None if unknown."""
    return RULES.get(name)


def softmax_image(lo: Arr, hi: Arr) -> tuple[Arr, Arr]:
    """Bounds of softmax over the last axis for logits in [lo, hi]."""
    elo, ehi = np.exp(lo - hi.max(-1, keepdims=True)), np.exp(hi - hi.max(-1, keepdims=True))
    s_hi, s_lo = ehi.sum(-1, keepdims=True), elo.sum(-1, keepdims=True)
    return elo / (elo + s_hi - ehi), ehi / (ehi + s_lo - elo)
