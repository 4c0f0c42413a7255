"""Built-in rules: one per Keras layer kind the engine understands.

Why one place: supporting a new kind is one rule here (or one
:func:`~paoding_widgets.engine.rules.register_rule` call from outside), not edits
in five modules.  The list of supported kinds in ``docs/layers.md`` is
generated from this registry (``python -m paoding_widgets.engine.rules``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..activations import PER_UNIT, ActivationRule, activation_name, relu_rule
from ..activations import rule_for as activation_rule
from ..kernels import ConvSpec, PreparedConv, PreparedDepthwise, conv_spec, passthrough_forward
from ..threads import pair
from .base import REGISTRY, Interval, LayerRule, NoIntervalRule, OpaqueRule

if TYPE_CHECKING:
    from ..bounds import Bounds, Propagator
    from ..graph import LayerNode, ModelGraph
    from ..weights import WeightStore


def _one_axis(axis: Any) -> Any:
    return axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis


# ====================================================================== weighted linear layers
class LinearRule(LayerRule):
    """A layer computing ``act(linear(x) + bias)``: bounds by centre/radius through the linear map."""

    kernel_var = "kernel"
    merge_reader = True

    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        name = activation_name(config.get("activation"))
        return name, activation_rule(name)

    def linear(self, prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray) -> Interval:
        """Centre and radius of the linear part (no bias) for inputs in ``c -+ r``."""
        raise NoIntervalRule(f"no linear map for {node.type}")

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        (lo, hi), = ins
        c, r = self.linear(prop, node, (lo + hi) * 0.5, (hi - lo) * 0.5)
        bias = prop.store.get(node.name, "bias")
        if bias is not None:
            c = c + bias
        pre = (c - r, c + r)
        bounds.pre[node.name] = pre
        return prop.activate(node, pre)

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        x = ins[0]
        if x is not None:
            c, r = self.linear(prop, node, (x[0] + x[1]) * 0.5, (x[1] - x[0]) * 0.5)
            pre = (c - r, c + r)
        else:
            z = prop.zeros(batch, node.outputs[0])
            pre = (z, z)
        if inject is not None:
            pre = (pre[0] + inject[0], pre[1] + inject[1])
        return prop.delta_activate(node, pre, base, logits)

    def produce_units(self, graph: ModelGraph, node: LayerNode, n: int, read_axis: int, unit_axis: int,
                      kind: str | None = None) -> None:
        """The common structure of a layer that makes ``n`` units from its input's channels.

        Its kernel's ``read_axis`` reads the input's channels, its ``unit_axis`` and
        its bias (if any) hold the new group's units, the layer's own activation may
        stop them from being pruned one by one, and the output has the units' layout.
        """
        graph.consume(node, node.inputs[0], self.kernel_var or "kernel", read_axis)
        gid = graph.new_group(n, kind or self.unit_kind or "dense")
        graph.produce(node, gid, self.kernel_var or "kernel", unit_axis)
        if "bias" in node.var_shapes:
            graph.produce(node, gid, "bias", 0)
        why = self.check_activation(graph, node)
        if why:
            graph.pending(gid).reasons.append(why)
        graph.set_layout(node.outputs[0], graph.channels(gid, n))

    def check_activation(self, graph: ModelGraph, node: LayerNode) -> str:
        """Why the layer's own activation stops its units from being pruned one by one ("" if it does not)."""
        name = activation_name(node.config.get("activation"))
        if name not in PER_UNIT:
            return f"{node.name} applies activation {name!r}, which mixes its units (only per-unit activations)"
        return ""

    def flops(self, layer: Any, positions: int) -> int:
        return positions * sum(int(np.prod(w.shape)) for w in layer.weights if _short(w) == self.kernel_var)


class DenseRule(LinearRule):
    """``Dense``: units are kernel columns (+ bias); readers' kernel rows follow them."""

    description = "units (kernel columns, bias) pruned and merged; works on any rank (last axis)"
    unit_kind = "dense"
    size_key = "units"
    mergeable = True

    def units(self, config: dict[str, Any]) -> int:
        """The number of units the config declares."""
        return int(config[self.size_key])

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        self.produce_units(graph, node, self.units(node.config), 0, node.var_ndim(self.kernel_var or "kernel") - 1)

    def linear(self, prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray) -> Interval:
        k = prop.store[(node.name, self.kernel_var)]
        k_abs = prop.prepared(node, "abs", lambda: np.abs(k))
        return (c @ k).astype(np.float32, copy=False), (r @ k_abs).astype(np.float32, copy=False)

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        return resized_entry(config, self.size_key, width)

    def absorbs_constant(self, config: dict[str, Any]) -> bool:
        return bool(config.get("use_bias", True))


def _conv_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(strides=cfg["strides"], padding=cfg["padding"], data_format="channels_last",
                dilation_rate=cfg["dilation_rate"])


class ConvRule(DenseRule):
    """``Conv1D/2D/3D``: filters are the kernel's last axis; readers' input-channel slices follow."""

    description = ("filters removed (scale-based L1 by default; merged by `certified`); a grouped conv with one "
                   "group per channel (depthwise, as in ConvNeXt) carries channels through; other groups left whole")
    unit_kind = "conv"
    size_key = "filters"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        cfg = node.config
        src, out = node.inputs[0], node.outputs[0]
        nd = node.var_ndim(self.kernel_var or "kernel")
        groups = int(cfg.get("groups", 1))
        if groups != 1:
            if groups == int(cfg[self.size_key]) == _last(graph.shape(src)):  # depthwise written as a grouped conv
                why = self.check_activation(graph, node)
                if why:
                    graph.opaque(node, why)
                    return
                graph.passthrough(node, src, self.kernel_var, nd - 1)
                if "bias" in node.var_shapes:
                    graph.passthrough(node, src, "bias", 0)
                graph.set_layout(out, graph.layout(src))
                return
            graph.opaque(node, f"grouped convolution (groups={groups})")
            return
        self.produce_units(graph, node, int(cfg[self.size_key]), nd - 2, nd - 1)

    def linear(self, prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray) -> Interval:
        return _conv_linear(prop, node, c, r, self.kernel_var or "kernel", "conv", _prepare_conv)

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        if int(config.get("groups", 1)) == 1:
            return super().resized_config(config, width)
        return {**config, self.size_key: width, "groups": width} if int(config["groups"]) != width else None

    def absorbs_constant(self, config: dict[str, Any]) -> bool:
        # zero padding would not carry a constant channel to the border
        return bool(config.get("use_bias", True)) and config.get("padding", "valid") == "valid"


class DepthwiseRule(LinearRule):
    """``DepthwiseConv1D/2D``: one filter per channel, carried through (depth_multiplier 1)."""

    description = "channels carried through (its kernel slice and bias go with each channel); depth_multiplier=1"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        cfg = node.config
        if int(cfg.get("depth_multiplier", 1)) != 1:
            graph.opaque(node, f"depth_multiplier={cfg['depth_multiplier']} is not supported")
            return
        why = self.check_activation(graph, node)
        if why:
            graph.opaque(node, why)
            return
        src = node.inputs[0]
        graph.passthrough(node, src, self.kernel_var, node.var_ndim(self.kernel_var) - 2)
        if "bias" in node.var_shapes:
            graph.passthrough(node, src, "bias", 0)
        graph.set_layout(node.outputs[0], graph.layout(src))

    def linear(self, prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray) -> Interval:
        return _conv_linear(prop, node, c, r, self.kernel_var or "kernel", "depthwise", _prepare_depthwise)

    def flops(self, layer: Any, positions: int) -> int:
        return positions * int(np.prod(layer.kernel.shape))


class SeparableRule(ConvRule):
    """``SeparableConv1D/2D``: input channels carried through the depthwise part, filters pruned."""

    description = "filters removed (pointwise kernel columns); input channels carried through; depth_multiplier=1"
    kernel_var = "pointwise_kernel"
    mergeable = False

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        cfg = node.config
        if int(cfg.get("depth_multiplier", 1)) != 1:
            graph.opaque(node, f"depth_multiplier={cfg['depth_multiplier']} is not supported")
            return
        nd = node.var_ndim("depthwise_kernel")
        graph.passthrough(node, node.inputs[0], "depthwise_kernel", nd - 2)
        self.produce_units(graph, node, int(cfg[self.size_key]), nd - 2, nd - 1, "conv")

    def linear(self, prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray) -> Interval:
        dk, pk = prop.store[(node.name, "depthwise_kernel")], prop.store[(node.name, self.kernel_var)]
        prep = prop.prepared(node, "separable", lambda: _prepare_separable(node.config, dk, pk)) if prop.fast else None
        if prep is not None:
            dw, pw = prep
            work = 2.0 * c.size * (pw.k2.shape[1] + dw.k.shape[0])
            return pair(lambda: pw(dw(c)), lambda: pw(dw(r, absolute=True), absolute=True), work)
        import keras

        kw = _conv_kwargs(node.config)
        return (np.asarray(keras.ops.separable_conv(c, dk, pk, **kw), np.float32),
                np.asarray(keras.ops.separable_conv(r, np.abs(dk), np.abs(pk), **kw), np.float32))

    def flops(self, layer: Any, positions: int) -> int:
        return positions * (int(np.prod(layer.depthwise_kernel.shape)) + int(np.prod(layer.pointwise_kernel.shape)))


# ====================================================================== per-channel layers
class ChannelAffineRule(LayerRule):
    """A per-channel ``x * scale + shift`` whose vectors go with each channel (LayerScale, custom scales).

    ``scale`` and ``shift`` name the layer's variables (either may be None);
    each holds one value per channel along its last axis.  With
    ``single_variable`` the layer's only variable is the scale, whatever its
    name.  ``size_key`` names a config entry that holds the channel count.
    """

    description = "per-channel scale/shift vectors carried through with each channel"
    channel_affine = True
    scale: str | None = "gamma"
    shift: str | None = None
    single_variable = False

    def variables(self, node: LayerNode) -> list[str]:
        """The scale and shift variables of this layer (resolved names)."""
        if self.single_variable:
            return list(node.var_shapes)[:1] if len(node.var_shapes) == 1 else []
        return [v for v in (self.scale, self.shift) if v is not None]

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src = node.inputs[0]
        width = _last(graph.shape(src))
        names = self.variables(node)
        if not names:
            graph.opaque(node, f"expected one variable, found {len(node.var_shapes)}")
            return
        for var in names:
            shape = node.var_shapes.get(var)
            if shape is None:
                graph.opaque(node, f"has no variable {var!r} (rule {type(self).__name__})")
                return
            if not shape or shape[-1] != width or (len(shape) > 1 and len(graph.layout(src)) != 1):
                graph.opaque(node, f"variable {var!r} of shape {shape} is not one value per channel")
                return
        for var in names:
            graph.passthrough(node, src, var, len(node.var_shapes[var]) - 1)
        graph.set_layout(node.outputs[0], graph.layout(src))

    def affine(self, store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray] | None:
        names = self.variables(node)
        if self.single_variable:
            s, t = (store.get(node.name, names[0]) if names else None), None
        else:
            s = store.get(node.name, self.scale) if self.scale else None
            t = store.get(node.name, self.shift) if self.shift else None
        return (np.asarray(s if s is not None else np.float32(1.0), np.float32),
                np.asarray(t if t is not None else np.float32(0.0), np.float32))

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        return resized_entry(config, self.size_key, width) if self.size_key in config else None


class BatchNormRule(ChannelAffineRule):
    """``BatchNormalization`` over the channel axis: its four vectors go with each channel."""

    description = "per-channel statistics carried through; folded into merges (inference mode); channel axis only"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src = node.inputs[0]
        rank = len(graph.shape(src))
        axis = _one_axis(node.config.get("axis", -1))
        if not isinstance(axis, int) or axis % rank != rank - 1:
            graph.opaque(node, f"normalises axis {axis}, not the channel axis")
            return
        for var in node.var_shapes:
            graph.passthrough(node, src, var, 0)
        graph.set_layout(node.outputs[0], graph.layout(src))

    def affine(self, store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray] | None:
        return bn_affine(store, node)


def bn_affine(store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization (inference) as ``x * scale + shift`` per channel."""
    cfg = node.config
    mean, var = store[(node.name, "moving_mean")], store[(node.name, "moving_variance")]
    gamma = store.get(node.name, "gamma")
    beta = store.get(node.name, "beta")
    scale = (gamma if gamma is not None else np.float32(1.0)) / np.sqrt(var + float(cfg.get("epsilon", 1e-3)))
    shift = (beta if beta is not None else np.float32(0.0)) - mean * scale
    return np.asarray(scale, np.float32), np.asarray(shift, np.float32)


class PReLURule(LayerRule):
    """``PReLU`` with one slope per channel: the slopes go with each channel."""

    description = "per-channel slopes carried through (no interval rule: bounds stop here)"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src = node.inputs[0]
        (var, shape), = node.var_shapes.items()
        if shape[-1] != _last(graph.shape(src)) or len(graph.layout(src)) != 1:
            graph.opaque(node, "PReLU alpha is not per channel")
            return
        graph.passthrough(node, src, var, len(shape) - 1)
        graph.set_layout(node.outputs[0], graph.layout(src))


class ActivationLayerRule(LayerRule):
    """``Activation`` with a per-unit function (softmax over channels is opaque)."""

    description = "per-unit activations pass channels through; softmax/log_softmax left whole"
    activation_layer = True
    trails_join = True

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        name, _ = self.activation(node.config)
        if name not in PER_UNIT:
            graph.opaque(node, f"activation {name!r} mixes channels")
            return
        graph.set_layout(node.outputs[0], graph.layout(node.inputs[0]))

    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        name = activation_name(config.get("activation"))
        return name, activation_rule(name)

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        bounds.pre[node.name] = ins[0]
        return prop.activate(node, ins[0])

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        if inject is not None or ins[0] is None:
            raise NoIntervalRule(f"cannot inject into {node.type}")
        return prop.delta_activate(node, ins[0], base, logits)


class ReLURule(ActivationLayerRule):
    description = "passes channels through"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        graph.set_layout(node.outputs[0], graph.layout(node.inputs[0]))

    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        ms = config.get("max_value")
        return "relu", relu_rule(config.get("negative_slope", 0.0) or 0.0, None if ms is None else float(ms),
                                 config.get("threshold", 0.0) or 0.0)


class LeakyReLURule(ReLURule):
    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        slope = config.get("negative_slope", config.get("alpha", 0.3))
        return "leaky_relu", relu_rule(float(slope), name="leaky_relu")


class ELURule(ReLURule):
    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        return "elu", activation_rule("elu") if float(config.get("alpha", 1.0)) == 1.0 else None


class SoftmaxRule(ActivationLayerRule):
    """``Softmax`` normalises over channels: opaque for pruning, bounded for values."""

    description = "left whole (mixes channels); has interval rules, so bounds go on"
    activation_layer = False
    reason = "softmax mixes channels"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        graph.opaque(node, self.reason)

    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        return "softmax", None


class PassThroughRule(LayerRule):
    """Weight-free layers that act per channel and keep the channel layout (pooling, padding, dropout).

    Interval rules apply the layer to the bounds: it is monotone (and max-like
    layers move by at most the largest change in their window).  Keras' own
    pooling, padding, cropping, upsampling and dropout layers run in NumPy
    (:func:`~paoding_widgets.engine.kernels.passthrough_forward`); anything
    else -- a subclass with its own ``call`` -- is called through Keras.
    """

    description = "channels pass through"
    transparent = True
    max_like = False
    spatial = False  # pools over positions: refused on flattened tensors

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src = node.inputs[0]
        if self.spatial and len(graph.layout(src)) != 1:
            graph.opaque(node, "pools a flattened tensor")
            return
        graph.set_layout(node.outputs[0], graph.layout(src))

    def forward(self, prop: Propagator, node: LayerNode, x: np.ndarray) -> np.ndarray:
        """The layer on an array (a batch of bounds): NumPy where covered, else Keras' own call."""
        out = passthrough_forward(node.layer, node.config, x) if prop.fast else None
        return prop.call(node, [x]) if out is None else out

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        return self.forward(prop, node, ins[0][0]), self.forward(prop, node, ins[0][1])

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        x = ins[0]
        if inject is not None or x is None:
            raise NoIntervalRule(f"cannot inject into {node.type}")
        if self.max_like:  # max(z + d) - max(z) lies within [min d, max d] of the window
            return -self.forward(prop, node, -x[0]), self.forward(prop, node, x[1])
        return self.forward(prop, node, x[0]), self.forward(prop, node, x[1])


class FlattenRule(PassThroughRule):
    """``Flatten``: each channel repeats once per flattened position (readers' rows follow)."""

    description = "channels repeat once per flattened position; readers' rows follow"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        graph.set_layout(node.outputs[0], graph.flattened(node.inputs[0]))

    def forward(self, prop: Propagator, node: LayerNode, x: np.ndarray) -> np.ndarray:
        return np.reshape(x, (x.shape[0], -1))


class ReshapeRule(PassThroughRule):
    """``Reshape`` that flattens, or keeps the last axis: the target shrinks with the channels."""

    description = "flattening reshapes, or reshapes keeping the channel axis; target shape resized"
    transparent = False

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src, out = node.inputs[0], node.outputs[0]
        sin, sout = graph.shape(src), graph.shape(out)
        layout = graph.layout(src)
        if len(sout) == 2 and len(sin) > 2:
            graph.set_layout(out, graph.flattened(src))
        elif len(layout) == 1 and layout[0][1] == 1 and sin[-1] == sout[-1]:
            graph.set_layout(out, layout)
        else:
            graph.opaque(node, f"reshape {sin[1:]} -> {sout[1:]} moves channels")

    def forward(self, prop: Propagator, node: LayerNode, x: np.ndarray) -> np.ndarray:
        return np.reshape(x, (x.shape[0], *prop.graph.shape(node.outputs[0])[1:]))  # target excludes the batch

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        if -1 in list(config["target_shape"]):  # Keras infers that axis: nothing to write
            return None
        return resized_entry(config, "target_shape", width)


class InputRule(LayerRule):
    """``InputLayer``: listed among the kinds, never read (the graph lays out the model's inputs itself)."""

    description = "model inputs (never pruned)"


class ConcatenateRule(LayerRule):
    """``Concatenate`` on the channel axis: segments follow one another."""

    description = "channel-axis concatenation: each input's channels keep their groups"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        out = node.outputs[0]
        rank = len(graph.shape(out))
        if int(node.config.get("axis", -1)) % rank != rank - 1:
            graph.opaque(node, f"concatenates on axis {node.config.get('axis')}, not channels")
            return
        layouts = [graph.layout(t) for t in node.inputs]
        if rank == 2:
            merged = tuple(b for lay in layouts for b in lay)
            if all(rep == 1 for _, rep in merged):
                merged = ((tuple(s for segs, _ in merged for s in segs), 1),)
        elif all(len(lay) == 1 and lay[0][1] == 1 for lay in layouts):
            merged = ((tuple(s for lay in layouts for s in lay[0][0]), 1),)
        else:
            graph.opaque(node, "concatenates tensors with different channel layouts")
            return
        graph.set_layout(out, merged)

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        return _concat([x[0] for x in ins]), _concat([x[1] for x in ins])

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        if inject is not None:
            raise NoIntervalRule(f"cannot inject into {node.type}")
        full = _fill(prop, ins, node.inputs, batch)
        return _concat([x[0] for x in full]), _concat([x[1] for x in full])


class JoinRule(LayerRule):
    """``Add``, ``Multiply``... : channels at the same position are one unit (groups unite)."""

    description = "joined channels become one coupled group (pruned together in every branch)"
    op = "add"  # add, subtract, multiply, average, maximum, minimum
    operation = False  # a Keras operation (``x + y``): exactly two tensors of one shape, no constants

    def __init__(self, op: str = "add", **overrides: Any) -> None:
        super().__init__(**overrides)
        self.op = op

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        if self.operation:
            shapes = {graph.shape(t) for t in node.inputs}
            if len(node.inputs) != 2 or len(shapes) != 1:
                graph.opaque(node, f"operation {node.type} with a constant or broadcast operand")
                return
        graph.join(node)

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        """The join itself, on arrays (monotone for add, average, maximum, minimum)."""
        if self.op == "add":
            return np.sum(np.broadcast_arrays(*xs), axis=0)
        if self.op == "average":
            return np.mean(np.broadcast_arrays(*xs), axis=0)
        if self.op == "maximum":
            return np.maximum.reduce(np.broadcast_arrays(*xs))
        if self.op == "minimum":
            return np.minimum.reduce(np.broadcast_arrays(*xs))
        raise NoIntervalRule(f"{self.op} is not monotone")

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        if self.op == "subtract":
            (l1, h1), (l2, h2) = ins
            return l1 - h2, h1 - l2
        if self.op == "multiply":
            lo, hi = ins[0]
            for l2, h2 in ins[1:]:
                cands = np.stack(np.broadcast_arrays(lo * l2, lo * h2, hi * l2, hi * h2))
                lo, hi = cands.min(0), cands.max(0)
            return lo, hi
        return self.combine([x[0] for x in ins]), self.combine([x[1] for x in ins])

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        if inject is not None or self.op not in ("add", "subtract", "average"):
            raise NoIntervalRule(f"no perturbation rule for {node.type}")
        full = _fill(prop, ins, node.inputs, batch)
        if self.op == "subtract":
            (l1, h1), (l2, h2) = full
            return l1 - h2, h1 - l2
        return self.combine([x[0] for x in full]), self.combine([x[1] for x in full])


class RescalingRule(LayerRule):
    """``Rescaling`` / ``Normalization`` before any prunable channel: an affine map of the input."""

    description = "input preprocessing: affine bounds; left whole when it follows prunable channels"
    channel_affine = True

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src = node.inputs[0]
        if graph.groups_in(graph.layout(src)):
            graph.opaque(node, f"{node.type} after prunable channels is not resized")
            return
        graph.set_layout(node.outputs[0], graph.layout(src))

    @property
    def merge_chain_ok(self) -> bool:
        return False

    def affine(self, store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray] | None:
        cfg = node.config
        return np.asarray(cfg.get("scale", 1.0), np.float32), np.asarray(cfg.get("offset", 0.0), np.float32)


class NormalizationRule(RescalingRule):
    def affine(self, store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray] | None:
        layer = node.layer
        if node.config.get("invert"):
            return None
        try:
            mean = np.asarray(layer.mean, np.float32)
            var = np.asarray(layer.variance, np.float32)
        except (AttributeError, TypeError, ValueError):
            return None
        import keras

        scale = 1.0 / np.maximum(np.sqrt(var), np.float32(keras.backend.epsilon()))
        return scale.astype(np.float32), (-mean * scale).astype(np.float32)

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        if self.affine(prop.store, node) is None:
            raise NoIntervalRule(f"{node.name}: no statistics to bound an inverted or unadapted Normalization")
        return super().values(prop, node, ins, bounds)


class LayerNormRule(LayerRule):
    """``LayerNormalization``: mixes channels (left whole), but its output range is input-independent."""

    description = "left whole (normalises across channels); bounded: beta -+ |gamma| sqrt(n)"
    reason = "normalises across channels: removing one changes every other"

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        return layer_norm_range(prop.store, node, prop.graph.shape(node.inputs[0]))

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        if inject is not None:
            raise NoIntervalRule("cannot inject into LayerNormalization")
        # any two outputs lie in the layer's fixed range: so does their difference
        lo, hi = base.out[node.outputs[0]]
        w = np.broadcast_to(hi - lo, (batch, *lo.shape[1:]))
        return -w, w


def layer_norm_range(store: WeightStore, node: LayerNode, in_shape: tuple, size: int | None = None) -> Interval:
    """Sound output interval of a LayerNormalization over the last axis, whatever its input.

    A centred, normalised value has ``|x_i| <= sqrt(n - 1)`` over ``n``
    features, so the output lies in ``beta -+ |gamma| sqrt(n)``:
    loose, but finite, so the layers after it keep their bounds.  ``size``: the
    number of values normalised together (default: the last axis).
    """
    cfg = node.config
    ndim = len(in_shape)
    axes = cfg.get("axis", -1)
    axes = [a % ndim for a in (axes if isinstance(axes, (list, tuple)) else [axes])]
    if axes != [ndim - 1]:
        raise NoIntervalRule("LayerNormalization over axes other than the last")
    if cfg.get("rms_scaling"):  # Keras divides by the std without centring: unbounded as the spread -> 0
        raise NoIntervalRule("LayerNormalization with rms_scaling has no input-independent range")
    m = np.float32(np.sqrt(in_shape[-1] if size is None else size))
    gamma = store.get(node.name, "gamma") if cfg.get("scale", True) else None
    beta = store.get(node.name, "beta") if cfg.get("center", True) else None
    g = np.abs(gamma) if gamma is not None else np.float32(1.0)
    c = beta if beta is not None else np.float32(0.0)
    shape = (1, *in_shape[1:])
    return (np.broadcast_to(c - g * m, shape).astype(np.float32),
            np.broadcast_to(c + g * m, shape).astype(np.float32))


class NestedModelRule(OpaqueRule):
    nested = True

    def __init__(self) -> None:
        super().__init__("nested models are kept whole", "left whole; its layers are listed under it")


# ====================================================================== helpers
def _prepare_conv(cfg: dict[str, Any], k: np.ndarray) -> PreparedConv | PreparedDepthwise | None:
    """A kernel in matmul layout for :mod:`..kernels` (None: Keras computes it)."""
    spec = conv_spec(cfg, k.shape)
    groups = int(cfg.get("groups", 1))
    if spec is None:
        return None
    if groups == 1:
        return PreparedConv.build(k, spec)
    if k.shape[-2] == 1 and groups == k.shape[-1]:  # depthwise written as a grouped conv
        return PreparedDepthwise.build(k, spec)
    return None


def _prepare_depthwise(cfg: dict[str, Any], k: np.ndarray) -> PreparedDepthwise | None:
    spec = conv_spec(cfg, k.shape)
    return None if spec is None else PreparedDepthwise.build(k, spec, int(k.shape[-1]))


def _prepare_separable(cfg: dict[str, Any], dk: np.ndarray,
                       pk: np.ndarray) -> tuple[PreparedDepthwise, PreparedConv] | None:
    spec = conv_spec(cfg, dk.shape)
    if spec is None:
        return None
    point = ConvSpec(tuple(1 for _ in spec.kernel), tuple(1 for _ in spec.kernel), tuple(1 for _ in spec.kernel),
                     "valid")
    return PreparedDepthwise.build(dk, spec, int(dk.shape[-1])), PreparedConv.build(pk, point)


def resized_entry(config: dict[str, Any], key: str | None, width: int) -> dict[str, Any] | None:
    """``config`` with ``width`` written into ``config[key]`` (a number, or the last entry of a shape list).

    None when there is nothing to write (no key, or the width is already there).
    """
    if key is None:
        return None
    value = config[key]
    if isinstance(value, (list, tuple)):
        if int(value[-1]) == width:
            return None
        return {**config, key: (*value[:-1], width)}
    return {**config, key: width} if int(value) != width else None


def _conv_linear(prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray, var: str, tag: str,
                 prepare: Any) -> Interval:
    """Centre and radius through a (depthwise) convolution: NumPy kernels, else Keras' own op."""
    k = prop.store[(node.name, var)]
    prep = prop.prepared(node, tag, lambda: prepare(node.config, k)) if prop.fast else None
    if prep is not None:
        return prep.both(c, r)
    import keras

    op = keras.ops.conv if tag == "conv" else keras.ops.depthwise_conv
    kw = _conv_kwargs(node.config)
    return np.asarray(op(c, k, **kw), np.float32), np.asarray(op(r, np.abs(k), **kw), np.float32)


def _last(shape: tuple) -> int:
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _short(w: Any) -> str:
    return str(w.path).rsplit("/", 1)[-1]


def _concat(xs: list[np.ndarray]) -> np.ndarray:
    """Concatenate on the channel axis, broadcasting the batch axis (bounds have batch 1, changes P)."""
    n = max(x.shape[0] for x in xs)
    return np.concatenate([np.broadcast_to(x, (n, *x.shape[1:])) for x in xs], axis=-1)


def _fill(prop: Propagator, ins: list[Interval | None], tids: list[int], batch: int) -> list[Interval]:
    out = []
    for x, tid in zip(ins, tids):
        if x is None:
            z = prop.zeros(batch, tid)
            x = (z, z)
        out.append(x)
    return out


# ====================================================================== the table
def _register_builtins() -> None:
    r = REGISTRY.builtin
    r("InputLayer", InputRule())
    r("Dense", DenseRule())
    r(("Conv1D", "Conv2D", "Conv3D"), ConvRule())
    r(("DepthwiseConv1D", "DepthwiseConv2D"), DepthwiseRule())
    r(("SeparableConv1D", "SeparableConv2D"), SeparableRule())
    r("BatchNormalization", BatchNormRule())
    r("LayerScale", ChannelAffineRule(single_variable=True, size_key="projection_dim",
                                      description="ConvNeXt layer scale: per-channel gamma carried through"))
    r("PReLU", PReLURule())
    r("Activation", ActivationLayerRule())
    r("ReLU", ReLURule())
    r("LeakyReLU", LeakyReLURule(description="passes channels through"))
    r("ELU", ELURule(description="passes channels through"))
    r("Softmax", SoftmaxRule())
    for n in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
              "GaussianDropout", "AlphaDropout", "ActivityRegularization"):
        r(n, PassThroughRule(takes_training=True, description="identity at inference; channels pass through"))
    r("Identity", PassThroughRule(description="identity"))
    for d in "123":
        r(f"MaxPooling{d}D", PassThroughRule(max_like=True))
        r(f"AveragePooling{d}D", PassThroughRule())
        r(f"ZeroPadding{d}D", PassThroughRule(pads_zeros=True, description="channels pass through (zero borders)"))
        r(f"Cropping{d}D", PassThroughRule())
        r(f"UpSampling{d}D", PassThroughRule(transparent=False))
        r(f"GlobalAveragePooling{d}D", PassThroughRule(spatial=True))
        r(f"GlobalMaxPooling{d}D", PassThroughRule(spatial=True, max_like=True))
    r("Flatten", FlattenRule())
    r("Reshape", ReshapeRule())
    r("Concatenate", ConcatenateRule())
    for op in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
        r(op, JoinRule(op.lower()))
    for op in ("Add", "Subtract", "Multiply", "Maximum", "Minimum"):  # x + y etc. in a functional model
        r(op, JoinRule(op.lower(), operation=True, description="`x + y`-style joins of two same-shape tensors: "
                                                                  "coupled like the layers"), op=True)
    r("Rescaling", RescalingRule())
    r("Normalization", NormalizationRule())
    r("LayerNormalization", LayerNormRule())
    r(("Functional", "Sequential", "Model"), NestedModelRule())
    r(("RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"),
      OpaqueRule("this recurrent layer kind is not pruned (SimpleRNN, LSTM and GRU are)"))
    r(("GroupedQueryAttention", "Attention", "AdditiveAttention"),
      OpaqueRule("this attention kind is not pruned (MultiHeadAttention heads are)"))
    r("Lambda", OpaqueRule("arbitrary code (Lambda) cannot be resized safely"))


_register_builtins()
