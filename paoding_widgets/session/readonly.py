"""SessionView: the narrow, read-only face of a session that views (the widget) use.

Why: a view must show the session without reaching into its internals (the
weight store, the graph, the history).  Everything the widget and its wire
payload read goes through this class, so the session can change how it keeps
its state without breaking any view, and a view cannot write through what it
reads: structure comes as frozen records, kernels as read-only NumPy views.
Actions are not here: a view calls the session's public methods for those.

Structure (the model's layers, unit groups and blocks) never changes during a
session, so it is read once and kept; state (layer infos, history, metrics,
running) is read from the session on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.blocks import Block
    from ..engine.evaluate import Metrics
    from .core import LayerInfo, PruningSession
    from .history import HistoryItem

@dataclass(frozen=True)
class InnerLayer:
    """A layer inside a nested model (kept whole: never pruned)."""

    name: str
    type: str
    params: int


@dataclass(frozen=True)
class NodeInfo:
    """One top-level layer of the model, as a tree shows it."""

    name: str
    type: str
    output_shape: tuple[int | None, ...]
    supported: bool
    reason: str  # why the graph cannot follow this layer ("" if it can)
    params: int
    inner: tuple[InnerLayer, ...] = ()  # layers of a nested model


@dataclass(frozen=True)
class GroupInfo:
    """One unit group's fixed facts (its changing state is in :attr:`SessionView.layers`)."""

    name: str
    kind: str
    prunable: bool
    reason: str
    size: int
    producers: tuple[str, ...]  # the layers whose units (outputs) the group is


class SessionView:
    """Read-only access to a :class:`~.core.PruningSession` for views.

    ``SessionView.of(x)`` accepts a session or a view (so helpers can take either).
    """

    def __init__(self, session: PruningSession) -> None:
        self._session = session
        graph = session.graph
        self._nodes = tuple(_node_info(n) for n in graph.nodes)
        self._node_by_name = {n.name: n for n in self._nodes}
        self._groups = tuple(GroupInfo(g.name, g.kind, bool(g.prunable), g.reason or "", int(g.size),
                                       tuple(dict.fromkeys(s.layer for s in g.producers)))
                             for g in graph.groups)
        self._names = frozenset(self._node_by_name) | frozenset(g.name for g in self._groups)
        self._blocks: tuple[Block, ...] | None = None
        self._keys_of: dict[str, list[tuple[str, str]]] | None = None
        # the variable each layer's rule says holds its units (heatmaps are drawn from it)
        self._kernel_keys = {n.name: (n.name, n.rule.kernel_var) for n in graph.nodes if n.rule.kernel_var}

    @classmethod
    def of(cls, x: Any) -> SessionView:
        return x if isinstance(x, SessionView) else cls(x)

    @property
    def session(self) -> PruningSession:
        """The session itself (for its actions; read state through this view)."""
        return self._session

    # ------------------------------------------------------------ structure (fixed)
    @property
    def nodes(self) -> tuple[NodeInfo, ...]:
        """Top-level layers in model order."""
        return self._nodes

    def node(self, name: str) -> NodeInfo:
        """One layer by name (KeyError if unknown)."""
        return self._node_by_name[name]

    @property
    def groups(self) -> tuple[GroupInfo, ...]:
        return self._groups

    @property
    def blocks(self) -> tuple[Block, ...]:
        """Residual / branching blocks of the graph, outermost first (computed once)."""
        if self._blocks is None:
            from ..engine.blocks import find_blocks

            self._blocks = tuple(find_blocks(self._session.graph))
        return self._blocks

    @property
    def names(self) -> frozenset[str]:
        """Every layer and unit-group name an action may name."""
        return self._names

    # ------------------------------------------------------------ weights (read-only views)
    def has_kernel(self, name: str) -> bool:
        """Whether a layer has a kernel to draw."""
        key = self._kernel_keys.get(name)
        return key is not None and key in self._session.pruner.store.arrays

    def kernel(self, name: str) -> np.ndarray:
        """The layer's current kernel as a read-only view (no copy; KeyError if it has none)."""
        key = self._kernel_keys.get(name)
        if key is None or key not in self._session.pruner.store.arrays:
            raise KeyError(f"layer {name!r} has no kernel")
        v = self._session.pruner.store.arrays[key].view()
        v.flags.writeable = False
        return v

    def kernel_version(self, name: str) -> int:
        """The weight version that last wrote the layer's kernel (0: never), for redrawing only what changed."""
        key = self._kernel_keys.get(name)
        return self._session.pruner.store.changed.get(key, 0) if key is not None else 0

    def _unit_slot(self, group: str) -> Any:
        """The first producer slot of a group in an array of two or more axes (its units' incoming weights)."""
        g = self._session.graph.group(group)
        arrays = self._session.pruner.store.arrays
        return next((sl for sl in g.producers if (sl.layer, sl.var) in arrays
                     and arrays[(sl.layer, sl.var)].ndim >= 2), None)

    def has_unit_matrix(self, group: str) -> bool:
        """Whether a unit group has a producer kernel to draw (a layer with several groups draws each)."""
        return self._unit_slot(group) is not None

    def unit_matrix(self, group: str) -> np.ndarray:
        """A group's units as columns (incoming weights down, one column per unit) of its first producer
        kernel: an attention layer's heads, key_dim or value_dim units, a direction of a Bidirectional.

        A unit with several columns (an LSTM's four gates) stacks them down its column.  A copy.
        """
        sl = self._unit_slot(group)
        if sl is None:
            raise KeyError(f"unit group {group!r} has no kernel")
        a = np.moveaxis(self._session.pruner.store.arrays[(sl.layer, sl.var)], sl.axis, -1)
        a = a.reshape(-1, a.shape[-1])
        idx = np.asarray(sl.index).reshape(len(sl.index), -1)  # (units, columns per unit)
        m = a[:, idx]  # (rows, units, k)
        return np.ascontiguousarray(np.moveaxis(m, 1, -1).reshape(-1, idx.shape[0]))

    def unit_matrix_version(self, group: str) -> int:
        """The weight version that last wrote the array :meth:`unit_matrix` reads (0: never)."""
        sl = self._unit_slot(group)
        return self._session.pruner.store.changed.get((sl.layer, sl.var), 0) if sl is not None else 0

    def saliency(self, name: str) -> np.ndarray:
        """The pairwise saliency matrix of a prunable group's units (dead units' rows and columns 0)."""
        from ..engine.scores import saliency_matrix
        from ..errors import SessionError

        s = self._session
        with s._lock:  # a consistent reading while a run may be writing
            group = s.graph.group(name)
            if not group.prunable:
                raise SessionError(f"layer {name!r} is not prunable ({group.reason}); no saliency to show")
            view = s.pruner.view(group)
            m = saliency_matrix(view.u, view.b, view.v_norm)
            m = np.where(np.isfinite(m), m, 0.0)
            alive = view.alive
        m[~alive, :] = 0
        m[:, ~alive] = 0
        return m

    # ------------------------------------------------------------ state (live)
    @property
    def layers(self) -> list[LayerInfo]:
        """Every unit group's current state (status, units alive, open proposal)."""
        return self._session.layers

    @property
    def settings(self) -> dict[str, Any]:
        return self._session.settings

    @property
    def running(self) -> bool:
        return self._session.running

    @property
    def state(self) -> str:
        """``"idle"`` or ``"running"``."""
        state = getattr(self._session, "state", None)
        if isinstance(state, str):
            return state
        return "running" if self._session.running else "idle"

    @property
    def history_items(self) -> list[HistoryItem]:
        return self._session.history_items

    @property
    def position(self) -> int:
        """How many history entries are applied (0: the original model)."""
        return self._session.history.position

    @property
    def history_length(self) -> int:
        return len(self._session.history.entries)

    @property
    def revision(self) -> tuple[int, int]:
        """(history position, weights version): changes with every edit, undo or redo."""
        return self._session.revision

    def share_pruned(self) -> float:
        return self._session.share_pruned()

    @property
    def sample_counts(self) -> tuple[int | None, int]:
        """(eval samples behind accuracy and robustness or None without eval data, box samples behind agreement)."""
        s = self._session
        return (None if s.eval_data is None else len(s.eval_data[0])), len(s._probes)

    def cached_metrics(self) -> Metrics | None:
        """The current state's metrics if already computed (never computes)."""
        return self._session.cached_metrics()

    def metrics(self) -> Metrics:
        """The current state's metrics (computes them: seconds on a large model)."""
        return self._session.metrics()

    def reading(self) -> Any:
        """A context holding the session still (its lock) for several consistent reads.

        A view thread that also holds its own lock must take this one first: the
        session's events reach views with the session lock held, so that order is the only safe one.
        """
        return self._session._lock

    # ------------------------------------------------------------ deciding (per layer, previews, history points)
    def state_key(self, position: int | None = None) -> tuple[int, int]:
        """Identifies the state at a history position (default: the current one) while its entry lives:
        (position, id of the entry that leads there; 0 for the original model)."""
        h = self._session.history
        n = h.position if position is None else position
        return (n, id(h.entries[n - 1]) if 0 < n <= len(h.entries) else 0)

    def layer_params(self) -> dict[str, int]:
        """Parameters of every top-level layer that live now (removed rows and columns not counted)."""
        s = self._session
        with s._lock:
            store, graph = s.pruner.store, s.graph
            dead: dict[tuple[str, str], dict[int, int]] = {}
            for g in graph.groups:
                gone = np.flatnonzero(~store.alive[g.id])
                if not len(gone):
                    continue
                for slot in g.slots():
                    axes = dead.setdefault((slot.layer, slot.var), {})
                    axes[slot.axis] = axes.get(slot.axis, 0) + int(slot.index[gone].size)
            if self._keys_of is None:  # which arrays each layer owns (fixed)
                keys_of: dict[str, list[tuple[str, str]]] = {}
                for key in store.arrays:
                    keys_of.setdefault(key[0], []).append(key)
                self._keys_of = keys_of
            out: dict[str, int] = {}
            for node in self._nodes:
                keys = self._keys_of.get(node.name)
                if not keys:
                    out[node.name] = node.params
                    continue
                total = 0
                for key in keys:
                    shape = list(store.arrays[key].shape)
                    for axis, n in dead.get(key, {}).items():
                        shape[axis] = max(0, shape[axis] - n)
                    total += int(np.prod(shape))
                out[node.name] = total
            return out

    def unit_costs(self) -> dict[str, tuple[int, int]]:
        """Per prunable group: (parameters, estimated FLOPs) that go with one unit."""
        from .sensitivity import flops_per_unit

        s = self._session
        with s._lock:
            return {g.name: (s.pruner.params_per_unit(g), flops_per_unit(s.graph, s.pruner.store, g))
                    for g in s.graph.prunable_groups}

    def proposal_bounds(self, still: Any = None) -> tuple[tuple[int, int], dict[str, float | None]]:
        """(revision, layer -> certified bound of the largest output change if its open proposal were
        accepted), computed on a private copy of the weights, off the session lock.

        ``still(revision)`` may return False to stop early (the state moved on).
        """
        from .sensitivity import private_pruner, proposal_bound

        s = self._session
        with s._lock:
            props = dict(s.proposals)
            revision = s.revision
            pruner = private_pruner(s.pruner, s.seed) if props else None
        out: dict[str, float | None] = {}
        if pruner is not None and not np.isfinite(pruner.output_bound_width()):
            return revision, {name: None for name in props}  # the value bounds overflow: nothing to certify
        for name, prop in props.items():
            if pruner is None or (still is not None and not still(revision)):
                break
            out[name] = proposal_bound(pruner, pruner.graph.group(name), prop.candidates)
        return revision, out

    def proposal_accuracies(self, cancelled: Any = None, on_result: Any = None) -> Any:
        """Accuracy now and after accepting each open proposal alone (eval data; a private copy, off the lock).

        See :func:`.sensitivity.proposal_accuracies`; None without eval data or open proposals.
        """
        from .sensitivity import proposal_accuracies

        return proposal_accuracies(self, cancelled=cancelled, on_result=on_result)

    @property
    def has_eval_data(self) -> bool:
        return self._session.eval_data is not None

    def alive_at(self, position: int) -> dict[str, np.ndarray]:
        """Which units of every group live at a history position (read from the patches; nothing moves)."""
        s = self._session
        with s._lock:
            h, store = s.history, s.pruner.store
            if not 0 <= position <= len(h.entries):
                raise KeyError(f"history position must be in 0..{len(h.entries)}, got {position}")
            masks = {g: m.copy() for g, m in store.alive.items()}
            for e in reversed(h.entries[position:h.position]):
                for g, units, value in reversed(e.patch.alive):
                    masks[g][units] = not value
            for e in h.entries[h.position:position]:
                for g, units, value in e.patch.alive:
                    masks[g][units] = value
            return {g.name: masks[g.id] for g in s.graph.groups}


def _params(layer: Any) -> int:
    return int(sum(int(np.prod(w.shape)) for w in getattr(layer, "weights", ())))  # operations have none


def _node_info(node: Any) -> NodeInfo:
    inner: tuple[InnerLayer, ...] = ()
    if node.rule.nested:
        inner = tuple(InnerLayer(x.name, type(x).__name__, _params(x)) for x in node.layer.layers)
    return NodeInfo(node.name, node.type, tuple(node.output_shape), bool(node.supported), node.reason or "",
                    _params(node.layer), inner)

