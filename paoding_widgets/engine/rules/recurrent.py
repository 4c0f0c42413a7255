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
from .builtin import resized_entry

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
        return resized_entry(config, self.size_key, width)

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


_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}


class BidirectionalRule(RecurrentRule):
    """``Bidirectional`` around a SimpleRNN, GRU or LSTM: each direction's hidden units.

    With ``merge_mode="concat"`` the two directions are two groups (the output's
    first half, then the second); with ``sum``/``ave``/``mul`` unit ``c`` of both
    directions makes output channel ``c``, so they are one group, pruned together.
    """

    description = ("each direction's hidden units removed (concat: two groups; sum/ave/mul: one coupled "
                   "group); the wrapped layer must be a SimpleRNN, GRU or LSTM")

    def _inner(self, node: LayerNode) -> tuple[str, dict[str, Any]] | None:
        layer = node.config.get("layer") or {}
        kind = layer.get("class_name")
        return (kind, layer.get("config", {})) if kind in _GATES else None

    def _variables(self, node: LayerNode) -> dict[str, dict[str, str]]:
        from ..weights import layer_variable_names

        out: dict[str, dict[str, str]] = {}
        for name, w in zip(layer_variable_names(node.layer), node.layer.weights):
            parts = str(w.path).split("/")
            side = next((d for d in ("forward", "backward") if any(p.startswith(d + "_") for p in parts)), None)
            if side is not None:
                out.setdefault(side, {})[parts[-1]] = name
        return out

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        inner = self._inner(node)
        cfg = node.config
        if inner is None:
            graph.opaque(node, "wraps a layer that is not a SimpleRNN, GRU or LSTM")
            return
        kind, inner_cfg = inner
        if inner_cfg.get("return_state") or inner_cfg.get("stateful"):
            graph.opaque(node, "returned or kept states of a Bidirectional layer are not supported")
            return
        v = self._variables(node)
        if any(k not in v.get(side, {}) for side in ("forward", "backward") for k in ("kernel", "recurrent_kernel")):
            graph.opaque(node, "could not find both directions' kernels")
            return
        u, gates = int(inner_cfg["units"]), _GATES[kind]
        cols = np.arange(u)[:, None] + u * np.arange(gates)[None, :]
        mode = cfg.get("merge_mode", "concat")
        src = node.inputs[0]
        gids = {}
        for side in ("forward", "backward"):
            graph.consume(node, src, v[side]["kernel"], 0)
            if side == "forward" or mode == "concat" or mode is None:
                gids[side] = graph.new_group(u, "conv", label=f"{node.name}/backward" if side == "backward" else "")
            else:
                gids[side] = gids["forward"]  # sum / ave / mul: channel c is both directions' unit c
            g = gids[side]
            graph.produce(node, g, v[side]["kernel"], 1, cols)
            graph.produce(node, g, v[side]["recurrent_kernel"], 1, cols)
            graph.produce(node, g, v[side]["recurrent_kernel"], 0)
            if "bias" in v[side]:
                graph.produce(node, g, v[side]["bias"], len(node.var_shapes[v[side]["bias"]]) - 1, cols)
        if mode == "concat":
            both = ((gids["forward"], u), (gids["backward"], u))
            graph.set_layout(node.outputs[0], ((both, 1),))
        elif mode is None:
            for tid, side in zip(node.outputs, ("forward", "backward")):
                graph.set_layout(tid, graph.channels(gids[side], u))
        else:
            graph.set_layout(node.outputs[0], graph.channels(gids["forward"], u))

    def resize(self, graph: ModelGraph, store: Any, node: LayerNode) -> dict[str, Any] | None:
        inner = self._inner(node)
        if inner is None:
            return None
        ids = list(dict.fromkeys(g.id for g in graph.groups if any(s.layer == node.name for s in g.producers)))
        alive = [int(store.alive[i].sum()) for i in ids]
        fwd, bwd = (alive[0], alive[-1]) if alive else (None, None)
        u = int(inner[1]["units"])
        layout = graph.layouts.get(node.inputs[0], ())
        inputs_shrink = any(g is not None and not store.alive[g].all() for segs, _ in layout for g, _n in segs)
        if fwd == u and bwd == u and not inputs_shrink:
            return None
        cfg = {**node.config}
        layer = {**cfg["layer"], "config": {**cfg["layer"]["config"], "units": fwd}}
        back = cfg.get("backward_layer") or {**cfg["layer"], "config": {
            **cfg["layer"]["config"], "go_backwards": not cfg["layer"]["config"].get("go_backwards", False),
            "name": "backward_" + str(cfg["layer"]["config"].get("name", "")).removeprefix("forward_")}}
        back = {**back, "config": {**back["config"], "units": bwd}}
        # serialised sub-layers carry the input shape they were built with: drop it, the inputs shrink too
        layer.pop("build_config", None)
        back.pop("build_config", None)
        cfg["layer"], cfg["backward_layer"] = layer, back
        return cfg

    def _range(self, node: LayerNode) -> tuple[float, float]:
        inner = self._inner(node)
        act = str((inner[1] if inner else {}).get("activation", "tanh"))
        if act not in _RANGES:
            raise NoIntervalRule(f"{node.name}: a {act!r} recurrence has no input-independent range")
        lo, hi = _RANGES[act]
        if node.config.get("merge_mode") == "sum":
            return 2 * lo, 2 * hi
        if node.config.get("merge_mode") == "mul":
            return min(lo * hi, lo * lo, hi * hi), max(lo * hi, lo * lo, hi * hi)
        return lo, hi


def register() -> None:
    REGISTRY.builtin("Bidirectional", BidirectionalRule())
    REGISTRY.builtin("SimpleRNN", RecurrentRule(gates=1))
    REGISTRY.builtin("GRU", RecurrentRule(gates=3))
    REGISTRY.builtin("LSTM", RecurrentRule(gates=4))
