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
  belong to channel ``c`` (several for a Dense kernel after ``Flatten``).
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

Segment = tuple[int | None, int]
Block = tuple[tuple[Segment, ...], int]
Layout = tuple[Block, ...]

# Layers that leave the channel layout unchanged and act on each channel alone.
_LAYOUT_IDENTITY = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
}
# Element-wise activations (per channel); softmax mixes channels and is opaque.
ELEMENTWISE_ACTIVATIONS = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish",
    "sigmoid", "hard_sigmoid", "tanh", "softplus", "softsign", "exponential",
    "hard_silu", "hard_swish", "mish", "celu", "glu_free",
}
_JOINS = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
_CONVS = {"Conv1D", "Conv2D", "Conv3D"}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
_SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
# Layers whose per-unit transfer keeps a merge exact up to an affine map.
_MERGE_CHAIN_OK = {
    "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Identity", "Activation", "ReLU", "LeakyReLU", "BatchNormalization",
}
# Per-channel layers that keep equal channels equal: transparent for merges.
MERGE_TRANSPARENT = {
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Flatten",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
}


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
    reshapes: list[str] = field(default_factory=list)  # Reshape layers whose target follows the size
    reasons: list[str] = field(default_factory=list)
    merge_chain: list[str] | None = None  # layers between producer and consumers (merge-able)
    merge_note: str = ""

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
        raise KeyError(f"no unit group {key!r}; groups are: {names}")

    def node(self, name: str) -> LayerNode:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no layer named {name!r} in the model") from None

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
            raise ValueError(
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
                           config=_config(op))
            self.nodes.append(ln)
            self._by_name[ln.name] = ln
            if uses[id(op)] > 1:
                ln.supported, ln.reason = False, f"layer is shared (called {uses[id(op)]} times)"
            self._visit(ln)
        for tid in self.output_ids:
            self._poison(tid, "reaches the model output")
        self._finish()

    def _new_group(self, size: int, kind: str) -> int:
        gid = len(self._parent)
        self._parent.append(gid)
        self._pending.append(UnitGroup(gid, size, kind))
        return gid

    def _find(self, gid: int) -> int:
        while self._parent[gid] != gid:
            self._parent[gid] = self._parent[self._parent[gid]]
            gid = self._parent[gid]
        return gid

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra
            A, B = self._pending[ra], self._pending[rb]
            for attr in ("producers", "passthrough", "consumers", "tensors", "reshapes", "reasons"):
                getattr(A, attr).extend(getattr(B, attr))
            if B.kind == "conv":
                A.kind = "conv"

    def _grp(self, gid: int) -> UnitGroup:
        return self._pending[self._find(gid)]

    def _groups_in(self, layout: Layout) -> list[int]:
        return [g for segs, _ in layout for g, _n in segs if g is not None]

    def _poison(self, tid: int, reason: str) -> None:
        for g in self._groups_in(self.layouts.get(tid, ())):
            self._grp(g).reasons.append(reason)

    def _set(self, tid: int, layout: Layout) -> None:
        self.layouts[tid] = layout
        for g in self._groups_in(layout):
            self._grp(g).tensors.append(tid)

    def _channel_layout(self, gid: int | None, n: int) -> Layout:
        return ((((gid, n),), 1),)

    def _consume(self, ln: LayerNode, tid: int, var: str, axis: int) -> None:
        """Register ``var``'s ``axis`` as reading the channels of tensor ``tid``."""
        layout = self.layouts[tid]
        base = 0
        for segs, rep in layout:
            width = sum(n for _, n in segs)
            off = 0
            for g, n in segs:
                if g is not None:
                    idx = base + np.arange(rep)[None, :] * width + off + np.arange(n)[:, None]
                    self._grp(g).consumers.append(Slot(ln.name, var, axis, idx.astype(np.int64)))
                off += n
            base += rep * width

    def _passthrough(self, ln: LayerNode, tid: int, var: str, axis: int) -> None:
        segs, rep = self.layouts[tid][0]
        off = 0
        for g, n in segs:
            if g is not None:
                idx = (off + np.arange(n))[:, None].astype(np.int64)
                self._grp(g).passthrough.append(Slot(ln.name, var, axis, idx))
            off += n

    def _opaque(self, ln: LayerNode, reason: str) -> None:
        ln.supported, ln.reason = False, reason
        for tid in ln.inputs:
            self._poison(tid, f"feeds {ln.name} ({ln.type}), which cannot be resized: {reason}")
        for tid in ln.outputs:
            self._set(tid, self._channel_layout(None, _last(self.shapes[tid])))

    def _visit(self, ln: LayerNode) -> None:  # noqa: C901 - one branch per layer family
        layer, t = ln.layer, ln.type
        ins, outs = ln.inputs, ln.outputs
        if t == "InputLayer":
            for tid in outs:
                self._set(tid, self._channel_layout(None, _last(self.shapes[tid])))
            return
        if any(tid not in self.layouts for tid in ins):
            self._opaque(ln, "input comes from outside the model graph")
            return
        if not ln.supported:  # shared layer
            self._opaque(ln, ln.reason)
            return
        cfg = ln.config
        if cfg.get("data_format", "channels_last") != "channels_last":
            self._opaque(ln, "only channels_last layouts are supported")
            return
        src = ins[0] if ins else None
        rank_in = len(self.shapes[src]) if src is not None else 0
        out = outs[0]

        if t == "Dense":
            self._consume(ln, src, "kernel", 0)
            g = self._new_group(int(cfg["units"]), "dense")
            self._add_producer(ln, g, int(cfg["units"]), kernel_ndim=2)
            self._set(out, self._channel_layout(g, int(cfg["units"])))
        elif t in _CONVS:
            if int(cfg.get("groups", 1)) != 1:
                self._opaque(ln, f"grouped convolution (groups={cfg['groups']})")
                return
            nd = rank_in  # kernel rank == input rank (spatial dims + in + out)
            self._consume(ln, src, "kernel", nd - 2)
            n = int(cfg["filters"])
            g = self._new_group(n, "conv")
            self._add_producer(ln, g, n, kernel_ndim=nd)
            self._set(out, self._channel_layout(g, n))
        elif t in _DEPTHWISE or t in _SEPARABLE:
            if int(cfg.get("depth_multiplier", 1)) != 1:
                self._opaque(ln, f"depth_multiplier={cfg['depth_multiplier']} is not supported")
                return
            var = "kernel" if t in _DEPTHWISE else "depthwise_kernel"
            self._passthrough(ln, src, var, rank_in - 2)
            if t in _DEPTHWISE:
                if cfg.get("use_bias", True):
                    self._passthrough(ln, src, "bias", 0)
                self._set(out, self.layouts[src])
            else:
                self._consume(ln, src, "pointwise_kernel", rank_in - 2)
                n = int(cfg["filters"])
                g = self._new_group(n, "conv")
                self._add_producer(ln, g, n, kernel_ndim=rank_in, kernel="pointwise_kernel")
                self._set(out, self._channel_layout(g, n))
        elif t == "BatchNormalization":
            axis = cfg["axis"]
            axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
            if not isinstance(axis, int) or axis % rank_in != rank_in - 1:
                self._opaque(ln, f"normalises axis {axis}, not the channel axis")
                return
            for w in layer.weights:
                self._passthrough(ln, src, _var_name(w), 0)
            self._set(out, self.layouts[src])
        elif t == "Activation":
            if _activation_name(cfg.get("activation")) not in ELEMENTWISE_ACTIVATIONS:
                self._opaque(ln, f"activation {_activation_name(cfg.get('activation'))!r} mixes channels")
                return
            self._set(out, self.layouts[src])
        elif t == "PReLU":
            alpha = layer.weights[0]
            if tuple(alpha.shape)[-1] != _last(self.shapes[src]) or len(self.layouts[src]) != 1:
                self._opaque(ln, "PReLU alpha is not per channel")
                return
            self._passthrough(ln, src, _var_name(alpha), len(alpha.shape) - 1)
            self._set(out, self.layouts[src])
        elif t in _LAYOUT_IDENTITY:
            if t.startswith("Global") and len(self.layouts[src]) != 1:
                self._opaque(ln, "pools a flattened tensor")
                return
            self._set(out, self.layouts[src])
        elif t == "Flatten":
            self._set(out, self._flatten(src))
        elif t == "Reshape":
            self._reshape(ln, src, out)
        elif t == "Concatenate":
            self._concat(ln, cfg)
        elif t in _JOINS:
            self._join(ln)
        elif t in ("Rescaling", "Normalization") and not self._groups_in(self.layouts[src]):
            self._set(out, self.layouts[src])
        else:
            self._opaque(ln, _unsupported_reason(t))

    def _add_producer(self, ln: LayerNode, g: int, n: int, kernel_ndim: int, kernel: str = "kernel") -> None:
        idx = np.arange(n, dtype=np.int64)[:, None]
        grp = self._grp(g)
        grp.producers.append(Slot(ln.name, kernel, kernel_ndim - 1, idx))
        if ln.config.get("use_bias", True):
            grp.producers.append(Slot(ln.name, "bias", 0, idx))

    def _flatten(self, src: int) -> Layout:
        shape = self.shapes[src]
        layout = self.layouts[src]
        if len(shape) <= 2:
            return layout
        rep = int(np.prod(shape[1:-1]))
        (segs, r), = layout
        return ((segs, r * rep),)

    def _reshape(self, ln: LayerNode, src: int, out: int) -> None:
        sin, sout = self.shapes[src], self.shapes[out]
        layout = self.layouts[src]
        if len(sout) == 2 and len(sin) > 2:
            self._set(out, self._flatten(src))
            target = tuple(ln.config["target_shape"])
            if -1 not in target:
                for g in self._groups_in(layout):
                    self._grp(g).reshapes.append(ln.name)
        elif len(layout) == 1 and layout[0][1] == 1 and sin[-1] == sout[-1]:
            self._set(out, layout)
            for g in self._groups_in(layout):
                self._grp(g).reshapes.append(ln.name)
        else:
            self._opaque(ln, f"reshape {sin[1:]} -> {sout[1:]} moves channels")

    def _concat(self, ln: LayerNode, cfg: dict) -> None:
        rank = len(self.shapes[ln.outputs[0]])
        if int(cfg.get("axis", -1)) % rank != rank - 1:
            self._opaque(ln, f"concatenates on axis {cfg.get('axis')}, not channels")
            return
        layouts = [self.layouts[t] for t in ln.inputs]
        if rank == 2 or all(len(lay) == 1 and lay[0][1] == 1 for lay in layouts):
            if rank == 2:
                merged: Layout = tuple(b for lay in layouts for b in lay)
                if all(rep == 1 for _, rep in merged):
                    merged = ((tuple(s for segs, _ in merged for s in segs), 1),)
            else:
                merged = ((tuple(s for lay in layouts for s in lay[0][0]), 1),)
            self._set(ln.outputs[0], merged)
        else:
            self._opaque(ln, "concatenates tensors with different channel layouts")

    def _join(self, ln: LayerNode) -> None:
        layouts = [self.layouts[t] for t in ln.inputs]
        shapes = [self.shapes[t] for t in ln.inputs]
        struct = [tuple((tuple(n for _, n in segs), rep) for segs, rep in lay) for lay in layouts]
        if len(set(struct)) != 1 or len({s[-1] for s in shapes}) != 1:
            self._opaque(ln, "joins tensors whose channels do not line up")
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
                        self._grp(x).reasons.append(f"joined by {ln.name} with channels that cannot be pruned")
                for x in real[1:]:
                    self._union(real[0], x)
                new_segs.append((real[0] if real else None, n))
            out_blocks.append((tuple(new_segs), rep))
        self._set(ln.outputs[0], tuple(out_blocks))

    def _finish(self) -> None:
        roots = sorted({self._find(g) for g in range(len(self._parent))})
        remap = {r: i for i, r in enumerate(roots)}
        for r in roots:
            grp = self._pending[r]
            grp.id = remap[r]
            grp.tensors = list(dict.fromkeys(grp.tensors))
            grp.reshapes = list(dict.fromkeys(grp.reshapes))
            grp.reasons = [x for x in grp.reasons if x]
            if any(self.node(s.layer).type != "Dense" for s in grp.producers):
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
        if self.node(producers[0]).type not in ("Dense", *_CONVS):
            return None, "units of this layer type are pruned by removal"
        if len(producers) != 1:
            return None, "units are shared by several layers (joined); removal only"
        read_at = {tid for s in grp.consumers for tid in self.node(s.layer).inputs if tid in grp.tensors}
        if len(read_at) != 1:
            return None, "units are read at several points; removal only"
        target = read_at.pop()
        tid = self.node(producers[0]).outputs[0]
        chain: list[str] = []
        while tid != target:
            nxt = [n for n in self.consumers_of(tid) if n.type in _MERGE_CHAIN_OK | MERGE_TRANSPARENT]
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


def _var_name(w: Any) -> str:
    return str(w.path).rsplit("/", 1)[-1]


def _activation_name(act: Any) -> str:
    if act is None:
        return "linear"
    if isinstance(act, str):
        return act
    if isinstance(act, dict):
        return str(act.get("config", act).get("name", act.get("class_name", "?")))
    return getattr(act, "__name__", str(act))


def _unsupported_reason(type_name: str) -> str:
    if type_name in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM2D"):
        return "recurrent layers are not pruned"
    if "Attention" in type_name:
        return "attention layers are not pruned"
    if type_name in ("Functional", "Sequential", "Model"):
        return "nested models are kept whole"
    if type_name in ("Lambda", "TFOpLambda"):
        return "arbitrary code (Lambda) cannot be resized safely"
    return f"layer type {type_name} is not supported"


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
