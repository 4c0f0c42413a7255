"""Rules for recurrent layers: the hidden units of ``SimpleRNN``, ``LSTM`` and ``GRU``.

A hidden unit ``c`` owns one column per gate in the input kernel and in the
recurrent kernel (``c + j * units`` for gate ``j``), its row of the recurrent
kernel, its bias entries, and the rows of every layer that reads the outputs.
Removing it (all of those zeroed) is exact: with zero weights and bias, an
LSTM's cell state stays 0 from its zero start, a GRU's state halves towards 0
from 0, a SimpleRNN's ``tanh(0) = 0`` -- so the unit's output is 0 at every
step and the other units never see it.  Units are removed, never merged.

Bounds of values: the recurrence is unrolled over the sequence with interval
arithmetic (NumPy, all units at once, centre/radius through both kernels,
interval products for the gates, a GRU's ``z h + (1 - z) hh`` as a convex mix),
from the zero start; the result is intersected with the activation's range
(``[-1, 1]`` for ``tanh``: an LSTM's ``o * tanh(c)``, a GRU's convex mix of
``tanh`` values and its zero start), so it is never looser than that range --
on long sequences the unrolled intervals widen step by step until the range is
all that is left.  A ReLU recurrence has no range: its unrolled bound is all
there is (finite, possibly huge).  Bounds of changes stay the range's width
(a change of the input can move an output anywhere in the range): a ReLU
recurrence stops them, with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..activations import activation_name
from ..activations import rule_for as activation_rule
from .base import REGISTRY, Interval, LayerRule, NoIntervalRule
from .builtin import resized_entry

if TYPE_CHECKING:
    from ..bounds import Bounds, Propagator
    from ..graph import LayerNode, ModelGraph

_RANGES = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "softsign": (-1.0, 1.0)}


class RecurrentRule(LayerRule):
    """``SimpleRNN`` (1 gate), ``GRU`` (3 gates) and ``LSTM`` (4 gates): hidden units removed."""

    description = ("hidden units removed (every gate's columns of both kernels, the recurrent row, the bias, "
                   "the readers' rows); return_sequences and return_state both ways; bounded by the recurrence "
                   "unrolled with interval arithmetic, within the activation's range (tanh: [-1, 1])")
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
        act = activation_name(node.config.get("activation", "tanh"))
        if act not in _RANGES:
            raise NoIntervalRule(f"{node.name}: a {act!r} recurrence has no input-independent range")
        return _RANGES[act]

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        names = ("kernel", "recurrent_kernel", "bias")
        v: dict[str, np.ndarray] = {n: prop.store[(node.name, n)] for n in names if n in node.var_shapes}
        lo, hi = unroll(self.gates, node.config, v, ins[0], node.name)
        return _clip_to_range(self._range_or_none(node), lo, hi)

    def _range_or_none(self, node: LayerNode) -> tuple[float, float] | None:
        try:
            return self._range(node)
        except NoIntervalRule:
            return None

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
                   "group, named `<layer>/backward` when separate); the wrapped layer must be a SimpleRNN, GRU or "
                   "LSTM; bounded like the wrapped layer")

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

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        inner = self._inner(node)
        if inner is None:
            raise NoIntervalRule(f"{node.name}: wraps a layer that is not a SimpleRNN, GRU or LSTM")
        kind, cfg = inner
        names = self._variables(node)
        back_cfg = (node.config.get("backward_layer") or {}).get("config") or {
            **cfg, "go_backwards": not cfg.get("go_backwards", False)}
        sides = []
        for side, c in (("forward", cfg), ("backward", back_cfg)):
            v = {k: prop.store[(node.name, n)] for k, n in names[side].items()}
            lo, hi = unroll(_GATES[kind], c, v, ins[0], node.name)
            if c.get("return_sequences") and c.get("go_backwards"):  # Keras flips the backward outputs back
                lo, hi = lo[:, ::-1], hi[:, ::-1]
            sides.append((lo, hi))
        (fl, fh), (bl, bh) = sides
        mode = node.config.get("merge_mode", "concat")
        if mode == "concat":
            lo, hi = np.concatenate([fl, bl], -1), np.concatenate([fh, bh], -1)
        elif mode == "sum":
            lo, hi = fl + bl, fh + bh
        elif mode == "ave":
            lo, hi = (fl + bl) / 2, (fh + bh) / 2
        elif mode == "mul":
            lo, hi = _mul((fl, fh), (bl, bh))
        else:  # None: the first output is the forward direction's
            lo, hi = fl, fh
        return _clip_to_range(self._range_or_none(node), lo, hi)

    def _range(self, node: LayerNode) -> tuple[float, float]:
        inner = self._inner(node)
        act = activation_name((inner[1] if inner else {}).get("activation", "tanh"))
        if act not in _RANGES:
            raise NoIntervalRule(f"{node.name}: a {act!r} recurrence has no input-independent range")
        lo, hi = _RANGES[act]
        if node.config.get("merge_mode") == "sum":
            return 2 * lo, 2 * hi
        if node.config.get("merge_mode") == "mul":
            return min(lo * hi, lo * lo, hi * hi), max(lo * hi, lo * lo, hi * hi)
        return lo, hi


# ---------------------------------------------------------------------- the unrolled recurrence
def _mul(a: Interval, b: Interval) -> Interval:
    """Interval product."""
    c = np.stack([a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]])
    return c.min(0), c.max(0)


def _matmul(x: Interval, w: np.ndarray, w_abs: np.ndarray) -> Interval:
    c, r = (x[0] + x[1]) * 0.5, (x[1] - x[0]) * 0.5
    c, r = c @ w, r @ w_abs
    return c - r, c + r


def _add(a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], a[1] + b[1]


def _image(name: str, x: Interval, layer: str) -> Interval:
    rule = activation_rule(name)
    if rule is None:
        raise NoIntervalRule(f"{layer}: no interval rule for the recurrent activation {name!r}")
    return rule.image(*x)


def _clip_to_range(rng: tuple[float, float] | None, lo: np.ndarray, hi: np.ndarray) -> Interval:
    """The unrolled bound intersected with the activation's range (never looser than the range)."""
    if rng is not None:
        lo, hi = np.maximum(lo, rng[0]), np.minimum(hi, rng[1])
    return lo.astype(np.float32), hi.astype(np.float32)


def unroll(gates: int, cfg: dict[str, Any], v: dict[str, np.ndarray], x: Interval, layer: str) -> Interval:
    """Bounds of a SimpleRNN (1 gate), GRU (3) or LSTM (4) output for inputs in ``x`` (shape ``(1, T, F)``).

    Interval arithmetic over the sequence, from the zero start, vectorised over the units:
    ``(1, T, units)`` with ``return_sequences``, else ``(1, units)`` (the last step), in the order
    Keras returns them (a ``go_backwards`` layer's outputs run backwards).
    """
    kernel, rec = v["kernel"].astype(np.float64), v["recurrent_kernel"].astype(np.float64)
    u = rec.shape[0]
    act = activation_name(cfg.get("activation", "tanh"))
    ract = activation_name(cfg.get("recurrent_activation", "sigmoid"))
    lo_x, hi_x = (np.asarray(a, np.float64)[0] for a in x)  # (T, F)
    if cfg.get("go_backwards"):
        lo_x, hi_x = lo_x[::-1], hi_x[::-1]
    bias = v.get("bias")
    bias = np.zeros(kernel.shape[1]) if bias is None else bias.astype(np.float64)
    reset_after = gates == 3 and bool(cfg.get("reset_after", True))
    in_bias, rec_bias = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros(kernel.shape[1]))
    xs = _matmul((lo_x, hi_x), kernel, np.abs(kernel))  # (T, gates * u): every step's input part at once
    xs = (xs[0] + in_bias, xs[1] + in_bias)
    rec_abs = np.abs(rec)
    zero = np.zeros(u)
    h: Interval = (zero, zero)
    c: Interval = (zero, zero)
    outs_lo, outs_hi = [], []
    for t in range(xs[0].shape[0]):
        xt = (xs[0][t], xs[1][t])
        if gates == 1:
            h = _image(act, _add(xt, _matmul(h, rec, rec_abs)), layer)
        elif gates == 4:
            z = _add(xt, _matmul(h, rec, rec_abs))
            part = [(z[0][j * u:(j + 1) * u], z[1][j * u:(j + 1) * u]) for j in range(4)]
            i, f, o = (_image(ract, part[j], layer) for j in (0, 1, 3))
            g = _image(act, part[2], layer)
            c = _add(_mul(f, c), _mul(i, g))
            h = _mul(o, _image(act, c, layer))
        else:
            if reset_after:
                inner = _matmul(h, rec, rec_abs)
                inner = (inner[0] + rec_bias, inner[1] + rec_bias)
            else:
                inner = _matmul(h, rec[:, :2 * u], rec_abs[:, :2 * u])
            zg = _image(ract, (xt[0][:u] + inner[0][:u], xt[1][:u] + inner[1][:u]), layer)
            rg = _image(ract, (xt[0][u:2 * u] + inner[0][u:2 * u], xt[1][u:2 * u] + inner[1][u:2 * u]), layer)
            if reset_after:
                rh = _mul(rg, (inner[0][2 * u:], inner[1][2 * u:]))
            else:
                rh = _matmul(_mul(rg, h), rec[:, 2 * u:], rec_abs[:, 2 * u:])
            hh = _image(act, (xt[0][2 * u:] + rh[0], xt[1][2 * u:] + rh[1]), layer)
            if np.all(zg[0] >= 0) and np.all(zg[1] <= 1):  # z h + (1 - z) hh is a convex mix: linear in z
                lo = np.minimum(zg[0] * h[0] + (1 - zg[0]) * hh[0], zg[1] * h[0] + (1 - zg[1]) * hh[0])
                hi = np.maximum(zg[0] * h[1] + (1 - zg[0]) * hh[1], zg[1] * h[1] + (1 - zg[1]) * hh[1])
                h = (lo, hi)
            else:
                one_minus = (1 - zg[1], 1 - zg[0])
                h = _add(_mul(zg, h), _mul(one_minus, hh))
        outs_lo.append(h[0])
        outs_hi.append(h[1])
    if cfg.get("return_sequences"):
        return np.stack(outs_lo)[None], np.stack(outs_hi)[None]
    return h[0][None], h[1][None]


def register() -> None:
    REGISTRY.builtin("Bidirectional", BidirectionalRule())
    REGISTRY.builtin("SimpleRNN", RecurrentRule(gates=1))
    REGISTRY.builtin("GRU", RecurrentRule(gates=3))
    REGISTRY.builtin("LSTM", RecurrentRule(gates=4))
