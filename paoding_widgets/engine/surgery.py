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

from ..errors import SurgeryError
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
    return graph.alive_channels(store.alive, graph.layouts[tid])


def new_configs(graph: ModelGraph, store: WeightStore) -> dict[str, dict]:
    """Layer configs that change with the group sizes (each layer's rule says how)."""
    out: dict[str, dict] = {}
    for node in graph.nodes:
        cfg = node.rule.resize(graph, store, node)
        if cfg is not None:
            out[node.name] = cfg
    return out


def clone(model: Any, configs: dict[str, dict] | None = None) -> Any:
    """A structural copy of ``model`` with fresh weights, some layers rebuilt from ``configs``.

    Weight-free layers whose config does not change (a ``Lambda``, a Keras
    operation) are reused as they are, so a model the user built in memory
    clones even where ``from_config`` would refuse it in safe mode.
    """
    import keras

    configs = configs or {}

    def one(layer: Any) -> Any:
        cfg = configs.get(layer.name)
        if cfg is None:
            if not getattr(layer, "weights", None):
                return layer
            cfg = layer.get_config()
        try:
            return layer.__class__.from_config(cfg)
        except Exception as exc:
            raise SurgeryError(f"cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its config: "
                               f"{type(exc).__name__}: {exc}") from exc

    new = keras.models.clone_model(model, clone_function=one)
    if getattr(new, "compiled", False):
        # clone_model recompiles a compiled source, building a fresh optimizer whose state would triple
        # the exported file; a pruned model ships without training state (compile it to train).
        new.compiled = False
        new.optimizer = None
    return new


def physical_model(graph: ModelGraph, store: WeightStore) -> Any:
    """Build the smaller model; same layer names, same graph, same outputs.

    Layers whose config changes, or that own weights, are rebuilt from their
    config; weight-free layers whose config does not change (a ``Lambda``, a
    custom activation) are reused as they are -- the user's own in-memory
    model is trusted, and ``from_config`` would refuse a Lambda in safe mode.
    """
    new = clone(graph.model, new_configs(graph, store))
    deletions = dead_positions(graph, store)
    nodes = {n.name: n for n in graph.nodes}
    for layer in new.layers:
        if not layer.weights:
            continue
        arrays = {}
        for var in layer_variable_names(layer):
            arr = store[(layer.name, var)]
            for axis, pos in sorted(deletions.get((layer.name, var), {}).items()):
                arr = np.delete(arr, pos, axis=axis)
            arrays[var] = arr
        node = nodes.get(layer.name)
        if node is not None:  # its rule may rescale what depends on a size it lost (attention's key_dim)
            arrays = node.rule.physical_arrays(graph, store, node, arrays)
        try:
            layer.set_weights(list(arrays.values()))
        except ValueError as exc:
            raise SurgeryError(f"surgery produced wrong shapes for layer {layer.name!r}: {exc}") from exc
    return new


# ------------------------------------------------------------------ evaluation without surgery
class EditedModel:
    """One full-size clone of the model carrying the edited weights, kept and updated in place.

    Why: metrics are re-measured after every click.  Building the physically
    smaller model each time costs a ``clone_model`` (most of a second on
    ResNet50) and, for a compiled forward pass, a new trace (seconds); the
    edited full-size model computes the same outputs (a removed unit's
    weights are zero in every reader), so one clone is kept, only the layers
    whose arrays were written since (``WeightStore.changed``) are reloaded,
    and ``model.predict`` reuses its traced function.  Sizes come from
    :func:`pruned_size`, without building anything.
    """

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self.model = clone(graph.model)
        self._loaded: dict[str, tuple] = {}  # layer -> token of the arrays it holds

    def sync(self, store: WeightStore) -> Any:
        """Load what changed since the last call; returns the model."""
        for layer in self.model.layers:
            if not layer.weights:
                continue
            names = layer_variable_names(layer)
            token = tuple((store.changed.get((layer.name, n), 0), id(store.arrays[(layer.name, n)])) for n in names)
            if self._loaded.get(layer.name) != token:
                layer.set_weights([store[(layer.name, n)] for n in names])
                self._loaded[layer.name] = token
        return self.model


def pruned_shapes(graph: ModelGraph, store: WeightStore) -> dict[tuple[str, str], tuple[int, ...]]:
    """The shape of every array in the physically smaller model (what surgery would build)."""
    deletions = dead_positions(graph, store)
    out = {}
    for key, arr in store.arrays.items():
        shape = list(arr.shape)
        for axis, pos in deletions.get(key, {}).items():
            shape[axis] -= len(pos)
        out[key] = tuple(shape)
    return out


class _Var:
    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype


class _ShapedLayer:
    """A layer's stand-in with its pruned variable shapes, for rules' ``flops`` (which read shapes only)."""

    def __init__(self, layer: Any, shapes: dict[str, tuple[int, ...]]) -> None:
        self.name = layer.name
        self.output = layer.output
        self.weights = [_Var(f"{layer.name}/{n}", shapes[n], w.dtype)
                        for n, w in zip(layer_variable_names(layer), layer.weights)]
        for v in self.weights:
            setattr(self, v.path.rsplit("/", 1)[-1], v)


def pruned_size(graph: ModelGraph, store: WeightStore) -> Any:
    """The :class:`~.evaluate.SizeReport` of the physically smaller model, computed from shapes alone."""
    from .evaluate import SizeReport, flops

    shapes = pruned_shapes(graph, store)
    params = nbytes = 0
    stand_ins: dict[int, Any] = {}
    for layer in graph.model.layers:
        names = layer_variable_names(layer)
        mine = {n: shapes[(layer.name, n)] for n in names}
        for n, w in zip(names, layer.weights):
            count = int(np.prod(mine[n]))
            params += count
            nbytes += count * np.dtype(w.dtype).itemsize
        if layer.weights:
            stand_ins[id(layer)] = _ShapedLayer(layer, mine)
    return SizeReport(params, nbytes, flops(graph.model, lambda layer: stand_ins.get(id(layer), layer)))
