"""Rule for ``MultiHeadAttention``: attention heads, key_dim and value_dim units as prunable units.

A head ``h`` is the slice ``[:, h, :]`` of the query, key and value kernels
(and ``[h, :]`` of their biases) and the rows ``[h, :, :]`` of the output
projection.  Removing it (all zeroed) is exact: its scores are all 0, its
softmax uniform, its values 0, so it adds 0 to the output; surgery shrinks
``num_heads``.  Heads are removed, never merged.  The layer also reads the
channels of its query, key and value inputs (their kernels' first axis).

Two more groups live inside the layer, shared by all heads (a unit goes in
every head at once):

* ``<layer>/value_dim``: unit ``j`` is column ``j`` of the value kernel in
  every head (``[:, :, j]``, bias ``[:, j]``) and the output projection's rows
  ``[:, j, :]`` that read it.  Removing it is exact (its values are 0).
* ``<layer>/key_dim``: unit ``j`` is column ``j`` of the query kernel (the
  producer) and of the key kernel (its reader: the scores are ``sum_j q_j
  k_j``).  Zeroing it removes ``q_j k_j`` from every score; surgery then
  shrinks ``key_dim``, which changes Keras' score scale ``1/sqrt(key_dim)``, so
  the smaller model's query kernel and bias are multiplied by
  ``sqrt(new/old)`` (:meth:`AttentionRule.physical_arrays`): the scores, and
  so the outputs, stay those of the edited model.

Bounds: each head's output is a convex combination (softmax weights) of its
value vectors, so it lies within the per-feature min and max of the values
over the key positions, whatever the scores; the output projection then maps
that box by interval arithmetic.  Sound, independent of the query and key,
loose where values spread.  Changes are not propagated through attention
(the strategies fall back to the readers' weights there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .base import REGISTRY, Interval, LayerRule, NoIntervalRule

if TYPE_CHECKING:
    from ..bounds import Bounds, Propagator
    from ..graph import LayerNode, ModelGraph
    from ..weights import WeightStore

_PARTS = ("query", "key", "value", "attention_output")
_DIMS = {"key_dim": ("query", "key"), "value_dim": ("value", "attention_output")}  # group: producer, reader


def _variables(node: LayerNode) -> dict[str, dict[str, str]]:
    """{"query": {"kernel": <store name>, "bias": ...}, ...} from the variables' paths."""
    from ..weights import layer_variable_names

    out: dict[str, dict[str, str]] = {}
    for name, w in zip(layer_variable_names(node.layer), node.layer.weights):
        parts = str(w.path).split("/")
        for part in _PARTS:
            if part in parts[:-1]:
                out.setdefault(part, {})[parts[-1]] = name
    return out


class AttentionRule(LayerRule):
    """``MultiHeadAttention``: heads removed; query/key/value kernels read the input channels."""

    description = ("attention heads removed (query/key/value slices and output rows; num_heads shrinks); "
                   "key_dim units (query and key columns in every head; the query is rescaled for the new "
                   "1/sqrt(key_dim)) and value_dim units (value columns, output rows) removed too; input channels "
                   "read by the three kernels; bounded by the values' range")
    unit_kind = "conv"
    kernel_var = None

    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        cfg = node.config
        if cfg.get("use_gate"):
            graph.opaque(node, "gated attention (use_gate) is not supported")
            return
        v = _variables(node)
        if any("kernel" not in v.get(p, {}) for p in _PARTS):
            graph.opaque(node, "could not find the query, key, value and output kernels")
            return
        q_in = node.inputs[0]
        val_in = node.inputs[1] if len(node.inputs) > 1 else q_in
        key_in = node.inputs[2] if len(node.inputs) > 2 else val_in
        heads = int(cfg["num_heads"])
        for part, tid in (("query", q_in), ("key", key_in), ("value", val_in)):
            if len(node.var_shapes[v[part]["kernel"]]) != 3:
                graph.opaque(node, f"{part} kernel is not (features, heads, dim): attention over several axes")
                return
            graph.consume(node, tid, v[part]["kernel"], 0)
        gid = graph.new_group(heads, "conv")
        for part in ("query", "key", "value"):
            graph.produce(node, gid, v[part]["kernel"], 1)
            if "bias" in v[part]:
                graph.produce(node, gid, v[part]["bias"], 0)
        # the output projection reads the heads inside the layer: its rows go with each head
        graph.read_units(node, gid, v["attention_output"]["kernel"], 0)
        # key_dim units: query columns, read by the key columns (scores are sum_j q_j k_j); value_dim units:
        # value columns, read by the output projection's rows
        for label, (src, reader) in _DIMS.items():
            n = int(node.var_shapes[v[src]["kernel"]][2])
            did = graph.new_group(n, "conv", label=f"{node.name}/{label}")
            graph.produce(node, did, v[src]["kernel"], 2)
            if "bias" in v[src]:
                graph.produce(node, did, v[src]["bias"], 1)
            axis = 2 if reader == "key" else 1
            graph.read_units(node, did, v[reader]["kernel"], axis)
            if reader == "key" and "bias" in v["key"]:
                graph.read_units(node, did, v["key"]["bias"], 1)
        if cfg.get("output_shape") is None and len(graph.layout(q_in)) == 1:
            # the output has the query's features (Keras sizes the projection by them): they pass through
            graph.passthrough(node, q_in, v["attention_output"]["kernel"], 2)
            if "bias" in v["attention_output"]:
                graph.passthrough(node, q_in, v["attention_output"]["bias"], 0)
            graph.set_layout(node.outputs[0], graph.layout(q_in))
        else:
            graph.set_layout(node.outputs[0], graph.channels(None, int(graph.shape(node.outputs[0])[-1])))

    def _sizes(self, graph: ModelGraph, store: WeightStore, node: LayerNode) -> dict[str, tuple[int, int]]:
        """{"num_heads" / "key_dim" / "value_dim": (original, alive)} of the layer's groups."""
        keys = {"": "num_heads", f"{node.name}/key_dim": "key_dim", f"{node.name}/value_dim": "value_dim"}
        out = {}
        for g in graph.groups:
            if any(s.layer == node.name for s in g.producers):
                out[keys.get(g.label, "num_heads")] = (g.size, int(store.alive[g.id].sum()))
        return out

    def resize(self, graph: ModelGraph, store: WeightStore, node: LayerNode) -> dict[str, Any] | None:
        sizes = self._sizes(graph, store, node)
        if all(n == alive for n, alive in sizes.values()):
            return None
        return {**node.config, **{key: alive for key, (_n, alive) in sizes.items()}}

    def physical_arrays(self, graph: ModelGraph, store: WeightStore, node: LayerNode,
                        arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, alive = self._sizes(graph, store, node).get("key_dim", (1, 1))
        if n == alive:
            return arrays
        # Keras scales the scores by 1/sqrt(key_dim): keep them those of the edited model
        s = np.float32(np.sqrt(alive / n))
        q = _variables(node)["query"]
        return {k: (a * s).astype(a.dtype) if k in q.values() else a for k, a in arrays.items()}

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        v = _variables(node)
        (vlo, vhi) = ins[1] if len(ins) > 1 else ins[0]
        k = prop.store[(node.name, v["value"]["kernel"])]  # (features, heads, dim)
        c, r = (vlo + vhi) * 0.5, (vhi - vlo) * 0.5
        vc = np.einsum("...f,fhd->...hd", c, k)
        vr = np.einsum("...f,fhd->...hd", r, np.abs(k))
        if "bias" in v["value"]:
            vc = vc + prop.store[(node.name, v["value"]["bias"])]
        lo, hi = vc - vr, vc + vr  # (1, T, heads, dim)
        seq_axes = tuple(range(1, lo.ndim - 2))
        lo, hi = lo.min(axis=seq_axes, keepdims=True), hi.max(axis=seq_axes, keepdims=True)  # any convex mix
        ko = prop.store[(node.name, v["attention_output"]["kernel"])]  # (heads, dim, out)
        oc = np.einsum("...hd,hdo->...o", (lo + hi) * 0.5, ko)
        orad = np.einsum("...hd,hdo->...o", (hi - lo) * 0.5, np.abs(ko))
        if "bias" in v["attention_output"]:
            oc = oc + prop.store[(node.name, v["attention_output"]["bias"])]
        shape = (1, *prop.graph.shape(node.outputs[0])[1:])
        return (np.broadcast_to(oc - orad, shape).astype(np.float32),
                np.broadcast_to(oc + orad, shape).astype(np.float32))

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        raise NoIntervalRule("changes are not propagated through attention")

    def flops(self, layer: Any, positions: int) -> int:
        return positions * sum(int(np.prod(w.shape)) for w in layer.weights if len(w.shape) == 3)


def register() -> None:
    REGISTRY.builtin("MultiHeadAttention", AttentionRule())
