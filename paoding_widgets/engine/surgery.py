"""Physical surgery: a new, smaller Keras model without the dead units.

Why: a pruned model is only useful if it is really smaller.  The graph already
knows every array position of every unit, so surgery is bookkeeping: delete the
dead positions from each array, shrink each producer's ``units``/``filters``
(and Reshape targets), rebuild the same graph with ``keras.models.clone_model``
and load the sliced weights.  The original model is never touched.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
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


def clone(model: Any, configs: dict[str, dict] | None = None, feeds: dict[str, dict[str, Any]] | None = None
          ) -> Any:
    """A structural copy of ``model`` with fresh weights, some layers rebuilt from ``configs``.

    Weight-free layers whose config does not change (a ``Lambda``, a Keras
    operation) are reused as they are, so a model the user built in memory
    clones even where ``from_config`` would refuse it in safe mode.  ``feeds``:
    per layer, initializers that replace the config's (see :class:`_Feed`).
    """
    import keras

    configs = configs or {}
    feeds = feeds or {}

    def one(layer: Any) -> Any:
        cfg = configs.get(layer.name)
        if cfg is None:
            if not getattr(layer, "weights", None):
                return layer
            cfg = layer.get_config()
        if layer.name in feeds:
            cfg = {**cfg, **feeds[layer.name]}
        try:
            return layer.__class__.from_config(cfg)
        except Exception as exc:
            raise SurgeryError(f"cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its config: "
                               f"{type(exc).__name__}: {exc}") from exc

    with _uncompiled(model) as was_compiled:
        new = keras.models.clone_model(model, clone_function=one)
    if was_compiled or getattr(new, "compiled", False):
        # a pruned model ships without training state (compile it to train); ``optimizer`` reads None
        # as it did when clone_model's recompilation was undone here
        new.compiled = False
        new.optimizer = None
    return new


_compile_guard = threading.RLock()


@contextmanager
def _uncompiled(model: Any) -> Iterator[bool]:
    """``model.compiled`` reads False while the block runs; yields whether it was compiled.

    Why: ``clone_model`` recompiles a compiled source -- a new optimizer with a variable per weight,
    half of ``pruned_model()`` on a small model -- and surgery drops that compilation again at once
    (a pruned model ships without training state).  Nothing else of the model is touched; the flag is
    read and flipped under one lock, so a second clone of the same model waits instead of reading it flipped.
    """
    with _compile_guard:
        was = bool(getattr(model, "compiled", False))
        if was:
            model.compiled = False
        try:
            yield was
        finally:
            if was:
                model.compiled = True


class _FeedMismatch(Exception):
    """A feed was asked for another shape, or twice: the layer does not name its initializers as assumed."""


class _Feed:
    """An initializer that returns one given array, once.

    Why: surgery used to build each layer with its configured initializer (a
    random fill, on ResNet50 a quarter of ``pruned_model()``) and then assign
    the pruned arrays over it.  Handing the arrays to the variables as their
    initial values does one write instead of two.  The array is matched to the
    variable by the Keras convention ``<name>_initializer`` initializes
    ``<name>`` (or ``<name>_kernel``); any surprise raises and surgery falls
    back to the old way.
    """

    def __init__(self, array: np.ndarray, name: str = "") -> None:
        self.array, self.name, self.used = array, name, False

    def __call__(self, shape: Any, dtype: Any = None) -> np.ndarray:
        if self.used or tuple(shape) != self.array.shape:
            raise _FeedMismatch(f"asked for {tuple(shape)}, holds {self.array.shape}, used={self.used}")
        self.used = True
        return np.asarray(self.array, dtype=None if dtype is None else np.dtype(str(dtype)))

    def get_config(self) -> dict:
        raise _FeedMismatch("a feed is never serialized")


def _feeds_for(layer: Any, arrays: dict[str, np.ndarray], cfg: dict) -> dict[str, _Feed] | None:
    """Initializer keys of ``cfg`` -> feeds covering every variable of ``layer`` exactly once, or None."""
    names = list(arrays)
    if getattr(layer, "_layers", None) or any(":" in n or "/" in n for n in names):
        return None  # nested layers share initializer keys between sub-layers
    out: dict[str, _Feed] = {}
    for key in cfg:
        if not key.endswith("_initializer"):
            continue
        base = key[: -len("_initializer")]
        names_for = [base, f"{base}_kernel"]
        if key == "depthwise_initializer" and "kernel_initializer" not in cfg:
            names_for.append("kernel")  # Keras 3's DepthwiseConv2D calls its depthwise kernel "kernel"
        target = next((n for n in names_for if n in arrays), None)
        if target is not None:
            out[key] = _Feed(arrays[target], target)
    covered = [f.array for f in out.values()]
    if len(covered) != len(names) or {id(a) for a in covered} != {id(arrays[n]) for n in names}:
        return None
    return out


def physical_model(graph: ModelGraph, store: WeightStore) -> Any:
    """Build the smaller model; same layer names, same graph, same outputs.

    Layers whose config changes, or that own weights, are rebuilt from their
    config; weight-free layers whose config does not change (a ``Lambda``, a
    custom activation) are reused as they are -- the user's own in-memory
    model is trusted, and ``from_config`` would refuse a Lambda in safe mode.
    Variables are created holding their pruned arrays (:class:`_Feed`), then
    the layers get their configured initializers back (the saved config is the
    one a plain rebuild gives).
    """
    configs = new_configs(graph, store)
    deletions = dead_positions(graph, store)
    nodes = {n.name: n for n in graph.nodes}
    pruned: dict[str, dict[str, np.ndarray]] = {}
    for layer in graph.model.layers:
        if not layer.weights:
            continue
        mine = {}
        for var in layer_variable_names(layer):
            arr = store[(layer.name, var)]
            for axis, pos in sorted(deletions.get((layer.name, var), {}).items()):
                arr = np.delete(arr, pos, axis=axis)
            mine[var] = arr
        node = nodes.get(layer.name)
        if node is not None:  # its rule may rescale what depends on a size it lost (attention's key_dim)
            mine = node.rule.physical_arrays(graph, store, node, mine)
        pruned[layer.name] = mine
    originals = {layer.name: configs.get(layer.name) or layer.get_config()
                 for layer in graph.model.layers if layer.name in pruned}
    feeds = {}
    for layer in graph.model.layers:
        if layer.name in pruned:
            f = _feeds_for(layer, pruned[layer.name], originals[layer.name])
            if f is not None:
                feeds[layer.name] = f
    new = None
    if feeds:
        try:
            new = clone(graph.model, configs, feeds)
            _restore_initializers(new, feeds, originals)
        except Exception:  # a layer that names or keeps its initializers otherwise: the plain way below
            new = None
    fed = set(feeds) if new is not None else set()
    if new is None:
        new = clone(graph.model, configs)
    for layer in new.layers:
        if not layer.weights or layer.name in fed:
            continue
        try:
            layer.set_weights([pruned[layer.name][v] for v in layer_variable_names(layer)])
        except (ValueError, KeyError) as exc:
            raise SurgeryError(f"surgery produced wrong shapes for layer {layer.name!r}: {exc}") from exc
    return new


def _restore_initializers(model: Any, feeds: dict[str, dict[str, _Feed]], originals: dict[str, dict]) -> None:
    """Give fed layers their configured initializers back; raise :class:`_FeedMismatch` if any feed
    went unused or the layer does not keep the initializer where its config says."""
    import keras

    for layer in model.layers:
        mine = feeds.get(layer.name)
        if not mine:
            continue
        if not all(f.used for f in mine.values()) or \
                [w.shape for w in layer.weights] != [f.array.shape for f in _in_weight_order(layer, mine)]:
            raise _FeedMismatch(layer.name)
        for key in mine:
            if getattr(layer, key, None) is not mine[key]:
                raise _FeedMismatch(f"{layer.name}.{key}")
            setattr(layer, key, keras.initializers.get(originals[layer.name][key]))
        cfg = layer.get_config()
        if any(cfg.get(key) != originals[layer.name][key] for key in mine):
            raise _FeedMismatch(f"{layer.name}: initializer config not restored")


def _in_weight_order(layer: Any, feeds: dict[str, _Feed]) -> list[_Feed]:
    by_name = {f.name: f for f in feeds.values()}
    return [by_name[n] for n in layer_variable_names(layer) if n in by_name]


# ------------------------------------------------------------------ evaluation without surgery
#: Bytes of probe activations kept at graph cuts (ResNet50, 26 probes: the cuts where a restart pays, from
#: the middle of stage 4 on, 0.1 GiB).
PROBE_CACHE_BUDGET = 160 * 2**20
#: A restart in eager mode runs the tail about this much slower than the traced full pass (measured on
#: ResNet50: 1.9x); it is taken only when it still wins.
_EAGER_PENALTY = 2.0


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

    The probes' forward pass restarts where the edits begin (:meth:`probe_outputs`):
    an edit to one layer leaves every activation before it unchanged.
    """

    def __init__(self, graph: ModelGraph, cache_budget: int = PROBE_CACHE_BUDGET) -> None:
        self.graph = graph
        self.model = clone(graph.model)
        self._loaded: dict[str, tuple] = {}  # layer -> token of the arrays it holds
        self.cache_budget = cache_budget
        self._replay: _ProbeReplay | None | bool = None  # built on first use; False: not applicable
        self.last_restart: str | None = None  # where the last probe pass began ("input", a layer, "full")

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
                if isinstance(self._replay, _ProbeReplay):
                    self._replay.changed(layer.name)
        return self.model

    def probe_outputs(self, probes: np.ndarray) -> np.ndarray:
        """The model's outputs on ``probes`` (call :meth:`sync` first): ``predict``'s, up to float rounding.

        After an edit the pass restarts at the last cached cut before the first
        changed layer, when that saves at least half of the work; the cache holds
        the probes' activations at single-tensor cuts of the graph (block
        boundaries), the latest ones first, within ``cache_budget`` bytes.
        """
        from .evaluate import predict

        if self._replay is None:
            try:
                self._replay = _ProbeReplay(self.model, self.cache_budget)
            except _NoReplay:
                self._replay = False
        if self._replay is False:
            self.last_restart = "full"
            return predict(self.model, probes)
        assert isinstance(self._replay, _ProbeReplay)
        out, self.last_restart = self._replay.outputs(probes)
        return out


class _NoReplay(Exception):
    """The model's graph is not one the replay handles (several inputs or outputs, shared layers)."""


class _ProbeReplay:
    """Probe activations at the cuts of a model's graph, and forward passes that restart there.

    A cut is a tensor every path from the input to the output goes through (a
    Sequential model's every layer output; ResNet50's block outputs).  A full
    pass is one traced function returning the output and the cached cuts; a
    restart replays the layers after a cut eagerly, freeing each activation
    after its last reader, batch by batch.
    """

    def __init__(self, model: Any, budget: int) -> None:
        from .graph import _topological_nodes
        from .rules import rule_for

        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise _NoReplay("one input and one output only")
        import keras

        if keras.backend.backend() != "tensorflow":
            raise _NoReplay("TensorFlow backend only")
        self.model = model
        self.input = model.inputs[0]
        self.output = model.outputs[0]
        order = [(op, node) for op, node in _topological_nodes([self.output]) if not node.is_input]
        if len({id(op) for op, _ in order}) != len(order):
            raise _NoReplay("a layer is called more than once")
        if any(getattr(t, "_keras_mask", None) is not None for _, node in order for t in node.outputs):
            raise _NoReplay("a layer passes a mask (a cached activation would lose it)")
        self.order = order
        self.position = {op.name: i for i, (op, _) in enumerate(order)}
        uses: dict[int, int] = defaultdict(int)
        for _, node in order:
            for t in node.input_tensors:
                uses[id(t)] += 1
        self.uses = dict(uses)
        # cuts: after node i exactly one tensor is live (produced, still to be read) -- that node's output
        live: dict[int, int] = {id(self.input): uses.get(id(self.input), 0)}
        cuts: list[int] = []
        for i, (_op, node) in enumerate(order):
            for t in node.input_tensors:
                live[id(t)] -= 1
                if live[id(t)] == 0:
                    del live[id(t)]
            outs = list(node.outputs)
            for t in outs:
                if uses.get(id(t), 0):
                    live[id(t)] = uses[id(t)]
            if len(outs) == 1 and list(live) == [id(outs[0])] and i < len(order) - 1:
                cuts.append(i)
        # work per node (2 x multiply-adds of Dense / convolutions), to decide whether a restart pays
        work = []
        for op, node in order:
            rule = rule_for(op)
            try:
                shape = tuple(node.outputs[0].shape)
                pos = int(np.prod([d for d in shape[1:-1] if d is not None])) if len(shape) > 2 else 1
                work.append(2.0 * rule.flops(op, pos) if rule is not None else 0.0)
            except Exception:
                work.append(0.0)
        self.tail_work = np.cumsum(np.asarray(work[::-1], float))[::-1]  # work of nodes i.. end
        self.total_work = float(self.tail_work[0]) if len(work) else 0.0
        self.budget = budget
        self.all_cuts = cuts
        self.cuts: list[int] = []  # chosen per probe count, latest first within the budget
        self.cache: dict[int, np.ndarray] = {}
        self.dirty = 0  # first node whose weights changed since the cache was filled
        self.probes_key: tuple | None = None
        self._full: Any = None

    def changed(self, layer: str) -> None:
        self.dirty = min(self.dirty, self.position.get(layer, 0))

    def _choose(self, n: int) -> None:
        self.cuts, used = [], 0
        for i in reversed(self.all_cuts):
            if _EAGER_PENALTY * self.tail_work[i + 1] >= self.total_work:
                break  # a restart there would not pay (see :meth:`outputs`): never used, not kept
            t = self.order[i][1].outputs[0]
            size = n * int(np.prod([d for d in t.shape[1:]])) * 4
            if used + size > self.budget:
                break
            self.cuts.append(i)
            used += size
        self.cuts.sort()

    def outputs(self, probes: np.ndarray) -> tuple[np.ndarray, str]:
        key = (id(probes), probes.shape, probes.dtype.str)
        if key != self.probes_key:
            self.probes_key, self.cache, self.dirty = key, {}, 0
            self._choose(len(probes))
        start = max((c for c in self.cuts if c < self.dirty and c in self.cache), default=None)
        if start is not None and _EAGER_PENALTY * self.tail_work[start + 1] >= self.total_work:
            start = None  # replaying that tail eagerly costs more than the traced full pass
        if start is None:
            out = self._full_pass(probes)
            where = "input"
        else:
            out = self._restart(start, len(probes))
            where = self.order[start][0].name
        self.dirty = len(self.order)
        return out, where

    def _batches(self, n: int) -> list[slice]:
        from .evaluate import _COMPILED_BATCH_BUDGET, auto_batch_size

        bs = auto_batch_size(self.model, budget=_COMPILED_BATCH_BUDGET)
        return [slice(i, min(n, i + bs)) for i in range(0, n, bs)]

    def _full_pass(self, probes: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if self._full is None:
            outs = [self.order[c][1].outputs[0] for c in self.cuts] + [self.output]
            import keras

            sub = keras.Model(self.input, outs)
            spec = tf.TensorSpec((None, *self.input.shape[1:]), self.input.dtype)
            self._full = tf.function(lambda x: sub(x, training=False), input_signature=[spec])
        dtype = np.dtype(self.input.dtype)
        results: list[np.ndarray] = []
        self.cache = {}
        for sl in self._batches(len(probes)):
            got = self._full(np.asarray(probes[sl], dtype))
            for c, a in zip(self.cuts, got[:-1]):
                self._store(c, sl, np.asarray(a), len(probes))
            results.append(np.asarray(got[-1]))
        return np.concatenate(results)

    def _store(self, c: int, sl: slice, a: np.ndarray, n: int) -> None:
        if c not in self.cache:
            self.cache[c] = np.empty((n, *a.shape[1:]), a.dtype)
        self.cache[c][sl] = a

    def _restart(self, start: int, n: int) -> np.ndarray:
        import keras

        start_t = self.order[start][1].outputs[0]
        later = set(c for c in self.cuts if c > start)
        results: list[np.ndarray] = []
        for sl in self._batches(n):
            values: dict[int, Any] = {id(start_t): self.cache[start][sl]}
            left: dict[int, int] = {}
            for i in range(start + 1, len(self.order)):
                op, node = self.order[i]
                args, kwargs = node.arguments.fill_in(values)
                outs = op(*args, **kwargs)
                for t in node.input_tensors:
                    left[id(t)] = left.get(id(t), self.uses[id(t)]) - 1
                    if left[id(t)] == 0:
                        values.pop(id(t), None)
                flat = keras.tree.flatten(outs)
                for t, v in zip(node.outputs, flat):
                    values[id(t)] = v
                if i in later:
                    self._store(i, sl, np.asarray(flat[0]), n)
            results.append(np.asarray(values[id(self.output)]))
        return np.concatenate(results)


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
