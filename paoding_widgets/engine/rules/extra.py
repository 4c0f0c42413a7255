"""Rules for ``Embedding``, ``EinsumDense`` (where it is a Dense) and ``Conv1D/2D/3DTranspose``.

* ``Embedding``: an output dimension is a column of the table; removing it
  (and the readers' rows) is exact.  Values lie within each column's min and
  max over the vocabulary, whatever the tokens.
* ``EinsumDense`` whose equation contracts the input's last axis into the
  output's last axis (``...c,cd->...d``, bias on ``d`` or none) is a Dense on the
  last axis and prunes like one; any other equation is left whole.
* Transposed convolutions: filters are the kernel's second-to-last axis, the
  input channels its last; interval bounds go through ``keras.ops.conv_transpose``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import REGISTRY, Interval, LayerRule, NoIntervalRule
from .builtin import ConvRule, DenseRule, resized_entry

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


def register() -> None:
    REGISTRY.builtin("Embedding", EmbeddingRule())
    REGISTRY.builtin("EinsumDense", EinsumDenseRule())
    REGISTRY.builtin(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), ConvTransposeRule())
