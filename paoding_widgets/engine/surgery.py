"""Physical surgery: a new, smaller Keras model without the dead units.

Why: a pruned model is only useful if it is really smaller.  The graph already
knows every array position of every unit, so surgery is bookkeeping: delete the
dead positions from each array, shrink each producer's ``units``/``filters``
(and Reshape targets), rebuild the same graph with ``keras.models.clone_model``
and load the sliced weights.  The original model is never touched.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .graph import ModelGraph
from .weights import WeightStore, layer_variable_names


def dead_positions(graph: ModelGraph, store: WeightStore) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """For each array, the positions to delete along each axis."""
    out: dict[tuple[str, str], dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for g in graph.groups:
        dead = np.flatnonzero(~store.alive[g.id])
        if not len(dead):
            continue
        for s in g.slots():
            out[(s.layer, s.var)][s.axis].append(s.positions(dead))
    return {k: {ax: np.unique(np.concatenate(v)) for ax, v in axes.items()} for k, axes in out.items()}


def alive_width(graph: ModelGraph, store: WeightStore, tid: int) -> int:
    """Channels of tensor ``tid``'s last axis that survive (flattened positions included)."""
    total = 0
    for segs, rep in graph.layouts[tid]:
        width = sum(n if g is None else int(store.alive[g][:n].sum()) for g, n in segs)
        total += rep * width
    return total


def new_configs(graph: ModelGraph, store: WeightStore) -> dict[str, dict]:
    """Layer configs that change with the group sizes."""
    out: dict[str, dict] = {}
    for g in graph.groups:
        alive = int(store.alive[g.id].sum())
        if alive == g.size:
            continue
        for s in g.producers:
            node = graph.node(s.layer)
            cfg = out.setdefault(s.layer, node.layer.get_config())
            cfg["units" if node.type == "Dense" else "filters"] = alive
        for name in g.reshapes:
            node = graph.node(name)
            cfg = out.setdefault(name, node.layer.get_config())
            target = list(cfg["target_shape"])
            target[-1] = alive_width(graph, store, node.outputs[0])
            cfg["target_shape"] = tuple(target)
    return out


def physical_model(graph: ModelGraph, store: WeightStore) -> Any:
    """Build the smaller model; same layer names, same graph, same outputs."""
    import keras

    configs = new_configs(graph, store)
    deletions = dead_positions(graph, store)

    def clone(layer: Any) -> Any:
        cfg = configs.get(layer.name)
        if cfg is None:
            cfg = layer.get_config()
        return layer.__class__.from_config(cfg)

    model = graph.model
    new = keras.models.clone_model(model, clone_function=clone)
    if getattr(new, "compiled", False):
        # clone_model recompiles a compiled source, building a fresh optimizer whose state would triple
        # the exported file; a pruned model ships without training state (compile it to train).
        new.compiled = False
        new.optimizer = None
    for layer in new.layers:
        if not layer.weights:
            continue
        arrays = []
        for var in layer_variable_names(layer):
            arr = store[(layer.name, var)]
            for axis, pos in sorted(deletions.get((layer.name, var), {}).items()):
                arr = np.delete(arr, pos, axis=axis)
            arrays.append(arr)
        try:
            layer.set_weights(arrays)
        except ValueError as exc:
            raise RuntimeError(f"surgery produced wrong shapes for layer {layer.name!r}: {exc}") from exc
    return new
