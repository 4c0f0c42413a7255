"""Rules for recurrent layers: the hidden units of ``SimpleRNN``, ``LSTM`` and ``GRU``.

A hidden unit ``c`` owns one column per gate in the input kernel and in the
recurrent kernel (``c + j * units`` for gate ``j``), its row of the recurrent
kernel, its bias entries, and the rows of every layer that reads the outputs.
Removing it (all of those zeroed) is exact: with zero weights and bias, an
LSTM's cell state stays 0 from its zero start, a GRU's state halves towards 0
from 0, a SimpleRNN's ``tanh(0) = 0`` -- so the unit's output is 0 at every
step and the other units never see it.  Units are removed, never merged.

Bounds: the outputs of a ``tanh`` (or ``sigmoid``) recurrence lie in the
activation's range whatever the input -- ``[-1, 1]`` for ``tanh`` (an LSTM's
``o * tanh(c)``, a GRU's convex mix of ``tanh`` values and its zero start) --
so values are that range and a change is bounded by its width: loose but
sound, and input-independent, so the layers after keep finite bounds.  A ReLU
recurrence has no such range and stops the bounds (with the reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .base import REGISTRY, Interval, LayerRule, NoIntervalRule

if TYPE_CHECKING:
    from ..bounds import Bounds, Propagator
    from ..graph import LayerNode, ModelGraph

_RANGES = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "softsign": (-1.0, 1.0)}


class RecurrentRule(LayerRule):
    """``SimpleRNN`` (1 gate), ``GRU`` (3 gates) and ``LSTM`` (4 gates): hidden units removed."""

    description = ("hidden units removed (every gate's columns of both kernels, the recurrent row, the bias, "
                   "the readers' rows); return_sequences and return_state both ways; bounded by the activation's "
                   "range (tanh: [-1, 1])")
    unit_kind = "conv"  # removed by the strategies' removal criteria, never merged
    size_key = "units"
    kernel_var = "kernel"
    gates = 1

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        cfg = node.config
        if cfg.get("stateful"):
            graph.opaque(node, "stateful recurrent layers keep state between calls; left whole")
            return
        for var in ("kernel", "recurrent_kernel"):
            if var not in node.var_shapes:
                graph.opaque(node, f"has no variable {var!r}")
                return
        u = int(cfg[self.size_key])
        src = node.inputs[0]
        graph.consume(node, src, "kernel", 0)
        gid = graph.new_group(u, "conv")
        cols = np.arange(u)[:, None] + u * np.arange(self.gates)[None, :]  # unit c: column c of every gate
        graph.produce(node, gid, "kernel", 1, cols)
        graph.produce(node, gid, "recurrent_kernel", 1, cols)
        graph.produce(node, gid, "recurrent_kernel", 0)  # its state feeds every unit back: its row goes too
        if "bias" in node.var_shapes:
            graph.produce(node, gid, "bias", len(node.var_shapes["bias"]) - 1, cols)  # GRU reset_after: (2, 3u)
        for tid in node.outputs:  # the sequence or last output, and any returned states
            graph.set_layout(tid, graph.channels(gid, u))

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        return {**config, self.size_key: width} if int(config[self.size_key]) != width else None

    def _range(self, node: LayerNode) -> tuple[float, float]:
        act = str(node.config.get("activation", "tanh"))
        if act not in _RANGES:
            raise NoIntervalRule(f"{node.name}: a {act!r} recurrence has no input-independent range")
        return _RANGES[act]

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        lo, hi = self._range(node)
        shape = (1, *prop.graph.shape(node.outputs[0])[1:])
        return np.full(shape, lo, np.float32), np.full(shape, hi, np.float32)

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        lo, hi = self._range(node)  # any two outputs lie in the range: so does their difference
        w = np.full((batch, *prop.graph.shape(node.outputs[0])[1:]), hi - lo, np.float32)
        return -w, w

    def flops(self, layer: Any, positions: int) -> int:
        return positions * sum(int(np.prod(w.shape)) for w in layer.weights if len(w.shape) == 2)


def register() -> None:
    REGISTRY.builtin("SimpleRNN", RecurrentRule(gates=1))
    REGISTRY.builtin("GRU", RecurrentRule(gates=3))
    REGISTRY.builtin("LSTM", RecurrentRule(gates=4))
