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
weights), in float32 NumPy; convolutions go through ``keras.ops``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .activations import ActivationRule, relu_rule, rule_for, softmax_image
from .graph import LayerNode, ModelGraph, _activation_name
from .weights import WeightStore

Interval = tuple[np.ndarray, np.ndarray]

_LINEAR_WEIGHTED = {"Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D",
                    "SeparableConv1D", "SeparableConv2D"}
_MONOTONE_FREE = {  # weight-free layers that are monotone and positively linear or max-like
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Flatten", "Reshape",
    "Concatenate", "Add", "Average", "Maximum", "Minimum",
}
_MAX_LIKE = {"MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D",
             "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Maximum", "Minimum"}
_SQUASH = {"softmax", "sigmoid", "log_softmax"}


@dataclass
class Bounds:
    """Value intervals of tensors (by id) and of pre-activations (by layer)."""

    out: dict[int, Interval] = field(default_factory=dict)
    pre: dict[str, Interval] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # layer -> why bounds stop there

    def of(self, tid: int) -> Interval | None:
        return self.out.get(tid)


def parse_input_range(value: Any) -> tuple[Any, Any]:
    """Normalise an input range: (lo, hi) scalars or arrays; lo <= hi checked."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be a pair (low, high), got {value!r}") from None
    lo_a, hi_a = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a))):
        raise ValueError(f"input_range must be finite, got {value!r}")
    if np.any(lo_a > hi_a):
        raise ValueError(f"input_range low must not exceed high, got {value!r}")
    return lo_a, hi_a


class Propagator:
    """Interval arithmetic over a :class:`ModelGraph` with a weight store."""

    def __init__(self, graph: ModelGraph, store: WeightStore) -> None:
        self.graph = graph
        self.store = store

    # ---------------------------------------------------------------- values
    def values(self, input_range: Any) -> Bounds:
        with np.errstate(over="ignore", invalid="ignore"):  # deep nets may overflow to inf: kept sound
            return self._values(input_range)

    def _values(self, input_range: Any) -> Bounds:
        lo_r, hi_r = parse_input_range(input_range)
        b = Bounds()
        for tid in self.graph.input_ids:
            shape = (1, *self.graph.shapes[tid][1:])
            b.out[tid] = (np.broadcast_to(lo_r, shape).astype(np.float32),
                          np.broadcast_to(hi_r, shape).astype(np.float32))
        for node in self.graph.nodes:
            if node.type == "InputLayer":
                continue
            ins = [b.out.get(t) for t in node.inputs]
            if any(x is None for x in ins):
                continue
            try:
                res = self._value_node(node, ins, b)
            except _Unsupported as exc:
                b.missing[node.name] = str(exc)
                continue
            b.out[node.outputs[0]] = _sound(res)
        return b

    def _value_node(self, node: LayerNode, ins: list[Interval], b: Bounds) -> Interval:
        t = node.type
        if t in _LINEAR_WEIGHTED:
            (lo, hi), = ins
            c, r = self._linear(node, (lo + hi) * 0.5, (hi - lo) * 0.5, bias=True)
            pre = (c - r, c + r)
            b.pre[node.name] = pre
            return self._activate(node, pre)
        if t == "BatchNormalization":
            (lo, hi), = ins
            s, sh = bn_affine(self.store, node)
            a, z = lo * s + sh, hi * s + sh
            return np.minimum(a, z), np.maximum(a, z)
        if t in ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"):
            b.pre[node.name] = ins[0]
            return self._activate(node, ins[0])
        if t == "Subtract":
            (l1, h1), (l2, h2) = ins
            return l1 - h2, h1 - l2
        if t == "Multiply":
            lo, hi = ins[0]
            for l2, h2 in ins[1:]:
                cands = np.stack(np.broadcast_arrays(lo * l2, lo * h2, hi * l2, hi * h2))
                lo, hi = cands.min(0), cands.max(0)
            return lo, hi
        if t == "Rescaling":
            cfg = node.config
            a = np.asarray(cfg.get("scale", 1.0), np.float32)
            o = np.asarray(cfg.get("offset", 0.0), np.float32)
            lo, hi = ins[0]
            x, y = lo * a + o, hi * a + o
            return np.minimum(x, y), np.maximum(x, y)
        if t in _MONOTONE_FREE:
            return self._call(node, [x[0] for x in ins]), self._call(node, [x[1] for x in ins])
        if t == "LayerNormalization":
            return layer_norm_range(self.store, node, self.graph.shapes[node.inputs[0]])
        raise _Unsupported(f"no interval rule for {t}")

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
        with np.errstate(over="ignore", invalid="ignore"):
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
                res = self._delta_node(node, ins, inj, base, batch, logits)
            except _Unsupported:
                return None
            if res is not None:
                d[node.outputs[0]] = _sound(res)
        outs_lo, outs_hi = [], []
        for tid in self.graph.output_ids:
            node = self.graph.producer_of(tid)
            x = logits.get(node.name) if at_logits and node is not None and _squashes(node) else d.get(tid)
            shape = self.graph.shapes[tid][1:]
            if x is None:
                z = np.zeros((batch, int(np.prod(shape))), np.float32)
                outs_lo.append(z)
                outs_hi.append(z)
            else:
                outs_lo.append(x[0].reshape(batch, -1))
                outs_hi.append(x[1].reshape(batch, -1))
        return np.concatenate(outs_lo, 1), np.concatenate(outs_hi, 1)

    def _delta_node(self, node: LayerNode, ins: list[Interval | None], inj: Interval | None,
                    base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        t = node.type
        if t in _LINEAR_WEIGHTED:
            x = ins[0]
            if x is not None:
                c, r = self._linear(node, (x[0] + x[1]) * 0.5, (x[1] - x[0]) * 0.5, bias=False)
                pre = (c - r, c + r)
            else:
                pre = (np.zeros((batch, *self.graph.shapes[node.outputs[0]][1:]), np.float32),) * 2
            if inj is not None:
                pre = (pre[0] + inj[0], pre[1] + inj[1])
            return self._delta_activate(node, pre, base, logits)
        if inj is not None:
            raise _Unsupported(f"cannot inject into {t}")
        if t == "BatchNormalization":
            s, _ = bn_affine(self.store, node)
            a, z = ins[0][0] * s, ins[0][1] * s
            return np.minimum(a, z), np.maximum(a, z)
        if t in ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"):
            return self._delta_activate(node, ins[0], base, logits)
        if t in ("Concatenate", "Add", "Subtract", "Average"):
            full = [x if x is not None else (np.zeros((batch, *self.graph.shapes[tid][1:]), np.float32),) * 2
                    for x, tid in zip(ins, node.inputs)]
            if t == "Subtract":
                (l1, h1), (l2, h2) = full
                return l1 - h2, h1 - l2
            return self._call(node, [x[0] for x in full]), self._call(node, [x[1] for x in full])
        if t == "LayerNormalization":  # any two outputs lie in the layer's fixed range: so does their difference
            lo, hi = base.out[node.outputs[0]]
            w = np.broadcast_to(hi - lo, (batch, *lo.shape[1:]))
            return -w, w
        if len(ins) == 1 and t in _MONOTONE_FREE:
            lo, hi = ins[0]
            if t in _MAX_LIKE:  # max(z + d) - max(z) lies within [min d, max d] of the window
                return -self._call(node, [-lo]), self._call(node, [hi])
            return self._call(node, [lo]), self._call(node, [hi])
        raise _Unsupported(f"no perturbation rule for {t}")

    def _delta_activate(self, node: LayerNode, pre: Interval, base: Bounds,
                        logits: dict[str, Interval]) -> Interval:
        if _squashes(node):
            logits[node.name] = pre
        name, rule = activation_of(node)
        if rule is None:
            if name == "softmax":
                # softmax is 1-Lipschitz per coordinate in the infinity norm of the logits change
                m = np.maximum(np.abs(pre[0]), np.abs(pre[1])).max(-1, keepdims=True)
                return -m * np.ones_like(pre[0]), m * np.ones_like(pre[1])
            raise _Unsupported(f"activation {name}")
        if rule.name == "linear":
            return pre
        lo, hi = base.pre[node.name]
        return rule.delta(lo, hi, pre[0], pre[1])

    # --------------------------------------------------------------- helpers
    def _activate(self, node: LayerNode, pre: Interval) -> Interval:
        name, rule = activation_of(node)
        if rule is not None:
            return rule.image(*pre)
        if name == "softmax":
            return softmax_image(*pre)
        raise _Unsupported(f"activation {name}")

    def _linear(self, node: LayerNode, c: np.ndarray, r: np.ndarray, bias: bool) -> Interval:
        """Centre and radius through the layer's linear map (|W| for the radius)."""
        import keras

        w = lambda v: self.store.get(node.name, v)  # noqa: E731
        t, cfg = node.type, node.config
        if t == "Dense":
            k = w("kernel")
            oc, orad = c @ k, r @ np.abs(k)
        else:
            ops = keras.ops
            kw = dict(strides=cfg["strides"], padding=cfg["padding"], data_format="channels_last",
                      dilation_rate=cfg["dilation_rate"])
            if t.startswith("Conv"):
                k = w("kernel")
                f = lambda x, k: ops.conv(x, k, **kw)  # noqa: E731
                oc, orad = f(c, k), f(r, np.abs(k))
            elif t.startswith("Depthwise"):
                k = w("kernel")
                oc, orad = ops.depthwise_conv(c, k, **kw), ops.depthwise_conv(r, np.abs(k), **kw)
            else:
                dk, pk = w("depthwise_kernel"), w("pointwise_kernel")
                oc = ops.separable_conv(c, dk, pk, **kw)
                orad = ops.separable_conv(r, np.abs(dk), np.abs(pk), **kw)
            oc, orad = np.asarray(oc), np.asarray(orad)
        if bias and w("bias") is not None:
            oc = oc + w("bias")
        return oc.astype(np.float32), orad.astype(np.float32)

    def _call(self, node: LayerNode, xs: list[np.ndarray]) -> np.ndarray:
        layer = node.layer
        arg = xs if node.type in ("Concatenate", "Add", "Average", "Maximum", "Minimum") else xs[0]
        if node.type == "Reshape":  # Reshape's target excludes the batch axis
            return np.reshape(arg, (arg.shape[0], *self.graph.shapes[node.outputs[0]][1:]))
        if node.type == "Flatten":
            return np.reshape(arg, (arg.shape[0], -1))
        return np.asarray(layer(arg, training=False) if _takes_training(node.type) else layer(arg))


class _Unsupported(Exception):
    pass


def _sound(iv: Interval) -> Interval:
    """Replace NaN (from inf - inf in exploding bounds) by the widest interval."""
    lo, hi = iv
    if np.isnan(lo).any() or np.isnan(hi).any():
        lo, hi = np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)
    return lo.astype(np.float32, copy=False), hi.astype(np.float32, copy=False)


def _takes_training(t: str) -> bool:
    return "Dropout" in t or t in ("GaussianNoise", "ActivityRegularization")


def _squashes(node: LayerNode) -> bool:
    name, _ = activation_of(node)
    return name in _SQUASH


def activation_of(node: LayerNode) -> tuple[str, ActivationRule | None]:
    """The element-wise activation a node applies after its linear part."""
    cfg = node.config
    t = node.type
    if t == "ReLU":
        ms = cfg.get("max_value")
        return "relu", relu_rule(cfg.get("negative_slope", 0.0) or 0.0,
                                 None if ms is None else float(ms), cfg.get("threshold", 0.0) or 0.0)
    if t == "LeakyReLU":
        slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        return "leaky_relu", relu_rule(float(slope), name="leaky_relu")
    if t == "ELU":
        return "elu", rule_for("elu") if float(cfg.get("alpha", 1.0)) == 1.0 else None
    if t == "Softmax":
        return "softmax", None
    if t in ("Dense", "Activation") or t in _LINEAR_WEIGHTED:
        name = _activation_name(cfg.get("activation"))
        return name, rule_for(name)
    return "linear", rule_for("linear")


def bn_affine(store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization (inference) as ``x * scale + shift`` per channel."""
    cfg = node.config
    mean, var = store.get(node.name, "moving_mean"), store.get(node.name, "moving_variance")
    gamma = store.get(node.name, "gamma")
    beta = store.get(node.name, "beta")
    scale = (gamma if gamma is not None else 1.0) / np.sqrt(var + float(cfg.get("epsilon", 1e-3)))
    shift = (beta if beta is not None else 0.0) - mean * scale
    return scale.astype(np.float32), np.asarray(shift, np.float32)


def layer_norm_range(store: WeightStore, node: LayerNode, in_shape: tuple) -> Interval:
    """Sound output interval of a LayerNormalization over the last axis, whatever its input.

    A centred, normalised value has ``|x_i| <= sqrt(n - 1)`` over ``n``
    features, so the output lies in ``beta -+ |gamma| sqrt(n)``:
    loose, but finite, so the layers after it keep their bounds.
    """
    cfg = node.config
    ndim = len(in_shape)
    axes = cfg.get("axis", -1)
    axes = [a % ndim for a in (axes if isinstance(axes, (list, tuple)) else [axes])]
    if axes != [ndim - 1]:
        raise _Unsupported("LayerNormalization over axes other than the last")
    if cfg.get("rms_scaling"):  # Keras divides by the std without centring: unbounded as the spread -> 0
        raise _Unsupported("LayerNormalization with rms_scaling has no input-independent range")
    m = np.float32(np.sqrt(in_shape[-1]))
    gamma = store.get(node.name, "gamma") if cfg.get("scale", True) else None
    beta = store.get(node.name, "beta") if cfg.get("center", True) else None
    g = np.abs(gamma) if gamma is not None else np.float32(1.0)
    c = beta if beta is not None else np.float32(0.0)
    shape = (1, *in_shape[1:])
    return (np.broadcast_to(c - g * m, shape).astype(np.float32),
            np.broadcast_to(c + g * m, shape).astype(np.float32))
