"""What the widget sends over the wire, computed from a session (no widget code).

Why: the view must stay thin and the wire small.  These pure functions turn a
:class:`~paoding_widgets.session.PruningSession` into JSON rows for the layer
tree and fixed-size uint8 heatmaps (sent as binary buffers, never JSON lists),
so they can be tested without a browser and measured for payload size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
    """One JSON row per layer for the tree, in model order (nested models as parents)."""
    graph = session.graph
    infos = {info.name: info for info in session.layers}
    group_of: dict[str, Any] = {}
    for g in graph.groups:
        for s in g.producers:
            group_of.setdefault(s.layer, g)
    rows = []
    for node in graph.nodes:
        g = group_of.get(node.name)
        info = infos.get(g.name) if g is not None else None
        params = int(sum(int(np.prod(w.shape)) for w in node.layer.weights))
        row: dict[str, Any] = {
            "name": node.name, "type": node.type, "shape": _shape(node.output_shape), "depth": 0, "parent": None,
            "params": params, "group": g.name if g is not None else None,
            "status": info.status if info else ("unsupported" if not node.supported else ""),
            "units_alive": info.units_alive if info else None,
            "units_total": info.units_total if info else None,
            "reason": (info.reason if info else node.reason) or "",
            "heatmap": g is not None and session.pruner.store.get(node.name, _kernel_var(node.type)) is not None,
            "proposal": _proposal(info),
        }
        rows.append(row)
        if node.type in ("Functional", "Sequential", "Model"):
            for inner in node.layer.layers:
                rows.append({"name": f"{node.name}/{inner.name}", "type": type(inner).__name__,
                             "shape": "", "depth": 1, "parent": node.name,
                             "params": int(sum(int(np.prod(w.shape)) for w in inner.weights)), "group": None,
                             "status": "", "units_alive": None, "units_total": None,
                             "reason": "inside a nested model (kept whole)", "heatmap": False, "proposal": None})
    return rows


def heatmaps(session: Any, names: list[str] | None = None,
             rows: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Inline heatmaps of the given layers (default: all with one) as (header, buffers).

    ``rows`` are the tree rows when the caller already has them (saves rebuilding them).
    """
    rows = [r for r in (rows if rows is not None else layer_rows(session))
            if r["heatmap"] and (names is None or r["name"] in names)]
    header = {"names": [], "shapes": []}
    buffers: list[bytes] = []
    for r in rows:
        node = session.graph.node(r["name"])
        img = heatmap(session.pruner.store[(r["name"], _kernel_var(node.type))])
        header["names"].append(r["name"])
        header["shapes"].append(list(img.shape))
        buffers.append(img.tobytes())
    return header, buffers


def detail(session: Any, name: str, kind: str = "weights") -> tuple[dict[str, Any], list[bytes]]:
    """A larger view of one layer: weight magnitudes, or the pairwise saliency matrix.

    The header carries the value range and how many units/inputs each pixel
    covers, so the front end can name the value and unit under the pointer.
    """
    node = session.graph.node(name)
    kernel = session.pruner.store.get(name, _kernel_var(node.type))
    if kernel is None:
        raise ValueError(f"layer {name!r} has no weights to show")
    if kind == "weights":
        m = np.abs(unit_matrix(kernel))
    elif kind == "saliency":
        from ..engine.scores import saliency_matrix

        group = session.graph.group(name)
        if not group.prunable:
            raise ValueError(f"layer {name!r} is not prunable ({group.reason}); no saliency to show")
        view = session.pruner.view(group)
        m = saliency_matrix(view.u, view.b, view.v_norm)
        m = np.where(np.isfinite(m), m, 0.0)
        alive = view.alive
        m[~alive, :] = 0
        m[:, ~alive] = 0
    else:
        raise ValueError(f"detail kind must be 'weights' or 'saliency', got {kind!r}")
    small = downsample(m, DETAIL_SIZE, DETAIL_SIZE)
    img = to_uint8(small)
    header = {"name": name, "kind": kind, "shape": list(img.shape), "source_shape": list(m.shape),
              "max": float(np.abs(small).max()) if small.size else 0.0}
    return header, [img.tobytes()]


def _kernel_var(layer_type: str) -> str:
    return "pointwise_kernel" if layer_type.startswith("Separable") else "kernel"


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _proposal(info: Any) -> dict[str, Any] | None:
    if info is None or info.proposal is None:
        return None
    p = info.proposal
    return {"action": p["action"], "drop": p["drop"], "keep": p["keep"], "params_saved": p["params_saved"]}
