"""Residual and branching blocks of a model, found from its structure alone.

Why: a ResNet50 has 177 layers; a tree that lists them flat buries the few
rows a user acts on.  A *block* is what lies between a fork and the join that
closes it (an ``Add`` / ``Concatenate`` / ``Multiply``...): every node on a
path from the fork to the join, the join included, plus the weightless
activation right after the join (ResNet's ``..._out``).  The fork is the
join's immediate dominator, so this works whatever the layers are called;
names only serve to title the block.  Blocks nest when one lies inside
another; blocks that overlap without nesting are dropped (smaller first).
Chains with no join (MobileNetV2's unskipped inverted residuals) are grouped
by name instead: three or more consecutive top-level layers that share a
first two name parts (``block_3_expand``, ``block_3_depthwise``...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .graph import ModelGraph


@dataclass
class Block:
    """Layers from just after a fork up to (and including) the join that closes it."""

    name: str
    fork: str | None  # the dominating layer the branches leave from (None: the model inputs)
    join: str
    members: list[str] = field(default_factory=list)  # in model order
    parent: str | None = None  # the innermost enclosing block, if any


def find_blocks(graph: ModelGraph) -> list[Block]:
    """The blocks of ``graph``, outermost first, each with its members in model order."""
    nodes = graph.nodes
    producer = {t: i for i, n in enumerate(nodes) for t in n.outputs}
    preds = [sorted({producer[t] for t in n.inputs if t in producer}) for n in nodes]
    succs: list[list[int]] = [[] for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            succs[p].append(i)
    idom = _dominators(preds)
    found: list[tuple[int | None, int, set[int]]] = []
    for j, ps in enumerate(preds):
        if len(ps) < 2:
            continue
        fork = idom[j]
        region = _between(fork, j, preds, succs)
        if len(succs[j]) == 1:
            nxt = succs[j][0]
            if nodes[nxt].rule.trails_join and not nodes[nxt].layer.weights and len(preds[nxt]) == 1:
                region.add(nxt)
        if len(region) > 1:
            found.append((fork, j, region))
    kept: list[tuple[int | None, int, set[int]]] = []
    for fork, j, region in sorted(found, key=lambda f: -len(f[2])):
        if all(region <= r or region.isdisjoint(r) for _, _, r in kept):
            kept.append((fork, j, region))
    taken: set[str] = {n.name for n in nodes}
    blocks: list[Block] = []
    for fork, j, region in kept:  # outermost first: a block's parent is already named
        members = [nodes[i].name for i in sorted(region)]
        name = _title(members, nodes[j].name, taken)
        taken.add(name)
        # kept is largest first, so the last enclosing block seen so far is the innermost one
        parents = [b.name for b, (_, _, r) in zip(blocks, kept) if region < r]
        blocks.append(Block(name, None if fork is None else nodes[fork].name, nodes[j].name, members,
                            parents[-1] if parents else None))
    inside = {m for b in blocks for m in b.members}
    for run in _name_runs([n.name for n in nodes if n.name not in inside]):
        name = _title(run, run[-1], taken)
        taken.add(name)
        blocks.append(Block(name, None, run[-1], run))
    return blocks


def innermost(blocks: list[Block]) -> dict[str, str]:
    """Layer name -> name of the innermost block holding it."""
    size = {b.name: len(b.members) for b in blocks}
    out: dict[str, str] = {}
    for b in blocks:
        for m in b.members:
            if m not in out or size[b.name] < size[out[m]]:
                out[m] = b.name
    return out


def _dominators(preds: list[list[int]]) -> list[int | None]:
    """Immediate dominator of each node of a DAG in topological order (None: the virtual root)."""
    idom: list[int | None] = [None] * len(preds)
    depth = [0] * len(preds)
    for i, ps in enumerate(preds):
        if not ps:
            continue
        d: int | None = ps[0]
        for p in ps[1:]:
            d = _meet(d, p, idom, depth)
        idom[i] = d
        depth[i] = 0 if d is None else depth[d] + 1
    return idom


def _meet(a: int | None, b: int | None, idom: list[int | None], depth: list[int]) -> int | None:
    """Nearest common ancestor of two nodes in the dominator tree."""
    while a is not None and b is not None and a != b:
        if depth[a] >= depth[b]:
            a = idom[a]
        else:
            b = idom[b]
    return a if a == b else None


def _between(fork: int | None, join: int, preds: list[list[int]], succs: list[list[int]]) -> set[int]:
    """Nodes on some path from ``fork`` (excluded) to ``join`` (included)."""
    back = {join}
    stack = [join]
    while stack:
        for p in preds[stack.pop()]:
            if p != fork and p not in back:
                back.add(p)
                stack.append(p)
    if fork is None:
        return back
    fwd: set[int] = set()
    stack = [fork]
    while stack:
        for s in succs[stack.pop()]:
            if s not in fwd and s <= join:
                fwd.add(s)
                stack.append(s)
    return back & fwd


def _name_runs(names: list[str]) -> list[list[str]]:
    """Runs of 3+ consecutive names sharing their first two parts (``block_3_...``).

    Names of 2 parts (``dense_1``) and runs that differ only by a number
    (``my_dense_1``, ``my_dense_2``...: copies, not a block) are left alone.
    """
    def key(name: str) -> tuple[str, ...] | None:
        parts = re.split(r"[_\-/.]", name)
        return tuple(parts[:2]) if len(parts) >= 3 else None

    def numbered(run: list[str]) -> bool:
        return all(re.fullmatch(r"[_\-/.]?\d*", n[len(os.path.commonprefix(run)):]) for n in run)

    runs: list[list[str]] = []
    current: list[str] = []
    for name in [*names, ""]:
        if current and key(name) is not None and key(name) == key(current[0]):
            current.append(name)
            continue
        if len(current) >= 3 and key(current[0]) is not None and not numbered(current):
            runs.append(current)
        current = [name]
    return runs


def _title(members: list[str], join: str, taken: set[str]) -> str:
    """The members' common name prefix (``conv2_block1``), else ``block <join>``; never a layer's name."""
    prefix = os.path.commonprefix(members).rstrip("_-/.")
    cut = max(prefix.rfind(c) for c in "_-/.")  # a prefix ending mid-word is cut at its last separator
    if prefix and not any(m == prefix or m[len(prefix):][:1] in "_-/." for m in members):
        prefix = prefix[:cut] if cut > 0 else ""
    name = prefix if len(prefix) >= 3 else f"block {join}"
    while name in taken:
        name += " (block)"
    return name
