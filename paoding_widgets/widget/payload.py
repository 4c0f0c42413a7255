"""What the widget sends over the wire, computed from a session (no widget code).

Why: the view must stay thin and the wire small.  These pure functions turn a
session -- read only through its :class:`~paoding_widgets.session.readonly.SessionView` --
into JSON rows for the layer
tree and fixed-size uint8 heatmaps (sent as binary buffers, never JSON lists),
so they can be tested without a browser and measured for payload size.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..session.readonly import GroupInfo, NodeInfo, SessionView

log = logging.getLogger("paoding_widgets")
HEATMAP_ROWS = 12  # inline heatmap: input features (downsampled) x units (downsampled)
HEATMAP_COLS = 48
DETAIL_SIZE = 128  # expanded heatmap side


def downsample(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Block means of a 2-D array to at most ``rows x cols`` (vectorised, no loops)."""
    a = np.asarray(a, np.float32)
    r, c = a.shape
    # bin j covers [floor(j n / k), floor((j + 1) n / k)): integer arithmetic, as js/src/heatmap.js assumes
    kr, kc = min(rows, r), min(cols, c)
    ri = (np.arange(kr) * r) // kr
    ci = (np.arange(kc) * c) // kc
    s = np.add.reduceat(np.add.reduceat(a, ri, axis=0), ci, axis=1)
    counts = np.diff(np.append(ri, r))[:, None] * np.diff(np.append(ci, c))[None, :]
    return s / counts


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Magnitudes scaled to 0..255 by the largest (square-root, so small weights show)."""
    a = np.abs(np.asarray(a, np.float32))
    top = float(a.max()) if a.size else 0.0
    if top <= 0 or not np.isfinite(top):
        return np.zeros(a.shape, np.uint8)
    return np.round(np.sqrt(np.clip(a / top, 0, 1)) * 255).astype(np.uint8)


def unit_matrix(kernel: np.ndarray) -> np.ndarray:
    """A kernel as (incoming weights, units): conv kernels fold their taps into the rows."""
    return np.asarray(kernel).reshape(-1, kernel.shape[-1])


def heatmap(kernel: np.ndarray, rows: int = HEATMAP_ROWS, cols: int = HEATMAP_COLS) -> np.ndarray:
    """The inline heatmap of a layer: |weights|, inputs down, units across."""
    return to_uint8(downsample(np.abs(unit_matrix(kernel)), rows, cols))


def layer_rows(session: Any) -> list[dict[str, Any]]:
    """The tree's rows: what does not change while pruning (structure, names, shapes, reasons).

    ``session`` is a :class:`~paoding_widgets.session.readonly.SessionView` (or a
    session, viewed through one).  Rows come in display order, each after its
    parent: blocks (see :mod:`~paoding_widgets.engine.blocks`) and nested models
    are parents.  What moves with each action (status, units alive, the open
    proposal) is in :func:`layer_states`, keyed by ``row["group"]``, so an update
    resends only that small dict.
    """
    from ..engine.blocks import innermost

    view = SessionView.of(session)
    infos = {info.name: info for info in view.layers}
    groups_of: dict[str, list[GroupInfo]] = {}
    for g in view.groups:
        for layer in g.producers:
            groups_of.setdefault(layer, []).append(g)
    blocks = list(view.blocks)
    block_of = innermost(blocks)
    by_name = {b.name: b for b in blocks}
    members: dict[str | None, list[str]] = {}
    for node in view.nodes:
        members.setdefault(block_of.get(node.name), []).append(node.name)
    for b in blocks:
        members.setdefault(b.parent, []).append(b.name)
    first: dict[str, float] = {n.name: float(i) for i, n in enumerate(view.nodes)}
    first.update({b.name: min(first[m] for m in b.members) - 0.5 for b in blocks})
    rows: list[dict[str, Any]] = []

    def emit(parent: str | None, level: int) -> None:
        for name in sorted(members.get(parent, []), key=first.__getitem__):
            if name in by_name:
                rows.append(_block_row(view, by_name[name], parent, level))
                emit(name, level + 1)
            else:
                rows.extend(_node_rows(view, view.node(name), groups_of.get(name, []), infos, parent, level))

    emit(None, 0)
    if any(r.get("part") for r in rows):  # parameters that go with each of a layer's several groups
        costs = view.unit_costs()
        for r in rows:
            if r.get("part"):
                ppu = costs.get(r["group"], (None, 0))[0]
                r["params"] = None if ppu is None else ppu * r["units_total"]
    seen: set[str] = set()
    unique = []
    for r in rows:  # a group shared by two layers with several groups each keeps the row of its first layer
        if r["name"] not in seen:
            seen.add(r["name"])
            unique.append(r)
    return unique


def row_params(session: Any, rows: list[dict[str, Any]], costs: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Parameters alive now per row: a layer's (as :meth:`SessionView.layer_params`), and for a row of one of
    a layer's several groups, those that go with its units alive."""
    view = SessionView.of(session)
    out = dict(view.layer_params())
    alive = {info.name: info.units_alive for info in view.layers}
    for r in rows:
        if r.get("part") and r["group"] in costs and alive.get(r["group"]) is not None:
            out[r["name"]] = costs[r["group"]][0] * int(alive[r["group"]])
    return out


def matrix(session: Any, row: dict[str, Any]) -> np.ndarray:
    """The (incoming weights, units) matrix a row's heatmap draws: its layer's kernel, or its group's
    columns when the layer has several groups."""
    view = SessionView.of(session)
    if row.get("part"):
        return view.unit_matrix(row["group"])
    return unit_matrix(view.kernel(row["name"]))


def matrix_version(session: Any, row: dict[str, Any]) -> int:
    """The weight version of what :func:`matrix` reads (redraw only what was written since)."""
    view = SessionView.of(session)
    return view.unit_matrix_version(row["group"]) if row.get("part") else view.kernel_version(row["name"])


# The name of a layer's first unit group when it has several (the others are labelled by the engine,
# "mha/key_dim", "bi/backward"); other kinds say "units".
FIRST_PART = {"MultiHeadAttention": "heads", "Bidirectional": "forward"}


def _part(node: NodeInfo, g: GroupInfo, first: bool) -> str:
    """The short name of one of a layer's groups: "heads", "key_dim", "backward"."""
    prefix = node.name + "/"
    if g.name.startswith(prefix):
        return g.name[len(prefix):]
    return FIRST_PART.get(node.type, "units") if first else g.name


def layer_states(session: Any) -> dict[str, dict[str, Any]]:
    """Per unit group: status, units alive and the open proposal (what an action changes)."""
    return {info.name: {"status": info.status, "units_alive": info.units_alive, "proposal": _proposal(info)}
            for info in SessionView.of(session).layers}


def merge_rows(rows: list[dict[str, Any]], states: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their group's state filled in (what js/src/tree.js ``mergeRows`` does)."""
    return [{**r, **states[r["group"]]} if r.get("group") in states else dict(r) for r in rows]


def _node_rows(view: SessionView, node: NodeInfo, groups: list[GroupInfo], infos: dict[str, Any],
               parent: str | None, depth: int) -> list[dict[str, Any]]:
    if len(groups) > 1:  # one row per unit group: each is seen, decided and locked on its own
        rows = [_group_row(view, node, g, infos, parent, depth, i == 0) for i, g in enumerate(groups)]
    else:
        g = groups[0] if groups else None
        info = infos.get(g.name) if g is not None else None
        row: dict[str, Any] = {
            "name": node.name, "type": node.type, "shape": _shape(node.output_shape), "depth": depth,
            "parent": parent, "params": node.params, "group": g.name if g is not None else None,
            "units_total": info.units_total if info else None,
            "reason": (info.reason if info else node.reason) or "",
            "heatmap": g is not None and view.has_kernel(node.name),
        }
        if info is None:  # no group: nothing here ever changes (grouped rows take theirs from layer_states)
            row.update(status="unsupported" if not node.supported else "", units_alive=None, proposal=None)
        rows = [row]
    for inner in node.inner:
        rows.append({"name": f"{node.name}/{inner.name}", "type": inner.type,
                     "shape": "", "depth": depth + 1, "parent": node.name,
                     "params": inner.params, "group": None,
                     "status": "", "units_alive": None, "units_total": None,
                     "reason": "inside a nested model (kept whole)", "heatmap": False, "proposal": None})
    return rows


def _group_row(view: SessionView, node: NodeInfo, g: GroupInfo, infos: dict[str, Any], parent: str | None,
               depth: int, first: bool) -> dict[str, Any]:
    """A row of one of a layer's several groups: named by the layer (first) or the group (the others).

    ``layer`` and ``part`` say whose and which group it is; ``label`` is what the tree shows
    ("mha · key_dim"); ``params`` are the parameters that go with the group's units.
    """
    info = infos.get(g.name)
    part = _part(node, g, first)
    return {"name": node.name if first else g.name, "type": node.type, "shape": _shape(node.output_shape),
            "depth": depth, "parent": parent, "params": None, "layer_params": node.params, "group": g.name,
            "layer": node.name, "part": part, "label": f"{node.name} · {part}",
            "units_total": info.units_total if info else g.size,
            "reason": (info.reason if info else g.reason) or "", "heatmap": view.has_unit_matrix(g.name)}


def _block_row(view: SessionView, block: Any, parent: str | None, depth: int) -> dict[str, Any]:
    fork = f"from {block.fork} " if block.fork else ""
    return {"name": block.name, "type": "Block", "shape": _shape(view.node(block.members[-1]).output_shape),
            "depth": depth, "parent": parent, "params": sum(view.node(m).params for m in block.members),
            "group": None, "status": "", "units_alive": None, "units_total": None,
            "reason": f"{len(block.members)} layers {fork}to {block.join}", "heatmap": False, "proposal": None}


def heatmaps(session: Any, names: list[str] | None = None,
             rows: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Inline heatmaps of the given layers (default: all with one) as (header, buffers).

    ``rows`` are the tree rows when the caller already has them (saves rebuilding them).
    """
    view = SessionView.of(session)
    wanted = None if names is None else set(names)
    rows = [r for r in (rows if rows is not None else layer_rows(view))
            if r["heatmap"] and (wanted is None or r["name"] in wanted)]
    header: dict[str, Any] = {"names": [], "shapes": []}
    buffers: list[bytes] = []
    for r in rows:
        img = heatmap(matrix(view, r))
        header["names"].append(r["name"])
        header["shapes"].append(list(img.shape))
        buffers.append(img.tobytes())
    return header, buffers


def detail(session: Any, name: str, kind: str = "weights",
           rows: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """A larger view of one row: weight magnitudes, or the pairwise saliency matrix.

    ``name`` is a row's name (a layer, or one of a layer's several groups; ``rows``: the tree, when
    the caller has it).  The header carries the value range and how many units/inputs each pixel
    covers, so the front end can name the value and unit under the pointer.
    """
    view = SessionView.of(session)
    row = next((r for r in (rows if rows is not None else layer_rows(view)) if r["name"] == name), None)
    if row is None or not row.get("part"):
        view.node(name)  # KeyError names an unknown layer
        if not view.has_kernel(name):
            raise ValueError(f"layer {name!r} has no weights to show")
        row = {"name": name, "group": name}
    elif not row["heatmap"]:
        raise ValueError(f"{row['label']} has no weights to show")
    if kind == "weights":
        m = np.abs(matrix(view, row))
    elif kind == "saliency" and row.get("part"):
        try:
            m = view.saliency(row["group"])
        except (KeyError, ValueError, IndexError) as exc:  # the scores read one kernel layout per layer
            log.debug("saliency of %s: %r", row["group"], exc)
            raise ValueError(f"no saliency matrix for {row['label']}: pairwise unit scores are not computed "
                             "for a layer with several unit groups (its weights are shown)") from None
    elif kind == "saliency":
        m = view.saliency(row["group"])
    else:
        raise ValueError(f"detail kind must be 'weights' or 'saliency', got {kind!r}")
    small = downsample(m, DETAIL_SIZE, DETAIL_SIZE)
    img = to_uint8(small)
    header = {"name": name, "kind": kind, "shape": list(img.shape), "source_shape": list(m.shape),
              "max": float(np.abs(small).max()) if small.size else 0.0}
    return header, [img.tobytes()]


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _proposal(info: Any) -> dict[str, Any] | None:
    if info is None or info.proposal is None:
        return None
    p = info.proposal
    return {"action": p["action"], "drop": p["drop"], "keep": p["keep"], "params_saved": p["params_saved"]}
