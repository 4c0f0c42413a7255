"""Read a Keras 3 model into a graph of layers and prunable unit groups.

Why: pruning one unit touches several arrays in several layers (the producer's
kernel column and bias, a BatchNorm's four vectors, the next layer's kernel rows,
every flattened position that came from a filter, both branches of a residual
``Add``).  The graph finds those couplings from layer *types* and the real
connectivity -- never from layer names -- so that edits, bounds and surgery all
agree on which array positions belong to which unit.

Vocabulary
----------
* A **unit group** is a set of channels that must be pruned together: the units
  of a Dense layer, the filters of a Conv layer, or the union of several
  producers' channels joined by ``Add``/``Multiply``.
* A **slot** is one array position set indexed by a group: ``(layer, variable,
  axis, index)`` where ``index[c]`` lists the positions along ``axis`` that
  belong to unit ``c`` (several for a Dense kernel after ``Flatten``, an LSTM
  unit's gates, or a unit of ``width`` channels: a GroupNormalization's groups).
* A tensor's **layout** tells which group owns each position of its last axis:
  a tuple of blocks ``(segments, repeat)``; a block is ``repeat`` copies
  (flattened spatial positions) of the concatenated ``segments``, each segment
  ``(group_id | None, length)``.  ``None`` marks channels that are not prunable
  (model inputs, outputs of opaque layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError, UnknownLayerError
from .rules import LayerRule, OpaqueRule, rule_for

Segment = tuple[int | None, int]
Block = tuple[tuple[Segment, ...], int]
Layout = tuple[Block, ...]


@dataclass(frozen=True)
class Slot:
    """Array positions of one variable that belong to a group's channels."""

    layer: str
    var: str
    axis: int
    index: np.ndarray  # (group size, k) positions along ``axis`` for each channel

    def positions(self, channels: np.ndarray) -> np.ndarray:
        """Flat positions along ``axis`` for the given channel indices."""
        return self.index[channels].reshape(-1)


@dataclass
class UnitGroup:
    """Channels pruned together, with every array slot they index."""

    id: int
    size: int
    kind: str = "dense"  # "dense" (merge-able units) or "conv" (filters)
    producers: list[Slot] = field(default_factory=list)
    passthrough: list[Slot] = field(default_factory=list)
    consumers: list[Slot] = field(default_factory=list)
    tensors: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    merge_chain: list[str] | None = None  # layers between producer and consumers (merge-able)
    merge_note: str = ""
    width: int = 1  # channels per unit: 1, or a GroupNormalization's channels per group (pruned whole)
    label: str = ""  # the name of a layer's second or third group (an attention layer's key_dim units)

    @property
    def prunable(self) -> bool:
        return not self.reasons and bool(self.producers) and bool(self.consumers)

    @property
    def reason(self) -> str:
        """Why the group is not prunable ("" when it is)."""
        if self.reasons:
            return "; ".join(dict.fromkeys(self.reasons))
        if not self.producers:
            return "no weighted layer produces these channels"
        if not self.consumers:
            return "no weighted layer reads these channels"
        return ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        names = list(dict.fromkeys(s.layer for s in self.producers))
        return names[0] if len(names) == 1 else "+".join(names)

    @property
    def layers(self) -> list[str]:
        """Every layer with an array indexed by this group."""
        return list(dict.fromkeys(s.layer for s in self.slots()))

    def slots(self) -> list[Slot]:
        return [*self.producers, *self.passthrough, *self.consumers]


@dataclass
class LayerNode:
    """One call of a layer in the model graph."""

    name: str
    type: str
    layer: Any
    inputs: list[int]
    outputs: list[int]
    output_shape: tuple
    supported: bool = True
    reason: str = ""
    config: dict = field(default_factory=dict)  # the layer's get_config(), read once
    rule: LayerRule = field(default_factory=lambda: OpaqueRule("no rule"))  # what the engine knows of its kind
    var_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # variable name -> shape

    def var_ndim(self, var: str) -> int:
        """Rank of one of the layer's variables (KeyError names the layer and what it has)."""
        try:
            return len(self.var_shapes[var])
        except KeyError:
            raise UnknownLayerError(f"layer {self.name!r} ({self.type}) has no variable {var!r}; "
                                    f"it has {sorted(self.var_shapes)}") from None


class ModelGraph:
    """The layer graph of a Keras model and its prunable unit groups.

    Built once per model; it reads the structure and variable shapes only, so
    the same graph serves the original model, its edited weights and (by
    mapping group sizes) the physically pruned model.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.nodes: list[LayerNode] = []
        self.layouts: dict[int, Layout] = {}
        self.shapes: dict[int, tuple] = {}
        self.groups: list[UnitGroup] = []
        self.input_ids: list[int] = []
        self.output_ids: list[int] = []
        self._parent: list[int] = []
        self._pending: list[UnitGroup] = []
        self._by_name: dict[str, LayerNode] = {}
        self._build()

    # ------------------------------------------------------------------ public
    @property
    def prunable_groups(self) -> list[UnitGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, key: int | str) -> UnitGroup:
        """A group by id or by name (its producer layer names)."""
        for g in self.groups:
            if g.id == key or g.name == key:
                return g
        for g in self.groups:  # a layer that belongs to a group
            if isinstance(key, str) and any(s.layer == key for s in g.producers):
                return g
        names = ", ".join(g.name for g in self.groups)
        raise UnknownLayerError(f"no unit group {key!r}; groups are: {names}")

    def node(self, name: str) -> LayerNode:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownLayerError(f"no layer named {name!r} in the model") from None

    def unsupported(self) -> list[LayerNode]:
        """Layers left intact because their type cannot be resized."""
        return [n for n in self.nodes if not n.supported]

    def consumers_of(self, tid: int) -> list[LayerNode]:
        return [n for n in self.nodes if tid in n.inputs]

    def producer_of(self, tid: int) -> LayerNode | None:
        for n in self.nodes:
            if tid in n.outputs:
                return n
        return None

    def report(self) -> str:
        """A readable table of groups, sizes and reasons."""
        lines = []
        for g in self.groups:
            state = "prunable" if g.prunable else f"not prunable: {g.reason}"
            lines.append(f"{g.name:<40} {g.kind:<5} {g.size:>5}  {state}")
        for n in self.unsupported():
            lines.append(f"{n.name:<40} {n.type}: left intact ({n.reason})")
        return "\n".join(lines)

    # ------------------------------------------------------------ construction
    def _build(self) -> None:
        model = self.model
        try:
            inputs = list(model.inputs)
            outputs = list(model.outputs)
        except (AttributeError, ValueError) as exc:
            raise ModelError(
                f"model {getattr(model, 'name', model)!r} has no defined inputs; build it with "
                "keras.Input(...) or call model.build(input_shape) first"
            ) from exc
        order = _topological_nodes(outputs)
        uses: dict[int, int] = {}
        for op, _node in order:
            uses[id(op)] = uses.get(id(op), 0) + 1
        self.input_ids = [id(t) for t in inputs]
        self.output_ids = [id(t) for t in outputs]
        for op, node in order:
            ins = [id(t) for t in _flat(node.input_tensors)]
            outs = [id(t) for t in _flat(node.output_tensors)]
            for t in [*_flat(node.input_tensors), *_flat(node.output_tensors)]:
                self.shapes[id(t)] = tuple(t.shape)
            ln = LayerNode(op.name, type(op).__name__, op, ins, outs, tuple(_flat(node.output_tensors)[0].shape),
                           config=_config(op), rule=_rule(op), var_shapes=_var_shapes(op))
            self.nodes.append(ln)
            self._by_name[ln.name] = ln
            if uses[id(op)] > 1:
                ln.supported, ln.reason = False, f"layer is shared (called {uses[id(op)]} times)"
            self._visit(ln)
        for tid in self.output_ids:
            self.poison(tid, "reaches the model output")
        self._finish()

    # ------------------------------------------------- builder API (used by the rules)
    def new_group(self, size: int, kind: str, label: str = "") -> int:
        """A new unit group of ``size`` channels ("dense": mergeable units, "conv": filters); its id.

        ``label`` names a layer's further groups (default: the producers' layer names), so that
        every group of a layer has a name of its own.
        """
        gid = len(self._parent)
        self._parent.append(gid)
        self._pending.append(UnitGroup(gid, size, kind, label=label))
        return gid

    def _find(self, gid: int) -> int:
        while self._parent[gid] != gid:
            self._parent[gid] = self._parent[self._parent[gid]]
            gid = self._parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        """Make two groups one (their channels are pruned together)."""
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            A, B = self._pending[ra], self._pending[rb]
            if A.width != B.width:  # a join with channels grouped by a GroupNormalization: group both alike
                fine, coarse = (ra, B) if A.width < B.width else (rb, A)
                self.coarsen(fine, coarse.width // self._pending[fine].width)
            self._parent[rb] = ra
            for attr in ("producers", "passthrough", "consumers", "tensors", "reasons"):
                getattr(A, attr).extend(getattr(B, attr))
            if B.kind == "conv":
                A.kind = "conv"

    def coarsen(self, gid: int, k: int) -> None:
        """Make every ``k`` consecutive units of group ``gid`` one unit (a GroupNormalization's groups).

        Every slot registered so far is regrouped; readers registered later get ``k``
        channels per unit from the group's ``width``.
        """
        grp = self.pending(gid)
        if k == 1:
            return
        if k < 1 or grp.size % k:
            raise ModelError(f"cannot group the {grp.size} units of {grp.name} by {k}")

        def regroup(slots: list[Slot]) -> list[Slot]:
            return [Slot(s.layer, s.var, s.axis, s.index.reshape(grp.size // k, -1)) for s in slots]

        grp.producers, grp.passthrough, grp.consumers = (regroup(grp.producers), regroup(grp.passthrough),
                                                         regroup(grp.consumers))
        grp.size //= k
        grp.width *= k

    def alive_channels(self, alive: dict[int, np.ndarray], layout: Layout) -> int:
        """Positions of a tensor's last axis with this layout whose units are alive (``alive``: per group)."""
        total = 0
        for segs, rep in layout:
            width = 0
            for g, n in segs:
                width += n if g is None else int(np.repeat(alive[g], self.groups[g].width)[:n].sum())
            total += rep * width
        return total

    def pending(self, gid: int) -> UnitGroup:
        """The group ``gid`` belongs to while the graph is being read (to add reasons)."""
        return self._pending[self._find(gid)]

    def groups_in(self, layout: Layout) -> list[int]:
        """Group ids present in a layout."""
        return [g for segs, _ in layout for g, _n in segs if g is not None]

    def layout(self, tid: int) -> Layout:
        """The channel layout of tensor ``tid`` (which group owns each position of its last axis)."""
        return self.layouts[tid]

    def shape(self, tid: int) -> tuple:
        """The Keras shape of tensor ``tid`` (batch axis first, None for unknown)."""
        return self.shapes[tid]

    def poison(self, tid: int, reason: str) -> None:
        """Mark every group present in tensor ``tid`` as not prunable, with ``reason``."""
        for g in self.groups_in(self.layouts.get(tid, ())):
            self.pending(g).reasons.append(reason)

    def set_layout(self, tid: int, layout: Layout) -> None:
        """Record the layout of an output tensor."""
        self.layouts[tid] = layout
        for g in self.groups_in(layout):
            self.pending(g).tensors.append(tid)

    def channels(self, gid: int | None, n: int) -> Layout:
        """The layout of ``n`` channels owned by one group (None: not prunable)."""
        return ((((gid, n),), 1),)

    def flattened(self, src: int) -> Layout:
        """The layout after flattening tensor ``src``: its channels once per spatial position."""
        shape = self.shapes[src]
        layout = self.layouts[src]
        if len(shape) <= 2:
            return layout
        rep = int(np.prod(shape[1:-1]))
        (segs, r), = layout
        return ((segs, r * rep),)

    def consume(self, ln: LayerNode, tid: int, var: str, axis: int) -> None:
        """Register ``var``'s ``axis`` as reading the channels of tensor ``tid`` (a reader's rows)."""
        layout = self.layouts[tid]
        base = 0
        for segs, rep in layout:
            width = sum(n for _, n in segs)
            off = 0
            for g, n in segs:
                if g is not None:
                    idx = base + np.arange(rep)[None, :] * width + off + np.arange(n)[:, None]
                    idx = idx.reshape(n // self.pending(g).width, -1)  # a unit's channels, each at every position
                    self.pending(g).consumers.append(Slot(ln.name, var, axis, idx.astype(np.int64)))
                off += n
            base += rep * width

    def read_units(self, ln: LayerNode, gid: int, var: str, axis: int) -> None:
        """Register ``var``'s ``axis`` as reading group ``gid``'s units directly, inside one layer
        (an attention layer's output projection reads its own heads)."""
        n = self.pending(gid).size
        self.pending(gid).consumers.append(Slot(ln.name, var, axis, np.arange(n, dtype=np.int64)[:, None]))

    def passthrough(self, ln: LayerNode, tid: int, var: str, axis: int) -> None:
        """Register ``var``'s ``axis`` as holding one entry per channel of ``tid`` (BatchNorm, depthwise)."""
        segs, rep = self.layouts[tid][0]
        off = 0
        for g, n in segs:
            if g is not None:
                idx = (off + np.arange(n)).reshape(n // self.pending(g).width, -1).astype(np.int64)
                self.pending(g).passthrough.append(Slot(ln.name, var, axis, idx))
            off += n

    def produce(self, ln: LayerNode, gid: int, var: str, axis: int, index: np.ndarray | None = None) -> None:
        """Register ``var``'s ``axis`` as holding the units of group ``gid`` (kernel columns, bias).

        ``index[c]`` lists the positions of unit ``c`` along the axis (default: position ``c``;
        an LSTM unit owns one column per gate).
        """
        n = self.pending(gid).size
        idx = np.arange(n, dtype=np.int64)[:, None] if index is None else np.asarray(index, np.int64).reshape(n, -1)
        self.pending(gid).producers.append(Slot(ln.name, var, axis, idx))

    def opaque(self, ln: LayerNode, reason: str) -> None:
        """Leave a layer whole: the groups it reads stay whole too, its outputs are not prunable."""
        ln.supported, ln.reason = False, reason
        for tid in ln.inputs:
            self.poison(tid, f"feeds {ln.name} ({ln.type}), which cannot be resized: {reason}")
        for tid in ln.outputs:
            self.set_layout(tid, self.channels(None, _last(self.shapes[tid])))

    def _visit(self, ln: LayerNode) -> None:
        if not ln.inputs:  # the model's inputs
            for tid in ln.outputs:
                self.set_layout(tid, self.channels(None, _last(self.shapes[tid])))
            return
        if any(tid not in self.layouts for tid in ln.inputs):
            self.opaque(ln, "input comes from outside the model graph")
            return
        if not ln.supported:  # shared layer
            self.opaque(ln, ln.reason)
            return
        if ln.config.get("data_format", "channels_last") != "channels_last":
            self.opaque(ln, "only channels_last layouts are supported")
            return
        mark = (len(self.layouts), len(self._pending))
        try:
            ln.rule.read(self, ln)
        except Exception as exc:  # a rule that cannot read this layer leaves it whole, never crashes
            if len(self.layouts) != mark[0] or len(self._pending) != mark[1]:
                raise ModelError(f"the rule {ln.rule!r} failed half-way through layer {ln.name!r}: {exc}") from exc
            self.opaque(ln, f"its rule {ln.rule!r} could not read it ({type(exc).__name__}: {exc})")
            return
        missing = [t for t in ln.outputs if t not in self.layouts]  # extra outputs a rule did not describe
        if missing:
            for t in missing:
                self.set_layout(t, self.channels(None, _last(self.shapes[t])))

    def join(self, ln: LayerNode) -> None:
        """Unite the groups at the same positions of the inputs (``Add``, ``Multiply``...)."""
        layouts = [self.layouts[t] for t in ln.inputs]
        shapes = [self.shapes[t] for t in ln.inputs]
        struct = [tuple((tuple(n for _, n in segs), rep) for segs, rep in lay) for lay in layouts]
        if len(set(struct)) != 1 or len({s[-1] for s in shapes}) != 1:
            self.opaque(ln, "joins tensors whose channels do not line up")
            return
        for bi, (segs, _rep) in enumerate(layouts[0]):
            for si in range(len(segs)):
                ws = sorted({self.pending(g).width for lay in layouts if (g := lay[bi][0][si][0]) is not None})
                if any(w % ws[0] for w in ws):
                    self.opaque(ln, f"joins channels grouped {ws[0]} and {ws[-1]} per unit (GroupNormalization)")
                    return
        first = layouts[0]
        out_blocks = []
        for bi, (segs, rep) in enumerate(first):
            new_segs = []
            for si, (_g, n) in enumerate(segs):
                ids = [lay[bi][0][si][0] for lay in layouts]
                real = [x for x in ids if x is not None]
                if real and len(real) < len(ids):
                    for x in real:
                        self.pending(x).reasons.append(f"joined by {ln.name} with channels that cannot be pruned")
                for x in real[1:]:
                    self.union(real[0], x)
                new_segs.append((real[0] if real else None, n))
            out_blocks.append((tuple(new_segs), rep))
        self.set_layout(ln.outputs[0], tuple(out_blocks))

    def _finish(self) -> None:
        roots = sorted({self._find(g) for g in range(len(self._parent))})
        remap = {r: i for i, r in enumerate(roots)}
        for r in roots:
            grp = self._pending[r]
            grp.id = remap[r]
            grp.tensors = list(dict.fromkeys(grp.tensors))
            grp.reasons = [x for x in grp.reasons if x]
            if any(self.node(s.layer).rule.unit_kind != "dense" for s in grp.producers):
                grp.kind = "conv"
            self.groups.append(grp)
        # Rewrite layouts with final ids so views can map channels to groups.
        for tid, lay in self.layouts.items():
            self.layouts[tid] = tuple(
                (tuple((None if g is None else remap[self._find(g)], n) for g, n in segs), rep)
                for segs, rep in lay
            )
        for grp in self.groups:
            grp.merge_chain, grp.merge_note = self._merge_chain(grp)

    def _merge_chain(self, grp: UnitGroup) -> tuple[list[str] | None, str]:
        """The per-unit layers between a Dense producer and its readers.

        Merging unit b into unit a is exact up to an affine map only when each
        unit's signal reaches the readers through per-unit operations; joins
        and branches that read the units at different points rule merges out.
        """
        producers = list(dict.fromkeys(s.layer for s in grp.producers))
        if not self.node(producers[0]).rule.mergeable:
            return None, "units of this layer type are pruned by removal"
        if len(producers) != 1:
            return None, "units are shared by several layers (joined); removal only"
        if not all(self.node(s.layer).rule.merge_reader for s in grp.consumers):
            return None, "units are read by a layer that cannot absorb a merge (attention, recurrent); removal only"
        read_at = {tid for s in grp.consumers for tid in self.node(s.layer).inputs if tid in grp.tensors}
        if len(read_at) != 1:
            return None, "units are read at several points; removal only"
        target = read_at.pop()
        tid = self.node(producers[0]).outputs[0]
        chain: list[str] = []
        while tid != target:
            nxt = [n for n in self.consumers_of(tid) if n.rule.merge_chain_ok]
            if len(nxt) != 1:
                return None, "units pass through a branch before their readers; removal only"
            chain.append(nxt[0].name)
            tid = nxt[0].outputs[0]
        return chain, ""


# ------------------------------------------------------------------ helpers
def _flat(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _flat(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flat(item)]
    return [x]


def _last(shape: tuple) -> int:
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _config(layer: Any) -> dict:
    try:
        return layer.get_config()
    except Exception:  # custom layers without get_config
        return {}


def _var_shapes(layer: Any) -> dict[str, tuple[int, ...]]:
    """Variable short name -> shape, in ``layer.weights`` order (see ``weights.layer_variable_names``)."""
    from .weights import layer_variable_names

    try:
        return {n: tuple(int(d) for d in w.shape) for n, w in zip(layer_variable_names(layer), layer.weights)}
    except Exception:  # an operation without weights, or a layer that is not built
        return {}


def _rule(op: Any) -> LayerRule:
    """The layer's rule, or an opaque rule saying why there is none."""
    rule = rule_for(op)
    if rule is not None:
        return rule
    t = type(op).__name__
    if type(op).__module__.startswith("keras.src.ops"):
        return OpaqueRule(f"Keras operation {t} (not a layer) has no pruning rule")
    return OpaqueRule(f"layer type {t} has no pruning rule; teach it one with paoding_widgets.register_rule")


def _topological_nodes(outputs: list) -> list[tuple[Any, Any]]:
    """(operation, node) pairs from the inputs to ``outputs``, each once."""
    order: list[tuple[Any, Any]] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(t, False) for t in reversed(outputs)]
    while stack:
        tensor, expanded = stack.pop()
        hist = getattr(tensor, "_keras_history", None)
        if hist is None:
            continue
        op, node_index = hist.operation, hist.node_index
        node = op._inbound_nodes[node_index]
        key = id(node)
        if key in seen:
            continue
        if expanded:
            seen.add(key)
            order.append((op, node))
            continue
        stack.append((tensor, True))
        for t in reversed(_flat(node.input_tensors)):
            h = getattr(t, "_keras_history", None)
            if h is not None and id(h.operation._inbound_nodes[h.node_index]) not in seen:
                stack.append((t, False))
    return order
