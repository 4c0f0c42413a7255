"""Interval bound propagation through the model graph (the "definition map").

Why: PAODING is data-free.  Instead of data it uses, for every hidden unit, an
interval that holds for *all* legal inputs (the input box), and it scores a
pruning step by how far it can move the outputs.  Two passes share one table
of layer rules:

* :meth:`Propagator.values` -- bounds of every tensor for inputs in the box;
* :meth:`Propagator.deltas` -- bounds of the *change* of the outputs caused by
  perturbations injected at some layers' pre-activations, for a batch of
  candidate edits at once (the batch axis is the candidates axis).

Both work on the :class:`~paoding_widgets.engine.weights.WeightStore` (the edited
weights), in float32 NumPy: convolutions, pooling and padding through
:mod:`~paoding_widgets.engine.kernels` (Keras is called only for a layer those
do not cover).  Value bounds are incremental: each layer's output is cached
with the serials of its inputs and the versions of its own weights
(``WeightStore.changed``), so after an edit only the layers downstream of the
edited arrays are recomputed; kernels are prepared (live channels, ``|k|``) once
per weight version.  ``Propagator(..., fast=False)`` is the plain reference
path (Keras ops, nothing cached) that tests compare against.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError
from .activations import ActivationRule, softmax_image
from .graph import LayerNode, ModelGraph
from .rules import NoIntervalRule
from .threads import blas_limit
from .weights import WeightStore

Interval = tuple[np.ndarray, np.ndarray]
T = TypeVar("T")

_SQUASH = {"softmax", "sigmoid", "log_softmax"}


@dataclass
class Bounds:
    """Value intervals of tensors (by id) and of pre-activations (by layer)."""

    out: dict[int, Interval] = field(default_factory=dict)
    pre: dict[str, Interval] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # layer -> why bounds stop there

    def of(self, tid: int) -> Interval | None:
        return self.out.get(tid)


def parse_input_range(value: Any, input_shape: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalise an input range: (lo, hi) scalars or arrays broadcastable to one input; lo <= hi checked."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ConfigError(f"input_range must be a pair (low, high), got {value!r}")
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ConfigError(f"input_range must be a pair (low, high), got {_short_repr(value)}") from None
    try:
        lo_a, hi_a = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"input_range bounds must be numbers or numeric arrays, got {_short_repr(value)}") from None
    if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a))):
        raise ConfigError(f"input_range must be finite, got {_short_repr(value)}")
    if input_shape is not None:
        shape = tuple(1 if d is None else int(d) for d in input_shape)
        for name, a in (("low", lo_a), ("high", hi_a)):
            try:
                np.broadcast_shapes(a.shape, shape)
            except ValueError:
                raise ConfigError(f"input_range {name} has shape {a.shape}, which does not broadcast to the "
                                  f"model's input shape {tuple(input_shape)}") from None
            if a.ndim > len(shape):
                raise ConfigError(f"input_range {name} has shape {a.shape}: more axes than the model's input "
                                  f"shape {tuple(input_shape)}")
    try:
        bad = np.any(lo_a > hi_a)
    except ValueError:
        raise ConfigError(f"input_range low {lo_a.shape} and high {hi_a.shape} do not broadcast together") from None
    if bad:
        raise ConfigError(f"input_range low must not exceed high, got {_short_repr(value)}")
    return lo_a, hi_a


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Propagator:
    """Interval arithmetic over a :class:`ModelGraph` with a weight store."""

    def __init__(self, graph: ModelGraph, store: WeightStore, fast: bool = True) -> None:
        self.graph = graph
        self.store = store
        self.fast = fast  # NumPy kernels + caches; False: Keras ops, nothing cached (the reference path)
        self._serials = itertools.count(1)
        self._input_key: tuple | None = None
        self._input_serial = 0
        self._inputs: dict[int, Interval] = {}
        # layer -> (stamp, output serial, output, pre-activation, why missing): the incremental value pass
        self._memo: dict[str, tuple[tuple, int, Interval | None, Interval | None, str | None]] = {}
        self._prepared: dict[tuple[str, str], tuple[tuple, Any]] = {}
        keys: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for k in store.arrays:
            keys[k[0]].append(k)
        self._keys = dict(keys)

    # ---------------------------------------------------------------- caches
    def weight_token(self, node: LayerNode) -> tuple:
        """Changes whenever any array of the node's layer is written (or replaced)."""
        store = self.store
        return tuple((store.changed.get(k, 0), id(store.arrays[k])) for k in self._keys.get(node.name, ()))

    def prepared(self, node: LayerNode, what: str, build: Callable[[], T]) -> T:
        """``build()`` once per weight version of the node's layer (kernels in matmul layout, ``|k|``...)."""
        if not self.fast:
            return build()
        token = self.weight_token(node)
        hit = self._prepared.get((node.name, what))
        if hit is not None and hit[0] == token:
            return hit[1]
        value = build()
        self._prepared[(node.name, what)] = (token, value)
        return value

    # ---------------------------------------------------------------- values
    def values(self, input_range: Any) -> Bounds:
        with np.errstate(over="ignore", invalid="ignore"), blas_limit(1):  # overflow to inf: kept sound
            return self._values(input_range)

    def _values(self, input_range: Any) -> Bounds:
        lo_r, hi_r = parse_input_range(input_range)
        b = Bounds()
        key = (lo_r.shape, lo_r.tobytes(), hi_r.shape, hi_r.tobytes())
        if key != self._input_key or not self.fast:
            self._input_key, self._input_serial = key, next(self._serials)
            self._memo.clear()
            self._inputs = {}
            for tid in self.graph.input_ids:
                shape = (1, *self.graph.shapes[tid][1:])
                self._inputs[tid] = (np.broadcast_to(lo_r, shape).astype(np.float32),
                                     np.broadcast_to(hi_r, shape).astype(np.float32))
        serial: dict[int, int] = {}
        for tid, iv in self._inputs.items():
            b.out[tid] = iv
            serial[tid] = self._input_serial
        for node in self.graph.nodes:
            if not node.inputs:  # a model input
                continue
            if any(t not in serial for t in node.inputs):
                continue
            stamp = (tuple(serial[t] for t in node.inputs), self.weight_token(node)) if self.fast else ()
            hit = self._memo.get(node.name)
            if hit is not None and hit[0] == stamp and self.fast:
                _, sid, out, pre, why = hit
                if pre is not None:
                    b.pre[node.name] = pre
                if out is None:
                    b.missing[node.name] = why or ""
                else:
                    b.out[node.outputs[0]] = out
                    serial[node.outputs[0]] = sid
                continue
            ins = [b.out[t] for t in node.inputs]
            out, why = None, None
            try:
                out = _sound(node.rule.values(self, node, ins, b))
            except NoIntervalRule as exc:
                why = str(exc)
            except Exception as exc:  # a rule that fails here stops the bounds at this layer, nothing more
                why = f"{type(exc).__name__}: {exc}"
            sid = next(self._serials)
            if self.fast:
                self._memo[node.name] = (stamp, sid, out, b.pre.get(node.name), why)
            if out is None:
                b.missing[node.name] = why or ""
                continue
            b.out[node.outputs[0]] = out
            serial[node.outputs[0]] = sid
        return b

    # ---------------------------------------------------------------- deltas
    def deltas(self, base: Bounds, injections: dict[str, Interval], batch: int,
               at_logits: bool = True) -> Interval | None:
        """Bounds of the change of the model outputs (concatenated, flattened).

        ``injections[layer]`` is an interval ``(P, *pre-activation shape)`` added
        to that layer's pre-activation (its linear output).  Returns ``(P, n)``
        arrays, or None if a layer on the way has no perturbation rule.  With
        ``at_logits`` the change is measured before a final softmax/sigmoid,
        where the decision is made.
        """
        with np.errstate(over="ignore", invalid="ignore"), blas_limit(1):
            return self._deltas(base, injections, batch, at_logits)

    def _deltas(self, base: Bounds, injections: dict[str, Interval], batch: int,
                at_logits: bool) -> Interval | None:
        d: dict[int, Interval] = {}
        logits: dict[str, Interval] = {}  # pre-activation change of squashing layers
        for node in self.graph.nodes:
            ins = [d.get(t) for t in node.inputs]
            inj = injections.get(node.name)
            if inj is None and all(x is None for x in ins):
                continue
            try:
                res = node.rule.deltas(self, node, ins, inj, base, batch, logits)
            except NoIntervalRule:
                return None
            if res is not None:
                d[node.outputs[0]] = _sound(res)
        outs_lo, outs_hi = [], []
        for tid in self.graph.output_ids:
            last = self.graph.producer_of(tid)
            x = logits.get(last.name) if at_logits and last is not None and _squashes(last) else d.get(tid)
            shape = self.graph.shapes[tid][1:]
            if x is None:
                z = np.zeros((batch, int(np.prod(shape))), np.float32)
                outs_lo.append(z)
                outs_hi.append(z)
            else:
                outs_lo.append(x[0].reshape(batch, -1))
                outs_hi.append(x[1].reshape(batch, -1))
        return np.concatenate(outs_lo, 1), np.concatenate(outs_hi, 1)

    # --------------------------------------------------------------- helpers for the rules
    def delta_activate(self, node: LayerNode, pre: Interval, base: Bounds,
                       logits: dict[str, Interval]) -> Interval:
        """The change after the node's activation, given the change ``pre`` of its input."""
        if _squashes(node):
            logits[node.name] = pre
        name, rule = activation_of(node)
        if rule is None:
            if name == "softmax":
                # softmax is 1-Lipschitz per coordinate in the infinity norm of the logits change
                m = np.maximum(np.abs(pre[0]), np.abs(pre[1])).max(-1, keepdims=True)
                return -m * np.ones_like(pre[0]), m * np.ones_like(pre[1])
            raise NoIntervalRule(f"activation {name}")
        if rule.name == "linear":
            return pre
        lo, hi = base.pre[node.name]
        return rule.delta(lo, hi, pre[0], pre[1])

    def activate(self, node: LayerNode, pre: Interval) -> Interval:
        """The image of ``pre`` under the node's activation."""
        name, rule = activation_of(node)
        if rule is not None:
            return rule.image(*pre)
        if name == "softmax":
            return softmax_image(*pre)
        raise NoIntervalRule(f"activation {name}")

    def zeros(self, batch: int, tid: int) -> np.ndarray:
        """A zero change for tensor ``tid`` over a batch of candidates."""
        return np.zeros((batch, *self.graph.shapes[tid][1:]), np.float32)

    def call(self, node: LayerNode, xs: list[np.ndarray]) -> np.ndarray:
        """Run the (weight-free, monotone) layer itself on arrays."""
        arg: Any = xs if len(node.inputs) > 1 else xs[0]
        import keras

        out = node.layer(arg, training=False) if node.rule.takes_training else node.layer(arg)
        return keras.ops.convert_to_numpy(out)


def _sound(iv: Interval) -> Interval:
    """Replace NaN (from inf - inf in exploding bounds) by the widest interval."""
    lo, hi = iv
    if np.isnan(lo).any() or np.isnan(hi).any():
        lo, hi = np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)
    return lo.astype(np.float32, copy=False), hi.astype(np.float32, copy=False)


def _squashes(node: LayerNode) -> bool:
    name, _ = activation_of(node)
    return name in _SQUASH


def activation_of(node: LayerNode) -> tuple[str, ActivationRule | None]:
    """The element-wise activation a node applies after its linear part (from its rule)."""
    return node.rule.activation(node.config)


def bn_affine(store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization (inference) as ``x * scale + shift`` per channel."""
    from .rules import bn_affine as _bn

    return _bn(store, node)
