"""Rules for ``Embedding``, ``EinsumDense`` (where it is a Dense) and ``Conv1D/2D/3DTranspose``.

* ``Embedding``: an output dimension is a column of the table; removing it
  (and the readers' rows) is exact.  Values lie within each column's min and
  max over the vocabulary, whatever the tokens.
* ``EinsumDense`` whose equation contracts the input's last axis into the
  output's last axis (``...c,cd->...d``, bias on ``d`` or none) is a Dense on the
  last axis and prunes like one; any other equation is left whole.
* ``GroupNormalization``: a unit is one group of channels -- the producer's
  channels of that group and the layer's gamma and beta for them go together
  (the graph regroups the producer's units); ``groups`` shrinks.  Removing a
  whole group is exact: the others are normalised on their own, and the
  removed one's zero channels normalise to 0 (then gamma = beta = 0).
* Transposed convolutions: filters are the kernel's second-to-last axis, the
  input channels its last; interval bounds go through ``keras.ops.conv_transpose``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import REGISTRY, Interval, LayerRule, NoIntervalRule
from .builtin import ConvRule, DenseRule, layer_norm_range, resized_entry

if TYPE_CHECKING:
    from ..bounds import Bounds, Propagator
    from ..graph import LayerNode, ModelGraph


class EmbeddingRule(LayerRule):
    """``Embedding``: output dimensions (table columns) removed."""

    description = "output dimensions removed (table columns; the readers' rows follow)"
    unit_kind = "conv"
    size_key = "output_dim"
    kernel_var = "embeddings"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        if len(node.var_shapes.get("embeddings", ())) != 2:
            graph.opaque(node, "has no (vocabulary, dimensions) table")
            return
        n = int(node.config[self.size_key])
        gid = graph.new_group(n, "conv")
        graph.produce(node, gid, "embeddings", 1)
        graph.set_layout(node.outputs[0], graph.channels(gid, n))

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        return resized_entry(config, self.size_key, width)

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        table = prop.store[(node.name, "embeddings")]
        shape = (1, *prop.graph.shape(node.outputs[0])[1:])
        return (np.broadcast_to(table.min(0), shape).astype(np.float32),
                np.broadcast_to(table.max(0), shape).astype(np.float32))


_EQUATION = re.compile(r"^([a-z]*)([a-z]),\2([a-z])->\1\3$")


class EinsumDenseRule(DenseRule):
    """``EinsumDense`` as a Dense on the last axis (``...c,cd->...d``)."""

    description = "pruned like a Dense when its equation is `...c,cd->...d` (bias on d or none); else left whole"
    size_key = "output_shape"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        eq = str(node.config.get("equation", "")).replace(" ", "")
        m = _EQUATION.match(eq)
        bias_axes = node.config.get("bias_axes") or ""
        if m is None or bias_axes not in ("", m.group(3)) or len(node.var_shapes.get("kernel", ())) != 2:
            graph.opaque(node, f"equation {eq!r} (bias axes {bias_axes!r}) is not a Dense on the last axis")
            return
        super().read(graph, node)

    def units(self, config: dict[str, Any]) -> int:
        return int(list(config["output_shape"])[-1])



class ConvTransposeRule(ConvRule):
    """``Conv1D/2D/3DTranspose``: filters on the kernel's axis -2, input channels on axis -1."""

    description = "filters removed (kernel axis -2); input channels read on axis -1"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        nd = node.var_ndim(self.kernel_var or "kernel")
        self.produce_units(graph, node, int(node.config[self.size_key]), nd - 1, nd - 2, "conv")

    def linear(self, prop: Propagator, node: LayerNode, c: np.ndarray, r: np.ndarray) -> Interval:
        import keras

        cfg = node.config
        k = prop.store[(node.name, self.kernel_var)]
        kw = dict(strides=cfg["strides"], padding=cfg["padding"], output_padding=cfg.get("output_padding"),
                  data_format="channels_last", dilation_rate=cfg["dilation_rate"])
        try:
            return (np.asarray(keras.ops.conv_transpose(c, k, **kw), np.float32),
                    np.asarray(keras.ops.conv_transpose(r, np.abs(k), **kw), np.float32))
        except Exception as exc:  # an unusual configuration: bounds stop here, pruning goes on
            raise NoIntervalRule(f"{node.name}: {exc}") from exc

    def absorbs_constant(self, config: dict[str, Any]) -> bool:
        return False  # overlapping strides sum a constant a different number of times at the borders


class GroupNormRule(LayerRule):
    """``GroupNormalization`` over the channel axis: its groups of channels are pruned whole."""

    description = ("groups pruned whole (a unit is a group of channels: the producer's channels, gamma and beta "
                   "go together; `groups` shrinks); bounded: beta -+ |gamma| sqrt(group size)")
    size_key = "groups"

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        src = node.inputs[0]
        shape = graph.shape(src)
        axis = node.config.get("axis", -1)
        if not isinstance(axis, int) or axis % len(shape) != len(shape) - 1:
            graph.opaque(node, f"normalises groups along axis {axis}, not the channel axis")
            return
        layout = graph.layout(src)
        channels, groups = int(shape[-1]), int(node.config["groups"])
        if groups < 1 or channels % groups:
            graph.opaque(node, f"groups={groups} does not split {channels} channels evenly")
            return
        per = channels // groups  # Keras splits the channels into contiguous groups of this size
        gids = graph.groups_in(layout)
        if gids:
            if len(layout) != 1 or layout[0][1] != 1 or len(layout[0][0]) != 1:
                graph.opaque(node, "its channels come from several sources (concatenated or flattened): "
                                   "a group of channels would not be one unit")
                return
            width = graph.pending(gids[0]).width
            if per % width and width % per:
                graph.opaque(node, f"groups of {per} channels cut across units of {width} channels")
                return
            if per % width == 0:
                graph.coarsen(gids[0], per // width)
            for var in node.var_shapes:
                graph.passthrough(node, src, var, 0)
        graph.set_layout(node.outputs[0], layout)

    def resize(self, graph: ModelGraph, store: Any, node: LayerNode) -> dict[str, Any] | None:
        channels, groups = int(graph.shape(node.inputs[0])[-1]), int(node.config["groups"])
        width = graph.alive_channels(store.alive, graph.layout(node.inputs[0]))
        new = width // (channels // groups)
        return {**node.config, "groups": new} if new != groups else None

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        shape = prop.graph.shape(node.inputs[0])
        positions = int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1
        per = int(shape[-1]) // int(node.config["groups"])
        # each group is normalised over its channels at every position: a centred, normalised vector of m
        # entries has entries within sqrt(m - 1)
        return layer_norm_range(prop.store, node, shape, size=per * positions)

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        if inject is not None:
            raise NoIntervalRule("cannot inject into GroupNormalization")
        lo, hi = base.out[node.outputs[0]]  # any two outputs lie in the fixed range: so does their difference
        w = np.broadcast_to(hi - lo, (batch, *lo.shape[1:]))
        return -w, w


def register() -> None:
    REGISTRY.builtin("GroupNormalization", GroupNormRule())
    REGISTRY.builtin("Embedding", EmbeddingRule())
    REGISTRY.builtin("EinsumDense", EinsumDenseRule())
    REGISTRY.builtin(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), ConvTransposeRule())
